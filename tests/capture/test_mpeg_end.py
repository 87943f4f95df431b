"""MPEG program streams built by hand (:func:`streamfuse.capture.mpeg_end.program_stream`): a complete one says
nothing, whatever its packs' stuffing, an unbounded video packet, VCD's zero bytes or start codes in audio data."""

from __future__ import annotations

import io

from streamfuse.capture.mpeg_end import program_stream


def _pack(stuffing: int = 0) -> bytes:
    """An MPEG-2 pack header ('01' bits) with ``stuffing`` stuffing bytes."""
    return b"\0\0\1\xba" + bytes([0x44, 0, 4, 0, 4, 1, 1, 0x89, 0xc3]) + bytes([0xf8 | stuffing]) + b"\xff" * stuffing


def _packet(code: int, payload: bytes, length: int | None = None) -> bytes:
    return b"\0\0\1" + bytes([code]) + (len(payload) if length is None else length).to_bytes(2, "big") + payload


def _check(data: bytes):
    return program_stream(io.BytesIO(data), len(data))


def test_packs_with_stuffing_bytes_end_after_them():
    data = b"".join(_pack(stuffing) + _packet(0xE0, b"\x11" * 40) for stuffing in (3, 7, 0, 5))
    assert _check(data) is None
    assert _check(data[:-10]).certain  # a cut in the last packet is still one


def test_a_last_video_packet_of_unbounded_length_is_not_taken_for_a_cut():
    assert _check(_pack() + _packet(0xC0, b"\x22" * 30) + _pack() + _packet(0xE0, b"\x11" * 50, length=0)) is None


def test_zero_bytes_between_packets_end_where_the_next_start_code_begins():
    data = _pack() + _packet(0xC0, b"\x22" * 30) + b"\0" * 100 + _pack() + _packet(0xC0, b"\x22" * 30)
    assert _check(data) is None


def test_a_start_code_in_audio_data_is_not_where_the_walk_starts():
    payload = (b"\x11" * 994 + b"\0\0\1\xc0\x00\x07") * 60  # looks like a 13-byte audio packet every 1000 bytes
    data = b"".join(_pack() + _packet(0xC0, payload) for _ in range(4))
    assert len(data) > 1 << 17 and _check(data) is None


def test_a_packet_header_cut_before_its_length_is_reported_not_taken_for_a_certain_cut():
    """Five bytes of a start code after the last whole packet: its length is not there to say it runs past the end,
    so they are bytes that follow the last whole unit (a cut, or something appended), not a certain cut."""
    cut = _check(_pack() + _packet(0xE0, b"\x11" * 40) + b"\0\0\1\xe0\x07")
    assert cut is not None and not cut.certain and cut.what.startswith("5 unrecognised bytes")
