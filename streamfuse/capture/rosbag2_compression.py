"""rosbag2's compression (``ros2 bag record --compression-format zstd``), undone as a bag is read.

In ``file`` mode each storage file is one zstd stream (``robot_0.db3.zstd``): it is decompressed into a temporary
folder, as ``ros2 bag play`` does, read from there and removed (sqlite reads a file, not a stream). In ``message`` mode
each message's bytes in a plain storage file are a zstd frame: told by the frame's magic number (a CDR message starts
with its representation, ``00 01`` or ``00 00``) and decompressed one by one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import zstandard

__all__ = ["decompressed", "is_compressed", "message"]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# read a kilobyte at a time: a zstd block expands up to some 32000-fold, so a hostile stream (GiBs of zeros in a
# few KiB) costs at most ~32 MiB of memory at once, not its whole plain size (1 MiB read: up to 32 GiB)
_CHUNK = 1 << 10
_LARGEST_MESSAGE = 1 << 31  # a zstd frame that does not state its size is decompressed up to this (2 GiB)


def is_compressed(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".zstd")


@contextmanager
def decompressed(path: str | os.PathLike) -> Iterator[Path]:
    """A plain copy of a ``file``-mode storage file (``NAME.zstd`` -> ``NAME``) in a temporary folder, removed on exit.

    Raises:
        ValueError: its zstd stream is damaged or cut short.
        OSError: it cannot be read, or the copy cannot be written (a full disk).
    """
    with tempfile.TemporaryDirectory(prefix="streamfuse-bag-") as folder:
        plain = Path(folder) / Path(path).name[:-len(".zstd")]
        with open(path, "rb") as src, open(plain, "wb") as dst:
            _inflate(src, dst)
        yield plain


def _inflate(src: BinaryIO, dst: BinaryIO) -> None:
    """Decompress every zstd frame of ``src`` into ``dst``; one cut short raises ValueError."""
    zstd = zstandard.ZstdDecompressor()
    frame, fed = zstd.decompressobj(), False
    try:
        while chunk := src.read(_CHUNK):
            while chunk:
                if frame.eof:  # the next frame of a stream written in several
                    frame, fed = zstd.decompressobj(), False
                dst.write(frame.decompress(chunk))
                fed = True
                chunk = frame.unused_data if frame.eof else b""
    except zstandard.ZstdError as exc:
        raise ValueError(f"its zstd stream is damaged after {dst.tell()} bytes ({exc})") from None
    if fed and not frame.eof:
        raise ValueError(f"its zstd stream is cut short after {dst.tell()} bytes")


def message(data: bytes) -> bytes:
    """A message's bytes, decompressed where they are a zstd frame (``message`` mode); ValueError if it is damaged."""
    if not data.startswith(ZSTD_MAGIC):
        return data
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=_LARGEST_MESSAGE)
    except zstandard.ZstdError as exc:
        raise ValueError(f"a zstd-compressed message does not decompress ({exc})") from None
