"""The temporal evaluation's inputs: clips of numbered IR/visible frames read in the order a folder source plays them,
checked whole (sizes, something to measure against), and another method's fused frames of a clip.

A clip is a folder with ``ir/`` and ``vi/`` frames matched by file stem (:func:`streamfuse.eval_pairs.find_pairs`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamfuse.bitdepth import To8Bit
from streamfuse.capture.image_folder import play_order
from streamfuse.eval_pairs import find_pairs, image_files, read_grey

__all__ = ["find_clips", "clip_pairs", "clip_frames", "fused_frames", "in_play_order"]


def find_clips(seq_root: str | Path) -> list[Path]:
    """The clip folders under ``seq_root`` (those with an ``ir/`` folder), sorted; ``FileNotFoundError`` (one line)
    where there are none, or no such folder."""
    root = Path(seq_root)
    clips = sorted(p for p in root.iterdir() if (p / "ir").is_dir()) if root.is_dir() else []
    if not clips:
        raise FileNotFoundError(f"no clips with ir/ and vi/ folders under {seq_root}")
    return clips


def clip_pairs(clip: Path) -> list[tuple[str, Path, Path]]:
    """A clip's ``(stem, IR, visible)`` files in play order."""
    return in_play_order(find_pairs(clip / "ir", clip / "vi"))


def fused_frames(folder: Path, name: str, stems: list[str], shape: tuple[int, int]) -> list[np.ndarray]:
    """Another method's fused Y frames of one clip, ``folder/<stem>.<ext>`` in ``stems``' order.

    Raises:
        FileNotFoundError: the folder or a frame is missing.
        ValueError: a frame is unreadable or not ``shape``.
    """
    files = image_files(folder, f"fused ({name})")
    missing = [s for s in stems if s not in files]
    if missing:
        raise FileNotFoundError(f"{folder}: no fused frame {missing[0]} ({len(missing)} of {len(stems)} missing)")
    frames = [read_grey(files[s]) for s in stems]
    for s, frame in zip(stems, frames, strict=True):
        _check_clip_size(files[s], frame, shape, "fused frame")
    return frames


def _check_clip_size(path: Path, frame: np.ndarray, shape: tuple[int, ...], what: str = "frame") -> None:
    """ValueError naming ``path`` when ``frame`` is not the clip's size, ``shape``."""
    if frame.shape != shape:
        raise ValueError(f"{path}: {what} is {frame.shape[1]}x{frame.shape[0]}, the clip's is {shape[1]}x{shape[0]}")


def in_play_order(pairs: list[tuple[str, Path, Path]]) -> list[tuple[str, Path, Path]]:
    """A clip's pairs in the order a folder source plays its IR frames (``9.png`` before ``10.png``): by name as text,
    frame 10 came between 1 and 2 where the names have no leading zeros."""
    by_ir = {ir: pair for pair in pairs for ir in [pair[1]]}
    return [by_ir[ir] for ir in play_order(by_ir)[0]]


def clip_frames(pairs: list[tuple[str, Path, Path]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """A clip's ``(IR, visible Y)`` frames in order.

    Raises:
        ValueError: a clip of one frame or of visible frames that do not change (no change to measure against) or a
            frame whose size is not the clip's first IR frame's (one line naming the frame).
    """
    if len(pairs) < 2:
        raise ValueError(f"{pairs[0][1].parent.parent}: one IR/visible frame pair; a clip needs at least two")
    ir8 = To8Bit(ir=True)  # one for the clip: 16-bit IR frames keep one scale, so the level does not jump
    frames = [(read_grey(ir, ir8), read_grey(vi)) for _, ir, vi in pairs]
    if all(np.array_equal(frames[0][1], vi) for _, vi in frames):
        raise ValueError(f"{pairs[0][2].parent}: the visible frames do not change, and the flicker ratio is the fused "
                         "frames' change relative to theirs")
    shape = frames[0][0].shape
    for (_, *paths), pair in zip(pairs, frames, strict=True):
        for path, frame in zip(paths, pair, strict=True):
            _check_clip_size(path, frame, shape)
    return frames
