"""A ROS 1 bag (``rosbag record``'s format 2.0, a ``.bag`` file), read as it was recorded, without ROS 1 installed.

A bag is a run of records, each a header of ``name=value`` fields (its ``op`` says what the record is) and data: the
bag header (where the index starts), chunks (plain, or bz2 / LZ4 frames as ``rosbag record --bz2 / --lz4`` writes
them) holding connection records (topic, message type) and messages (connection, receive time, serialized bytes),
then the index: the connections again and, per chunk, how many messages each connection has there. Messages are read
chunk by chunk in file order, the order the recorder received them in, so a bag whose recorder was killed (left as
``.bag.active``, without an index) still reads up to where it was cut: a chunk it had open (its header's sizes still
0) is read record by record, its records following it as they are or, compressed, as the part of the chunk's bz2 or
LZ4 stream the recorder had flushed (whole compressed blocks: a block still in the recorder's memory is lost).
"""

from __future__ import annotations

import bz2
import logging
import os
import struct
from collections.abc import Iterator
from io import BytesIO
from typing import BinaryIO

import lz4.frame

__all__ = ["BagError", "bag1_messages", "bag1_topics", "is_bag1"]

log = logging.getLogger(__name__)

MAGIC = b"#ROSBAG V2.0\n"
OP_MESSAGE, OP_BAG_HEADER, OP_CHUNK, OP_CHUNK_INFO, OP_CONNECTION = 2, 3, 5, 6, 7


class BagError(Exception):
    """Not a ROS 1 bag of format 2.0, or damaged where the reading got to."""


def is_bag1(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith((".bag", ".bag.active"))


Record = tuple[dict[str, bytes], bytes]


def _records(f: BinaryIO) -> Iterator[Record]:
    """(header fields, data) of each record from ``f``'s position to its end; a record cut short raises BagError
    (before anything is read for it: a damaged length must not allocate gigabytes)."""
    pos = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(pos)
    while True:
        start = f.read(4)
        if not start:
            return
        header = _exactly(f, _length(start), end, "a record's header")
        data = _exactly(f, _length(f.read(4)), end, "a record's data")
        yield _fields(header), data


def _length(raw: bytes) -> int:
    if len(raw) < 4:
        raise BagError("cut short in a record's length")
    return struct.unpack("<I", raw)[0]


def _exactly(f: BinaryIO, n: int, end: int, what: str) -> bytes:
    left = end - f.tell()
    if n > left:
        raise BagError(f"cut short in {what} ({left} of {n} bytes)")
    return f.read(n)


def _fields(header: bytes) -> dict[str, bytes]:
    """The ``name=value`` fields of a record header (each behind its uint32 length)."""
    fields, pos = {}, 0
    while pos < len(header):
        n = _length(header[pos:pos + 4])
        field = header[pos + 4:pos + 4 + n]
        if len(field) < n or b"=" not in field:
            raise BagError("a record header field is malformed")
        name, _, value = field.partition(b"=")
        fields[name.decode("ascii", "replace")] = value
        pos += 4 + n
    return fields


def _field(fields: dict[str, bytes], name: str, fmt: str) -> int:
    value = fields.get(name, b"")
    if len(value) != struct.calcsize(fmt):
        raise BagError(f"a record without a valid {name!r} field")
    return struct.unpack(fmt, value)[0]


def _time_ns(fields: dict[str, bytes]) -> int:
    """A message's receive time: a ROS 1 time, seconds and nanoseconds (uint32 each)."""
    _field(fields, "time", "<Q")  # its presence and size
    sec, nsec = struct.unpack("<II", fields["time"])
    return sec * 1_000_000_000 + nsec


def _op(fields: dict[str, bytes]) -> int:
    return _field(fields, "op", "<B")


def _chunk_records(fields: dict[str, bytes], data: bytes, *, cut: bool = False) -> Iterator[Record]:
    """The records of a chunk, uncompressed (to the size its header states: no more is decompressed); ``cut``: an
    open chunk's compressed stream up to the end of the file, whatever of it decompresses."""
    size, compression = _field(fields, "size", "<I"), fields.get("compression", b"").decode("ascii", "replace")
    decompressors = {"bz2": bz2.BZ2Decompressor, "lz4": lz4.frame.LZ4FrameDecompressor}
    if compression not in ("none", *decompressors):
        raise BagError(f"a chunk compressed as {compression!r} (none, bz2, lz4)")
    stream = decompressors[compression]() if compression != "none" else None
    try:
        data = stream.decompress(data, max_length=-1 if cut else size) if stream else data
    except (OSError, ValueError, RuntimeError, EOFError) as exc:
        raise BagError(f"a {compression} chunk does not decompress ({exc})") from None
    if len(data) != size and not cut:
        raise BagError(f"a chunk holds {len(data)} bytes, its header says {size}")
    finished = not cut or stream is None or stream.eof
    return _records(BytesIO(data)) if finished else _then_cut(_records(BytesIO(data)), compression)


def _then_cut(records: Iterator[Record], compression: str) -> Iterator[Record]:
    """``records``, then BagError: an open chunk's stream that ends before its end mark lost what was not flushed."""
    yield from records
    raise BagError(f"cut short in the {compression} chunk its recorder had open (what it had not flushed is lost)")


def _index_pos(f: BinaryIO) -> int:
    """Where the bag's index starts (0: it has none, as a killed recorder leaves it), read from its start; the file
    is left past the bag header. BagError when it is not a ROS 1 bag, or a closed one cut before its index."""
    if f.read(len(MAGIC)) != MAGIC:
        raise BagError("not a ROS 1 bag (format 2.0: no '#ROSBAG V2.0' line at its start)")
    fields, _ = next(_records(f), ({}, b""))
    if _op(fields) != OP_BAG_HEADER:
        raise BagError("its first record is not the bag header")
    index_pos = _field(fields, "index_pos", "<Q")
    if index_pos >= (size := os.fstat(f.fileno()).st_size):  # a closed bag copied in part: its messages end early
        raise BagError(f"cut short: its index would start at byte {index_pos}, past its end ({size} bytes)")
    return index_pos


def _topic_and_type(fields: dict[str, bytes], data: bytes) -> tuple[str, str]:
    """A connection record's topic and message type."""
    return (fields.get("topic", b"").decode("utf-8", "replace"),
            _fields(data).get("type", b"").decode("utf-8", "replace"))


def bag1_topics(path: str | os.PathLike) -> dict[str, tuple[str, int]] | None:
    """Topic -> (message type, messages) of every topic of the bag, from its index; None without one (a killed
    recorder's bag: only reading it through tells).

    Raises:
        BagError: not a ROS 1 bag, or its index is damaged.
        OSError: it cannot be read.
    """
    with open(path, "rb") as f:
        index_pos = _index_pos(f)
        if index_pos == 0:
            return None
        f.seek(index_pos)
        conns, counts = {}, {}
        for fields, data in _records(f):
            op = _op(fields)
            if op == OP_CONNECTION:
                conns[_field(fields, "conn", "<I")] = _topic_and_type(fields, data)
            elif op == OP_CHUNK_INFO:  # (connection, messages) pairs
                for conn, n in struct.iter_unpack("<II", data[:len(data) // 8 * 8]):
                    counts[conn] = counts.get(conn, 0) + n
    found: dict[str, tuple[str, int]] = {}
    for conn, (topic, kind) in conns.items():  # a topic recorded from two publishers has two connections
        found[topic] = kind, found.get(topic, (kind, 0))[1] + counts.get(conn, 0)
    return found


def bag1_messages(path: str | os.PathLike, topics: tuple[str, ...]) -> Iterator[tuple[str, str, str, int, bytes]]:
    """(message type, ``ros1``, topic, receive time ns, bytes) of the messages on ``topics``, in recorded order.

    Raises:
        BagError: not a ROS 1 bag, or damaged where the reading got to.
        OSError: it cannot be read.
    """
    conns: dict[int, tuple[str, str]] = {}
    with open(path, "rb") as f:
        if unclosed := _index_pos(f) == 0:  # the recorder writes it on closing the bag: all it wrote is read; say so
            log.warning("ROS 1 bag %s has no index (its recorder did not close it): read to where it ends", path)
        for fields, data in _records(f):
            is_chunk = _op(fields) == OP_CHUNK
            if is_chunk and unclosed and not data and fields.get("compression", b"none") != b"none":
                data = f.read()  # the chunk it had open: its compressed stream runs to the end of the file
                inner = _chunk_records(fields, data, cut=True)
            else:
                inner = _chunk_records(fields, data) if is_chunk else iter([(fields, data)])
            for rec_fields, rec_data in inner:
                op = _op(rec_fields)
                if op == OP_CONNECTION:
                    conns[_field(rec_fields, "conn", "<I")] = _topic_and_type(rec_fields, rec_data)
                elif op == OP_MESSAGE:
                    conn = _field(rec_fields, "conn", "<I")
                    if conn not in conns:
                        raise BagError(f"a message on connection {conn}, which no record before it names")
                    topic, kind = conns[conn]
                    if topic in topics:
                        yield kind, "ros1", topic, _time_ns(rec_fields), rec_data
