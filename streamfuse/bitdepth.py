"""Bit depth of the images the project reads: one rule that brings every image file and camera frame to 8 bits.

8-bit images are used as they are. 16-bit images are converted by what their values mean:

- visible and fused images are display-referred: they keep their top 8 bits (``v >> 8``), as OpenCV's 8-bit read
  gives them;
- IR images hold radiometric counts (a FLIR camera's, say) that fill a small part of 0..65535, where the top 8 bits
  are near black: they are stretched linearly from their own range, low -> 0 and high -> 255, where the range leaves
  out the lowest and the highest 0.1% of the pixels (one dead or hot pixel would otherwise take the whole scale and
  flatten the rest; below 1000 pixels it is the min and max). A sequence (a folder of frames, a video, a camera)
  keeps the range of its first frame that is not flat for all its frames, so that the level does not jump from
  frame to frame (later values outside it are clipped); a flat frame before it is black. A still is a sequence of
  one frame.

Other pixel types (float, 32-bit) are refused in one line. Evaluation, the tools and training read stills (the
temporal tool reads each clip as a sequence); the capture and replay sources read sequences.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamfuse.errors import io_reason, opencv_quiet

__all__ = ["To8Bit", "read_image", "read_8bit", "deep_grey"]


class To8Bit:
    """The images of one stream, a still or a sequence, as uint8 by the rule above (one instance per sequence).

    Args:
        ir: IR counts (16-bit stretched by the sequence's range) rather than a visible or fused image (top 8 bits).
    """

    def __init__(self, ir: bool) -> None:
        self.ir = ir
        self.converted = 0  # 16-bit images converted so far
        self._lut: np.ndarray | None = None  # IR: the uint16 -> uint8 table of the range, once a frame has one

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``image`` (any shape) as uint8; an 8-bit image is returned as it is.

        Raises:
            ValueError: one line, for pixels that are neither 8- nor 16-bit.
        """
        if image.dtype == np.uint8:
            return image
        if image.dtype != np.uint16:
            raise ValueError(f"{image.dtype} pixels (8- and 16-bit images are read: save it as an 8- or 16-bit PNG "
                             "or TIFF)")
        self.converted += 1
        if not self.ir:
            return (image >> 8).astype(np.uint8)  # a shift: a table lookup takes 8x as long (live frames)
        if self._lut is None:
            counts = image[..., :3] if image.ndim == 3 else image  # an alpha channel holds no counts
            lo, hi = _range(counts)
            if lo == hi:
                return np.zeros(image.shape, np.uint8)  # no range to take yet
            self._lut = np.clip(np.rint((np.arange(65536) - lo) * (255 / (hi - lo))), 0, 255).astype(np.uint8)
        return self._lut[image]


def _range(counts: np.ndarray) -> tuple[int, int]:
    """The range of ``counts`` without their outliers (0.1% of the pixels at each end); the min and max when nothing
    else differs (a flat scene with a few warm pixels still gets a scale)."""
    flat = counts.ravel()
    k = flat.size // 1000
    below = np.cumsum(np.bincount(flat, minlength=65536))  # a histogram: 4x faster than np.partition on uint16
    lo, hi = np.searchsorted(below, (k + 1, flat.size - k))  # the k-th lowest and the k-th highest count
    if lo == hi:
        lo, hi = flat.min(), flat.max()
    return int(lo), int(hi)


def read_image(path: str | os.PathLike, flag: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """The image file at ``path`` as OpenCV decodes it with ``flag``, at its own depth (``IMREAD_ANYDEPTH``).

    Raises:
        ValueError: one line, ``cannot read image PATH: WHY`` (the file is gone, is empty, is corrupt or not an
            image, or the OS's reason); OpenCV's own warnings stay quiet.
    """
    try:
        buf = np.frombuffer(Path(path).read_bytes(), np.uint8)
    except FileNotFoundError:
        raise ValueError(f"cannot read image {path}: the file is gone") from None
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {io_reason(exc)}") from None
    if not buf.size:
        raise ValueError(f"cannot read image {path}: empty file")
    with opencv_quiet():
        try:
            img = cv2.imdecode(buf, flag | cv2.IMREAD_ANYDEPTH)
        except cv2.error:
            img = None
    if img is None:
        raise ValueError(f"cannot read image {path}: corrupt, or not an image")
    return img


def read_8bit(path: str | os.PathLike, depth: To8Bit, flag: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """:func:`read_image`, brought to 8 bits by ``depth``; ``ValueError`` (one line naming the file) otherwise."""
    image = read_image(path, flag)
    try:
        return depth(image)
    except ValueError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def deep_grey(fmt: Any) -> bool:
    """Whether a PyAV video format is grey deeper than 8 bits: IR counts, decoded as ``gray16le`` for :class:`To8Bit`
    (``to_ndarray(format="gray")`` would keep their top 8 bits)."""
    return fmt.name.startswith("gray") and fmt.components[0].bits > 8
