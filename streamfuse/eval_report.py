"""An evaluation's files: the per-image CSV, the markdown table of means and the montage, and the check that no
output lands on an input (shared with the tools that write beside their inputs)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamfuse import metrics
from streamfuse.atomic_write import write_file
from streamfuse.file_names import name_bytes

__all__ = ["check_outputs", "markdown_table", "tile", "write_csv", "write_montage"]

TILE_HEIGHT = 240  # montage tile height in pixels (width keeps the aspect ratio)


def check_outputs(inputs: dict[str, str | Path | None], folders: dict[str, str | Path | None],
                  files: dict[str, str | Path | None] | None = None) -> None:
    """Refuse (``ValueError``, one line) an output folder that is a file or file that is a folder, one that cannot be
    written, and any that is, or lies in, an input folder (symlinks resolved): inputs are never written over.

    Each dict maps what a path is (``"IR"``, ``"save folder"``) to the path; ``None`` paths are skipped.
    """
    outputs = {what: out for what, out in {**folders, **(files or {})}.items() if out is not None}
    for what, out in outputs.items():
        real, is_folder = Path(out).resolve(), what in folders
        if real.exists() and real.is_dir() != is_folder:
            raise ValueError(f"{what} {out} exists and is not a {'folder' if is_folder else 'file'}")
        device = not is_folder and real.exists() and not real.is_file()  # /dev/null, a pipe: written as it is
        existing = real if device else next(p for p in (real if is_folder else real.parent, *real.parents)
                                            if p.exists())
        why = "a file" if existing != real and not existing.is_dir() else "not writable"
        if why == "a file" or not os.access(existing, os.W_OK):  # found now, not once the run's work is done
            raise ValueError(f"{what} {out} cannot be written: {existing} is {why}")
        for kind, folder in inputs.items():
            if folder is not None and Path(folder).resolve() in (real, *real.parents):
                raise ValueError(f"{what} {out} is or lies in the {kind} folder {folder}; write outputs elsewhere "
                                 "(inputs are never written over)")


def tile(img: np.ndarray, label: str) -> np.ndarray:
    """A grey image scaled to the montage's row height, with its label."""
    h, w = img.shape
    tile = cv2.resize(img, (max(1, round(w * TILE_HEIGHT / h)), TILE_HEIGHT), interpolation=cv2.INTER_AREA)
    tile = cv2.cvtColor(tile, cv2.COLOR_GRAY2BGR)
    # OpenCV's binding crashes the process on a lone surrogate (a name's byte that is not UTF-8) and draws any other
    # character beyond ASCII as "?": such bytes are drawn so too
    label = label.encode("utf-8", "replace").decode()
    cv2.putText(tile, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 255, 255), 1, cv2.LINE_AA)
    return tile


def write_montage(path: Path, tiles: dict[str, list[np.ndarray]]) -> None:
    """One row of tiles a pair, left-aligned on white."""
    rows = [np.hstack(row) for row in tiles.values() if row]
    width = max(r.shape[1] for r in rows)
    rows = [cv2.copyMakeBorder(r, 0, 2, 0, width - r.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255))
            for r in rows]
    write_file(path, cv2.imencode(".png", np.vstack(rows))[1].tobytes())


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The per-image rows, every metric to 6 significant digits."""
    text = io.StringIO(newline="")
    delta = ["delta_grey", "mse_ref"] if rows and "delta_grey" in rows[0] else []
    writer = csv.DictWriter(text, fieldnames=["method", "image", *metrics.METRICS, "ms", *delta])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    write_file(path, name_bytes(text.getvalue()))


def markdown_table(means: dict[str, dict[str, float]]) -> str:
    """One row per method: pairs scored, the mean of every metric and the median ms per frame (``-`` if not run), and
    the mean |F - F_ref| in grey levels when :func:`evaluate_dir` was given a reference."""
    heads = [metrics.LABELS.get(k, k) for k in metrics.METRICS]
    delta = any("delta_grey" in m for m in means.values())
    tail = " | ms/frame |" + (" delta grey |" if delta else "")
    lines = ["| method | n | " + " | ".join(heads) + tail, "|---" * (len(heads) + 3 + delta) + "|"]
    for name, m in means.items():
        ms = "-" if np.isnan(m["ms"]) else f"{m['ms']:.1f}"
        cells = f"| {name} | {m['n']} | " + " | ".join(f"{m[k]:.3f}" for k in metrics.METRICS) + f" | {ms} |"
        lines.append(cells + (f" {m['delta_grey']:.3f} |" if delta else ""))
    return "\n".join(lines)
