"""A ``ros2 bag``'s folder: its ``metadata.yaml`` and the storage files the bag was split into (``--max-bag-size``,
``--max-bag-duration``), read one after the other as ``ros2 bag play`` plays them.

The order is the one ``metadata.yaml`` lists (``relative_file_paths``); without a list that can be read (a bag whose
recorder was killed before writing it), the storage files in the folder by their split index (``robot_bag_2`` before
``robot_bag_10``). Its ``topics_with_message_count`` tells the topics without reading the storage files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from streamfuse.part_set import one_file_twice

__all__ = ["STORAGE_SUFFIXES", "folder_topics", "is_bag_folder", "is_storage", "storage_files"]

# the files read as recordings: ours, and a ROS 2 (MCAP, sqlite3; zstd-compressed by file too) or ROS 1 bag's
STORAGE_SUFFIXES = (".mcap", ".db3", ".bag", ".mcap.zstd", ".db3.zstd")


def is_storage(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file read as a recording (by its extension)."""
    return Path(path).name.lower().endswith(STORAGE_SUFFIXES)


def is_bag_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "metadata.yaml").is_file()


def _metadata(folder: Path) -> dict[str, Any]:
    """``rosbag2_bagfile_information`` of the folder's ``metadata.yaml``; {} where it cannot be read."""
    try:
        info = yaml.safe_load((folder / "metadata.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    info = info.get("rosbag2_bagfile_information") if isinstance(info, dict) else None
    return info if isinstance(info, dict) else {}


def _split_index(path: Path) -> tuple[int, str]:
    index = re.search(r"_(\d+)\.", path.name)
    return (int(index.group(1)) if index else -1, path.name)


def storage_files(folder: str | os.PathLike) -> list[Path]:
    """The bag's storage files in the order they were recorded.

    Raises:
        ValueError: one line: the folder holds none, or one that ``metadata.yaml`` lists is not there.
    """
    folder = Path(folder)
    listed = _metadata(folder).get("relative_file_paths")
    if isinstance(listed, list) and listed and all(isinstance(p, str) for p in listed):
        files = [folder / Path(p).name for p in listed]  # some rosbag2 versions list them under the folder's name
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"bag {folder}: its metadata.yaml lists {', '.join(missing)}, not in the folder")
    else:
        files = sorted((p for p in folder.iterdir() if p.is_file() and is_storage(p) and p.name[0] != "."),  # a Mac's
                       key=_split_index)  # "._NAME" beside NAME is its metadata
    if not files:
        raise ValueError(f"bag {folder} holds no storage files ({', '.join(STORAGE_SUFFIXES)})")
    if twice := one_file_twice(files):
        raise ValueError(f"bag {folder}: its files {twice[0].name} and {twice[1].name} are the same file (one a link "
                         f"to the other, or listed twice): its messages would be read twice")
    return files


def folder_topics(folder: str | os.PathLike) -> dict[str, tuple[str, int]] | None:
    """Topic -> (message type, messages) from ``metadata.yaml``; None where it does not say."""
    counted = _metadata(Path(folder)).get("topics_with_message_count")
    if not isinstance(counted, list):
        return None
    found: dict[str, tuple[str, int]] = {}
    for entry in counted:
        meta = entry.get("topic_metadata") if isinstance(entry, dict) else None
        if not (isinstance(meta, dict) and isinstance(meta.get("name"), str)):
            return None
        n = entry.get("message_count")
        found[meta["name"]] = str(meta.get("type", "")), n if isinstance(n, int) else 0
    return found
