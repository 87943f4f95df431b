"""Bit depth of the images the project reads: one rule that brings every image file and camera frame to 8 bits.

8-bit images are used as they are. 16-bit images are converted by what their values mean:

- visible and fused images are display-referred: they keep their top 8 bits (``v >> 8``), as OpenCV's 8-bit read
  gives them;
- IR images hold radiometric counts (a FLIR camera's, say) that fill a small part of 0..65535, where the top 8 bits
  are near black: they are stretched linearly from a range, low -> 0 and high -> 255, values outside it clipped. A
  frame's range leaves out the lowest and the highest 0.1% of its pixels (one dead or hot pixel would otherwise take
  the whole scale and flatten the rest); it is the min and max below 1000 pixels, or where all the pixels but
  those are one count.

A sequence (a folder of frames, a video, a camera; a still is a sequence of one frame) takes the range of its first
frame that is not flat (a flat frame before it is black) and holds it while its frames fit it, so that the level
does not flicker from frame to frame. A later frame takes its own range, which the sequence then holds:

- at once, where more than 1% of its pixels lie outside the held range (at most 0.2% do in the frame that set it)
  and its range is at least half as wide, or where its range is more than 4 times as wide as the held one (a small
  object far hotter than the scene): a narrow first range (a lens cap, a camera warming up) or a hot object entering
  the view re-scales the sequence on the first frame that shows it;
- after 30 frames in a row whose ranges are less than half as wide as the held one, inside it or not (the 30th takes
  its own): the contrast comes back once a hot object has left, but a shutter (NUC) frame or a hand passing the lens
  neither narrows the range that the next frame would overflow nor has its noise stretched over 0..255 (it is
  mapped by the held range, clipped).

A flat frame (one count) takes no range and is passed over: it neither counts in the 30 frames nor breaks their
row. Widening is at once, not eased over frames: an eased range clips the new scene for those frames (what a
detector would miss), and on video the IR level stabilizer (:mod:`streamfuse.stabilize`) eases the level step.
Narrowing waits: a range too wide costs contrast, not data.

IR temperatures stored as floats (a radiometric camera's 32-bit float TIFF, a ROS ``32FC1`` image; degrees Celsius or
kelvins alike) become counts of 1/50 degree from -273.15 (0..65535: -273.15 to 1037.55, so Celsius from absolute zero
and kelvins up to 1037 K), then take the IR rule above: 0.02 degree is finer than a thermal camera's noise (NETD
0.03-0.1 K). A pixel without a reading (NaN) takes the frame's coldest reading. Float visible images and other pixel
types (32-bit integers) are refused in one line. Evaluation, the tools and training read stills (the
temporal tool reads each clip as a sequence); the capture and replay sources read sequences.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamfuse.errors import io_reason, opencv_quiet, printable
from streamfuse.file_names import opencv_name

__all__ = ["IMAGE_SUFFIXES", "is_image_name", "To8Bit", "read_image", "read_8bit", "deep_grey"]

# image files the project reads (what OpenCV decodes among the formats of IR and visible datasets and frame dumps)
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


def is_image_name(path: Path) -> bool:
    """Whether ``path`` is named as an image every command reads: an image suffix, and not hidden (the ``._NAME`` a Mac
    writes beside each file it copies onto a FAT or exFAT drive is its metadata)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


_CLIPPED = 0.01  # more than this share of a frame's pixels outside the held range: it takes its own range at once
_WIDER = 4  # a frame's range more than this many times as wide as the held one: likewise
_NARROWER = 2  # _RELEASE frames in a row whose ranges are under 1/_NARROWER of the held one: the last takes its own
_RELEASE = 30
_PER_DEGREE = 50  # float IR temperatures: counts per degree (module docstring)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, either byte order
_MAX_PIXELS = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))  # OpenCV's limit on a decoded image


class To8Bit:
    """The images of one stream, a still or a sequence, as uint8 by the rule above (one instance per sequence).

    Args:
        ir: IR counts (16-bit stretched by the sequence's held range) rather than a visible or fused image (top 8
            bits).
    """

    def __init__(self, ir: bool) -> None:
        self.ir = ir
        self.converted = 0  # 16-bit images converted so far
        self._held: tuple[int, int] | None = None  # IR: the range held, once a frame has one
        self._lut: np.ndarray | None = None  # IR: the uint16 -> uint8 table of the held range
        self._narrow = 0  # IR: frames in a row, up to the last one, whose range is under 1/_NARROWER of the held one

    @property
    def state(self) -> tuple[tuple[int, int] | None, int]:
        """What the conversion of the next image depends on: the same images from the same state convert alike."""
        return self._held, self._narrow

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``image`` (any shape) as uint8; an 8-bit image is returned as it is.

        Raises:
            ValueError: one line, for pixels that are neither 8- nor 16-bit (nor float, in an IR image).
        """
        if image.dtype == np.uint8:
            return image
        if self.ir and image.dtype in (np.float32, np.float64):
            image = _temperature_counts(image)
        if image.dtype != np.uint16:
            raise ValueError(f"{image.dtype} pixels (8- and 16-bit images are read, and float IR temperatures: save "
                             "it as an 8- or 16-bit PNG or TIFF)")
        self.converted += 1
        if not self.ir:
            return (image >> 8).astype(np.uint8)  # a shift: a table lookup takes 8x as long (live frames)
        new = self._new_range(image[..., :3] if image.ndim == 3 else image)  # an alpha channel holds no counts
        if new is not None:
            self._held = lo, hi = new
            self._lut = np.clip(np.rint((np.arange(65536) - lo) * (255 / (hi - lo))), 0, 255).astype(np.uint8)
        if self._lut is None:
            return np.zeros(image.shape, np.uint8)  # no range to take yet
        return np.take(self._lut, image)  # 2x as fast as self._lut[image] (live frames)

    def _new_range(self, counts: np.ndarray) -> tuple[int, int] | None:
        """The range of ``counts`` when the sequence takes it by the rule above; None to keep the held one."""
        # how many counts are <= each value: a histogram, 4x faster than np.partition on uint16
        below = np.cumsum(np.bincount(counts.ravel(), minlength=65536))
        new = _range(counts, below)
        if new[0] == new[1]:
            return None  # flat: no range to take, and the count of narrow frames stays as it is
        if self._held is None:
            return new
        lo, hi = self._held
        clipped = counts.size - below[hi] + (below[lo - 1] if lo else 0)
        narrower = _NARROWER * (new[1] - new[0]) < hi - lo
        if (clipped > _CLIPPED * counts.size and not narrower) or new[1] - new[0] > _WIDER * (hi - lo):
            self._narrow = 0
            return new  # at once: clipping loses what the frame shows
        self._narrow = self._narrow + 1 if narrower else 0
        if self._narrow < _RELEASE:
            # a shutter (NUC) frame or a hand at the lens, inside the range or not: held, never its noise stretched
            return None
        self._narrow = 0
        return new


def _temperature_counts(temps: np.ndarray) -> np.ndarray:
    """Float temperatures as uint16 counts of 1/:data:`_PER_DEGREE` degree from -273.15; NaN (no reading) and -inf as
    the frame's coldest reading, +inf (a saturated one) as its hottest."""
    finite = np.isfinite(temps)
    if not finite.all():
        coldest, hottest = (temps[finite].min(), temps[finite].max()) if finite.any() else (0.0, 0.0)
        temps = np.where(finite, temps, np.where(np.isposinf(temps), hottest, coldest))
    return np.clip(np.rint((temps + 273.15) * _PER_DEGREE), 0, 65535).astype(np.uint16)


def _range(counts: np.ndarray, below: np.ndarray) -> tuple[int, int]:
    """The range of ``counts`` without their outliers (0.1% of the pixels at each end) from their cumulative
    histogram ``below`` (65536 bins); the min and max when nothing else differs (a flat scene with a few warm pixels
    still gets a scale)."""
    k = counts.size // 1000
    lo, hi = np.searchsorted(below, (k + 1, counts.size - k))  # the k-th lowest and the k-th highest count
    if lo == hi:
        lo, hi = counts.min(), counts.max()
    return int(lo), int(hi)


def read_image(path: str | os.PathLike, flag: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """The image file at ``path`` as OpenCV decodes it with ``flag``, at its own depth (``IMREAD_ANYDEPTH``) and upright
    as its EXIF orientation says (``IMREAD_UNCHANGED`` is taken as ``IMREAD_ANYCOLOR``: no alpha channel).

    Raises:
        ValueError: one line, ``cannot read image PATH: WHY`` (the file is gone, is empty, is corrupt or not an
            image, or the OS's reason); OpenCV's own warnings stay quiet (not libjpeg's line for extraneous bytes
            before a marker in a JPEG read whole: OpenCV leaves libjpeg's messages on stderr, with no way to
            silence them).
    """
    try:
        mode = os.stat(path).st_mode  # a pipe named as an image would block the read until written to, a device
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # never end it; a folder is the OS's error below
            raise ValueError(f"cannot read image {path}: not a file (a pipe or a device?)")
        buf = np.frombuffer(Path(path).read_bytes(), np.uint8)
    except FileNotFoundError:
        raise ValueError(f"cannot read image {path}: the file is gone") from None
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {io_reason(exc)}") from None
    if not buf.size:
        raise ValueError(f"cannot read image {path}: empty file")
    if buf[:8].tobytes() == _PNG_SIGNATURE and not _png_intact(memoryview(buf)):  # libpng would print a line too
        raise ValueError(f"cannot read image {path}: corrupt, or not an image")
    if buf[:3].tobytes() == _JPEG_SIGNATURE and (damage := _jpeg_damage(buf)):
        raise ValueError(f"cannot read image {path}: {damage}")
    # UNCHANGED leaves a JPEG's, PNG's or WebP's EXIF orientation out (a portrait photo is stored sideways; a TIFF's and
    # every other flag's image come upright): its colours as stored instead, without the alpha channel no caller uses
    flag = cv2.IMREAD_ANYCOLOR if flag == cv2.IMREAD_UNCHANGED else flag
    with opencv_quiet():
        try:
            img = cv2.imdecode(buf, flag | cv2.IMREAD_ANYDEPTH)
        except cv2.error:
            img = None
    if img is None:
        raise ValueError(f"cannot read image {path}: corrupt, or not an image")
    if buf[:4].tobytes() in _TIFF_SIGNATURES and (pages := _tiff_pages(path)) > 1:  # imdecode gives the first alone
        raise ValueError(f"cannot read image {path}: a TIFF of {pages} pages (a sequence?), of which only the first "
                         f"would be read; save each page as an image of its own")
    return img


def _tiff_pages(path: str | os.PathLike) -> int:
    """The pages of a TIFF file as OpenCV counts them; 1 where it cannot."""
    with opencv_quiet(), opencv_name(path) as name:
        try:
            return int(cv2.imcount(name))
        except cv2.error:
            return 1


def _png_intact(data: memoryview) -> bool:
    """Whether a PNG's chunks pass their CRCs up to its end chunk: damage libpng would report on the process's stderr
    itself, before the one line of the caller."""
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        end = pos + 12 + int.from_bytes(data[pos:pos + 4], "big")  # length, type, data, CRC of type and data
        if end > len(data) or zlib.crc32(data[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return False
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos = end
    return False


def _jpeg_damage(data: np.ndarray) -> str | None:
    """libjpeg's reason where a JPEG's coded data is damaged, else None: its decoder conceals the damage (grey or
    garbled blocks, a line of its own on the process's stderr) and OpenCV returns the picture without an error. Only
    its reports of corrupt data count, and not the extraneous bytes before a marker that many cameras write after
    whole pictures; a JPEG libjpeg-turbo cannot make grey (CMYK, 12-bit) is left to OpenCV."""
    import simplejpeg  # here: a dependency, but only JPEG files need it

    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # no header libjpeg-turbo reads: OpenCV's to refuse
        return None
    if height * width > _MAX_PIXELS:  # OpenCV refuses it unread; decoded here, a damaged size took GBs and seconds
        return None
    try:
        # strict: libjpeg's warnings raise; decoded at 1/8 scale, its coded data all read (a quarter less time)
        simplejpeg.decode_jpeg(data, "GRAY", strict=True, min_height=1, min_width=1)
    except ValueError as exc:
        why = str(exc)
        if why.startswith(("Corrupt JPEG data", "Premature end of JPEG file")) and "extraneous bytes" not in why:
            return printable(why)
    return None


def read_8bit(path: str | os.PathLike, depth: Callable[[np.ndarray], np.ndarray],
              flag: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """:func:`read_image`, brought to 8 bits by ``depth`` (a :class:`To8Bit`); ``ValueError`` (one line naming the
    file) otherwise."""
    image = read_image(path, flag)
    try:
        return depth(image)
    except ValueError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def deep_grey(fmt: Any) -> bool:
    """Whether a PyAV video format is grey deeper than 8 bits: IR counts, decoded as ``gray16le`` for :class:`To8Bit`
    (``to_ndarray(format="gray")`` would keep their top 8 bits)."""
    return fmt.name.startswith("gray") and fmt.components[0].bits > 8
