"""The ``ffmpeg`` options (``ir.ffmpeg``, ``vis.ffmpeg``) FFmpeg has no option for: FFmpeg leaves such an option (a
misspelt name, an option of another FFmpeg version, a command-line option of the ``ffmpeg`` tool) unused without a
word, and PyAV frees the options left over once a file opens without giving them back. Told instead by asking
FFmpeg's own libraries, the ones PyAV runs on, whether any of their formats, protocols or codecs has an option of the
name (as the ``ffmpeg`` tool asks before it opens anything); where those libraries cannot be found, nothing is told.
And the options a file is opened with: those of a network stream's that would lose a file's frames left out."""

from __future__ import annotations

import ctypes
import glob
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

__all__ = ["file_options", "unknown_options"]

_SEARCH = 1 | 2  # AV_OPT_SEARCH_CHILDREN | AV_OPT_SEARCH_FAKE_OBJ: every format's, protocol's and codec's options


@cache
def _libraries() -> tuple[ctypes.CDLL, ...] | None:
    """libavutil, libavformat and libavcodec as PyAV loaded them (its wheel's own copies, or the system's)."""
    import av

    names = ("libavutil", "libavformat", "libavcodec")
    try:
        with open("/proc/self/maps") as maps:  # Linux: the copies this process runs
            loaded = {Path(line.split()[-1]) for line in maps if "/libav" in line}
    except OSError:
        loaded = set()
    package = Path(av.__file__).parent
    found = sorted(loaded) + [Path(p) for folder in (package.parent / "av.libs", package / ".dylibs")
                              for p in glob.glob(f"{folder}/libav*")]
    paths = [next((p for p in found if p.name.startswith((f"{n}.", f"{n}-"))), None) for n in names]
    if None in paths:
        return None
    try:
        util, fmt, codec = (ctypes.CDLL(str(p)) for p in paths)
        util.av_opt_find.restype = fmt.avformat_get_class.restype = codec.avcodec_get_class.restype = ctypes.c_void_p
    except (OSError, AttributeError):
        return None
    util.av_opt_find.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    return util, fmt, codec


def unknown_options(options: Iterable[str]) -> list[str] | None:
    """The names of the ``NAME=VALUE`` options of ``options`` that no FFmpeg format, protocol or codec has, in their
    order; None where FFmpeg's libraries cannot be asked."""
    libraries = _libraries()
    if libraries is None:
        return None
    util, fmt, codec = libraries
    classes = [ctypes.c_void_p(fmt.avformat_get_class()), ctypes.c_void_p(codec.avcodec_get_class())]

    def known(name: str) -> bool:
        return any(util.av_opt_find(ctypes.byref(c), name.encode(), None, 0, _SEARCH) for c in classes)

    return [name for name in (o.split("=", 1)[0] for o in options) if not known(name)]


def file_options(options: dict[str, str]) -> dict[str, str]:
    """``options`` for opening a file: without ``fflags``' ``nobuffer`` (``fflags=nobuffer``, ``+genpts+nobuffer``),
    a network stream's lower latency, which on a file loses the frames FFmpeg read while probing it (its first)."""
    flags = options.get("fflags", "")
    tokens = re.findall(r"[+-]?[^+-]+", flags)
    if not any(token.lstrip("+-") == "nobuffer" for token in tokens):
        return options
    kept = "".join(token for token in tokens if token.lstrip("+-") != "nobuffer")
    return {name: value for name, value in options.items() if name != "fflags"} | ({"fflags": kept} if kept else {})
