"""The ends of MPEG transport and program streams (see ``container_end``), as FFmpeg's muxers (and ISO/IEC 13818-1)
write them:

- MPEG-TS: only whole transport packets (188 bytes; 192 in M2TS, 204 with DVB's Reed-Solomon bytes). Nothing in it
  says how long it is, so a cut that falls between two packets looks complete.
- MPEG-PS (``.mpg``, ``.vob``; FFmpeg's ``mpeg``, ``vob``, ``dvd``, ``vcd`` and ``svcd`` muxers): packs, each a pack
  header followed by packets that state their lengths (the system header, PES packets of video, audio, private data
  and padding; VCD's zero bytes after audio packets, and its empty sectors). The program end code the specification
  closes it with is optional in practice: FFmpeg never writes it (it would get in the way of concatenated streams),
  so a cut between two packets, or one that leaves only zero bytes after the last, looks complete too. The last
  packets are walked from a start code near the end; one that runs past the end of the file is cut.
"""

from __future__ import annotations

import re
from typing import BinaryIO

from streamfuse.capture.container_walk import Cut, Unit, after_last, read_at, walk

__all__ = ["transport_stream", "program_stream"]

_TS_PACKETS = ((188, 0), (192, 4), (204, 0))  # (packet size, offset of its 0x47 sync byte)
_TS_CHECKED = 4  # the last packets whose sync bytes must be in place
_TS_NULL = b"\x47\x1f\xff"  # a null packet's start (PID 0x1FFF), which padding to a size may end in
_TS_LONGEST = max(packet for packet, _ in _TS_PACKETS)
_TS_SEARCH = 4096  # how far before the end (or its padding) the last whole packet is looked for
_PAD_BLOCK = 1 << 16  # bytes read at a time walking back over a file's trailing padding
_ZERO_BLOCK = 4096  # and forward over a run of zero bytes
_PS_START, _PS_PACK, _PS_END = b"\0\0\1", 0xBA, 0xB9  # a start code's prefix; the codes after it
_PS_PACKETS = {0xBB: "system header", 0xBC: "stream map", 0xBD: "private stream 1", 0xBE: "padding",
               0xBF: "private stream 2", **{code: "audio" for code in range(0xC0, 0xE0)},
               **{code: "video" for code in range(0xE0, 0xF0)},
               **{code: f"stream 0x{code:X}" for code in range(0xF0, 0x100)}}  # the codes of packets with a length
# A start code that begins a unit (video data's own are below 0xB9); how far before the end one is looked for: past
# a packet of the largest length (16 bits) and another. Pack headers do not do: MPEG-1's may come once in many packets
_PS_CODE, _PS_SEARCH = re.compile(b"\0\0\1[\xb9-\xff]"), 1 << 17


def transport_stream(f: BinaryIO, size: int) -> Cut | None:
    """Whole packets, maybe followed by bytes that start no packet: padding (zero or 0xFF bytes, as a recorder
    writing in blocks of a disc's sector leaves; a null packet's start), a trailer. What follows the last whole packet
    and starts with a sync byte is a packet cut short."""
    padded = _padding_start(f, size)
    base = max(0, padded - _TS_SEARCH - _TS_CHECKED * _TS_LONGEST)
    # The last whole packet ends before the padding, or inside a packet after its start (the packet's own bytes)
    tail = read_at(f, base, min(size, padded + _TS_LONGEST) - base)
    for end in range(len(tail), max(0, padded - _TS_SEARCH - base) - 1, -1):
        packet = _ts_packet(tail, end)
        if packet is None:
            continue
        sync, rest = packet[1], tail[end:end + packet[1] + 3]  # the next packet's start, as far as the file goes
        # A null packet's start may be padding, but not in M2TS (192 bytes), written in whole units of 32 packets:
        # there it is as likely a cut among the null packets a constant rate interleaves
        if len(rest) > sync and rest[sync] == 0x47 and (sync or rest[:3] != _TS_NULL):
            break
        return after_last(size - base - end, "MPEG-TS packet") if base + end < size else None
    return Cut("the file does not end with a whole MPEG-TS packet", True)


def _ts_packet(data: bytes, end: int) -> tuple[int, int] | None:
    """The size and sync byte offset of the whole transport packets that end at ``data[end]``; None if none do."""
    for packet, sync in _TS_PACKETS:
        starts = [end - k * packet for k in range(1, _TS_CHECKED + 1) if end - k * packet >= 0]
        if starts and all(data[start + sync] == 0x47 for start in starts):
            return packet, sync
    return None


def _padding_start(f: BinaryIO, size: int) -> int:
    """Where the run of the file's last byte (zero or 0xFF: padding) starts; ``size`` where it ends otherwise."""
    pad = read_at(f, size - 1, 1) if size else b""
    if pad not in (b"\0", b"\xff"):
        return size
    end = size
    while end > 0:
        data = read_at(f, max(0, end - _PAD_BLOCK), min(_PAD_BLOCK, end))
        kept = len(data.rstrip(pad))
        if kept:
            return end - len(data) + kept
        end -= len(data)
    return 0


def program_stream(f: BinaryIO, size: int) -> Cut | None:
    """The units from the first start code among the file's last ``_PS_SEARCH`` bytes whose next unit starts where
    it says (audio data can hold what reads as a start code), walked to the end of the file."""
    def read(pos: int) -> Unit | None:
        head = read_at(f, pos, 14)
        if head[:1] == b"\0" and head[:3] != _PS_START:  # VCD's zero bytes after audio packets, its empty sectors
            end = _zeros_end(f, pos, size)
            if end == size:
                return Unit("zero bytes", size, False)
            return Unit("zero bytes", end - 2, False) if end - 2 > pos and read_at(f, end, 1) == b"\1" else None
        if len(head) < 4 or head[:3] != _PS_START:
            return None
        code = head[3]
        if code == _PS_END:
            return Unit("end code", pos + 4, True)
        if code == _PS_PACK:  # MPEG-2's header ('01' bits) ends with stuffing bytes that it counts; MPEG-1's ('0010')
            if len(head) == 14 and head[4] >> 6 == 1:
                return Unit("pack header", pos + 14 + (head[13] & 7), True)
            return Unit("pack header", pos + 12, True) if len(head) >= 12 and head[4] >> 4 == 2 else None
        if code not in _PS_PACKETS or len(head) < 6:
            return None
        length, name = int.from_bytes(head[4:6], "big"), _PS_PACKETS[code]
        return Unit(name, None if name == "video" and not length else pos + 6 + length, True)  # 0: unbounded

    base = max(0, size - _PS_SEARCH)
    for start in _PS_CODE.finditer(read_at(f, base, size - base)):
        unit = read(base + start.start())
        if unit is not None and (unit.end is None or unit.end >= size or read(unit.end) is not None):
            return walk(base + start.start(), size, "MPEG-PS packet", read)
    return None


def _zeros_end(f: BinaryIO, pos: int, size: int) -> int:
    """Where the run of zero bytes from ``pos`` ends (``size`` where it runs to the end of the file)."""
    while pos < size:
        data = read_at(f, pos, _ZERO_BLOCK)
        kept = len(data.lstrip(b"\0"))
        pos += len(data) - kept
        if kept:
            break
    return pos
