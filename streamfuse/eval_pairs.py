"""The evaluation's inputs: IR/visible pairs matched by file stem, read as 8-bit luma, and checked whole before any
is scored.

Pairs are matched by file stem (``ir/00004N.png`` with ``vi/00004N.png``, ``ir/190001.jpg`` with ``vi/190001.jpg``).
Images may have any size; visible images may be colour (BGR, Y taken) or grey; 3-channel IR (LLVIP) becomes grey,
with a warning where its channels differ (a false-colour palette).
16-bit images are brought to 8 bits by :mod:`streamfuse.bitdepth` (each IR image by its own range).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from streamfuse import metrics
from streamfuse.bitdepth import To8Bit, read_8bit
from streamfuse.capture.image_folder import frame_files
from streamfuse.capture.palette import first_note, grey_first, warn_noted_stills
from streamfuse.errors import not_found
from streamfuse.postprocess import vis_luma

__all__ = ["find_pairs", "image_files", "read_grey", "read_pair", "check_size", "check_readable"]

log = logging.getLogger(__name__)
_GREY_FIRST = grey_first("evaluate")


def read_grey(path: Path, depth: To8Bit | None = None, notes: list[tuple[Path, str]] | None = None,
              fix: str = _GREY_FIRST) -> np.ndarray:
    """Read an 8- or 16-bit image as ``(H, W)`` uint8 luma: grey as is, BGR via BT.601 Y (``vis_luma``; an
    alpha channel is dropped as the file is read).

    ``depth`` brings 16 bits to 8 (:mod:`streamfuse.bitdepth`): ``To8Bit(ir=True)`` for an IR still, one instance
    for all the frames of an IR sequence; a visible or fused image when None. ``ValueError`` (one line) otherwise.
    ``notes``: given for an IR image, the line live capture warns with on colour IR is added to it, with the file;
    ``fix`` ends that line (what the user can do).
    """
    img = read_8bit(path, depth or To8Bit(ir=False))
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if notes is not None and (note := first_note(img, "", fix)):
        notes.append((path, note))
    return vis_luma(np.ascontiguousarray(img))


def image_files(folder: Path, what: str, wanted: set[str] | None = None) -> dict[str, Path]:
    """Images in ``folder`` by stem; ``what`` names it in the error when it is missing or holds none of ``wanted``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {'is a file' if folder.exists() else not_found(folder)}: {folder}")
    files: dict[str, Path] = {}
    for p in sorted(frame_files(folder, f"{what} folder")):
        if files.setdefault(p.stem, p) != p:
            log.warning("%s: %s and %s share a name; %s is used", folder, files[p.stem].name, p.name,
                        files[p.stem].name)
    if wanted and not wanted & files.keys():
        raise FileNotFoundError(f"{what}: none of the {len(wanted)} pairs has its image in {folder} (named as its IR)")
    return files


def find_pairs(dir_ir: str | Path, dir_vis: str | Path, limit: int = 0) -> list[tuple[str, Path, Path]]:
    """``(stem, ir_path, vis_path)`` for every stem present in both folders, sorted; the first ``limit`` if > 0.
    ``ValueError`` (one line) for one folder given twice: each image would be scored against itself."""
    ir, vis = image_files(Path(dir_ir), "IR"), image_files(Path(dir_vis), "visible")
    if Path(dir_ir).resolve() == Path(dir_vis).resolve():
        raise ValueError(f"the IR and visible folders are one folder ({dir_ir}, {dir_vis}): give each its own")
    stems = sorted(ir.keys() & vis.keys())
    if not stems:
        raise ValueError(f"no IR/visible pairs with matching file names in {dir_ir} and {dir_vis}")
    if len(stems) < max(len(ir), len(vis)):
        alone = sorted((ir.keys() | vis.keys()) - set(stems))
        log.warning("%d IR images in %s and %d visible images in %s have no partner (first: %s)",
                    len(ir) - len(stems), dir_ir, len(vis) - len(stems), dir_vis, alone[0])
    return [(s, ir[s], vis[s]) for s in stems[:limit or None]]


def read_pair(stem: str, ir_path: Path, vis_path: Path,
              notes: list[tuple[Path, str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A pair's ``(IR, visible Y)``; ``ValueError`` naming the pair and both sizes when they differ; ``notes``: see
    :func:`read_grey`."""
    ir, vis_y = read_grey(ir_path, To8Bit(ir=True), notes), read_grey(vis_path)
    (h, w), (vh, vw) = ir.shape, vis_y.shape
    if ir.shape != vis_y.shape or min(h, w) < metrics.MIN_SIDE:
        why = "differ in size (register them first)" if ir.shape != vis_y.shape else \
            f"are smaller than the {metrics.MIN_SIDE} pixels a side the metrics need"
        raise ValueError(f"{stem}: IR {ir_path} ({w}x{h}) and visible {vis_path} ({vw}x{vh}) {why}")
    return ir, vis_y


def check_size(name: str, stem: str, fused: np.ndarray, ir: np.ndarray) -> None:
    """``ValueError`` (one line) when method ``name``'s output for pair ``stem`` is not the size of its sources."""
    if fused.shape != ir.shape:
        raise ValueError(f"{name}/{stem}: fused size {fused.shape} differs from the sources' {ir.shape}")


def check_readable(pairs: list[tuple[str, Path, Path]], fused_files: dict[str, dict[str, Path]]) -> None:
    """Read every pair and every method's fused image once before any is scored: one found damaged, or of another
    size, at its turn would discard the work of every pair before it. ``ValueError`` (one line) for the first."""
    log.info("reading the %d pairs%s before scoring them", len(pairs), " and their fused images" * bool(fused_files))
    notes: list[tuple[Path, str]] = []
    for stem, ir_path, vis_path in pairs:
        ir, _ = read_pair(stem, ir_path, vis_path, notes)
        for name, files in fused_files.items():
            if stem in files:
                check_size(name, stem, read_grey(files[stem]), ir)
    warn_noted_stills(log, notes, len(pairs))
