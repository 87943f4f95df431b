"""FFV1's slice CRCs, checked as FFmpeg's decoder checks them: a damaged picture in a lossless recording is told
rather than decoded into a concealed, wrong image."""

from __future__ import annotations

import zlib
from typing import Iterator

import av

__all__ = ["ffv1_slice_crcs", "ffv1_checked"]

_BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))  # byte -> its bits in reverse order


def ffv1_slice_crcs(packet: bytes) -> bool | None:
    """Whether every slice of an FFV1 (version 3) frame passes its CRC, the check FFmpeg's decoder makes: each slice
    ends in a 24-bit size, an error byte and a 32-bit parity that makes the slice's CRC-32 (MSB first, polynomial
    0x04C11DB7, no inversion) zero (RFC 9043, 4.8). None when the slices do not end in such footers at all (a frame
    written without ``slicecrc``, or one whose slice sizes are damaged)."""
    end, intact = len(packet), True
    while end > 0:
        if end < 8:
            return None
        size = int.from_bytes(packet[end - 8:end - 5], "big") + 8  # the slice with its footer
        if size > end:
            return None
        # zlib's CRC-32 is that CRC bit-reflected and inverted: fed bit-reversed bytes from an inverted start, it ends
        # at 0xFFFFFFFF exactly when the MSB-first CRC is 0
        intact &= zlib.crc32(packet[end - size:end].translate(_BIT_REVERSED), 0xFFFFFFFF) == 0xFFFFFFFF
        end -= size
    return intact


def ffv1_checked(packets: Iterator[av.Packet]) -> Iterator[tuple[av.Packet, bool]]:
    """Each FFV1 packet with whether its picture's slice CRCs pass. Whether the file stores CRCs (FFmpeg's
    ``slicecrc``, which this project's FFV1 outputs always set) is told by the first picture whose slices end in
    CRC footers: the first picture's verdict waits for the second's, since damaged slice sizes make a picture
    read as one without CRCs (FFmpeg then conceals it)."""
    held, stores_crcs = None, None  # the first picture, while the file's CRCs are not known; whether it has them
    for packet in packets:
        crcs = ffv1_slice_crcs(bytes(packet)) if packet.size else True
        if stores_crcs is None and packet.size:
            if crcs is None and held is None:
                held = packet
                continue
            stores_crcs = crcs is not None
        if held is not None:
            yield held, not stores_crcs
            held = None
        yield packet, crcs is True or not stores_crcs
    if held is not None:  # a file of one picture: read as FFmpeg reads it
        yield held, True
