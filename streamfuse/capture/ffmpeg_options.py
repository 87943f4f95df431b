"""The ``ffmpeg`` options (``ir.ffmpeg``, ``vis.ffmpeg``) FFmpeg has no option for: FFmpeg leaves such an option (a
misspelt name, an option of another FFmpeg version, a command-line option of the ``ffmpeg`` tool) unused without a
word, and PyAV frees the options left over once a file opens without giving them back. Told instead by asking
FFmpeg's own libraries, the ones PyAV runs on, whether any of their formats, protocols or codecs has an option of the
name (as the ``ffmpeg`` tool asks before it opens anything); where those libraries cannot be found, nothing is told.
A file's options are asked of the layers that read a file too (a network stream's, ``rtsp_transport``, would be left
unused); a stream's are not: its protocol hands them on to those it opens beneath it (http to tcp or tls, rtsp to
rtp, udp and tcp), which no library function lists. Once a file is open, its demuxer is known: another format's
option is told then. And the options a file is opened with: those of a network stream's that would lose a file's
frames left out."""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterable
from functools import cache

__all__ = ["file_options", "repeated_options", "unknown_options", "unread_by_files", "unread_by_demuxer"]

_SEARCH = 1 | 2  # AV_OPT_SEARCH_CHILDREN | AV_OPT_SEARCH_FAKE_OBJ: every format's, protocol's and codec's options
_OWN = 2  # AV_OPT_SEARCH_FAKE_OBJ alone: the class's own options
_NOFILE = 1  # AVFMT_NOFILE: a demuxer that opens what it reads itself
_URL_OPTIONS = ("rw_timeout",)  # every protocol's context's (URLContext), whose class no public function gives


class _InputFormat(ctypes.Structure):
    """The head of FFmpeg's ``AVInputFormat``, public and the same since FFmpeg 4."""

    _fields_ = [("name", ctypes.c_char_p), ("long_name", ctypes.c_char_p), ("flags", ctypes.c_int),
                ("extensions", ctypes.c_char_p), ("codec_tag", ctypes.c_void_p), ("priv_class", ctypes.c_void_p)]


@cache
def _library() -> ctypes.CDLL | None:
    """FFmpeg's libraries as PyAV runs them: their functions looked up through PyAV's own extension module, which
    the loader answers from that module's own dependencies (the copies it was linked against), never from another
    FFmpeg copy the process holds (OpenCV's); None where that module cannot be found or asked."""
    try:
        import av._core
        lib = ctypes.CDLL(av._core.__file__)
        lib.av_opt_find.restype = lib.avformat_get_class.restype = lib.avcodec_get_class.restype = ctypes.c_void_p
        lib.av_demuxer_iterate.restype = ctypes.POINTER(_InputFormat)
        lib.avio_protocol_get_class.restype = ctypes.c_void_p
        lib.avio_enum_protocols.restype = ctypes.c_char_p
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    lib.av_opt_find.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.av_demuxer_iterate.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.avio_protocol_get_class.argtypes = [ctypes.c_char_p]
    lib.avio_enum_protocols.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    return lib


def unknown_options(options: Iterable[str]) -> list[str] | None:
    """The names of the ``NAME=VALUE`` options of ``options`` that no FFmpeg format, protocol or codec has, in their
    order; None where FFmpeg's libraries cannot be asked."""
    lib = _library()
    if lib is None:
        return None
    classes = [ctypes.c_void_p(lib.avformat_get_class()), ctypes.c_void_p(lib.avcodec_get_class())]

    def known(name: str) -> bool:
        return any(lib.av_opt_find(ctypes.byref(c), name.encode(), None, 0, _SEARCH) for c in classes)

    return [name for name in map(_name, options) if not known(name)]


@cache
def _file_classes() -> tuple[ctypes.c_void_p, ...]:
    """The option classes of what reads a file: the format context, the file protocol, and every demuxer a file's
    probe can pick (those that read through the protocol, and those that open the files they are named by, image2:
    not those of a URL, rtsp, or of a device, picked only when named)."""
    lib = _library()
    found = [lib.avformat_get_class(), lib.avio_protocol_get_class(b"file")]
    found += [demuxer.priv_class for demuxer in _demuxers() if not demuxer.flags & _NOFILE or demuxer.extensions]
    return tuple(ctypes.c_void_p(c) for c in found if c)


def _demuxers() -> Iterable[_InputFormat]:
    """Every demuxer of FFmpeg's libraries."""
    lib, opaque = _library(), ctypes.c_void_p()
    while demuxer := lib.av_demuxer_iterate(ctypes.byref(opaque)):
        yield demuxer.contents


def unread_by_files(options: Iterable[str]) -> list[str] | None:
    """The names of the ``NAME=VALUE`` options of ``options`` that FFmpeg has, but nothing that reads a file takes
    (a network stream's, a device's), in their order; None where FFmpeg's libraries cannot be asked."""
    options = list(options)  # gone through twice: for the names FFmpeg has, then for what reads a file
    unknown = unknown_options(options)
    if unknown is None:
        return None
    return [name for name in map(_name, options) if name not in unknown and not _read_by(name, _file_classes())]


def _read_by(name: str, classes: Iterable[ctypes.c_void_p]) -> bool:
    """Whether option ``name`` is every input's URL context's, a decoder's, or one of ``classes``' own."""
    lib = _library()
    decoders = ctypes.c_void_p(lib.avcodec_get_class())
    return name in _URL_OPTIONS or bool(lib.av_opt_find(ctypes.byref(decoders), name.encode(), None, 0, _SEARCH)) \
        or any(lib.av_opt_find(ctypes.byref(c), name.encode(), None, 0, _OWN) for c in classes)


def unread_by_demuxer(demuxer: str, options: Iterable[str], *, stream: bool = False) -> list[str]:
    """The names of the ``NAME=VALUE`` options of ``options`` that FFmpeg has, but neither ``demuxer`` (the name of the
    one that opened the input, ``container.format.name``) nor what it reads through takes: another format's option
    (``ignore_editlist`` given to a Matroska file, or to an RTSP stream), which FFmpeg leaves unused. A file is read
    through the file protocol, a stream through any protocol (each hands its options on to those beneath it). [] where
    FFmpeg's libraries cannot be asked (and for the names :func:`unknown_options` and, for a file,
    :func:`unread_by_files` already tell)."""
    options = list(options)
    if not options or (unknown := unknown_options(options)) is None:
        return []
    lib = _library()
    own = [d.priv_class for d in _demuxers() if d.name.decode() == demuxer and d.priv_class]
    protocols = _protocol_classes() if stream else (lib.avio_protocol_get_class(b"file"),)
    classes = [ctypes.c_void_p(c) for c in (lib.avformat_get_class(), *protocols, *own) if c]
    told = set(unknown) | set(() if stream else unread_by_files(options))
    return [name for name in map(_name, options) if name not in told and not _read_by(name, classes)]


@cache
def _protocol_classes() -> tuple[int, ...]:
    """The option classes of every input protocol."""
    lib, opaque, found = _library(), ctypes.c_void_p(), []
    while name := lib.avio_enum_protocols(ctypes.byref(opaque), 0):
        found.append(lib.avio_protocol_get_class(name))
    return tuple(c for c in found if c)


def repeated_options(options: tuple[str, ...]) -> dict[str, str]:
    """Name -> the ``NAME=VALUE`` option taken, of the names ``options`` gives more than once, in their first order:
    one option of a name reaches FFmpeg, the last given (a dictionary's)."""
    names = [_name(o) for o in options]
    last = dict(zip(names, options))
    return {name: option for name, option in last.items() if names.count(name) > 1}


def _name(option: str) -> str:
    """The name of a ``NAME=VALUE`` option."""
    return option.split("=", 1)[0]


def file_options(options: dict[str, str]) -> dict[str, str]:
    """``options`` for opening a file: without ``fflags``' ``nobuffer`` (``fflags=nobuffer``, ``+genpts+nobuffer``),
    a network stream's lower latency, which on a file loses the frames FFmpeg read while probing it (its first)."""
    flags = options.get("fflags", "")
    tokens = re.findall(r"[+-]?[^+-]+", flags)
    if not any(token.lstrip("+-") == "nobuffer" for token in tokens):
        return options
    kept = "".join(token for token in tokens if token.lstrip("+-") != "nobuffer")
    return {name: value for name, value in options.items() if name != "fflags"} | ({"fflags": kept} if kept else {})
