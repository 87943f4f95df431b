"""ROS image messages of a recording: ``sensor_msgs/msg/Image`` and ``sensor_msgs/msg/CompressedImage``.

A robot's own ``ros2 bag`` (CDR messages) replays as our recordings do, and so does a ROS 1 bag (``sensor_msgs/Image``
in ROS 1 serialization, as ``rosbag record`` wrote it or turned into MCAP), in the encodings its cameras publish: raw
``mono8`` / ``8UC1``, ``mono16`` / ``16UC1`` (either byte order), ``bgr8`` / ``8UC3``, ``rgb8``, ``bgra8`` /
``8UC4``, ``rgba8``, ``bgr16``, ``rgb16``, ``yuv422`` (UYVY) / ``uyvy``, ``yuv422_yuy2`` / ``yuyv``, ``nv21``,
``nv24``, the four Bayer
patterns in 8 and 16 bits, ``32FC1`` (a radiometric thermal camera's temperatures), and image_transport's
``compressed`` (JPEG, PNG) and ``compressedDepth`` (PNG). Images come as ``(H, W)`` grey or ``(H, W, 3)`` BGR, uint8,
uint16 or float32 (the caller brings them to 8 bits as it does a video's, :mod:`streamfuse.bitdepth`).

>>> msg = bytes.fromhex("00010000" "05000000" "07000000" "01000000" "00000000")  # header: stamp 5.000000007 s
>>> msg += bytes.fromhex("01000000" "02000000" "06000000") + b"mono8\\0"  # 1 x 2 pixels, their encoding
>>> msg += bytes.fromhex("00" "00" "02000000" "02000000") + bytes([10, 20])  # little-endian, pad, step 2, 2 bytes
>>> decode("sensor_msgs/msg/Image", msg)
(5000000007, array([[10, 20]], dtype=uint8))
"""

from __future__ import annotations

import struct
from typing import Callable

import cv2
import numpy as np

__all__ = ["SCHEMAS", "ENCODINGS", "Unsupported", "decode", "stamp"]

# raw encoding -> (channels, dtype, conversion to BGR or grey: an OpenCV code, or None for none)
_RAW: dict[str, tuple[int, type, int | None]] = {
    "mono8": (1, np.uint8, None), "8UC1": (1, np.uint8, None),
    "mono16": (1, np.uint16, None), "16UC1": (1, np.uint16, None),
    "bgr8": (3, np.uint8, None), "8UC3": (3, np.uint8, None), "rgb8": (3, np.uint8, cv2.COLOR_RGB2BGR),
    "bgra8": (4, np.uint8, cv2.COLOR_BGRA2BGR), "8UC4": (4, np.uint8, cv2.COLOR_BGRA2BGR),
    "rgba8": (4, np.uint8, cv2.COLOR_RGBA2BGR),
    "bgr16": (3, np.uint16, None), "rgb16": (3, np.uint16, cv2.COLOR_RGB2BGR),
    "yuv422": (2, np.uint8, cv2.COLOR_YUV2BGR_UYVY), "uyvy": (2, np.uint8, cv2.COLOR_YUV2BGR_UYVY),
    "yuv422_yuy2": (2, np.uint8, cv2.COLOR_YUV2BGR_YUY2), "yuyv": (2, np.uint8, cv2.COLOR_YUV2BGR_YUY2),
    # OpenCV names a Bayer pattern by its second row's second and third pixels, ROS by its first row's first two
    "bayer_rggb8": (1, np.uint8, cv2.COLOR_BayerBG2BGR), "bayer_bggr8": (1, np.uint8, cv2.COLOR_BayerRG2BGR),
    "bayer_gbrg8": (1, np.uint8, cv2.COLOR_BayerGR2BGR), "bayer_grbg8": (1, np.uint8, cv2.COLOR_BayerGB2BGR),
    "bayer_rggb16": (1, np.uint16, cv2.COLOR_BayerBG2BGR), "bayer_bggr16": (1, np.uint16, cv2.COLOR_BayerRG2BGR),
    "bayer_gbrg16": (1, np.uint16, cv2.COLOR_BayerGR2BGR), "bayer_grbg16": (1, np.uint16, cv2.COLOR_BayerGB2BGR),
    "32FC1": (1, np.float32, None),  # a radiometric thermal camera's temperatures
}
# semi-planar YUV (a Y plane, then one of interleaved chroma), as V4L2 lays it out: nv21
# (4:2:0, V before U), nv24 (4:4:4, U before V)
_SEMIPLANAR = ("nv21", "nv24")
ENCODINGS = (*_RAW, *_SEMIPLANAR)
_PNG = b"\x89PNG\r\n\x1a\n"


class Unsupported(ValueError):
    """A message that is well formed but not an image this module reads (another schema, another encoding)."""


class _Fields:
    """Reads the fields of one message in order: CDR (ROS 2: a 4-byte encapsulation header, each field aligned to its
    size from there, strings ending in a NUL) or ROS 1 serialization (little-endian, packed, strings without one)."""

    def __init__(self, data: bytes, encoding: str) -> None:
        if encoding == "ros1":
            self.data, self.pos, self.order, self.ros1 = data, 0, "<", True
            return
        if encoding != "cdr":
            raise Unsupported(f"messages encoded as {encoding!r} are not ROS messages (cdr, ros1)")
        if len(data) < 4 or data[0] != 0 or data[1] not in (0, 1):  # 0x0000 big-endian, 0x0001 little-endian CDR
            raise ValueError(f"not a plain CDR message (representation {data[:2].hex()})")
        self.data, self.pos, self.order, self.ros1 = data, 4, "<" if data[1] == 1 else ">", False

    def take(self, fmt: str) -> tuple:
        if not self.ros1:
            self.pos += -(self.pos - 4) % struct.calcsize(fmt[0])
        vals = struct.unpack_from(self.order + fmt, self.data, self.pos)
        self.pos += struct.calcsize(self.order + fmt)
        return vals

    def string(self) -> str:
        (n,) = self.take("I")
        self.pos += n
        return bytes(self.data[self.pos - n:self.pos - (not self.ros1)]).decode("utf-8", "replace")

    def stamp(self) -> int:
        """The std_msgs/Header: its stamp in ns (ROS 1's sequence number and the frame id are skipped)."""
        sec, nanosec = self.take("III")[1:] if self.ros1 else self.take("iI")
        self.string()
        return sec * 1_000_000_000 + nanosec

    def octets(self) -> memoryview:
        (n,) = self.take("I")
        if self.pos + n > len(self.data):
            raise ValueError(f"its data holds {len(self.data) - self.pos} bytes, not the {n} it says")
        self.pos += n
        return memoryview(self.data)[self.pos - n:self.pos]


def pixels(height: int, width: int, encoding: str, big: bool, step: int, data: memoryview | bytes) -> np.ndarray:
    """A raw image's pixels (rows ``step`` bytes apart) as grey or BGR, by its ``encoding`` (one of
    :data:`ENCODINGS`)."""
    if encoding in ENCODINGS and not (height and width):  # no colour conversion takes it: the caller names it
        return np.zeros((height, width), np.uint8)
    if encoding in _SEMIPLANAR:
        return _semiplanar(height, width, encoding, step, data)
    if encoding not in _RAW:
        raise Unsupported(f"image encoding {encoding!r} is not supported; supported: {', '.join(ENCODINGS)}")
    channels, dtype, code = _RAW[encoding]
    if channels == 2 and width % 2:  # 4:2:2, each two pixels sharing their chroma
        raise ValueError(f"a {width}x{height} {encoding} image needs an even width")
    row = width * channels * np.dtype(dtype).itemsize
    if step < row or len(data) < step * (height - 1) + row:
        raise ValueError(f"a {width}x{height} {encoding} image needs rows of {row} bytes; it has step {step} and "
                         f"{len(data)} bytes")
    rows = np.lib.stride_tricks.as_strided(np.frombuffer(data, np.uint8), (height, row), (step, 1))
    img = rows.copy().view(np.dtype(dtype).newbyteorder(">" if big else "<")).astype(dtype, copy=False)
    img = img.reshape((height, width, channels) if channels > 1 else (height, width))
    return img if code is None else cv2.cvtColor(img, code)


def _semiplanar(height: int, width: int, encoding: str, step: int, data: memoryview | bytes) -> np.ndarray:
    """nv21 / nv24 as BGR: the Y plane's rows ``step`` bytes apart, then the chroma plane's (nv21: ``height / 2`` rows
    of ``step`` bytes; nv24: ``height`` rows of ``2 step``). nv24's chroma is averaged over 2x2 pixels into the 4:2:0
    form OpenCV converts (the fusion keeps the visible image's colour at that resolution)."""
    full = encoding == "nv24"
    rows, chroma_step, chroma_row = (height, 2 * step, 2 * width) if full else (height // 2, step, width)
    need = step * height + chroma_step * (rows - 1) + chroma_row
    if height % 2 or width % 2 or step < width or len(data) < need:
        raise ValueError(f"a {width}x{height} {encoding} image needs an even size, rows of at least {width} bytes and "
                         f"{need} bytes; it has step {step} and {len(data)} bytes")
    buf = np.frombuffer(data, np.uint8)
    y = np.lib.stride_tricks.as_strided(buf, (height, width), (step, 1))
    uv = np.lib.stride_tricks.as_strided(buf[step * height:], (rows, chroma_row), (chroma_step, 1))
    if full:
        uv = uv.reshape(height // 2, 2, width // 2, 2, 2).mean(axis=(1, 3)).round().astype(np.uint8)
    return cv2.cvtColor(np.vstack([y, uv.reshape(height // 2, width)]),
                        cv2.COLOR_YUV2BGR_NV12 if full else cv2.COLOR_YUV2BGR_NV21)


def decompressed(form: str, data: bytes) -> np.ndarray:
    """A compressed image's pixels, ``form`` as image_transport (or Foxglove) names it."""
    if "compressedDepth" in form:  # a 12-byte header (format, depth quantisation) before the PNG
        data = data[data.find(_PNG):] if _PNG in data else b""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise ValueError(f"its {form!r} data is not an image OpenCV decodes")
    return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR) if img.ndim == 3 and img.shape[2] == 4 else img


def _image(msg: _Fields) -> np.ndarray:
    height, width = msg.take("II")
    encoding = msg.string()
    (big,) = msg.take("B")
    (step,) = msg.take("I")
    return pixels(height, width, encoding, bool(big), step, msg.octets())


def _compressed(msg: _Fields) -> np.ndarray:
    form = msg.string()
    return decompressed(form, bytes(msg.octets()))


def _foxglove_image(msg: _Fields) -> np.ndarray:
    """foxglove_msgs/msg/RawImage: width before height, no byte order flag (little-endian)."""
    width, height = msg.take("II")
    encoding = msg.string()
    (step,) = msg.take("I")
    return pixels(height, width, encoding, False, step, msg.octets())


def _foxglove_compressed(msg: _Fields) -> np.ndarray:
    """foxglove_msgs/msg/CompressedImage: its data before its format."""
    data = bytes(msg.octets())
    return decompressed(msg.string(), data)


SCHEMAS: dict[str, Callable[[_Fields], np.ndarray]] = {  # ROS 2 names, ROS 1's, and Foxglove's ROS 2 messages
    "sensor_msgs/msg/Image": _image, "sensor_msgs/msg/CompressedImage": _compressed,
    "sensor_msgs/Image": _image, "sensor_msgs/CompressedImage": _compressed,
    "foxglove_msgs/msg/RawImage": _foxglove_image, "foxglove_msgs/msg/CompressedImage": _foxglove_compressed}


def decode(schema: str, data: bytes, encoding: str = "cdr") -> tuple[int, np.ndarray]:
    """The header's stamp (ns) and the image of one message of ``schema`` (one of :data:`SCHEMAS`), ``cdr`` (ROS 2)
    or ``ros1`` encoded.

    Raises:
        Unsupported: another schema or message encoding, an image encoding not supported (one line).
        ValueError: a message cut short or inconsistent (one line).
    """
    return _read(schema, data, encoding, image=True)


def stamp(schema: str, data: bytes, encoding: str = "cdr") -> int:
    """The header's stamp (ns) of one message of ``schema``, its image left as it is (:func:`decode` raises alike)."""
    return _read(schema, data, encoding, image=False)[0]


def _read(schema: str, data: bytes, encoding: str, *, image: bool) -> tuple[int, np.ndarray | None]:
    if schema not in SCHEMAS:
        what = f"messages of {schema}" if schema else "messages without a schema"
        raise Unsupported(f"{what} are not images; image schemas: {', '.join(SCHEMAS)}")
    try:
        msg = _Fields(data, encoding)
        stamp_ns = msg.stamp()
        return stamp_ns, SCHEMAS[schema](msg) if image else None
    except struct.error:
        raise ValueError(f"a {schema} message cut short ({len(data)} bytes)") from None
