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
- MPEG-TS and MPEG-PS: their packets, see ``mpeg_end``.
- ASF (WMV): its header states the file's size (unless written live, as its broadcast flag says).
- AVI and MP4/MOV: chunks and boxes that state their sizes. A cut MP4 whose ``moov`` was to come last does not open,
  and a cut AVI mostly ends before its header's frame count; but a cut inside the last frame of an AVI, or in the
  ``mdat`` of an MP4 written with its ``moov`` first, leaves every frame, the last one damaged. An AVI written to a
  pipe is never finalised: its RIFF and ``movi`` sizes stay unset (0 or 0xFFFFFFFF) and its header's frame count is a
  placeholder (FFmpeg's 2^30), so it announces no end (:func:`finalised`); its frames' chunks are walked instead.

Apart from NUT's, what these checks find missing is certain: neither the specifications nor FFmpeg's muxers give a
complete file that shape. Only a unit the container is known to hold (a Matroska cluster, an MP4 ``mdat``, an AVI
frame's chunk, an FLV tag whose header is one) running past the end of the file says so, though: bytes after the
container's last whole unit that are none (a recorder's padding or trailer, zero bytes, something appended) are
reported, as they may also be a cut inside a header or a unit's first bytes. A cut inside the index or metadata a
writer leaves after the frames (Matroska's Cues or Tags after its clusters, AVI's ``idx1`` or an OpenDML ``ix00``
after the frames' chunks, a fragmented MP4's ``mfra``) leaves every frame before it: it is said apart
(:attr:`Cut.after_frames`), for the reader to hold the frames it read against the container's count or length (such
a unit may also come between frames: only those tell).
"""

from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path
from typing import BinaryIO

from streamfuse.capture.container_walk import Cut, Unit, after_last, read_at, walk
from streamfuse.capture.mpeg_end import program_stream, transport_stream

__all__ = ["Cut", "missing_end", "finalised"]

_EBML, _SEGMENT, _CLUSTER = 0x1A45DFA3, 0x18538067, 0x1F43B675
_MKV_TOP = {0x114D9B74: "SeekHead", 0x1549A966: "Info", 0x1654AE6B: "Tracks", _CLUSTER: "Cluster", 0x1C53BB6B: "Cues",
            0x1941A469: "Attachments", 0x1043A770: "Chapters", 0x1254C367: "Tags"}  # a segment's 4-byte IDs
_MKV_ROLES = {_CLUSTER: "frames", 0x1C53BB6B: "index", 0x1254C367: "index", 0x1043A770: "index", 0x1941A469: "index",
              0x114D9B74: "index"}  # Cues, Tags, Chapters, Attachments; a SeekHead, which FFmpeg may also write last
_MKV_FILLERS = {0xEC: "Void", 0xBF: "CRC-32"}  # 1-byte IDs, which one byte in 128 of anything looks like
# Top-level boxes; free, skip and wide are padding, like AVI's JUNK: one that runs past the end holds no frame, and
# bytes appended may read as one
_MP4_TOP = {b"ftyp", b"styp", b"moov", b"mdat", b"moof", b"mfra", b"sidx", b"ssix", b"emsg", b"prft", b"meta",
            b"pdin", b"uuid"}
_MP4_ROLES = {b"mdat": "frames", b"moof": "frames", b"mfra": "index"}  # mfra: a fragmented file's last box
_ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")  # the GUIDs, as stored (little-endian fields)
_ASF_FILE_PROPERTIES = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")
_RIFF_UNSET = (0, 0xFFFFFFFF)  # a RIFF or LIST size before the file is finalised (a writer to a pipe leaves it)
# ix00: an OpenDML index; 00dc: a frame of stream 0. Not JUNK (padding, see _MP4_TOP)
_AVI_CHUNK = re.compile(rb"RIFF|LIST|idx1|ix\d\d|\d\d(dc|db|wb|pc|tx)")
_AVI_FRAME, _AVI_INDEX = re.compile(rb"\d\d(dc|db)"), re.compile(rb"idx1|ix\d\d")  # a frame; an index (1.0, OpenDML)
_FLV_TAGS = {8: "audio", 9: "video", 18: "script data"}  # tag types
_FLV_HEADER = struct.Struct(">I3xI")  # a tag's type and data size; its timestamp; its stream ID (0)
_NUT_INDEX = bytes.fromhex("4e58dd672f23e64e")  # INDEX_STARTCODE


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
    where FFmpeg leaves 2^30 frames), and for a Matroska file whose segment size is unknown (nor could its Duration be
    written: the durations FFmpeg gives are estimates from bit rates, seconds off), so its header announces no end."""
    names = format_name.split(",")
    with open(path, "rb") as f:
        if "matroska" in names:
            segment = _segment(f)
            return not segment or segment[2] is not None
        if "avi" not in names:
            return True
        head = f.read(8)
    return len(head) == 8 and struct.unpack("<I", head[4:])[0] not in _RIFF_UNSET


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
    head = read_at(f, pos, 12)
    ident = _vint(head, 0, marker=True)
    size = ident and _vint(head, ident[1], marker=False)
    if not size:
        return None
    return ident[0], pos + size[1], None if size[2] else size[0]


def _segment(f: BinaryIO) -> tuple[int, int, int | None] | None:
    """The Matroska file's Segment element, as :func:`_element` gives it; None where it is not where this reads it."""
    header = _element(f, 0)
    segment = header and header[0] == _EBML and header[2] is not None and _element(f, header[1] + header[2])
    return segment if segment and segment[0] == _SEGMENT else None


def _matroska(f: BinaryIO, size: int) -> Cut | None:
    segment = _segment(f)
    if not segment:
        return None  # not the layout this reads: FFmpeg read it, let it be

    def read(pos: int) -> Unit | None:
        element = _element(f, pos)
        if element is None:
            return None
        ident, start, length = element
        end = None if length is None else start + length
        if ident in _MKV_TOP:
            return Unit(_MKV_TOP[ident], end, True, _MKV_ROLES.get(ident, ""))
        return Unit(_MKV_FILLERS.get(ident, f"ID 0x{ident:X}"), end, False) if end is not None else None

    end = None if segment[2] is None else segment[1] + segment[2]
    if end is not None and end <= size:
        return None
    # Never finalised (a live recording, a writer stopped before the end): its elements must still be whole; a
    # cluster written live, of unknown size, does not say where it should end. A finalised one is cut, where only
    # in its index when that is the element cut.
    walked = walk(segment[1], size, "Matroska element", read)
    if end is None or walked and walked.after_frames:
        return walked
    return Cut(f"its Matroska segment announces {end} bytes, the file has {size}", True)


# -- AVI, MP4/MOV, ASF ----------------------------------------------------------------------------------------------


def _riff(f: BinaryIO, size: int) -> Cut | None:
    """AVI: RIFF chunks (more than one past 1 GiB, OpenDML), whose sizes are written when the file is finalised
    (0 or 0xFFFFFFFF before: a file written to a pipe). The walk goes into a RIFF or LIST of unknown size (the
    ``movi`` list of one never finalised) and on through the chunks in it, frames included: the last must be whole.
    One of known size that runs past the end is walked into too, to tell a cut inside its last index (``idx1`` after
    the ``movi`` list, an OpenDML ``ix00`` at the end of it) from one among its frames."""
    def read(pos: int) -> Unit | None:
        head = read_at(f, pos, 12)
        if len(head) < 8 or not all(32 <= c < 127 for c in head[:4]):
            return None
        kind, length = head[:4], struct.unpack("<I", head[4:8])[0]
        known = _AVI_CHUNK.fullmatch(kind) is not None
        nested = kind in (b"RIFF", b"LIST")
        if nested and length in _RIFF_UNSET:
            return Unit(kind.decode(), pos + 12, True)  # its chunks follow its form type
        end = pos + 8 + length
        if kind == b"RIFF" and end == size + 8:
            end = size  # a writer that counted the chunk's header in its size: the file ends where it should
        role = "frames" if _AVI_FRAME.fullmatch(kind) or head[8:] == b"movi" else \
            "index" if _AVI_INDEX.fullmatch(kind) else ""
        return Unit(kind.decode(), end + 1 if length % 2 and end < size else end,  # an odd one's pad byte
                     known, role, pos + 12 if nested else None)

    return walk(0, size, "RIFF chunk", read)


def _iso_boxes(f: BinaryIO, size: int) -> Cut | None:
    """MP4/MOV: top-level boxes; the ``mdat`` of a file written with its ``moov`` first (``faststart``) and the
    fragments of a fragmented one say where they end."""
    def read(pos: int) -> Unit | None:
        head = read_at(f, pos, 16)
        if len(head) < 8:
            return None
        length, kind = struct.unpack(">I4s", head[:8])
        if length == 1:  # a 64-bit size follows
            if len(head) < 16:
                return None
            length = struct.unpack(">Q", head[8:])[0]
        if not all(32 <= c < 127 for c in kind) or 0 < length < 8:
            return None
        end = size if length == 0 else pos + length  # 0: the last box, to the end of the file
        return Unit(kind.decode(), end, kind in _MP4_TOP, _MP4_ROLES.get(kind, ""))

    return walk(0, size, "MP4 box", read)


def _asf(f: BinaryIO, size: int) -> Cut | None:
    """ASF (WMV): its header's File Properties object holds the file's size, valid unless the broadcast flag says
    the file was written live."""
    head = read_at(f, 0, 30)
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
    head = read_at(f, 0, 9)
    if len(head) < 9 or head[:3] != b"FLV":
        return None
    first = struct.unpack(">I", head[5:9])[0] + 4  # the first tag, after the header and PreviousTagSize0
    if size <= first:
        return None
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:  # 11 bytes a tag, no read-ahead refilled each
        last = size - 4 - struct.unpack_from(">I", data, size - 4)[0]  # PreviousTagSize: 11 + the last tag's data
        # Where the last 4 bytes point back at no whole tag, the tags are walked from the first: something after
        # the last (or its PreviousTagSize missing) is reported, a tag that runs past the end of the file is cut.
        tags, end = _flv_tags(data, last, size) if first <= last else (None, 0)
        if tags or end != size:
            tags, end = _flv_tags(data, first, size)
    if tags and tags.certain:
        return tags
    announced = _flv_filesize(f, first)
    if announced > end:  # more than the last tag's PreviousTagSize, where only that is missing
        return Cut(f"its FLV metadata announces {announced} bytes, the file has {size}", True)
    return tags


def _flv_tags(data: mmap.mmap, pos: int, size: int) -> tuple[Cut | None, int]:
    """The FLV tags from ``pos`` on, each followed by its size: one whose data runs past the end is cut (a script
    tag too: data streams and live recordings write them between the frames); bytes after the last whole one that
    are no tag are reported. Also where the whole tags end, their last PreviousTagSize included (past the end of the
    file where it is missing)."""
    header, tags = _FLV_HEADER.unpack_from, _FLV_TAGS  # local names: the loop runs once a tag
    while pos + 11 <= size:
        head, stream = header(data, pos)
        kind = head >> 24 & 0x1F
        if kind not in tags or stream & 0xFFFFFF:
            break
        end = pos + 11 + (head & 0xFFFFFF)
        if end > size:
            return Cut(f"its last FLV tag ({tags[kind]}) announces {end} bytes, the file has {size}", True), pos
        pos = end + 4
    if pos > size:
        return Cut("its last FLV tag is not followed by its size (PreviousTagSize)", False), pos
    return after_last(size - pos, "FLV tag") if pos < size else None, pos


def _flv_filesize(f: BinaryIO, first: int) -> int:
    """The ``filesize`` of the file's ``onMetaData`` (its first tag), 0 when it has none (written to a pipe)."""
    tag = read_at(f, first, 11)
    if len(tag) < 11 or tag[0] & 0x1F != 18:
        return 0
    data = f.read(int.from_bytes(tag[1:4], "big"))
    key = data.find(b"\x00\x08filesize\x00")  # an AMF0 key (length 8) whose value is a number (type 0, a double)
    if key < 0 or key + 19 > len(data):
        return 0
    value = struct.unpack(">d", data[key + 11:key + 19])[0]
    return int(value) if 0 < value < 2**63 else 0


# -- NUT ------------------------------------------------------------------------------------------------------------


def _nut(f: BinaryIO, size: int) -> Cut | None:
    if size >= 20:
        back = struct.unpack(">Q", read_at(f, size - 12, 8))[0]  # index_ptr: from the index's start to the end
        if 20 <= back <= size and read_at(f, size - back, 8) == _NUT_INDEX:
            return None
    return Cut("its NUT index is missing (the file was cut short, or written without one)", False)


_CHECKS = {"matroska": _matroska, "flv": _flv, "nut": _nut, "mpegts": transport_stream, "mpeg": program_stream,
           "avi": _riff, "mov": _iso_boxes, "asf": _asf}
