"""File names that a file holds as text (a resume's sidecar, the config a fused video records), read back under any
locale: written by a run whose Python read names as UTF-8, or by one that read them as ASCII (``LC_ALL=C`` with
``PYTHONUTF8=0``, where every other byte is a surrogate escape), they name the same bytes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["local_name", "name_bytes", "opencv_name", "utf8_text"]


def local_name(text: str) -> str:
    """The file name ``text`` (as a file holds it) as this process names that file: its bytes as UTF-8, those that are
    no UTF-8 kept as their escapes (``text`` itself where it holds no name's bytes).

    >>> local_name("caf\\udce9") == os.fsdecode(b"caf\\xe9")
    True
    """
    try:
        return os.fsdecode(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a lone surrogate no name's byte stands for
        return text


def name_bytes(text: str) -> bytes:
    """``text`` (a table or list naming files) as a file holds it: UTF-8, a name's bytes that are not UTF-8 as they are.

    >>> name_bytes("caf\\udce9 空")
    b'caf\\xe9 \\xe7\\xa9\\xba'
    """
    return text.encode("utf-8", "surrogateescape")


def utf8_text(text: str) -> str:
    """Text that is no file's name (a topic, a frame id) as the UTF-8 it is: given on the command line under
    ``LC_ALL=C`` with ``PYTHONUTF8=0``, its bytes beyond ASCII come as escapes. ``UnicodeError`` for bytes that are no
    UTF-8, which only a name may hold.

    >>> utf8_text("fused/\\udce7\\udca9\\udcba")
    'fused/空'
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8")


@contextlib.contextmanager
def opencv_name(path: str | os.PathLike) -> Iterator[str]:
    """``path`` as OpenCV's binding takes a file name, for the block: the text whose UTF-8 is the name's bytes, or,
    for a name that is no UTF-8, the file opened here (``/proc/self/fd/N``). OpenCV encodes the text it is given as
    UTF-8 and crashes the process on a surrogate escape (a segmentation fault); as the locale names files under
    ``LC_ALL=C``, any name beyond ASCII is such escapes."""
    raw = os.fsencode(path)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        fd = os.open(raw, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield name
