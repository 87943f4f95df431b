"""MCAP's stream reader as a recording's read takes it: records of a type it does not know skipped, as the format
has readers do (its opcodes 0x01-0x7F are kept for its later versions, 0x80-0xFF for applications), counted and said
in one warning; but a chunk whose own opcode byte was damaged, which no chunk CRC covers and which a reader would
skip with its frames, and zeros (a power loss's blocks; no record has opcode 0x00), are damage."""

from __future__ import annotations

import logging
import struct
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Iterator

from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.records import Channel, DataEnd, Metadata, Schema
from mcap.stream_reader import StreamReader

__all__ = ["KnownRecords"]

log = logging.getLogger(__name__)
_KNOWN = frozenset(int(op) for op in Opcode)
_COMPRESSIONS = (b"", b"zstd", b"lz4")
_CHUNK_HEAD = struct.Struct("<QQQII")  # a chunk's times, uncompressed size and CRC, its compression's length


class KnownRecords(StreamReader):
    """The stream reader of ``path``'s records. ``others``: where the schema, channel and metadata records and the
    data section's end go as they are read; ``skipped``: the records of an unknown type skipped, by opcode."""

    def __init__(self, stream: BinaryIO, path: Path, *, validate_crcs: bool, others: list[object] | None) -> None:
        super().__init__(stream, validate_crcs=validate_crcs)
        self._path, self._others = path, others
        self.skipped: Counter[int] = Counter()
        self.data_ended = False  # the data section's end read: a fault after it is in the summary or footer

    @property
    def records(self) -> Iterator[object]:
        for record in super().records:  # a chunk's own records too, which do not pass _read_record
            if self._others is not None and isinstance(record, (Schema, Channel, Metadata, DataEnd)):
                self._others.append(record)
            self.data_ended = self.data_ended or isinstance(record, DataEnd)
            yield record

    def _read_record(self, opcode: int, length: int) -> object:
        if opcode in _KNOWN:
            return super()._read_record(opcode, length)
        body = self._stream.read(length)
        if opcode == 0 or _a_chunk(body):
            raise McapError(f"a record of unknown type 0x{opcode:02x}: damaged")
        self.skipped[opcode] += 1
        return None

    def said(self) -> None:
        """The one warning of the records skipped, if any."""
        if self.skipped:
            kinds = ", ".join(f"0x{op:02x}" for op in sorted(self.skipped))
            log.warning(f"recording {self._path}: {sum(self.skipped.values())} records of a type this reader does not "
                        f"know ({kinds}: a later MCAP version's or an application's) skipped, as the format has "
                        f"readers do")


def _a_chunk(body: bytes) -> bool:
    """Whether ``body`` is laid out as a Chunk record's: its compression one MCAP names, its records' length the
    rest of it."""
    if len(body) < _CHUNK_HEAD.size + 8:
        return False
    *_, named = _CHUNK_HEAD.unpack_from(body)
    at = _CHUNK_HEAD.size + named
    if named > 4 or body[_CHUNK_HEAD.size:at] not in _COMPRESSIONS or len(body) < at + 8:
        return False
    return int.from_bytes(body[at:at + 8], "little") == len(body) - at - 8
