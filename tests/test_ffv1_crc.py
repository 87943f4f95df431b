"""FFV1 slice CRCs on slices built by hand: a picture passes, fails, or has no CRC footers, and each picture of a file
is judged by whether the file stores CRCs, which its first picture with footers tells."""

from __future__ import annotations

from streamfuse.ffv1_crc import ffv1_checked, ffv1_slice_crcs


def _crc(data: bytes) -> int:
    """CRC-32 MSB first, polynomial 0x04C11DB7, no inversion (RFC 9043), bit by bit."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _slice(payload: bytes) -> bytes:
    """A slice with its footer: 24-bit size, error byte, and the parity that makes its CRC zero."""
    body = payload + len(payload).to_bytes(3, "big") + b"\0"
    return body + _crc(body).to_bytes(4, "big")


GOOD = _slice(b"abc" * 10) + _slice(b"xyz" * 7)
DAMAGED = GOOD[:3] + bytes([GOOD[3] ^ 1]) + GOOD[4:]
NO_FOOTERS = b"\x05" * 40  # slices that end in no CRC footer: written without slicecrc, or their sizes damaged


class _Packet:
    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def __bytes__(self) -> bytes:
        return self.data


def _verdicts(*pictures: bytes) -> list[bool]:
    return [intact for _, intact in ffv1_checked(iter([_Packet(p) for p in pictures]))]


def test_slices_pass_their_crcs_until_a_bit_flips_and_bytes_without_footers_have_none() -> None:
    assert ffv1_slice_crcs(GOOD) is True and ffv1_slice_crcs(DAMAGED) is False
    assert ffv1_slice_crcs(NO_FOOTERS) is None and ffv1_slice_crcs(b"") is True
    assert ffv1_slice_crcs(_slice(b"")) is True  # a footer alone: an empty slice
    assert ffv1_slice_crcs(_slice(b"abc") + _slice(bytes(range(256)) * 280)) is True  # a size beyond 16 bits
    assert ffv1_slice_crcs(b"\x05" + GOOD) is None  # a byte left before the first slice: its sizes are wrong


def test_each_picture_is_judged_by_whether_its_file_stores_crcs() -> None:
    assert _verdicts(GOOD, DAMAGED, b"", GOOD) == [True, False, True, True]
    assert _verdicts(GOOD, NO_FOOTERS) == [True, False]  # the last picture's slice sizes damaged
    assert _verdicts(NO_FOOTERS, GOOD) == [False, True]  # so was the first's: told by the second
    assert _verdicts(NO_FOOTERS, NO_FOOTERS) == [True, True]  # a file written without CRCs
    assert _verdicts(NO_FOOTERS) == [True]  # one picture: read as FFmpeg reads it
    assert _verdicts(b"", NO_FOOTERS, NO_FOOTERS) == [True, True, True]  # an empty packet tells nothing
