"""A replay's fingerprint: what must be unchanged for its partial output to be continued (the inputs' sizes and
times, the fusing and encoding settings), and whether its inputs changed while they were read or since."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from streamfuse.atomic_write import final_path
from streamfuse.capture.bag_folder import is_bag_folder
from streamfuse.capture.image_folder import frame_files
from streamfuse.capture.mcap_source import recording_files
from streamfuse.file_names import local_name
from streamfuse.replay.inputs import Input

__all__ = ["fingerprint", "changed_while_read", "changed_since", "inputs_read", "cut_gone"]


def _input_stat(path: str) -> list[Any]:
    """An input's size and modification time (ns): a split recording's over its parts, a bag folder's over its
    metadata and storage files; a folder of frames' over the image files it lists as frames, with their count and a
    digest of their names, sizes and times.

    Raises:
        OSError: the input is gone. ValueError: a folder lists a file that cannot be looked at (one line).
    """
    if Path(path).is_file() or is_bag_folder(path):  # a split recording's parts, all (given as its first)
        bag = [Path(path) / "metadata.yaml"] if Path(path).is_dir() else []
        files = [os.stat(part) for part in (*bag, *recording_files(path))]
        return [sum(f.st_size for f in files), max(f.st_mtime_ns for f in files)]
    # a folder of frames: the files it lists, not its own time, which a file written beside them moves (a file
    # manager's .DS_Store or .directory, a thumbnail cache), nor hidden or non-image files, which no replay reads
    listed = sorted((p.name, p.stat()) for p in frame_files(Path(path), "input folder"))
    digest = hashlib.sha256("".join(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n" for name, st in listed).encode())
    return [sum(st.st_size for _, st in listed), max((st.st_mtime_ns for _, st in listed), default=0), len(listed),
            digest.hexdigest()]


def fingerprint(cfg: Any, ir: Input, vis: Input) -> dict[str, Any]:
    """What must be unchanged for a partial output to be continued: inputs (size, mtime) and fusing settings."""
    conf = cfg.to_dict()
    fusing = {k: conf[k] for k in ("sync", "stabilize", "align", "fuse", "hclfuse", "engine", "baseline", "post")}
    # absolute: a resume from another folder, or naming the inputs otherwise, is still of the same files
    return {"ir": [os.path.abspath(ir.cfg.path), *_input_stat(ir.cfg.path)],
            "vis": [os.path.abspath(vis.cfg.path), *_input_stat(vis.cfg.path)],
            "ir_resize": ir.cfg.resize, **fusing, "codec": [cfg.replay.codec, cfg.replay.crf, cfg.replay.preset],
            "pacing": cfg.replay.pacing}


def changed_while_read(prints: dict[str, Any]) -> str:
    """Why a run that took its inputs' ``prints`` (its fingerprint) cannot end complete: an input written over or
    replaced since, whose frames may mix two files'; '' when none was."""
    for key in ("ir", "vis"):
        path, *was = prints[key]
        try:
            now = _input_stat(path)
        except OSError:  # deleted: the frames read are the file's
            continue
        except ValueError as exc:  # a folder that lists a file it did not, and one that cannot be read
            now = [f"now {exc}"]
        if now != was:
            return (f"{key} input {path} changed while it was read ({_change(was, now)}): its frames may mix two "
                    f"files; replay it again once it is written whole")
    return ""


def _change(was: list[Any], now: list[Any]) -> str:
    """How an input's stat (see :func:`_input_stat`) changed, in a few words."""
    if isinstance(now[0], str):
        return now[0]
    if len(was) == 4:  # a folder
        if was[0] == now[0] and was[2] == now[2]:
            return f"{was[2]} image files of {was[0]} bytes then and now, but one written since"
        return f"{was[2]} image files of {was[0]} bytes then, {now[2]} of {now[0]} now"
    return f"{was[0]} bytes then, {now[0]} now" if was[0] != now[0] else f"{was[0]} bytes, written since"


def changed_since(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The entries of fingerprint ``now`` (as a sidecar holds it) that the interrupted run's ``saved`` gives otherwise;
    an input's entry as an earlier release wrote it, or the cut recording ``recover`` finished, is taken for ``now``'s
    where it still holds."""
    saved.setdefault("pacing", "fast")  # a sidecar written before its pacing was kept
    for key in ("ir", "vis"):
        if _legacy_folder(saved.get(key), now[key]) or _recovered(saved.get(key), now[key]):
            saved[key] = now[key]
    return [k for k in now if _compared(k, saved.get(k)) != _compared(k, now[k])]


def inputs_read(changed: list[str], saved: dict[str, Any]) -> str:
    """What the interrupted run read of the changed inputs among ``changed`` (another file, or one written since),
    as ``" (it read ir PATH: SIZE bytes, modified TIME)"``; '' when no input changed."""
    read = [f"{key} {was[0]}: {was[1]} bytes, modified "
            f"{datetime.fromtimestamp(was[2] / 1e9, timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
            for key in changed if key in ("ir", "vis") and isinstance(was := saved.get(key), list) and len(was) >= 3
            and isinstance(was[2], int)]
    return f" (it read {'; '.join(read)})" if read else ""


def _legacy_folder(saved: Any, now: list) -> bool:
    """Whether ``saved`` is a folder input's entry as a sidecar of an earlier release holds it, of the folder ``now``
    names, unchanged since: size 0 and the folder's own time; or the size of its files (hidden ones aside) and the
    newest time of those and the folder, read as unchanged where they are as large and none is newer (the folder's own
    time moves when a file is written beside them, a file manager's hidden file)."""
    if not (isinstance(saved, list) and len(saved) == 3 and isinstance(saved[0], str)
            and all(isinstance(v, int) for v in saved[1:])
            and os.path.realpath(local_name(saved[0])) == os.path.realpath(now[0]) and Path(now[0]).is_dir()):
        return False
    if saved[1] == 0:
        return saved[2] == Path(now[0]).stat().st_mtime_ns
    files = [entry.stat() for entry in os.scandir(now[0]) if os.path.isfile(entry) and entry.name[0] != "."]
    return sum(f.st_size for f in files) == saved[1] and max((f.st_mtime_ns for f in files), default=0) <= saved[2]


def _recovered(saved: Any, now: list) -> bool:
    """Whether ``saved`` is the entry of a cut recording (``.NAME.mcap.partial``), there unchanged since, of which
    ``now`` names the recording ``recover`` made beside it (``NAME.mcap``): the same frames, up to the cut the
    interrupted run stopped at."""
    if (cut := _cut_of(saved, now)) is None or len(saved) != 3:
        return False
    try:
        st = os.stat(cut)
    except OSError:  # gone: what it held cannot be told
        return False
    return [st.st_size, st.st_mtime_ns] == saved[1:]


def cut_gone(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """Why the recording recovered of the cut one the interrupted run read cannot stand for it (that one is gone or
    changed since, and with it what vouched for its frames), ending in ``"; "``; '' for other inputs."""
    for key in ("ir", "vis"):
        if _cut_of(saved.get(key), now[key]) is not None:
            return (f"{now[key][0]} was recovered of the cut recording it read, which is not there as it was, so "
                    f"nothing says it holds the same frames; ")
    return ""


def _cut_of(saved: Any, now: list) -> Path | None:
    """The cut recording ``saved`` (an input's entry) names, where ``now`` names the one ``recover`` made of it."""
    if not (isinstance(saved, list) and saved and isinstance(saved[0], str)):
        return None
    cut = Path(local_name(saved[0]))
    final = final_path(cut)
    if final is None or final.suffix.lower() != ".mcap" or os.path.realpath(final) != os.path.realpath(now[0]):
        return None
    return cut


def _compared(key: str, value: Any) -> Any:
    """A fingerprint entry as resume compares it: ``engine.threads`` left out, as a batch worker sets it to its own
    CPUs (a pair resumed on a worker of another size goes on; the count changes only the float rounding); an input by
    the file its path names (a sidecar of an earlier release holds it as it was given)."""
    if key in ("ir", "vis") and isinstance(value, list) and value and isinstance(value[0], str):
        return [os.path.realpath(local_name(value[0])), *value[1:]]
    return {k: v for k, v in value.items() if k != "threads"} if key == "engine" and isinstance(value, dict) else value
