"""Whether a video file still holds the end its container wrote: a file cut short by a crash or an interrupted copy
decodes up to the cut without any error, and where the container says nothing about its length (or not exactly) only
its own bytes tell it from a complete file.

What each container leaves at its end, as FFmpeg's muxers (and the specifications) write it:

- Matroska/WebM: the Segment's size is written when the file is finalised; a file shorter than it is cut. A live
  recording never finalised has an unknown size: its top-level elements (clusters) are walked instead, and one that
  runs past the end of the file is cut (one of unknown size, as live WebM writes, ends the walk: nothing to say).
- FLV: every tag is followed by its size (11 + data), so the last 4 bytes point back at a whole last tag; and
  ``onMetaData`` holds the file's size when the writer could seek back to write it (0 when it could not).
- NUT: ends with its index, whose start the last 12 bytes point to; FFmpeg writes it even to a pipe, but it can be
  turned off (``write_index 0``, ``syncpoints none``), so a file without one is only probably cut.
- MPEG-TS: only whole transport packets (188 bytes; 192 in M2TS, 204 with DVB's Reed-Solomon bytes). Nothing in it
  says how long it is, so a cut that falls between two packets looks complete.
- ASF (WMV): its header states the file's size (unless written live, as its broadcast flag says).
- AVI and MP4/MOV: chunks and boxes that state their sizes. A cut MP4 whose ``moov`` was to come last does not open,
  and a cut AVI mostly ends before its header's frame count; but a cut inside the last frame of an AVI, or in the
  ``mdat`` of an MP4 written with its ``moov`` first, leaves every frame, the last one damaged. An AVI written to a
  pipe is never finalised: its RIFF and ``movi`` sizes stay unset (0 or 0xFFFFFFFF) and its header's frame count is a
  placeholder (FFmpeg's 2^30), so it announces no end (:func:`finalised`); its frames' chunks are walked instead.

Apart from NUT's, what these checks find missing is certain: neither the specifications nor FFmpeg's muxers give a
complete file that shape.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple

__all__ = ["Cut", "missing_end", "finalised"]

_Next = tuple[str, int | None] | None  # a walked element's name and where it ends (None: unknown)
_EBML, _SEGMENT, _CLUSTER = 0x1A45DFA3, 0x18538067, 0x1F43B675
_ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")  # the GUIDs, as stored (little-endian fields)
_ASF_FILE_PROPERTIES = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")
_RIFF_UNSET = (0, 0xFFFFFFFF)  # a RIFF or LIST size before the file is finalised (a writer to a pipe leaves it)
_FLV_TAGS = {8, 9, 18}  # audio, video, script data
_NUT_INDEX = bytes.fromhex("4e58dd672f23e64e")  # INDEX_STARTCODE
_TS_PACKETS = ((188, 0), (192, 4), (204, 0))  # (packet size, offset of its 0x47 sync byte)
_TS_CHECKED = 4  # the last packets whose sync bytes must be in place


class Cut(NamedTuple):
    """What the end of a file lacks, and whether that is certain (an error) or a complete file can look the same."""

    what: str
    certain: bool


def missing_end(path: str | Path, format_name: str) -> Cut | None:
    """What is missing at the end of the video file ``path``, demuxed by FFmpeg as ``format_name``
    (``container.format.name``); None when its end is whole or its container does not say."""
    names = set(format_name.split(","))
    check = next((check for name, check in _CHECKS.items() if name in names), None)
    if check is None:
        return None
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        return check(f, size)


def finalised(path: str | Path, format_name: str) -> bool:
    """Whether the lengths in the header of the video file ``path`` (demuxed as ``format_name``) are the file's: False
    for an AVI whose RIFF size was never written (a writer to a pipe cannot seek back to it, nor to the frame counts,
    where FFmpeg leaves 2^30 frames), so its header announces no end."""
    if "avi" not in format_name.split(","):
        return True
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and struct.unpack("<I", head[4:])[0] not in _RIFF_UNSET


def _read_at(f: BinaryIO, pos: int, n: int) -> bytes:
    f.seek(pos)
    return f.read(n)


# -- Matroska / WebM ------------------------------------------------------------------------------------------------


def _vint(data: bytes, i: int, *, marker: bool) -> tuple[int, int, bool] | None:
    """An EBML variable-length integer at ``data[i]``: (value, index after it, all value bits set = unknown size);
    element IDs keep their length ``marker`` bit. None where the data ends or the first byte is no length."""
    if i >= len(data) or not data[i]:
        return None
    length = 9 - data[i].bit_length()
    if i + length > len(data):
        return None
    value = data[i] if marker else data[i] & (0xFF >> length)
    for byte in data[i + 1:i + length]:
        value = value << 8 | byte
    return value, i + length, not marker and value == (1 << 7 * length) - 1


def _element(f: BinaryIO, pos: int) -> tuple[int, int, int | None] | None:
    """The EBML element at ``pos``: (ID, where its data starts, its data size or None when unknown); None where its
    header is cut or is not one."""
    head = _read_at(f, pos, 12)
    ident = _vint(head, 0, marker=True)
    size = ident and _vint(head, ident[1], marker=False)
    if not size:
        return None
    return ident[0], pos + size[1], None if size[2] else size[0]


def _matroska(f: BinaryIO, size: int) -> Cut | None:
    header = _element(f, 0)
    segment = header and header[0] == _EBML and header[2] is not None and _element(f, header[1] + header[2])
    if not segment or segment[0] != _SEGMENT:
        return None  # not the layout this reads: FFmpeg read it, let it be
    if segment[2] is not None:
        end = segment[1] + segment[2]
        return None if end <= size else Cut(f"its Matroska segment announces {end} bytes, the file has {size}", True)

    def read(pos: int) -> _Next:
        element = _element(f, pos)
        if element is None:
            return None
        ident, start, length = element
        return "Cluster" if ident == _CLUSTER else f"ID 0x{ident:X}", None if length is None else start + length

    # Never finalised (a live recording): its elements must still be whole; a cluster written live, of unknown
    # size, does not say where it should end.
    return _walk(f, segment[1], size, "Matroska element", 2, read)


def _walk(f: BinaryIO, pos: int, size: int, what: str, least: int, read: Callable[[int], _Next]) -> Cut | None:
    """Walks the top-level elements from ``pos``: one that runs past the end of the file (or whose header does) is
    cut. ``read(pos)`` gives an element's name and end, or None where what is there is not one (then, and at an
    element of unknown size, None: nothing to say); ``least``: the bytes of the shortest header."""
    while pos < size:
        if size - pos < least:
            return Cut(f"the file ends inside the header of a {what} at byte {pos}", True)
        element = read(pos)
        if element is None or element[1] is None:
            return None
        name, pos = element
        if pos > size:
            return Cut(f"its last {what} ({name}) announces {pos} bytes, the file has {size}", True)
    return None


# -- AVI, MP4/MOV, ASF ----------------------------------------------------------------------------------------------


def _riff(f: BinaryIO, size: int) -> Cut | None:
    """AVI: RIFF chunks (more than one past 1 GiB, OpenDML), whose sizes are written when the file is finalised
    (0 or 0xFFFFFFFF before: a file written to a pipe). The walk goes into a RIFF or LIST of unknown size (the
    ``movi`` list of one never finalised) and on through the chunks in it, frames included: the last must be whole."""
    inside = False  # in a chunk of unknown size, whose chunks may be of any kind

    def read(pos: int) -> _Next:
        nonlocal inside
        head = _read_at(f, pos, 8)
        kind, length = head[:4], struct.unpack("<I", head[4:])[0]
        if kind not in (b"RIFF", b"LIST", b"JUNK") and not (inside and all(32 <= c < 127 for c in kind)):
            return None
        if kind in (b"RIFF", b"LIST") and length in _RIFF_UNSET:
            inside = True
            return kind.decode(), pos + 12  # its chunks follow its form type
        end = pos + 8 + length
        return kind.decode(), end + 1 if length % 2 and end < size else end  # an odd chunk's pad byte, if written

    return _walk(f, 0, size, "RIFF chunk", 8, read)


def _iso_boxes(f: BinaryIO, size: int) -> Cut | None:
    """MP4/MOV: top-level boxes; the ``mdat`` of a file written with its ``moov`` first (``faststart``) and the
    fragments of a fragmented one say where they end."""
    def read(pos: int) -> _Next:
        head = _read_at(f, pos, 16)
        length, kind = struct.unpack(">I4s", head[:8])
        if length == 1:  # a 64-bit size follows
            length = struct.unpack(">Q", head[8:])[0] if len(head) == 16 else size - pos + 1  # or cut inside it
        if not all(32 <= c < 127 for c in kind) or 0 < length < 8:
            return None
        return kind.decode(), size if length == 0 else pos + length  # 0: the last box, to the end of the file

    return _walk(f, 0, size, "MP4 box", 8, read)


def _asf(f: BinaryIO, size: int) -> Cut | None:
    """ASF (WMV): its header's File Properties object holds the file's size, valid unless the broadcast flag says
    the file was written live."""
    head = _read_at(f, 0, 30)
    if len(head) < 30 or head[:16] != _ASF_HEADER:
        return None
    header_end = min(struct.unpack("<Q", head[16:24])[0], 1 << 20)
    header = head + f.read(max(0, header_end - 30))
    pos = 30
    while pos + 24 <= len(header):
        guid, length = header[pos:pos + 16], struct.unpack("<Q", header[pos + 16:pos + 24])[0]
        if guid == _ASF_FILE_PROPERTIES and pos + 92 <= len(header):
            announced, flags = struct.unpack("<Q", header[pos + 40:pos + 48])[0], header[pos + 88]
            if flags & 1 or announced <= size:  # broadcast: the sizes and counts are not filled in
                return None
            return Cut(f"its ASF header announces {announced} bytes, the file has {size}", True)
        if length < 24:
            return None
        pos += length
    return None


# -- FLV ------------------------------------------------------------------------------------------------------------


def _flv(f: BinaryIO, size: int) -> Cut | None:
    head = _read_at(f, 0, 9)
    if len(head) < 9 or head[:3] != b"FLV":
        return None
    first = struct.unpack(">I", head[5:9])[0] + 4  # the first tag, after the header and PreviousTagSize0
    if size <= first:
        return None
    last = struct.unpack(">I", _read_at(f, size - 4, 4))[0]  # PreviousTagSize: 11 + the last tag's data size
    start = size - 4 - last
    tag = _read_at(f, start, 11) if first <= start and start + 11 <= size - 4 else b""
    if len(tag) < 11 or tag[0] & 0x1F not in _FLV_TAGS or int.from_bytes(tag[1:4], "big") + 11 != last:
        return Cut("the file ends inside an FLV tag", True)
    announced = _flv_filesize(f, first)
    if announced > size:
        return Cut(f"its FLV metadata announces {announced} bytes, the file has {size}", True)
    return None


def _flv_filesize(f: BinaryIO, first: int) -> int:
    """The ``filesize`` of the file's ``onMetaData`` (its first tag), 0 when it has none (written to a pipe)."""
    tag = _read_at(f, first, 11)
    if len(tag) < 11 or tag[0] & 0x1F != 18:
        return 0
    data = f.read(int.from_bytes(tag[1:4], "big"))
    key = data.find(b"\x00\x08filesize\x00")  # an AMF0 key (length 8) whose value is a number (type 0, a double)
    if key < 0 or key + 19 > len(data):
        return 0
    value = struct.unpack(">d", data[key + 11:key + 19])[0]
    return int(value) if 0 < value < 2**63 else 0


# -- NUT and MPEG-TS ------------------------------------------------------------------------------------------------


def _nut(f: BinaryIO, size: int) -> Cut | None:
    if size >= 20:
        back = struct.unpack(">Q", _read_at(f, size - 12, 8))[0]  # index_ptr: from the index's start to the end
        if 20 <= back <= size and _read_at(f, size - back, 8) == _NUT_INDEX:
            return None
    return Cut("its NUT index is missing (the file was cut short, or written without one)", False)


def _mpegts(f: BinaryIO, size: int) -> Cut | None:
    span = max(packet for packet, _ in _TS_PACKETS) * _TS_CHECKED
    tail = _read_at(f, max(0, size - span), span)
    for packet, sync in _TS_PACKETS:
        starts = [len(tail) - k * packet for k in range(1, _TS_CHECKED + 1) if len(tail) - k * packet >= 0]
        if starts and all(tail[start + sync] == 0x47 for start in starts):
            return None
    return Cut("the file does not end with a whole MPEG-TS packet", True)


_CHECKS = {"matroska": _matroska, "flv": _flv, "nut": _nut, "mpegts": _mpegts, "avi": _riff, "mov": _iso_boxes,
           "asf": _asf}
