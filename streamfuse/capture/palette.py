"""False-colour thermal frames back to temperature order: the inverse of a named palette (``ir.palette``).

A thermal camera set to a false-colour palette, or a video exported from its viewer, encodes temperature as a colour.
Grey by luminance does not keep that order (jet's hottest red is darker than its middle cyan and yellow), so the
fusion would take warm bodies for cold ones. Each colour is mapped back to its palette index, 0 coldest .. 255
hottest, by the nearest of the palette's 256 colours. Palettes: ``black_hot`` (grey, hot = dark) and OpenCV's colour
maps that run from one end to the other (``cv2.applyColorMap``, which many thermal viewers use); the cyclic ones
(``hsv``, ``twilight``) give no order and are not offered. A camera's own palette (``ironbow``, ``lava``, ...) is
named by a palette file: a ``.csv`` or ``.txt`` of ``R G B`` rows, coldest first, or an image of its colour bar.

The nearest colour is kept in a table over colours quantised to 7 bits a channel (4 MiB a palette and process),
filled with the colours the frames bring as they first come, so a frame costs a table lookup; a palette's own colours
come back within two levels (one for most palettes).

>>> import cv2, numpy as np
>>> ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
>>> back = to_temperature(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), "jet")
>>> int(np.abs(back.astype(int) - ramp).max()) <= 1
True
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from streamfuse.file_names import opencv_name
from streamfuse.postprocess import vis_luma

__all__ = ["PALETTES", "check_palette", "to_temperature", "ir_grey", "check_depth", "first_note", "mismatch",
           "is_colour", "grey_first", "warn_noted_stills"]

_COLORMAPS = {name.removeprefix("COLORMAP_").lower(): getattr(cv2, name) for name in dir(cv2)
              if name.startswith("COLORMAP_") and name not in ("COLORMAP_HSV", "COLORMAP_TWILIGHT",
                                                                "COLORMAP_TWILIGHT_SHIFTED")}
PALETTES = ("black_hot", *sorted(_COLORMAPS))
_MISMATCH = 12.0  # median colour distance above which frames are not in the palette (its own: 1-2, compressed)
_GREY_TOLERANCE = 6.0  # mean channel difference a grey frame stored as colour, or a slightly tinted one, stays within
_BITS = 7  # table resolution a channel: 128^3 cells; a palette's neighbouring colours differ by 1-4 levels
_SHIFT = 8 - _BITS
_ALIKE, _APART = 6.0, 16  # a palette whose colours come back within 6 levels 16 indices on gives no order
_TEXT = (".csv", ".txt")
_FILE = "a palette file (.csv or .txt of R G B rows, coldest first, or an image of the colour bar)"


def check_palette(name: str) -> None:
    """Raise ValueError (one line) where ``name`` is neither a palette nor a palette file that gives one (see
    :func:`_from_file`)."""
    if name not in ("", *PALETTES):
        _colours(name)


@lru_cache(maxsize=4)
def _colours(name: str) -> np.ndarray:
    """The palette's 256 BGR colours, index 0 coldest."""
    if name in _COLORMAPS:
        return cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(1, 256), _COLORMAPS[name])[0]
    return _from_file(name)


def _from_file(path: str) -> np.ndarray:
    """A palette file's colours resampled to 256, coldest first: ``R G B`` rows (0-255, or 0-1 as matplotlib and
    ParaView write them; commas or spaces, ``#`` comments and a header line allowed), or an image of the colour bar,
    coldest at the left of a wide bar or at the bottom of a tall one (the median across its middle half, so thin
    borders and ticks drop out). Raises ValueError (one line) for a file that gives no temperature order."""
    try:
        is_file = Path(path).is_file()
    except OSError as exc:  # a name too long for the file system
        raise ValueError(f"neither a palette nor a file this system can open ({exc.strerror})") from None
    if not is_file:
        raise ValueError(f"neither a palette ({' | '.join(PALETTES)}) nor a file: {_FILE}")
    ramp = _rows(path)[:, ::-1] if Path(path).suffix.lower() in _TEXT else _bar(path)
    at = np.linspace(0, len(ramp) - 1, 256)
    colours = np.stack([np.interp(at, np.arange(len(ramp)), ramp[:, c]) for c in range(3)], axis=1)
    colours = np.round(colours).astype(np.uint8)
    near = np.linalg.norm(colours[:, None].astype(np.float32) - colours[None], axis=-1) < _ALIKE
    first, again = np.nonzero(np.triu(near, k=_APART))
    if len(first):
        raise ValueError(f"palette file {path}: its colours at {first[0]} and {again[0]} (of 0..255, coldest first) "
                         f"are alike, so it gives no temperature order (a cyclic palette, or a bar with a border?)")
    return colours


def _rows(path: str) -> np.ndarray:
    """``(n, 3)`` RGB, 0-255, of a text palette file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"palette file {path}: cannot read it as text ({exc})") from None
    rows, header = [], 0
    for number, line in enumerate(lines, 1):
        words = line.split("#")[0].replace(",", " ").replace(";", " ").split()
        try:
            values = [float(word) for word in words]
        except ValueError:
            if not rows and not header:  # one header line ("r,g,b")
                header = number
                continue
            values = []
        if words and (len(values) != 3 or not all(math.isfinite(v) and 0 <= v <= 255 for v in values)):
            raise ValueError(f"palette file {path}: line {number} is not three numbers R G B of 0..255")
        rows.extend([values] if words else [])
    if len(rows) < 2:
        after = f" after its header (line {header})" if header else ""
        raise ValueError(f"palette file {path}: {len(rows)} R G B rows{after}; a palette needs two or more, coldest "
                         "first")
    rgb = np.array(rows)
    return rgb * 255 if rgb.max() <= 1 else rgb


def _bar(path: str) -> np.ndarray:
    """``(n, 3)`` BGR along an image of a palette's colour bar, coldest first."""
    with opencv_name(path) as name:
        image = cv2.imread(name, cv2.IMREAD_COLOR)
    if image is None or max(image.shape[:2]) < 2:
        raise ValueError(f"palette file {path}: not an image OpenCV reads, nor a {' or '.join(_TEXT)} of R G B rows")
    along = image[::-1] if image.shape[0] > image.shape[1] else image.transpose(1, 0, 2)
    across = along.shape[1]
    return np.median(along[:, across // 4: across - across // 4 or across].astype(np.float32), axis=1)


@lru_cache(maxsize=4)
def _table(name: str) -> np.ndarray:
    """Nearest palette index of every quantised colour, flat over ``(b, g, r)`` cells; -1 until a frame has one."""
    return np.full(1 << 3 * _BITS, -1, np.int16)


def _nearest(cells: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Index of the colour nearest each cell's centre."""
    mask = (1 << _BITS) - 1
    centres = np.stack([cells >> 2 * _BITS, (cells >> _BITS) & mask, cells & mask], axis=1) * float(1 << _SHIFT)
    centres += ((1 << _SHIFT) - 1) / 2
    norms = (colours ** 2).sum(axis=1)
    out = np.empty(len(cells), np.int16)
    for start in range(0, len(cells), 1 << 14):  # |c - p|^2 less |c|^2, which the argmin does not need
        part = centres[start:start + (1 << 14)].astype(np.float32)
        out[start:start + len(part)] = np.argmin(norms - 2 * part @ colours.T, axis=1)
    return out


def _lookup(name: str, cells: np.ndarray) -> np.ndarray:
    """Palette indices of ``cells``, filling the table with the cells it meets for the first time (the colours of a
    palette's frames are few: after the first frames a lookup is all a frame costs)."""
    table = _table(name)
    found = table[cells]
    missing = found < 0
    if missing.any():
        new = np.unique(cells[missing])
        table[new] = _nearest(new, _colours(name).astype(np.float32))
        found = table[cells]
    return found.astype(np.uint8)


def _cells(bgr: np.ndarray) -> np.ndarray:
    q = bgr >> _SHIFT
    return (q[..., 0].astype(np.int32) << 2 * _BITS) | (q[..., 1].astype(np.int32) << _BITS) | q[..., 2]


def is_colour(bgr: np.ndarray) -> bool:
    """Whether a 3-channel frame's channels differ by more than ``_GREY_TOLERANCE`` grey levels on average (a grey frame
    stored as colour, or a slightly tinted one, does not)."""
    b, g, r = (bgr[::4, ::4, i].astype(np.int16) for i in range(3))
    return float(np.mean(np.abs(b - g) + np.abs(g - r))) / 2 > _GREY_TOLERANCE


def to_temperature(image: np.ndarray, palette: str) -> np.ndarray:
    """``(H, W)`` uint8 in temperature order, 255 hottest, of a uint8 frame in ``palette``: ``black_hot`` takes grey
    or colour frames, a colour map ``(H, W, 3)`` BGR ones.

    Raises:
        ValueError: a colour map named for a grey frame (one line: the frame is not colour-mapped).
    """
    if palette == "black_hot":
        return 255 - vis_luma(image)
    if image.ndim != 3:
        raise ValueError(f"frames are grey, not in the {palette} palette (ir.palette); black_hot inverts grey frames")
    return _lookup(palette, _cells(image))


def mismatch(image: np.ndarray, palette: str) -> float:
    """Median distance, in BGR levels, from a colour frame's pixels to their nearest ``palette`` colour: a few for a
    frame in that palette (compression moves colours a little), tens for another palette's."""
    sample = image[::4, ::4]
    nearest = _colours(palette)[_lookup(palette, _cells(sample))]
    return float(np.median(np.linalg.norm(sample.astype(np.float32) - nearest, axis=-1)))


def check_depth(image: np.ndarray, palette: str) -> None:
    """Raise ValueError (one line) where a palette is named for frames deeper than 8 bits: counts or temperatures
    are already in temperature order, and no palette is more than 8 bits a channel."""
    if palette and image.dtype != np.uint8:
        raise ValueError(f"{image.dtype} frames are counts or temperatures, already in temperature order, not the "
                         f"colours of a palette: remove ir.palette ({palette})")


def ir_grey(image: np.ndarray, palette: str) -> np.ndarray:
    """An 8-bit IR frame as ``(H, W)`` grey in temperature order: by ``palette`` where one is named (see
    :func:`to_temperature`), else by luminance (a grey frame stays as it is)."""
    if palette:
        return to_temperature(image, palette)
    return vis_luma(image)  # the luma evaluate reads a colour IR still by, so a still fuses alike on every path


def first_note(image: np.ndarray, palette: str, fix: str = "name the palette in ir.palette") -> str | None:
    """One line on a thermal stream's colours, judged on its first 8-bit frame: colour frames without a palette (with
    ``fix``, what the user can do), or frames that are not in the palette named; None where they look right."""
    if not palette and image.ndim == 3 and is_colour(image):
        return f"colour frames (a false-colour palette?) are turned to grey by luminance, which does not keep " \
               f"temperature order; {fix}"
    if palette not in ("", "black_hot") and image.ndim == 3 and (far := mismatch(image, palette)) > _MISMATCH:
        return f"frames do not look like the {palette} palette (median colour distance {far:.0f}): check ir.palette"
    return None


def grey_first(command: str) -> str:
    """:func:`first_note`'s ``fix`` for a command that reads IR stills and takes no palette (evaluate, training)."""
    return f"give them in grey, in temperature order ({command} takes no palette)"


def warn_noted_stills(log: logging.Logger, notes: list[tuple[Path, str]], total: int) -> None:
    """One warning for the IR stills of a run that :func:`first_note` had a line for: the first named, the others
    counted of the ``total`` read, as live capture says it once a stream."""
    if notes:
        more = f" and {len(notes) - 1} more of the {total}" * (len(notes) > 1)
        log.warning("IR %s%s: %s", notes[0][0], more, notes[0][1])
