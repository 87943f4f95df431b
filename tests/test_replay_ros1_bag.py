"""A ROS 1 bag (``rosbag record``'s ``.bag``, written here by rosbags, not by our code) replays as a ROS 2 bag does
(tests/test_replay_bags.py), its chunks bz2 or LZ4 compressed too; a bag left by a killed recorder or damaged stops the
run in one line after the frames it could read."""

from __future__ import annotations

import bz2
import re
import struct

import lz4.frame
import numpy as np
import pytest
from helpers_ros import ROS1_COMPRESSED, ROS1_IMAGE, write_bag1
from test_replay_bags import CAMERA, N, PERIOD, THERMAL, _cfg, ros1_messages

from streamfuse.capture.mcap_source import image_topics
from streamfuse.capture.ros1_bag import BagError, bag1_messages
from streamfuse.replay import ReplayError, run_replay
from streamfuse.video import decode_frames


def _bag(path, compression: str = "none", chunk_bytes: int = 1 << 20):
    """N frames of each camera, logged 40-80 ms after their header stamps, as a robot's ``rosbag record`` keeps
    them; one chunk for about every ``chunk_bytes``."""
    write_bag1(path, {THERMAL: ROS1_IMAGE, CAMERA: ROS1_COMPRESSED, "/imu": ROS1_IMAGE}, ros1_messages(4),
               compression=compression, chunk_bytes=chunk_bytes)
    return path


@pytest.mark.parametrize("compression", ["bz2", "lz4"])  # plain chunks: tests/test_replay_bags.py
def test_a_ros1_bag_with_compressed_chunks_replays_every_pair(tmp_path, compression):
    bag = _bag(tmp_path / "robot.bag", compression, chunk_bytes=16 << 10)  # several chunks
    out, before = tmp_path / "fused.mkv", bag.read_bytes()
    summary = run_replay(_cfg(), ir_path=bag, out_path=out)
    assert bag.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["fused.mkv", "robot.bag"]
    assert summary.complete and summary.frames == {"ir": N, "vis": N} and summary.written == N
    assert [round(float(t) * 1000) for t, _ in decode_frames(out)] == [round(i * PERIOD / 1e6) for i in range(N)]


def _chunk_ends(data: bytes) -> list[int]:
    """Where each top-level record of a bag ends (after its magic line), up to its index."""
    index_pos = struct.unpack_from("<Q", data, data.index(b"index_pos=") + 10)[0]
    pos, ends = 13, []
    while pos < index_pos:
        pos += 4 + struct.unpack_from("<I", data, pos)[0]
        pos += 4 + struct.unpack_from("<I", data, pos)[0]
        ends.append(pos)
    return ends


def test_a_bag_its_recorder_left_cut_short_replays_to_where_it_was_cut_then_stops_in_one_line(tmp_path):
    data = _bag(tmp_path / "robot.bag", chunk_bytes=16 << 10).read_bytes()
    ends = _chunk_ends(data)  # the bag header, then each chunk and its index records
    cut = (ends[3] + ends[4]) // 2  # inside the record after the third chunk's (or its index's)
    head = data[:cut].replace(data[data.index(b"index_pos=") + 10:][:8], bytes(8), 1)  # no index: as left
    active = tmp_path / "robot.bag.active"
    active.write_bytes(head)
    assert image_topics(active) is None  # no index to list topics from: reading it through tells
    with pytest.raises(ReplayError, match=r"replay stopped: .*robot.bag.active is truncated or corrupt after "
                                          r"([1-9]\d*) frames \(cut short in a record's data") as caught:
        run_replay(_cfg(), ir_path=active, out_path=tmp_path / "fused.mkv")
    assert int(re.search(r"after (\d+) frames", str(caught.value)).group(1)) < 2 * N
    assert active.read_bytes() == head


@pytest.mark.parametrize("into, what", [(2, r"a record's length"), (-1, r"a record's data \(\d+ of \d+ bytes\)")])
def test_a_bag_its_recorder_left_cut_at_the_edge_of_a_record_is_cut_short(tmp_path, into, what):
    """A cut a byte before a record's end, or inside the length of the record after it, is one: neither the end of a
    bag whose records are all whole nor a record to read in part."""
    data = _bag(tmp_path / "robot.bag", chunk_bytes=16 << 10).read_bytes()
    active = tmp_path / "robot.bag.active"
    active.write_bytes(data[:_chunk_ends(data)[3] + into].replace(data[data.index(b"index_pos=") + 10:][:8], bytes(8),
                                                                 1))  # no index: as left
    with pytest.raises(BagError, match=f"^cut short in {what}$"):
        list(bag1_messages(active, (THERMAL, CAMERA)))


def test_a_closed_bag_cut_short_is_said_to_be_so_not_to_have_no_topics(tmp_path):
    """A closed bag copied in part (a transfer cut, a full disk): its index, at its end, is missing."""
    data = _bag(tmp_path / "robot.bag", chunk_bytes=16 << 10).read_bytes()
    cut = tmp_path / "cut.bag"
    cut.write_bytes(data[:_chunk_ends(data)[3]])
    with pytest.raises(ReplayError, match=r"cut.bag .*cut short: its index would start at byte [0-9]+, past its end "
                                          rf"\({_chunk_ends(data)[3]} bytes\)"):
        run_replay(_cfg(), ir_path=cut, out_path=tmp_path / "fused.mkv")
    assert not (tmp_path / "fused.mkv").exists()


def test_a_damaged_chunk_or_a_file_that_is_no_bag_stops_in_one_line(tmp_path):
    bag = _bag(tmp_path / "robot.bag", "bz2")
    data = bytearray(bag.read_bytes())
    data[_chunk_ends(bytes(data))[0] + 200] ^= 0xFF  # a byte of the first chunk's bz2 stream
    bag.write_bytes(bytes(data))
    with pytest.raises(ReplayError, match=r"robot.bag is truncated or corrupt after 0 frames \(a bz2 chunk does not "
                                          r"decompress"):
        run_replay(_cfg(), ir_path=bag, out_path=tmp_path / "fused.mkv")
    notes = tmp_path / "notes.bag"
    notes.write_text("not a bag\n")
    with pytest.raises(ReplayError, match=r"notes.bag is truncated or corrupt after 0 frames \(not a ROS 1 bag"):
        run_replay(_cfg(), ir_path=notes, out_path=tmp_path / "fused2.mkv")


def test_a_chunk_or_a_message_whose_header_does_not_fit_its_data_is_damaged(tmp_path):
    """A compression this reads not (rosbag writes none, bz2 and lz4), a message on a connection not named before
    it, a size that is not its data's, a field of another size than its type's: damaged."""
    data = _bag(tmp_path / "robot.bag").read_bytes()
    bag = tmp_path / "other.bag"
    bag.write_bytes(data.replace(b"compression=none", b"compression=zstd", 1))
    with pytest.raises(BagError, match=r"^a chunk compressed as 'zstd' \(none, bz2, lz4\)$"):
        list(bag1_messages(bag, (THERMAL, CAMERA)))
    conn = data.index(b"conn=") + 5  # the first connection record's: its messages name a connection unknown
    bag.write_bytes(data[:conn] + struct.pack("<I", 99) + data[conn + 4:])
    with pytest.raises(BagError, match=r"^a message on connection \d+, which no record before it names$"):
        list(bag1_messages(bag, (THERMAL, CAMERA)))
    at = data.index(b"size=") + 5  # the first chunk's
    size = struct.unpack_from("<I", data, at)[0]
    bag.write_bytes(data[:at] + struct.pack("<I", size - 8) + data[at + 4:])
    with pytest.raises(BagError, match=f"^a chunk holds {size} bytes, its header says {size - 8}$"):
        list(bag1_messages(bag, (THERMAL, CAMERA)))
    header = _field(b"op", b"\x03\x00") + _field(b"index_pos", bytes(8))  # a bag header whose op is 2 bytes
    bag.write_bytes(b"#ROSBAG V2.0\n" + struct.pack("<I", len(header)) + header + bytes(4))
    with pytest.raises(BagError, match=r"^a record without a valid 'op' field$"):
        list(bag1_messages(bag, (THERMAL, CAMERA)))


def _walk(data: bytes, pos: int, end: int) -> list[tuple[int, int, bytes]]:
    """(start, end, header) of each record of ``data[pos:end]``."""
    found = []
    while pos < end:
        start, n = pos, struct.unpack_from("<I", data, pos)[0]
        header = data[pos + 4:pos + 4 + n]
        pos += 4 + n
        pos += 4 + struct.unpack_from("<I", data, pos)[0]
        found.append((start, pos, header))
    return found


def _field(name: bytes, value: bytes) -> bytes:
    return struct.pack("<I", len(name) + 1 + len(value)) + name + b"=" + value


def _messages(data: bytes, record: tuple[int, int, bytes], cut: int | None = None) -> list[tuple[int, int, bytes]]:
    """The records inside a chunk ``record`` of ``data`` (the first ``cut`` of them)."""
    start, stop, header = record
    return _walk(data, start + 4 + len(header) + 4, stop)[:cut]


def test_a_chunk_its_killed_recorder_had_open_is_read_record_by_record_with_a_warning(tmp_path, caplog):
    """rosbag writes a chunk's header with sizes 0 when it opens it and the records after it as they come; a
    recorder killed then leaves them so, without an index: every message written is read."""
    data = _bag(tmp_path / "robot.bag", chunk_bytes=16 << 10).read_bytes()
    index_at = data.index(b"index_pos=") + 10
    chunks = [r for r in _walk(data, 13, struct.unpack_from("<Q", data, index_at)[0]) if b"op=\x05" in r[2]]
    kept = _messages(data, chunks[1], -3)  # the second chunk, open when the recorder was killed, its last 3 unwritten
    header = _field(b"compression", b"none") + _field(b"op", b"\x05") + _field(b"size", bytes(4))
    head = bytearray(data[:chunks[1][0]] + struct.pack("<I", len(header)) + header + bytes(4)
                     + data[kept[0][0]:kept[-1][1]])
    head[index_at:index_at + 8] = bytes(8)  # no index: the recorder writes where it starts on closing the bag
    active = tmp_path / "robot.bag.active"
    active.write_bytes(bytes(head))
    expected = sum(b"op=\x02" in h for _, _, h in _messages(data, chunks[0]) + kept)
    with caplog.at_level("WARNING"):
        summary = run_replay(_cfg(), ir_path=active, out_path=tmp_path / "fused.mkv")
    assert summary.complete and sum(summary.frames.values()) == expected and 2 < expected < 2 * N
    assert "robot.bag.active has no index (its recorder did not close it)" in caplog.text


@pytest.mark.parametrize("compression", ["bz2", "lz4"])
def test_a_compressed_chunk_its_killed_recorder_had_open_gives_what_it_had_flushed(tmp_path, compression):
    """rosbag compresses an open chunk as it writes it (libbz2 and roslz4 write whole blocks as they fill) and fills in
    its header's sizes on closing it: a recorder killed then leaves the stream's flushed part at the end of the file,
    its messages readable up to the last whole block."""
    data = _bag(tmp_path / "robot.bag", chunk_bytes=16 << 10).read_bytes()  # plain chunks: their records, to compress
    index_at = data.index(b"index_pos=") + 10
    chunks = [r for r in _walk(data, 13, struct.unpack_from("<Q", data, index_at)[0]) if b"op=\x05" in r[2]]
    inside = [m for chunk in chunks[1:] for m in _messages(data, chunk)]  # the open chunk's records, as written
    records = b"".join(data[start:stop] for start, stop, _ in inside)
    if compression == "bz2":
        stream = bz2.BZ2Compressor(1)  # 100 kB blocks (rosbag's are 900 kB: the same layout, larger)
        stream = stream.compress(records) + stream.flush()
    else:
        stream = lz4.frame.compress(records, block_size=lz4.frame.BLOCKSIZE_MAX64KB)  # rosbag's blocks: 1 MiB
    flushed = stream[:-50]  # killed while its last block was being written
    header = _field(b"compression", compression.encode()) + _field(b"op", b"\x05") + _field(b"size", bytes(4))
    head = bytearray(data[:chunks[1][0]] + struct.pack("<I", len(header)) + header + bytes(4) + flushed)
    head[index_at:index_at + 8] = bytes(8)
    active = tmp_path / "robot.bag.active"
    active.write_bytes(bytes(head))
    whole = len(bz2.BZ2Decompressor().decompress(flushed) if compression == "bz2"
                else lz4.frame.LZ4FrameDecompressor().decompress(flushed))  # what its whole blocks hold
    before = sum(b"op=\x02" in h for _, _, h in _messages(data, chunks[0]))
    ends = np.cumsum([stop - start for start, stop, _ in inside])  # where each record ends in the chunk
    read = sum(b"op=\x02" in h for (_, _, h), end in zip(inside, ends) if end <= whole)
    assert read > 0 and whole < len(records)
    with pytest.raises(ReplayError, match=rf"robot.bag.active is truncated or corrupt after {before + read} frames "
                                          r"\(cut short in a record's"):
        run_replay(_cfg(), ir_path=active, out_path=tmp_path / "fused.mkv")
    assert active.read_bytes() == head


def test_an_open_chunk_whose_flushed_blocks_end_between_records_still_says_what_was_lost(tmp_path):
    data = _bag(tmp_path / "robot.bag", chunk_bytes=16 << 10).read_bytes()
    index_at = data.index(b"index_pos=") + 10
    chunks = [r for r in _walk(data, 13, struct.unpack_from("<Q", data, index_at)[0]) if b"op=\x05" in r[2]]
    inside = [m for chunk in chunks[1:] for m in _messages(data, chunk)]
    first = b"".join(data[start:stop] for start, stop, _ in inside[:3])
    pad = _field(b"op", b"\x04")  # a record the reader passes over (index data), sized so the first block ends here
    filler = 65536 - len(first) - 8 - len(pad)
    first += struct.pack("<I", len(pad)) + pad + struct.pack("<I", filler) + bytes(filler)
    rest = b"".join(data[start:stop] for start, stop, _ in inside[3:])
    stream = lz4.frame.compress(first + rest, block_size=lz4.frame.BLOCKSIZE_MAX64KB, block_linked=False,
                                store_size=False)
    second = 7 + 4 + (struct.unpack_from("<I", stream, 7)[0] & 0x7FFFFFFF)  # after the frame header and block 1
    flushed = stream[:second + 4 + (struct.unpack_from("<I", stream, second)[0] & 0x7FFFFFFF) // 2]  # half of block 2
    header = _field(b"compression", b"lz4") + _field(b"op", b"\x05") + _field(b"size", bytes(4))
    head = bytearray(data[:chunks[1][0]] + struct.pack("<I", len(header)) + header + bytes(4) + flushed)
    head[index_at:index_at + 8] = bytes(8)
    active = tmp_path / "robot.bag.active"
    active.write_bytes(bytes(head))
    assert len(lz4.frame.LZ4FrameDecompressor().decompress(flushed)) == 65536  # the first block, whole
    read = sum(b"op=\x02" in h for _, _, h in _messages(data, chunks[0]) + inside[:3])
    with pytest.raises(ReplayError, match=rf"after {read} frames \(cut short in the lz4 chunk its recorder had open "
                                          r"\(what it had not flushed is lost\)\)"):
        run_replay(_cfg(), ir_path=active, out_path=tmp_path / "fused.mkv")


def test_a_bags_index_counts_the_messages_of_every_chunk_and_every_publisher_of_a_topic(tmp_path):
    """The index holds a count per chunk and connection: a topic's messages are their sum over the chunks, and over
    the connections of a topic two nodes published (``rosbag record`` keeps one connection per publisher)."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    assert image_topics(_bag(tmp_path / "robot.bag", chunk_bytes=16 << 10)) == {
        THERMAL: (ROS1_IMAGE, N), CAMERA: (ROS1_COMPRESSED, N), "/imu": (ROS1_IMAGE, 0)}
    store, path = get_typestore(Stores.ROS1_NOETIC), tmp_path / "two.bag"
    writer = Writer(path)
    writer.chunk_threshold = 16 << 10
    writer.open()
    conns = [writer.add_connection(CAMERA, "sensor_msgs/msg/CompressedImage", typestore=store, callerid=node)
             for node in ("/camera_a", "/camera_b")]
    for i, (_, log_ns, data) in enumerate(m for m in ros1_messages(4) if m[0] == CAMERA):
        writer.write(conns[i % 2], log_ns, data)
    writer.close()
    assert image_topics(path) == {CAMERA: (ROS1_COMPRESSED, N)}


def test_a_closed_bag_cut_just_before_its_index_is_said_to_be_cut_short(tmp_path):
    data = _bag(tmp_path / "robot.bag").read_bytes()
    index_pos = struct.unpack_from("<Q", data, data.index(b"index_pos=") + 10)[0]
    cut = tmp_path / "cut.bag"
    cut.write_bytes(data[:index_pos])  # every chunk whole, the index gone
    with pytest.raises(ReplayError, match=rf"cut.bag .*cut short: its index would start at byte {index_pos}, past its "
                                          rf"end \({index_pos} bytes\)"):
        run_replay(_cfg(), ir_path=cut, out_path=tmp_path / "fused.mkv")
