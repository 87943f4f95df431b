"""File names that a file holds as text (a resume's sidecar, the config a fused video records), read back under any
locale: written by a run whose Python read names as UTF-8, or by one that read them as ASCII (``LC_ALL=C`` with
``PYTHONUTF8=0``, where every other byte is a surrogate escape), they name the same bytes."""

from __future__ import annotations

import os

__all__ = ["local_name", "name_bytes"]


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
