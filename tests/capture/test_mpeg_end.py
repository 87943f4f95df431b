"""MPEG program and transport streams built by hand (:mod:`streamfuse.capture.mpeg_end`): a complete one says
nothing, whatever its packs' stuffing, an unbounded video packet, VCD's zero bytes or start codes in audio data, its
transport packets' size or its padding; a packet cut short is a certain cut."""

from __future__ import annotations

import io

import pytest

from streamfuse.capture.container_walk import Cut
from streamfuse.capture.mpeg_end import program_stream, transport_stream


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


def _ts(n: int, size: int = 188, fill: int = 0x11) -> bytes:
    """``n`` transport packets of ``size`` bytes (M2TS's 192 start with a 4-byte time stamp), payload ``fill``."""
    sync = 4 if size == 192 else 0
    packet = bytes([fill]) * sync + b"\x47\x01\x00" + bytes([fill]) * (size - sync - 3)
    return packet * n


def _ts_end(data: bytes):
    return transport_stream(io.BytesIO(data), len(data))


@pytest.mark.parametrize("size", [188, 192, 204])
def test_transport_packets_of_each_size_end_a_complete_file_and_a_packet_cut_short_is_certain(size):
    assert _ts_end(_ts(30, size)) is None and _ts_end(_ts(2, size)) is None  # fewer packets than those checked too
    assert _ts_end(_ts(30, size, fill=0)) is None and _ts_end(_ts(30, size, fill=0xFF)) is None  # payload like padding
    for cut in (_ts(30, size) + _ts(1, size)[:100], _ts(30, size, fill=0xFF) + _ts(1, size, fill=0xFF)[:60]):
        assert _ts_end(cut) == Cut("the file does not end with a whole MPEG-TS packet", True)


@pytest.mark.parametrize("tail", [b"\0" * 1000, b"\xff" * 70_000, b"hello"])  # padding, longer than a block; a trailer
def test_bytes_after_the_last_transport_packet_that_start_none_are_said_not_taken_for_a_cut(tail):
    assert _ts_end(_ts(30) + tail) == Cut(f"{len(tail)} unrecognised bytes follow its last whole MPEG-TS packet", False)


def test_a_null_packets_start_may_begin_padding_but_not_in_m2ts():
    padded = _ts(30) + b"\x47\x1f\xff" + b"\0" * 100  # a recorder's padding to a size, ending in a null packet's start
    assert _ts_end(padded) == Cut("103 unrecognised bytes follow its last whole MPEG-TS packet", False)
    m2ts = _ts(30, 192) + b"\0" * 4 + b"\x47\x1f\xff" + b"\0" * 100  # a cut among M2TS's null packets
    assert _ts_end(m2ts) == Cut("the file does not end with a whole MPEG-TS packet", True)
    assert _ts_end(b"\0" * 5000) == Cut("the file does not end with a whole MPEG-TS packet", True)  # no packet at all


def _pack_mpeg1() -> bytes:
    """An MPEG-1 pack header ('0010' bits): 12 bytes, no stuffing."""
    return b"\0\0\1\xba" + bytes([0x21, 0, 1, 0, 1, 0x80, 0, 1])


def _units() -> bytes:
    """One packet of each kind that states its length: system header, stream map, private streams 1 and 2, padding,
    audio, video and a stream of the 0xF0-0xFF codes."""
    kinds = ((0xBB, 12), (0xBC, 10), (0xBD, 20), (0xBE, 16), (0xBF, 8), (0xC0, 30), (0xE0, 40), (0xF0, 11), (0xFF, 7),
             (0xF3, 9))
    return b"".join(_packet(code, bytes([code]) * n) for code, n in kinds)


@pytest.mark.parametrize("pack", [_pack_mpeg1, _pack])
def test_packs_of_each_header_and_packets_of_each_kind_end_complete_and_a_cut_in_the_last_is_certain(pack):
    data = b"".join(pack() + _units() for _ in range(3))
    assert _check(data) is None
    assert all(_check(data[:-k]).certain for k in range(1, 10))  # the last packet holds 15 bytes


@pytest.mark.parametrize("last_pack", [False, True])
def test_a_program_end_code_after_the_last_packet_ends_the_file_complete(last_pack):
    # an MPEG-PS writer ends the stream with the program end code (00 00 01 B9), a unit of its own 4 bytes, after
    # its last packet or a last pack header
    data = b"".join(_pack_mpeg1() + _units() for _ in range(3)) + (_pack_mpeg1() if last_pack else b"") + b"\0\0\1\xb9"
    assert _check(data) is None
    last = "pack header" if last_pack else "stream 0xF3"
    assert _check(data[:-1]) == Cut(f"3 unrecognised bytes follow its last whole MPEG-PS packet ({last})", False)


def test_zero_bytes_to_the_end_are_an_empty_sector_and_bytes_after_them_are_said():
    data = b"".join(_pack_mpeg1() + _units() for _ in range(3))
    assert _check(data + b"\0" * 3000) is None
    assert _check(data + b"\0" * 100 + b"x") == Cut("101 unrecognised bytes follow its last whole MPEG-PS packet "
                                                    "(stream 0xF3)", False)


@pytest.mark.parametrize("cut", [b"\0\0\1\xba", _pack_mpeg1()[:11], _pack()[:13]],
                         ids=["start code", "MPEG-1 header", "MPEG-2 header"])
def test_a_pack_header_cut_short_after_the_last_packet_is_reported_not_taken_for_a_certain_cut(cut):
    # as a packet header cut before its length: the pack header's own bytes are not all there to say where it ends
    data = b"".join(_pack_mpeg1() + _units() for _ in range(3)) + cut
    assert _check(data) == Cut(f"{len(cut)} unrecognised bytes follow its last whole MPEG-PS packet (stream 0xF3)",
                               False)


def test_padding_that_starts_in_the_block_before_the_last_is_found_where_it_starts():
    """Walked back over in blocks of 64 KiB: padding over a block long after more than a block of packets is found
    from the packets' end, where the last whole packet is looked for."""
    assert _ts_end(_ts(300) + b"\0" * 70_000) == Cut("70000 unrecognised bytes follow its last whole MPEG-TS packet",
                                                    False)


@pytest.mark.parametrize("trailer", [4096, 4097])
def test_the_last_packet_is_looked_for_up_to_4096_bytes_before_the_padding(trailer):
    # a trailer, then padding: the last whole packet is found where it ends 4096 bytes before the padding, and not
    # further back (a file that ends in a longer stretch of other bytes is taken for one cut inside a packet)
    found = _ts_end(_ts(30) + b"\x01" * trailer + b"\0" * 1000)
    if trailer <= 4096:
        assert found == Cut(f"{trailer + 1000} unrecognised bytes follow its last whole MPEG-TS packet", False)
    else:
        assert found == Cut("the file does not end with a whole MPEG-TS packet", True)


def test_an_empty_file_holds_no_transport_packet():
    assert _ts_end(b"") == Cut("the file does not end with a whole MPEG-TS packet", True)
