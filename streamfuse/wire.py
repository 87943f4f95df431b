"""The wire format both ends speak: schemas, header fields and their checks, topics, and encoding and decoding.

Every fused frame is one multipart message ``[topic, header, image]`` (README "Wire format" is the reference for
consumers):

- ``topic``: UTF-8 bytes, e.g. ``b"fused/rig0"`` (SUB prefix filtering: subscribe to ``b"fused/"`` for all rigs).
- ``header``: UTF-8 JSON object, schema ``"streamfuse.fused/1"`` (see :data:`HEADER_FIELDS`).
- ``image``: the raw pixels, ``height`` rows of ``step`` bytes (``bgr8``: B, G, R per pixel; ``mono8``: 1 byte).

The ``format`` header field says what the third part holds: ``raw`` pixels (schema ``/1``, unchanged), or under
schema ``"streamfuse.fused/2"`` (which a ``/1`` consumer refuses instead of misreading) a ``jpeg`` or ``h264``
frame, or for consumers on the same host an empty part plus the shared-memory slot of the pixels (``shm``, sent on
``shm/<topic>`` only while a subscriber asks for it; see :mod:`streamfuse.shm_pool`).

Statistics go out as ``[stats_topic, JSON]`` with schema ``"streamfuse.stats/1"``. The publisher
(:mod:`streamfuse.publish`) writes this format and the client (:mod:`streamfuse.client`) reads it; everything a peer
sends is checked here before it is used.
"""

from __future__ import annotations

import operator
import re
import sys
import time
from typing import Any, Sequence

import numpy as np
import zmq

from streamfuse.checks import shown
from streamfuse.frames import FusedFrame
from streamfuse.shm_pool import MAX_SLOTS, valid_pool_name
from streamfuse.wire_json import MalformedMessage, check_tree, encode_json, parse_object

__all__ = ["SCHEMA", "SCHEMA_2", "STATS_SCHEMA", "FORMATS", "ENCODINGS", "HEADER_FIELDS", "FORMAT_FIELDS",
           "SHM_TOPIC_PREFIX", "RING_TOPIC_PREFIX", "PREVIEW_PREFIX", "FUSED_PREFIX", "STATS_PREFIX",
           "MAX_HEADER_BYTES", "MAX_SIDE", "MalformedMessage", "shm_topic", "ring_topic", "preview_topic",
           "check_image", "read_parts",
           "HeaderEncoder", "encode_json", "decode_header", "decode_message", "raw_image", "decode_stats"]

SCHEMA = "streamfuse.fused/1"  # format raw: what every consumer since the first release reads
SCHEMA_2 = "streamfuse.fused/2"  # any other format: a /1 consumer refuses it, never misreads the payload
FORMATS = ("raw", "jpeg", "h264", "shm")  # what the third part holds
SHM_TOPIC_PREFIX = "shm/"  # shared-memory descriptors go on shm/<topic>, which no /1 consumer subscribes to
RING_TOPIC_PREFIX = "ring/"  # ring/shm/<topic>: a subscription that says "I read the pool's ring"; never sent on
STATS_SCHEMA = "streamfuse.stats/1"
ENCODINGS = {"mono8": 1, "bgr8": 3}  # encoding -> channels (bytes per pixel)

# Every header field and its JSON type; times are integer ns (epoch: time.time_ns()).
HEADER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": str,  # "streamfuse.fused/1"; the number after "/" changes only on incompatible changes
    "seq": int,  # publisher's own counter, +1 per published frame from 0 (gaps = frames this subscriber missed)
    "height": int,  # rows
    "width": int,  # columns
    "encoding": str,  # "bgr8" or "mono8"
    "step": int,  # bytes per row
    "is_bigendian": int,  # 0 (8-bit data)
    "frame_id": str,  # optical frame the image is registered to (the visible camera's)
    "seq_ir": int,  # IR source sequence number of the fused pair
    "seq_vis": int,  # visible source sequence number
    "t_capture_ir_ns": int,  # IR capture time, epoch ns (file replay: the file's timestamps)
    "t_capture_vis_ns": int,  # visible capture time, epoch ns
    "t_fused_ns": int,  # fusion finished, epoch ns
    "t_publish_ns": int,  # handed to ZeroMQ, epoch ns
    "t_capture_clock": str,  # what the capture times count: epoch | recorded | media (from 0); "" from older publishers
    "fuser": str,  # fuser name, e.g. "hclfuse"
    "fuser_version": str,
    "timings_ms": dict,  # per-stage latency of this frame, stage name -> ms (float)
    "format": str,  # raw | jpeg | h264 | shm (absent in /1 messages of older publishers: raw)
}
# Fields present only with some formats, and their JSON type.
FORMAT_FIELDS: dict[str, dict[str, type]] = {
    "h264": {"keyframe": int},  # 1: an IDR frame a decoder can start at (SPS/PPS included); 0: needs the previous
    "shm": {"shm_pool": str, "shm_slot": int, "shm_gen": int},  # pool name, slot index, generation written
}

PREVIEW_PREFIX = "preview/"  # preview topics: preview/ir/<topic>, preview/vis/<topic> (see preview_topic)
FUSED_PREFIX = "fused/"  # the default fused topics: fused/<rig>; a consumer's default topic (every rig)
STATS_PREFIX = "stats/"  # the default stats topics: stats/<rig>; a consumer's default stats topic
MAX_HEADER_BYTES = 65_536  # a header is ~600 bytes; the bound keeps a peer from making us parse megabytes of JSON
MAX_SIDE = 65_535  # largest height and width on the wire
_INT64 = (-(2**63), 2**63 - 1)
_COUNTER = (0, 2**63 - 1)
# Inclusive range of every int header field: a peer's numbers stay within what the consumer's arithmetic,
# int64 arrays and file names can hold (Python ints are unbounded, JSON numbers too).
_INT_RANGES: dict[str, tuple[int, int]] = {
    "seq": _COUNTER, "seq_ir": _COUNTER, "seq_vis": _COUNTER, "is_bigendian": (0, 1),
    "height": (1, MAX_SIDE), "width": (1, MAX_SIDE), "step": (1, 4 * MAX_SIDE),
    "t_capture_ir_ns": _INT64, "t_capture_vis_ns": _INT64, "t_fused_ns": _INT64, "t_publish_ns": _INT64,
    "keyframe": (0, 1), "shm_slot": (0, MAX_SLOTS - 1), "shm_gen": (2, 2**63 - 2)}
# Per format, its fields' ``(key, type)`` and its int fields' ``(key, (lo, hi))``, merged once: every message is checked
_FIELD_CHECKS = {fmt: (tuple(fields.items()), tuple((k, r) for k, r in _INT_RANGES.items() if k in fields))
                 for fmt in FORMATS for fields in [{**HEADER_FIELDS, **FORMAT_FIELDS.get(fmt, {})}]}


def _quick_plan(types: tuple[tuple[str, Any], ...], ranges: tuple[tuple[str, tuple[int, int]], ...]) -> tuple[Any, ...]:
    """A format's fields ordered text first, then the bounded ints, then the rest: ``(their getter, their types, how
    many are text, the ints' lows, highs)``, so that :func:`_fields_pass` checks a header with a few C-level calls."""
    bounds = dict(ranges)
    order = sorted(types, key=lambda kt: (kt[1] is not str, kt[0] not in bounds))
    keys = tuple(key for key, _ in order)
    lows, highs = zip(*(bounds[key] for key in keys if key in bounds))
    return operator.itemgetter(*keys), tuple(tp for _, tp in order), sum(tp is str for _, tp in order), lows, highs


_QUICK_PLANS = {fmt: _quick_plan(*checks) for fmt, checks in _FIELD_CHECKS.items()}
_NUMBER_TYPES = {int, float}
_MAX_TIMING_MS = 1e12  # a stage latency beyond ~30 years is a forged number, not a measurement
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone ones pass json.loads ("\ud800" or as bytes); UTF-8 cannot hold them


def shm_topic(topic: str) -> str:
    """The topic of the shared-memory descriptors of fused topic (or prefix) ``topic``.

    >>> shm_topic("fused/rig0")
    'shm/fused/rig0'
    """
    return SHM_TOPIC_PREFIX + topic


def ring_topic(topic: str) -> str:
    """The subscription by which a reader of the pool's notification ring announces itself (nothing is sent on it).

    >>> ring_topic("fused/rig0")
    'ring/shm/fused/rig0'
    """
    return RING_TOPIC_PREFIX + shm_topic(topic)


def preview_topic(topic: str, stream: str) -> str:
    """The topic of the ``stream`` (``ir`` or ``vis``) previews that go with fused topic (or prefix) ``topic``.

    >>> preview_topic("fused/rig0", "ir")
    'preview/ir/fused/rig0'
    """
    return f"{PREVIEW_PREFIX}{stream}/{topic}"


def check_image(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a ``(H, W, 3)`` BGR or ``(H, W)`` grey uint8 array."""
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"fused image must be (H, W, 3) BGR or (H, W) grey uint8, got {image.shape} {image.dtype}")


# Header numbers that change from frame to frame, in the order HeaderEncoder.encode formats them.
_FRAME_NUMBERS = ("seq", "seq_ir", "seq_vis", "t_capture_ir_ns", "t_capture_vis_ns", "t_fused_ns", "t_publish_ns")
_TEXT_FIELDS = {fmt: tuple(k for k, tp in FORMAT_FIELDS.get(fmt, {}).items() if tp is str) for fmt in FORMATS}
_NUMBER_FIELDS = {fmt: tuple(k for k, tp in FORMAT_FIELDS.get(fmt, {}).items() if tp is int) for fmt in FORMATS}


class HeaderEncoder:
    """Encodes the JSON headers of one publisher's fused frames (every field of :data:`HEADER_FIELDS` and the
    format's :data:`FORMAT_FIELDS`; ``t_publish_ns`` is stamped here).

    The fields that stay the same from frame to frame (geometry, names, format, pool) are encoded once into a
    ``%``-template per combination, so a frame costs one formatting of its numbers and stage timings instead of
    building and encoding a dict. The image's shape and dtype are part of a combination, so :func:`check_image`
    runs on each new one: a frame that fails it never gets a header.

    Args:
        frame_id: the ``frame_id`` field.
        capture_clock: the ``t_capture_clock`` field.
    """

    _MAX_TEMPLATES = 16  # combinations kept (formats x image sizes x fusers); a new one past that starts afresh

    def __init__(self, frame_id: str, capture_clock: str = "epoch") -> None:
        self.frame_id, self.capture_clock = frame_id, capture_clock
        self._templates: dict[tuple[Any, ...], bytes] = {}

    def encode(self, fused: FusedFrame, image: np.ndarray, *, seq: int, fmt: str = "raw", **fields: str | int) -> bytes:
        """The header of ``fused`` sent as ``fmt`` (``image``: its C-contiguous pixels, checked by
        :func:`check_image`); ``fields`` are the format's own (``shm``: ``shm_pool``, ``shm_slot``, ``shm_gen``)."""
        texts = tuple(fields[k] for k in _TEXT_FIELDS[fmt])
        key = (fmt, image.shape, image.strides[0], image.dtype, fused.fuser, fused.fuser_version, texts)
        template = self._templates.get(key) or self._template(key, fused, image, fields)
        pair = fused.pair
        timings = b"{}" if not fused.timings_ms else encode_json(
            {k: round(float(v), 3) for k, v in fused.timings_ms.items()})
        return template % (seq, pair.ir.seq, pair.vis.seq, pair.ir.t_capture_ns, pair.vis.t_capture_ns,
                           fused.t_fused_ns, time.time_ns(), *[fields[k] for k in _NUMBER_FIELDS[fmt]], timings)

    def _template(self, key: tuple[Any, ...], fused: FusedFrame, image: np.ndarray, fields: dict[str, Any]) -> bytes:
        check_image(image)
        fmt = key[0]
        fixed = {"schema": SCHEMA if fmt == "raw" else SCHEMA_2, "height": image.shape[0], "width": image.shape[1],
                 "encoding": "bgr8" if image.ndim == 3 else "mono8", "step": image.strides[0], "is_bigendian": 0,
                 "frame_id": self.frame_id, "t_capture_clock": self.capture_clock, "fuser": fused.fuser,
                 "fuser_version": fused.fuser_version, "format": fmt,
                 **{k: fields[k] for k in _TEXT_FIELDS[fmt]}}
        numbers = b"".join(b',"%s":%%d' % k.encode() for k in (*_FRAME_NUMBERS, *_NUMBER_FIELDS[fmt]))
        template = encode_json(fixed)[:-1].replace(b"%", b"%%") + numbers + b',"timings_ms":%s}'
        if len(self._templates) >= self._MAX_TEMPLATES:
            self._templates.clear()
        self._templates[key] = template
        return template


def read_parts(sock: zmq.Socket, names: tuple[str, ...]) -> list[zmq.Frame]:
    """One message's parts (``zmq.Frame``, no copy), read whole; the rest of the message read but not kept past one
    more part than ``names`` (the parts it should have), so that one of millions of empty parts (2 bytes each on the
    wire) is not held part by part as it is read: 3 million took a subscriber from 99 MB to 649 MB and growing.

    Raises:
        MalformedMessage: more parts than ``names``, saying how many.
    """
    parts, count, most = [sock.recv(copy=False)], 1, len(names) + 1
    while parts[-1].more:  # recv_multipart's getsockopt(RCVMORE) per part costs more than the frames' flag
        parts[min(count, most):], count = [sock.recv(copy=False)], count + 1
    if count > len(names):
        raise MalformedMessage(f"expected {len(names)} parts [{', '.join(names)}], got {count}")
    return parts


def decode_header(parts: Sequence[bytes | zmq.Frame]) -> dict[str, Any]:
    """Validate one ``[topic, header, payload]`` message of any format and return its header.

    Every field is type- and range-checked, including the format's own (:data:`FORMAT_FIELDS`); a raw payload's size
    must match ``height * step``, a shared-memory message's payload must be empty and its pool name a publisher
    pool's (:func:`streamfuse.shm_pool.valid_pool_name`). A ``/1`` header without ``format`` is raw.

    Raises:
        MalformedMessage: one line naming what is wrong (part count, JSON, schema, a field, size vs shape).
    """
    if len(parts) != 3:
        raise MalformedMessage(f"expected 3 parts [topic, header, image], got {len(parts)}")
    if len(parts[1]) > MAX_HEADER_BYTES:
        raise MalformedMessage(f"header is {len(parts[1])} bytes, more than {MAX_HEADER_BYTES}")
    header = parse_object(parts[1], "header")
    header.setdefault("t_capture_clock", "")  # not said by publishers before it
    if header.get("schema") == SCHEMA:
        header.setdefault("format", "raw")
        if header["format"] != "raw":
            raise MalformedMessage(f"format {shown(header['format'])} under schema {SCHEMA} (only raw)")
    elif header.get("schema") != SCHEMA_2:
        raise MalformedMessage(f"unsupported schema {shown(header.get('schema'))}; expected {SCHEMA!r} or "
                               f"{SCHEMA_2!r}")
    _check_fields(header)
    channels = ENCODINGS.get(header["encoding"])
    if channels is None:
        raise MalformedMessage(f"unknown encoding {shown(header['encoding'])}; expected one of "
                               f"{', '.join(ENCODINGS)}")
    height, width, step, fmt = header["height"], header["width"], header["step"], header["format"]
    if step < width * channels or (fmt != "raw" and step != width * channels):
        raise MalformedMessage(f"bad image geometry height={height} width={width} step={step} "
                               f"(need step >= width * {channels}, equal unless raw)")
    size = len(parts[2])
    if fmt == "raw" and size != height * step:
        raise MalformedMessage(f"image payload is {size} bytes, header says {height} x {step} = {height * step}")
    if fmt in ("jpeg", "h264") and size == 0:
        raise MalformedMessage(f"empty {fmt} payload")
    if fmt == "shm" and size != 0:
        raise MalformedMessage(f"shm message with a {size}-byte payload (must be empty)")
    if fmt == "shm" and not valid_pool_name(header["shm_pool"]):
        raise MalformedMessage(f"shm_pool {shown(header['shm_pool'])} is not a publisher pool name")
    if fmt == "shm" and header["shm_gen"] % 2:
        raise MalformedMessage(f"shm_gen {header['shm_gen']} is odd (a slot being written)")
    return header


def decode_message(parts: Sequence[bytes | zmq.Frame]) -> tuple[dict[str, Any], np.ndarray]:
    """Validate and decode one raw ``[topic, header, image]`` message (other formats: :class:`streamfuse.client.
    Subscriber` decodes them).

    Args:
        parts: the message parts as bytes or ``zmq.Frame`` (``recv_multipart(copy=False)``: the image is not copied).

    Returns:
        ``(header, image)``: the header dict and a ``(height, width, 3)`` (bgr8) or ``(height, width)`` (mono8)
        uint8 view of the payload (no copy; read-only when the parts are bytes).

    Raises:
        MalformedMessage: one line naming what is wrong (part count, JSON, schema, a field, size vs shape, format).
    """
    header = decode_header(parts)
    if header["format"] != "raw":
        raise MalformedMessage(f"format {header['format']} needs a decoder: streamfuse.client.Subscriber has them")
    return header, raw_image(header, parts[2])


def raw_image(header: dict[str, Any], part: bytes | zmq.Frame | memoryview) -> np.ndarray:
    """The ``(height, width, 3)`` or ``(height, width)`` uint8 view of a validated raw payload (rows of ``step``)."""
    buffer = part.buffer if isinstance(part, zmq.Frame) else memoryview(part)
    channels = ENCODINGS[header["encoding"]]
    height, width = header["height"], header["width"]
    image = np.frombuffer(buffer, np.uint8, height * header["step"]).reshape(height, -1)[:, : width * channels]
    return image.reshape(height, width, channels) if channels > 1 else image


def _check_fields(header: dict[str, Any]) -> None:
    """Every field of :data:`HEADER_FIELDS` and of the format's :data:`FORMAT_FIELDS` present, of its type and, for
    numbers, in range; raises MalformedMessage."""
    if header.get("format") not in FORMATS:
        raise MalformedMessage(f"header field format={shown(header.get('format'))} is missing or not one of "
                               f"{' | '.join(FORMATS)}")
    types, ranges = _FIELD_CHECKS[header["format"]]
    if not _fields_pass(header, _QUICK_PLANS[header["format"]]):
        _check_each_field(header, types, ranges)
    timings = header["timings_ms"].values()
    if not (set(map(type, timings)) <= _NUMBER_TYPES and all(map(_MAX_TIMING_MS.__ge__, map(abs, timings)))):
        _check_timings(header["timings_ms"])
    if len(header) > len(types):  # fields of a newer publisher: consumers pass them on too (the viewer's page)
        check_tree(header, "header fields")


def _fields_pass(header: dict[str, Any], plan: tuple[Any, ...]) -> bool:
    """True when every field is of its exact type (JSON's ints are never bools, its values never subclasses), every
    text ASCII and every int in range: what :func:`_check_each_field` accepts, without a Python loop over fields."""
    fields, exact, texts, lows, highs = plan
    try:
        values = fields(header)
    except KeyError:
        return False
    if tuple(map(type, values)) != exact:
        return False
    ints = values[texts:texts + len(lows)]
    return (all(map(str.isascii, values[:texts])) and all(map(operator.le, lows, ints))
            and all(map(operator.le, ints, highs)))


def _check_each_field(header: dict[str, Any], types: tuple[tuple[str, Any], ...],
                      ranges: tuple[tuple[str, tuple[int, int]], ...]) -> None:
    """Field by field: raises MalformedMessage naming the first field of the wrong type, not text or out of range."""
    for key, tp in types:
        value = header.get(key)
        if not isinstance(value, tp) or isinstance(value, bool):
            raise MalformedMessage(f"header field {key}={shown(value)} is missing or not "
                                   f"{getattr(tp, '__name__', tp)}")
        if tp is str and not value.isascii() and _SURROGATE.search(value):  # Foxglove encodes them as UTF-8
            raise MalformedMessage(f"header field {key}={shown(value)} is not Unicode text (a lone surrogate)")
    for key, (lo, hi) in ranges:
        if not lo <= header[key] <= hi:
            raise MalformedMessage(f"header field {key}={shown(header[key])} is out of range {lo}..{hi}")


def _check_timings(timings: dict[str, Any]) -> None:
    """Stage by stage: raises MalformedMessage naming the first latency that is not a number within bounds."""
    for stage, ms in timings.items():
        # int/float comparisons are exact for any int size; NaN fails the bound too
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not abs(ms) <= _MAX_TIMING_MS:
            raise MalformedMessage(f"header field timings_ms[{shown(stage)}]={shown(ms)} is not a "
                                   f"number of ms within +-{_MAX_TIMING_MS:g}")


def decode_stats(parts: Sequence[bytes | zmq.Frame]) -> dict[str, Any]:
    """Validate and decode one ``[stats_topic, JSON]`` message.

    What consumers compute with is checked where present: ``t_ns`` an int of epoch ns (0..2^63-1), ``uptime_s``,
    ``interval_s``, ``rate_fps`` and ``mean_rate_fps`` numbers, ``stages`` an object of objects of numbers
    (``median_ms``, ...), ``counters`` an object of numbers; any other field passes, but no number anywhere may be
    NaN or infinite.

    Raises:
        MalformedMessage: one line naming what is wrong (part count, JSON, schema, a field).
    """
    if len(parts) != 2:
        raise MalformedMessage(f"expected 2 parts [topic, stats], got {len(parts)}")
    stats = parse_object(parts[1], "stats")
    if stats.get("schema") != STATS_SCHEMA:
        raise MalformedMessage(f"unsupported schema {shown(stats.get('schema'))}; expected {STATS_SCHEMA!r}")
    t_ns = stats.get("t_ns", 0)
    if isinstance(t_ns, bool) or not isinstance(t_ns, int) or not _COUNTER[0] <= t_ns <= _COUNTER[1]:
        raise MalformedMessage(f"stats field t_ns={shown(t_ns)} is not an int in {_COUNTER[0]}..{_COUNTER[1]}")
    stages, counters = stats.get("stages", {}), stats.get("counters", {})
    if not isinstance(stages, dict) or not all(isinstance(stage, dict) for stage in stages.values()):
        raise MalformedMessage(f"stats field stages={shown(stages)} is not an object of objects")
    if not isinstance(counters, dict):
        raise MalformedMessage(f"stats field counters={shown(counters)} is not an object")
    numbers = [(key, stats[key]) for key in ("uptime_s", "interval_s", "rate_fps", "mean_rate_fps") if key in stats]
    numbers += [(f"counters[{shown(key)}]", value) for key, value in counters.items()]
    numbers += [(f"stages[{shown(name)}][{shown(key)}]", value) for name, stage in stages.items()
                for key, value in stage.items()]
    for where, value in numbers:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= sys.float_info.max:
            raise MalformedMessage(f"stats field {where}={shown(value)} is not a finite number")
    check_tree(stats, "stats")
    return stats
