"""Foxglove's image messages in protobuf, ``foxglove.RawImage`` and ``foxglove.CompressedImage``, as the Foxglove SDK
logs them to MCAP; their pixels decode as the ROS messages' do (:mod:`streamfuse.capture.ros_images`).

Protobuf's wire format: each field is a key (field number << 3 | wire type) and a value: a varint (0), 8 bytes (1), a
length and bytes (2: strings, bytes, nested messages) or 4 bytes (5); the last of a repeated field wins. The field
numbers are those of Foxglove's schemas: RawImage timestamp 1, width 2, height 3, encoding 4, step 5, data 6;
CompressedImage timestamp 1, data 2, format 3; google.protobuf.Timestamp seconds 1, nanos 2 (signed: int64, int32,
a negative one a 10-byte varint in two's complement).

>>> stamp, image = decode("foxglove.RawImage", bytes.fromhex("0a0408051007" "1502000000" "1d01000000"
...                                                     "2205" + b"mono8".hex() + "2d02000000" "32020a14"))
>>> stamp, image.tolist()
(5000000007, [[10, 20]])
"""

from __future__ import annotations

import numpy as np

from streamfuse.capture.ros_images import Unsupported, decompressed, pixels

__all__ = ["SCHEMAS", "decode", "stamp"]

SCHEMAS = ("foxglove.RawImage", "foxglove.CompressedImage")
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("a protobuf varint is cut short or too long")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _signed(value: int) -> int:
    """A varint as protobuf's int64 and int32 read it: two's complement in 64 bits."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


def _take(data: bytes, pos: int, n: int) -> bytes:
    if pos + n > len(data):
        raise ValueError(f"a protobuf field of {n} bytes where {len(data) - pos} are left")
    return bytes(data[pos:pos + n])


def _fields(data: bytes) -> dict[int, int | bytes]:
    """Field number -> value of one protobuf message (ints for varints and fixed-size fields, bytes otherwise)."""
    fields: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire == _BYTES:
            n, pos = _varint(data, pos)
            value, pos = _take(data, pos, n), pos + n
        elif wire in (_FIXED64, _FIXED32):
            n = 8 if wire == _FIXED64 else 4
            value, pos = int.from_bytes(_take(data, pos, n), "little"), pos + n
        else:
            raise ValueError(f"protobuf wire type {wire} (field {key >> 3}) is none a message has")
        fields[key >> 3] = value
    return fields


def _get(fields: dict[int, int | bytes], number: int, kind: type, default: int | bytes) -> int | bytes:
    value = fields.get(number, default)
    if not isinstance(value, kind):
        raise ValueError(f"its field {number} is not {'an integer' if kind is int else 'bytes'}")
    return value


def decode(schema: str, data: bytes, encoding: str = "protobuf") -> tuple[int, np.ndarray]:
    """The timestamp (ns, negative before 1970) and the image of one protobuf message of ``schema`` (one of
    :data:`SCHEMAS`).

    Raises:
        Unsupported: another schema or message encoding, an image encoding not supported (one line).
        ValueError: a message cut short or inconsistent (one line).
    """
    fields, stamp_ns = _stamped(schema, data, encoding)
    if schema == "foxglove.CompressedImage":
        form = _get(fields, 3, bytes, b"").decode("utf-8", "replace")
        return stamp_ns, decompressed(form, _get(fields, 2, bytes, b""))
    width, height, step = (_get(fields, n, int, 0) for n in (2, 3, 5))
    encoding = _get(fields, 4, bytes, b"").decode("utf-8", "replace")
    return stamp_ns, pixels(height, width, encoding, False, step, _get(fields, 6, bytes, b""))


def stamp(schema: str, data: bytes, encoding: str = "protobuf") -> int:
    """The timestamp (ns) of one protobuf message of ``schema``, its image left as it is (:func:`decode` raises
    alike)."""
    return _stamped(schema, data, encoding)[1]


def _stamped(schema: str, data: bytes, encoding: str) -> tuple[dict[int, int | bytes], int]:
    """The fields of one message of ``schema`` and its timestamp, ns."""
    if encoding != "protobuf":
        raise Unsupported(f"{schema} encoded as {encoding!r} is not read; Foxglove's images are read in protobuf, "
                          f"as the Foxglove SDK logs them, or as foxglove_msgs in cdr")
    if schema not in SCHEMAS:
        raise Unsupported(f"protobuf messages of {schema or 'no schema'} are not images; image schemas: "
                          f"{', '.join(SCHEMAS)}")
    fields = _fields(data)
    stamp_fields = _fields(_get(fields, 1, bytes, b""))
    return fields, _signed(_get(stamp_fields, 1, int, 0)) * 1_000_000_000 + _signed(_get(stamp_fields, 2, int, 0))
