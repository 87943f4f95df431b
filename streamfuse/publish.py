"""PublishConfig, the ZeroMQ Publisher of fused frames, and the wire format's decoder.

Wire format (README "Wire format" is the reference for consumers): a PUB socket that binds; every fused frame
is one multipart message ``[topic, header, image]``:

- ``topic``: UTF-8 bytes, e.g. ``b"fused/rig0"`` (SUB prefix filtering: subscribe to ``b"fused/"`` for all rigs).
- ``header``: UTF-8 JSON object, schema ``"streamfuse.fused/1"`` (see :data:`HEADER_FIELDS`).
- ``image``: the raw pixels, ``height`` rows of ``step`` bytes (``bgr8``: B, G, R per pixel; ``mono8``: 1 byte).

The ``format`` header field says what the third part holds: ``raw`` pixels (schema ``/1``, unchanged), or under
schema ``"streamfuse.fused/2"`` (which a ``/1`` consumer refuses instead of misreading) a ``jpeg`` or ``h264``
frame, or for consumers on the same host an empty part plus the shared-memory slot of the pixels (``shm``, sent on
``shm/<topic>`` only while a subscriber asks for it; see :mod:`streamfuse.shm_pool`).

Statistics go out as ``[stats_topic, JSON]`` with schema ``"streamfuse.stats/1"``.

Live semantics: PUB/SUB never blocks the publisher. Each subscriber has a queue of ``sndhwm`` messages; when a
slow subscriber's queue is full, libzmq drops that subscriber's copy and the others still get theirs, so the
publisher cannot see those drops: subscribers count them from gaps in ``seq``. With ``nodrop=True``
(``ZMQ_XPUB_NODROP``) a full queue instead makes ``send_fused`` return False and count the drop, but then one
stalled subscriber holds the frame back from every subscriber; ``wait_ms`` then turns the drop into bounded
back-pressure (offline replay into a recorder). The queues and TCP buffers of a stalled subscriber keep the
frames of the moment it stalled, so a live viewer must empty its socket continuously
(``Subscriber(latest=True)``). A subscriber that connects late (or while the publisher starts) misses the
frames sent before its subscription arrived (ZeroMQ's "slow joiner"): fine for a live stream, which only needs
the next frame.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import reprlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import zmq
import zmq.auth

from streamfuse.codecs import H264Encoder, JpegEncoder
from streamfuse.config import check
from streamfuse.frames import FusedFrame
from streamfuse.shm_pool import MAX_SLOTS, PoolError, ShmPool, remove_stale_pools, shm_supported, valid_pool_name

__all__ = ["PublishConfig", "Publisher", "MalformedMessage", "decode_message", "decode_stats", "preview_topic",
           "HEADER_FIELDS", "SCHEMA", "SCHEMA_2", "STATS_SCHEMA", "ENCODINGS", "MAX_HEADER_BYTES", "MAX_SIDE",
           "PREVIEW_PREFIX",
           "FORMATS", "FORMAT_FIELDS", "SHM_TOPIC_PREFIX", "decode_header", "raw_image", "shm_topic"]

log = logging.getLogger(__name__)

SCHEMA = "streamfuse.fused/1"  # format raw: what every consumer since the first release reads
SCHEMA_2 = "streamfuse.fused/2"  # any other format: a /1 consumer refuses it, never misreads the payload
FORMATS = ("raw", "jpeg", "h264", "shm")  # what the third part holds
SHM_TOPIC_PREFIX = "shm/"  # shared-memory descriptors go on shm/<topic>, which no /1 consumer subscribes to
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
MAX_HEADER_BYTES = 65_536  # a header is ~600 bytes; the bound keeps a peer from making us parse megabytes of JSON
MAX_SIDE = 65_535  # largest height and width on the wire
_INT64 = (-(2**63), 2**63 - 1)
_COUNTER = (0, 2**63 - 1)
# Inclusive range of every int header field: a peer's numbers stay within what the consumer's arithmetic,
# int64 arrays and file names can hold (Python ints are unbounded, JSON numbers too).
_INT_RANGES: dict[str, tuple[int, int]] = {
    "seq": _COUNTER, "seq_ir": _COUNTER, "seq_vis": _COUNTER,
    "height": (1, MAX_SIDE), "width": (1, MAX_SIDE), "step": (1, 4 * MAX_SIDE), "is_bigendian": (0, 1),
    "t_capture_ir_ns": _INT64, "t_capture_vis_ns": _INT64, "t_fused_ns": _INT64, "t_publish_ns": _INT64,
    "keyframe": (0, 1), "shm_slot": (0, MAX_SLOTS - 1), "shm_gen": (2, 2**63 - 2),
}
# Per format, its fields' ``(key, type)`` and its int fields' ``(key, (lo, hi))``, merged once here: the consumer
# checks every message.
_FIELD_CHECKS = {fmt: (tuple(fields.items()), tuple((k, r) for k, r in _INT_RANGES.items() if k in fields))
                 for fmt in FORMATS for fields in [{**HEADER_FIELDS, **FORMAT_FIELDS.get(fmt, {})}]}
_MAX_TIMING_MS = 1e12  # a stage latency beyond ~30 years is a forged number, not a measurement
_clip = reprlib.Repr()  # values quoted in error messages stay short (a forged field may be 60 kB long)
_clip.maxstring = _clip.maxother = _clip.maxlong = 40


class MalformedMessage(ValueError):
    """A message that does not follow the wire format; the text is one line saying what is wrong."""


@dataclass(frozen=True)
class PublishConfig:
    """The publish stage.

    Args:
        endpoint: ZeroMQ endpoint the PUB socket binds (``tcp://HOST:PORT``, ``ipc://PATH``); loopback by default.
        topic: topic of fused frames (first message part).
        stats_topic: topic of the telemetry messages.
        sndhwm: messages queued per subscriber before that subscriber's frames are dropped (small = fresh frames).
        nodrop: ``ZMQ_XPUB_NODROP``: a full subscriber queue makes ``send_fused`` return False (counted) instead
            of dropping that subscriber's copy silently; one stalled subscriber then holds frames back from all.
        wait_ms: with ``nodrop``, how long ``send_fused`` may wait for room before it drops the frame: lossless
            back-pressure for offline replay into a recorder. 0 = never wait (live).
        frame_id: ``frame_id`` header field: the optical frame the fused image is registered to.
        curve_secret_file: CURVE encryption: a secret-key file made by ``zmq.auth.create_certificates``; subscribers
            need the matching public key. Empty = plain TCP (keep the endpoint on loopback then).
        encoding: what ``topic`` carries: ``raw`` pixels, ``jpeg`` (``jpeg_quality``) or ``h264`` (one frame per
            message, no B-frames, a keyframe every ``h264_keyint`` frames) for consumers on other machines.
        jpeg_quality: JPEG quality, 1..100.
        h264_keyint: frames between H.264 keyframes (a new consumer waits for one), 1..600.
        h264_crf: H.264 constant rate factor, 0 (lossless) .. 51 (smallest).
        shm_slots: slots of the same-host shared-memory pool (one frame each; a frame is written there only while a
            consumer on this host reads the pool); 0 = off. Off with ``wait_ms`` too: lossless back-pressure cannot
            be promised through a pool whose writer never waits.
        preview_width: width of the downscaled IR and visible previews, sent on their own topics only while a
            subscriber asks for them (a viewer subscribes to ``preview/...``); 0 = never send previews.
    """

    endpoint: str = "tcp://127.0.0.1:5555"
    topic: str = "fused/rig0"
    stats_topic: str = "stats/rig0"
    sndhwm: int = 2
    nodrop: bool = False
    wait_ms: int = 0
    frame_id: str = "vis_optical_frame"
    curve_secret_file: str = ""
    preview_width: int = 320
    encoding: str = "raw"
    jpeg_quality: int = 90
    h264_keyint: int = 30
    h264_crf: int = 23
    shm_slots: int = 8

    def __post_init__(self) -> None:
        check(self.endpoint.split("://")[0] in ("tcp", "ipc", "inproc"), "endpoint", self.endpoint,
              "tcp://HOST:PORT | ipc://PATH | inproc://NAME")
        check(bool(self.topic), "topic", self.topic, "a non-empty string, e.g. fused/rig0")
        check(bool(self.stats_topic) and not self.stats_topic.startswith(self.topic) and
              not self.topic.startswith(self.stats_topic), "stats_topic", self.stats_topic,
              "a non-empty string that is not a prefix of topic (or the other way round)")
        check(1 <= self.sndhwm <= 1000, "sndhwm", self.sndhwm, "1..1000")
        check(self.wait_ms == 0 or (self.nodrop and 0 < self.wait_ms <= 60_000), "wait_ms", self.wait_ms,
              "0, or 1..60000 with nodrop: true (without nodrop a full queue drops, it never waits)")
        check(self.encoding in FORMATS[:3], "encoding", self.encoding, "raw | jpeg | h264")
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "1..100")
        check(1 <= self.h264_keyint <= 600, "h264_keyint", self.h264_keyint, "1..600")
        check(0 <= self.h264_crf <= 51, "h264_crf", self.h264_crf, "0..51")
        check(0 <= self.shm_slots <= MAX_SLOTS, "shm_slots", self.shm_slots, f"0 (off) .. {MAX_SLOTS}")
        check(not self.topic.startswith(SHM_TOPIC_PREFIX), "topic", self.topic, f"a topic not starting with "
              f"{SHM_TOPIC_PREFIX} (reserved for shared-memory descriptors)")
        check(self.preview_width == 0 or 16 <= self.preview_width <= 4096, "preview_width", self.preview_width,
              "0 (off) or 16..4096 pixels")


class Publisher:
    """Binds a PUB socket and sends fused frames and stats without blocking (unless ``wait_ms`` is set).

    Use as a context manager; ``dropped`` counts frames refused by a full queue (only with ``nodrop``),
    ``published`` those handed to ZeroMQ. The socket is an XPUB (wire-compatible with PUB) so that the publisher
    sees which topics subscribers ask for: previews, encoding and the shared-memory copy cost nothing while nobody
    reads them. ``shm_busy`` counts frames not put in the pool because readers held every slot.

    Args:
        cfg: the publish stage.
        stats_extra: fields added to every stats message (e.g. the fuser and its sampler).

    Raises:
        RuntimeError: the endpoint is already in use or cannot be bound (one line).
        FileNotFoundError: ``curve_secret_file`` does not exist.
    """

    def __init__(self, cfg: PublishConfig, stats_extra: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.published = 0
        self.dropped = 0
        self._topic = cfg.topic.encode()
        self._stats_topic = cfg.stats_topic.encode()
        self._stats_extra = stats_extra or {}
        self._previews = {s: preview_topic(cfg.topic, s).encode() for s in ("ir", "vis")}
        self._preview_subs: set[bytes] = set()  # live subscriptions to preview topics
        self._preview_seq = 0
        self._subs: set[bytes] = set()  # every topic prefix some subscriber asks for
        self._shm_topic = shm_topic(cfg.topic).encode()
        self._pool: ShmPool | None = None
        self._loaned: np.ndarray | None = None  # the pool slot handed out by loan(), until send_fused
        self._shm_on = cfg.shm_slots > 0 and cfg.wait_ms == 0 and shm_supported()
        if self._shm_on:
            remove_stale_pools()  # pools of publishers that were killed before they could free them
        self._jpeg = JpegEncoder(cfg.jpeg_quality) if cfg.encoding == "jpeg" else None
        self._h264 = H264Encoder(cfg.h264_keyint, cfg.h264_crf) if cfg.encoding == "h264" else None
        self._sock = zmq.Context.instance().socket(zmq.XPUB)
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every new subscriber: an H.264 keyframe for it at once
            self._sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
            self._sock.setsockopt(zmq.XPUB_NODROP, int(cfg.nodrop))
            self._sock.setsockopt(zmq.SNDTIMEO, cfg.wait_ms)  # 0: every send is non-blocking, like zmq.NOBLOCK
            if cfg.curve_secret_file:
                self._sock.curve_secretkey = _load_secret(cfg.curve_secret_file)
                self._sock.curve_server = True
            self._sock.bind(cfg.endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            if exc.errno == errno.EADDRINUSE:
                raise RuntimeError(f"endpoint {cfg.endpoint} is already in use (another publisher running? "
                                   f"set publish.endpoint to a free port)") from None
            raise RuntimeError(f"cannot bind endpoint {cfg.endpoint}: {exc}") from None
        except BaseException:
            self._sock.close(linger=0)
            raise
        #: the bound endpoint, with the real port when the config asked for ``tcp://HOST:*``.
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("publishing %s on %s (stats on %s)", cfg.topic, self.endpoint, cfg.stats_topic)
        if not cfg.curve_secret_file and _reachable_from_other_machines(self.endpoint):
            log.warning("publishing unencrypted on %s, reachable from other machines: anyone on the network can "
                        "read the frames; set publish.curve_secret_file (README, Encryption) or bind 127.0.0.1",
                        self.endpoint)

    @property
    def shm_busy(self) -> int:
        """Frames not written to the shared-memory pool because readers held every slot."""
        return self._pool.busy if self._pool is not None else 0

    @property
    def shm_pool(self) -> str:
        """Name of the shared-memory pool ('' before the first frame a same-host consumer asked for)."""
        return self._pool.name if self._pool is not None else ""

    def loan(self, shape: tuple[int, ...]) -> np.ndarray:
        """A writable uint8 array of ``shape`` (``(H, W, 3)`` BGR or ``(H, W)`` grey) to build the next fused image in.

        While a consumer on this host reads the shared-memory pool, the array is a pool slot, and :meth:`send_fused`
        of a frame whose ``image`` is this very array publishes it there without a copy; otherwise (no such consumer,
        shared memory off, every slot held by a reader) it is a new private array, sent like any other. Write it
        before that :meth:`send_fused` only: it turns read-only there. A new loan abandons one not sent.
        """
        self._poll_subscriptions()
        self._abandon_loan()
        nbytes = math.prod(shape)
        if self._shm_wanted() and self._has_pool(nbytes):
            loan = self._pool.loan(nbytes)
            if loan is not None:
                self._loaned = loan[1].reshape(shape)
                return self._loaned
        return np.empty(shape, np.uint8)

    def send_fused(self, fused: FusedFrame) -> bool:
        """Send one fused frame: on ``topic`` as ``[topic, header, payload]`` in ``encoding`` (raw goes zero-copy),
        and into the shared-memory pool with a descriptor on ``shm/<topic>``; each only while someone subscribes.

        Args:
            fused: its ``image`` is ``(H, W, 3)`` uint8 BGR or ``(H, W)`` uint8 grey; an array from :meth:`loan`
                reaches the pool without a copy.

        Returns:
            False when the frame was dropped because a subscriber's queue is full (``nodrop`` only). Never blocks,
            except for up to ``wait_ms`` when that is set.
        """
        loaned = self._loaned is not None and fused.image is self._loaned
        if not loaned:
            self._abandon_loan()
        image = np.ascontiguousarray(fused.image)
        header = _header(fused, image, seq=self.published, frame_id=self.cfg.frame_id)
        if not loaned:  # loan() has just taken them
            self._poll_subscriptions()
        outcomes = []  # True: sent, False: refused by a full queue
        if loaned:
            image.flags.writeable = False  # the slot is the consumers' now; a late write would go unnoticed
            outcomes.append(self._send_loaned(header, image))
        elif self._shm_wanted():
            outcomes.append(self._send_shm(header, image))
        if self._wanted(self._topic):
            # A pool slot is reused after ``shm_slots`` frames, maybe before ZeroMQ sent it: the payload is copied.
            outcomes.append(self._send_payload(header, image, copy=loaned))
        if False in outcomes:
            self.dropped += 1
        if True in outcomes or not outcomes:  # seq moves on once any subscriber got it: gaps mean missed frames
            self.published += 1
        return False not in outcomes

    def _shm_wanted(self) -> bool:
        return self._shm_on and self._wanted(self._shm_topic, explicit=SHM_TOPIC_PREFIX.encode())

    def _abandon_loan(self) -> None:
        if self._loaned is not None:
            self._pool.cancel()
            self._loaned = None

    def _send_payload(self, header: dict[str, Any], image: np.ndarray, copy: bool) -> bool:
        payload: Any = image
        if self._jpeg is not None:
            payload = self._jpeg.encode(image)
        elif self._h264 is not None:
            payload, key = self._h264.encode(image)
            header = {**header, "keyframe": int(key)}
        return self._send(self._topic, {**header, "format": self.cfg.encoding}, payload, copy)

    def _has_pool(self, nbytes: int) -> bool:
        """Have a pool with slots of at least ``nbytes`` (made on first use, remade bigger for a bigger frame)."""
        if self._pool is not None and nbytes <= self._pool.slot_bytes:
            return True
        if self._pool is not None:
            self._pool.close()
        try:
            self._pool = ShmPool(self.cfg.shm_slots, nbytes)
        except PoolError as exc:
            log.warning("shared memory off: %s; same-host consumers get the %s stream", exc, self.cfg.encoding)
            self._shm_on, self._pool = False, None
        return self._pool is not None

    def _send_shm(self, header: dict[str, Any], image: np.ndarray) -> bool:
        """Copy ``image`` into the pool and send its slot."""
        written = self._pool.write(image) if self._has_pool(image.nbytes) else None
        if written is None:  # no pool, or readers hold every slot: they see a gap in seq
            return True
        return self._send_slot(header, *written)

    def _send_loaned(self, header: dict[str, Any], image: np.ndarray) -> bool:
        """Publish the loaned slot ``image`` was written in and send it."""
        self._loaned = None
        return self._send_slot(header, *self._pool.commit(image.nbytes))

    def _send_slot(self, header: dict[str, Any], slot: int, gen: int) -> bool:
        return self._send(self._shm_topic, {**header, "format": "shm", "shm_pool": self._pool.name,
                                            "shm_slot": slot, "shm_gen": gen}, b"", copy=True)

    def _send(self, topic: bytes, header: dict[str, Any], payload: Any, copy: bool) -> bool:
        """One ``[topic, header, payload]`` message; False when a full queue refused it (``nodrop``)."""
        header["schema"] = SCHEMA if header["format"] == "raw" else SCHEMA_2
        header["t_publish_ns"] = time.time_ns()
        try:
            # The high-water mark is checked on the first part only; once it passes, the rest of the message
            # always follows, so a message is sent whole or not at all.
            self._sock.send(topic, zmq.SNDMORE)
            self._sock.send(_dumps(header), zmq.SNDMORE)
            self._sock.send(payload, copy=copy)
        except zmq.Again:
            return False
        return True

    def _poll_subscriptions(self) -> None:
        """Take the (un)subscriptions waiting on the XPUB socket (a few microseconds when there are none)."""
        while self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            msg = self._sock.recv(zmq.NOBLOCK)  # b"\x01" + topic: subscribe, b"\x00" + topic: last one gone
            topic = msg[1:]
            if msg[:1] == b"\x01":
                self._subs.add(topic)
                if self._h264 is not None and self._topic.startswith(topic):
                    self._h264.request_keyframe()  # a new consumer starts now instead of waiting for h264_keyint
            else:
                self._subs.discard(topic)
            if topic.startswith(PREVIEW_PREFIX.encode()):
                (self._preview_subs.add if msg[:1] == b"\x01" else self._preview_subs.discard)(topic)

    def _wanted(self, topic: bytes, explicit: bytes = b"") -> bool:
        """Whether a subscription matches ``topic``; with ``explicit``, only one that starts with it (a catch-all
        subscriber does not make the publisher fill the pool)."""
        return any(topic.startswith(sub) and sub.startswith(explicit) for sub in self._subs)

    def send_stats(self, stats: dict[str, Any]) -> bool:
        """Send a telemetry snapshot as ``[stats_topic, JSON]`` (numpy scalars and arrays become JSON numbers)."""
        body = {"schema": STATS_SCHEMA, "t_ns": time.time_ns(), **self._stats_extra, **stats}
        try:
            self._sock.send_multipart([self._stats_topic, json.dumps(body, default=_json_default).encode()],
                                      zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def previews_wanted(self) -> bool:
        """True while some subscriber asks for a preview topic; reads the subscriptions waiting on the XPUB socket
        (a few microseconds when there are none)."""
        self._poll_subscriptions()
        return bool(self.cfg.preview_width and self._preview_subs)

    def send_previews(self, fused: FusedFrame) -> None:
        """Send the IR and visible images of ``fused``'s pair, downscaled to ``preview_width``, on the preview topics
        that someone subscribes to, in the fused frames' format (never blocking; a full queue drops them)."""
        for stream, topic in self._previews.items():
            if any(topic.startswith(sub) for sub in self._preview_subs):
                image = _downscale(getattr(fused.pair, stream).image, self.cfg.preview_width)
                header = _encode_header(fused, image, seq=self._preview_seq, frame_id=self.cfg.frame_id)
                try:
                    self._sock.send_multipart([topic, header, image], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    pass  # a viewer that is behind gets the next one
        self._preview_seq += 1

    def close(self) -> None:
        """Close the socket at once (linger 0: queued frames are stale anyway) and free the shared-memory pool."""
        self._sock.close(linger=0)
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shm_topic(topic: str) -> str:
    """The topic of the shared-memory descriptors of fused topic (or prefix) ``topic``.

    >>> shm_topic("fused/rig0")
    'shm/fused/rig0'
    """
    return SHM_TOPIC_PREFIX + topic


def preview_topic(topic: str, stream: str) -> str:
    """The topic of the ``stream`` (``ir`` or ``vis``) previews that go with fused topic (or prefix) ``topic``.

    >>> preview_topic("fused/rig0", "ir")
    'preview/ir/fused/rig0'
    """
    return f"{PREVIEW_PREFIX}{stream}/{topic}"


def _downscale(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` resized to ``width`` columns (aspect kept; never enlarged), C-contiguous."""
    h, w = image.shape[:2]
    if w <= width:
        return np.ascontiguousarray(image)
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def _encode_header(fused: FusedFrame, image: np.ndarray, *, seq: int, frame_id: str) -> bytes:
    """The JSON header of ``fused`` as a raw frame (see :data:`HEADER_FIELDS`); ``image``: its C-contiguous pixels."""
    return _dumps(_header(fused, image, seq=seq, frame_id=frame_id))


def _dumps(header: dict[str, Any]) -> bytes:
    return _json_encoder.encode(header).encode()


def _header(fused: FusedFrame, image: np.ndarray, *, seq: int, frame_id: str) -> dict[str, Any]:
    """The header fields of ``fused`` as a raw frame; ``image`` is its C-contiguous pixel array."""
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"fused image must be (H, W, 3) BGR or (H, W) grey uint8, got {image.shape} {image.dtype}")
    pair = fused.pair
    header = {
        "schema": SCHEMA, "seq": seq,
        "height": image.shape[0], "width": image.shape[1], "encoding": "bgr8" if image.ndim == 3 else "mono8",
        "step": image.strides[0], "is_bigendian": 0, "frame_id": frame_id,
        "seq_ir": pair.ir.seq, "seq_vis": pair.vis.seq,
        "t_capture_ir_ns": pair.ir.t_capture_ns, "t_capture_vis_ns": pair.vis.t_capture_ns,
        "t_fused_ns": fused.t_fused_ns, "t_publish_ns": time.time_ns(),
        "fuser": fused.fuser, "fuser_version": fused.fuser_version,
        "timings_ms": {k: round(float(v), 3) for k, v in fused.timings_ms.items()}, "format": "raw",
    }
    return header


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
    header = _parse_json(parts[1], "header")
    if header.get("schema") == SCHEMA:
        header.setdefault("format", "raw")
        if header["format"] != "raw":
            raise MalformedMessage(f"format {_clip.repr(header['format'])} under schema {SCHEMA} (only raw)")
    elif header.get("schema") != SCHEMA_2:
        raise MalformedMessage(f"unsupported schema {_clip.repr(header.get('schema'))}; expected {SCHEMA!r} or "
                               f"{SCHEMA_2!r}")
    _check_fields(header)
    channels = ENCODINGS.get(header["encoding"])
    if channels is None:
        raise MalformedMessage(f"unknown encoding {_clip.repr(header['encoding'])}; expected one of "
                               f"{', '.join(ENCODINGS)}")
    height, width, step = header["height"], header["width"], header["step"]
    fmt = header["format"]
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
    if fmt == "shm" and (not valid_pool_name(header["shm_pool"]) or header["shm_gen"] % 2):
        raise MalformedMessage(f"shm_pool {_clip.repr(header['shm_pool'])} is not a publisher pool name, or "
                               f"shm_gen {header['shm_gen']} is odd")
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
        raise MalformedMessage(f"header field format={_clip.repr(header.get('format'))} is missing or not one of "
                               f"{' | '.join(FORMATS)}")
    types, ranges = _FIELD_CHECKS[header["format"]]
    for key, tp in types:
        value = header.get(key)
        if not isinstance(value, tp) or isinstance(value, bool):
            raise MalformedMessage(f"header field {key}={_clip.repr(value)} is missing or not "
                                   f"{getattr(tp, '__name__', tp)}")
    for key, (lo, hi) in ranges:
        if not lo <= header[key] <= hi:
            raise MalformedMessage(f"header field {key}={_clip.repr(header[key])} is out of range {lo}..{hi}")
    for stage, ms in header["timings_ms"].items():
        # int/float comparisons are exact for any int size; NaN fails the bound too
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not abs(ms) <= _MAX_TIMING_MS:
            raise MalformedMessage(f"header field timings_ms[{_clip.repr(stage)}]={_clip.repr(ms)} is not a "
                                   f"number of ms within +-{_MAX_TIMING_MS:g}")


def decode_stats(parts: Sequence[bytes | zmq.Frame]) -> dict[str, Any]:
    """Validate and decode one ``[stats_topic, JSON]`` message; raises MalformedMessage."""
    if len(parts) != 2:
        raise MalformedMessage(f"expected 2 parts [topic, stats], got {len(parts)}")
    stats = _parse_json(parts[1], "stats")
    _check_schema(stats, STATS_SCHEMA)
    return stats


def _parse_json(part: bytes | zmq.Frame, what: str) -> dict[str, Any]:
    raw = part.bytes if isinstance(part, zmq.Frame) else bytes(part)
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise MalformedMessage(f"{what} JSON is nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError, JSONDecodeError and integers of more than 4300 digits
        raise MalformedMessage(f"{what} is not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{what} is JSON {type(obj).__name__}, expected an object")
    return obj


def _check_schema(obj: dict[str, Any], schema: str) -> None:
    if obj.get("schema") != schema:
        raise MalformedMessage(f"unsupported schema {obj.get('schema')!r}; expected {schema!r}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_json_encoder = json.JSONEncoder(separators=(",", ":"), default=_json_default)  # made once: ~1.5 us a frame


def _reachable_from_other_machines(endpoint: str) -> bool:
    """True for a bound ``tcp://`` endpoint whose address is not loopback (``tcp://0.0.0.0:5555``, a LAN address)."""
    scheme, _, address = endpoint.partition("://")
    if scheme != "tcp":
        return False
    host = address.rpartition(":")[0].strip("[]")
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it faces the network
        return True


def _load_secret(path: str) -> bytes:
    if not Path(path).is_file():
        raise FileNotFoundError(f"publish.curve_secret_file {path} not found (make one with "
                                f"zmq.auth.create_certificates)")
    _, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError(f"publish.curve_secret_file {path} holds no secret key (use the .key_secret file)")
    return secret
