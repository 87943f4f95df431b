"""The ZeroMQ Publisher of fused frames, their previews and the stats (its config: :mod:`streamfuse.publish_config`;
the wire format itself: :mod:`streamfuse.wire`).

Live semantics: PUB/SUB never blocks the publisher. Each subscriber has a queue of ``sndhwm`` messages; a slow
subscriber's full queue drops its copy (the others get theirs; subscribers count drops from gaps in ``seq``), unless
``nodrop`` and ``wait_ms`` make that bounded back-pressure (offline replay into a recorder; see :class:`PublishConfig`).
A stalled subscriber's queues keep the frames of the moment it stalled, so a live viewer empties its socket
continuously (``Subscriber(latest=True)``). A subscriber misses the frames sent before its subscription arrived
(ZeroMQ's "slow joiner"): fine live; a replay can wait for one (``wait_subscriber_s``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import threading
import time
from typing import Any

import cv2
import numpy as np
import zmq

from streamfuse.codecs import H264Encoder, JpegEncoder
from streamfuse.endpoints import bind, close_bound, reachable_from_other_machines
from streamfuse.frames import FusedFrame, optical_frame
from streamfuse.peer_budget import PeerBudget
from streamfuse.publish_config import PublishConfig
from streamfuse.shm_pool import PoolError, ShmPool, remove_stale_pools, shm_supported
from streamfuse.wire import (PREVIEW_PREFIX, RING_TOPIC_PREFIX, SHM_TOPIC_PREFIX, STATS_SCHEMA, HeaderEncoder,
                             check_image, encode_json, preview_topic, ring_topic, shm_topic)

__all__ = ["PublishConfig", "Publisher"]

log = logging.getLogger(__name__)
_SHM_PREFIX, _RING_PREFIX = SHM_TOPIC_PREFIX.encode(), RING_TOPIC_PREFIX.encode()
# bytes of one message from a subscriber: a (un)subscription (a SUBSCRIBE command: 10 bytes, then its topic prefix;
# with CURVE in a MESSAGE box, 33 more), or a handshake command (CURVE's INITIATE: 276), unless a topic sent here is
# longer: libzmq keeps each subscription in a trie of ~50 bytes a byte until its peer leaves, and a SUB sends up to
# 1000 as it connects: four peers sending 1000 of 4 KiB took 800 MB and held the live loop 2.3 s as they left
_MAX_SUBSCRIPTION = 512
# a consumer whose link died without closing (a viewer's laptop gone) is dropped after this long without answering
# the publisher's pings, and its subscriptions with it: the previews it asked for stop
_PEER_TIMEOUT_MS = 30_000
# an ipc:// peer's subscriptions queued for the socket, counted only once read (PeerBudget.took): libzmq takes all it
# finds queued into its trie within one call, as long as its I/O thread keeps refilling the queue: with the default
# 1000 one call took a whole flood in (872 MiB) before the first was read, with 10 it took 86-90 MiB before the
# peer's cut, with 1, 22 MiB (python -m streamfuse bench subscriptions --flood 200000 --ipc)
_IPC_SUBS_QUEUED = 1
_SUBS_PER_POLL = 256  # (un)subscriptions read a turn of the live loop: about a millisecond at most


class Publisher:
    """Binds a PUB socket and sends fused frames and stats without blocking (unless ``wait_ms`` is set).

    Use as a context manager; ``dropped`` counts frames refused by a full queue (only with ``nodrop``),
    ``published`` those handed to ZeroMQ. The socket is an XPUB (wire-compatible with PUB) so that the publisher
    sees which topics subscribers ask for: previews, encoding and the shared-memory copy cost nothing while nobody
    reads them. ``shm_busy`` counts frames not put in the pool because readers held every slot.

    Args:
        cfg: the publish stage.
        stats_extra: fields added to every stats message (e.g. the fuser and its sampler).
        frame_ids: the sources' ``frame_id`` settings by stream (``ir``, ``vis``; empty: ``<stream>_optical_frame``).
        capture_clock: what the frames' capture times count (the ``t_capture_clock`` field; see
            :data:`streamfuse.capture.sources.CAPTURE_CLOCKS`).
        stats: whether the log line naming the endpoint names ``stats_topic`` too (an offline replay sends no stats:
            its summary is logged).

    Raises:
        RuntimeError: the endpoint is already in use or cannot be bound (one line).
        FileNotFoundError: ``curve_secret_file`` or ``curve_clients_dir`` does not exist.
        ValueError: the secret file holds no secret key, the clients' folder no public key.
    """

    def __init__(self, cfg: PublishConfig, stats_extra: dict[str, Any] | None = None,
                 frame_ids: dict[str, str] | None = None, capture_clock: str = "epoch", *, stats: bool = True) -> None:
        self.cfg = cfg
        # the sources' optical frames (``ir.frame_id``, ``vis.frame_id``): the previews' and, unless told, the fused
        ids = {s: optical_frame(s, (frame_ids or {}).get(s, "")) for s in ("ir", "vis")}
        self.published = self.dropped = 0
        self._topic, self._stats_topic = cfg.topic.encode(), cfg.stats_topic.encode()
        #: fields added to every stats message (a live run adds its fuser's once the model has loaded)
        self.stats_extra = dict(stats_extra or {})
        self._previews = {s: preview_topic(cfg.topic, s).encode() for s in ("ir", "vis")}
        self._preview_subs: set[bytes] = set()  # live subscriptions to preview topics
        self._preview_seq = 0
        self._subs: set[bytes] = set()  # the topic prefixes subscribers ask for that match a topic sent here
        self._shm_topic, self._ring_topic = shm_topic(cfg.topic).encode(), ring_topic(cfg.topic).encode()
        self._published = (self._topic, self._shm_topic, self._ring_topic, *self._previews.values())
        # what subscriptions ask for (kept by _poll_subscriptions): payload, pool, its descriptors, its ring (woken)
        self._want_payload = self._want_shm = self._want_descriptors = self._want_ring = False
        self._polled = False  # loan() has just read the subscriptions: its send_fused need not again
        self._headers = HeaderEncoder(cfg.frame_id or ids["vis"], capture_clock)
        self._preview_headers = {s: HeaderEncoder(ids[s], capture_clock) for s in ids}
        self._pool: ShmPool | None = None
        self._loaned: np.ndarray | None = None  # the pool slot handed out by loan(), until send_fused
        self._shm_on = cfg.shm_slots > 0 and cfg.wait_ms == 0 and shm_supported()
        if self._shm_on:
            remove_stale_pools()  # pools of publishers that were killed before they could free them
        self._jpeg = JpegEncoder(cfg.jpeg_quality) if cfg.encoding == "jpeg" else None
        self._h264 = H264Encoder(cfg.h264_keyint, cfg.h264_crf) if cfg.encoding == "h264" else None
        # a context of its own: for nodrop, see close; for curve_clients_dir, its ZAP handler answers for the context
        own = (cfg.nodrop and not cfg.endpoint.startswith("inproc://")) or cfg.curve_clients_dir
        self._ctx = zmq.Context() if own else None
        self._auth = self._budget = None
        self._sock = (self._ctx or zmq.Context.instance()).socket(zmq.XPUB)
        self._bind(cfg)
        #: the bound endpoint, with the real port when the config asked for ``tcp://HOST:*``.
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("publishing %s on %s%s", cfg.topic, self.endpoint, f" (stats on {cfg.stats_topic})" if stats else "")
        if not cfg.curve_secret_file and reachable_from_other_machines(self.endpoint):
            log.warning("publishing unencrypted on %s, reachable from other machines: anyone on the network can "
                        "read the frames; set publish.curve_secret_file (README, Encryption) or bind 127.0.0.1",
                        self.endpoint)

    def _bind(self, cfg: PublishConfig) -> None:
        """Set the socket's options and bind it to ``cfg.endpoint``; the publisher is closed when that fails."""
        try:
            self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every new subscriber: an H.264 keyframe for it at once
            self._sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
            if cfg.endpoint.startswith("ipc://"):
                self._sock.setsockopt(zmq.RCVHWM, _IPC_SUBS_QUEUED)
            self._sock.setsockopt(zmq.XPUB_NODROP, int(cfg.nodrop))
            self._sock.setsockopt(zmq.SNDTIMEO, cfg.wait_ms)  # 0: every send is non-blocking, like zmq.NOBLOCK
            # a subscription is a topic prefix; one of megabytes (a hostile or broken peer) cost the loop seconds in
            # libzmq's subscription trie, so a peer sending more than this is disconnected instead
            longest = max(len(topic) for topic in (*self._published, self._stats_topic))
            self._sock.setsockopt(zmq.MAXMSGSIZE, max(_MAX_SUBSCRIPTION, 64 + longest))
            self._sock.setsockopt(zmq.HEARTBEAT_IVL, _PEER_TIMEOUT_MS // 6)
            self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _PEER_TIMEOUT_MS)
            self._sock.setsockopt(zmq.TCP_MAXRT, _PEER_TIMEOUT_MS)  # a ping queued behind a frame half sent never goes
            self._auth = bind(self._sock, cfg.endpoint, cfg.curve_secret_file, cfg.curve_clients_dir,
                              cfg.unsent_kb * 1024)
            # cuts a peer flooding the socket with subscriptions
            self._budget = PeerBudget(self._sock, self._sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except zmq.ZMQError as exc:
            self.close()
            if exc.errno == errno.EADDRINUSE:
                raise RuntimeError(f"endpoint {cfg.endpoint} is already in use (another publisher running? "
                                   f"set publish.endpoint to a free port)") from None
            raise RuntimeError(f"cannot bind endpoint {cfg.endpoint}: {exc}") from None
        except BaseException:
            self.close()
            raise

    @property
    def shm_busy(self) -> int:
        """Frames not written to the shared-memory pool because readers held every slot."""
        return self._pool.busy if self._pool is not None else 0

    @property
    def peers_cut(self) -> int:
        """Consumers whose connection was cut for sending far more than a subscriber does (a flood of subscriptions)."""
        return self._budget.cut if self._budget is not None else 0

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
        self._polled = True
        self._abandon_loan()
        nbytes = math.prod(shape)
        if self._want_shm and self._has_pool(nbytes):
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
        check_image(image)
        if not self._polled:  # loan() has just taken them
            self._poll_subscriptions()
        self._polled = False
        outcomes = []  # True: sent, False: refused by a full queue
        if loaned:
            image.flags.writeable = False  # the slot is the consumers' now; a late write would go unnoticed
            outcomes.append(self._send_loaned(fused, image))
        elif self._want_shm:
            outcomes.append(self._send_shm(fused, image))
        if self._want_payload:
            # A pool slot is reused after ``shm_slots`` frames, maybe before ZeroMQ sent it: the payload is copied.
            outcomes.append(self._send_payload(fused, image, copy=loaned))
        if False in outcomes:
            self.dropped += 1
        if True in outcomes or not outcomes:  # seq moves on once any subscriber got it: gaps mean missed frames
            self.published += 1
        return False not in outcomes

    def _abandon_loan(self) -> None:
        if self._loaned is not None:
            self._pool.cancel()
            self._loaned = None

    def _send_payload(self, fused: FusedFrame, image: np.ndarray, copy: bool) -> bool:
        payload: Any = image
        fields = {}
        if self._jpeg is not None:
            payload = self._jpeg.encode(image)
        elif self._h264 is not None:
            payload, key = self._h264.encode(image)
            fields["keyframe"] = int(key)
        header = self._headers.encode(fused, image, seq=self.published, fmt=self.cfg.encoding, **fields)
        return self._send(self._topic, header, payload, copy)

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
            self._update_wants()
        return self._pool is not None

    def _send_shm(self, fused: FusedFrame, image: np.ndarray) -> bool:
        """Copy ``image`` into the pool and send its slot."""
        written = self._pool.write(image) if self._has_pool(image.nbytes) else None
        if written is None:  # no pool, or readers hold every slot: they see a gap in seq
            return True
        return self._send_slot(fused, image, *written)

    def _send_loaned(self, fused: FusedFrame, image: np.ndarray) -> bool:
        """Publish the loaned slot ``image`` was written in and send it."""
        self._loaned = None
        return self._send_slot(fused, image, *self._pool.commit(image.nbytes))

    def _send_slot(self, fused: FusedFrame, image: np.ndarray, slot: int, gen: int) -> bool:
        """Announce a committed slot as a ZeroMQ descriptor while someone subscribes to those, then (unless that was
        refused) in the pool's ring, waking its readers while there are any."""
        header = self._headers.encode(fused, image, seq=self.published, fmt="shm", shm_pool=self._pool.name,
                                      shm_slot=slot, shm_gen=gen)
        if self._want_descriptors and not self._send(self._shm_topic, header, b"", copy=True):
            self._pool.retract(slot)  # never announced: the next frame may take that slot at once
            return False
        self._pool.notify(self._shm_topic, header, self.published, wake=self._want_ring)
        return True

    def _send(self, topic: bytes, header: bytes, payload: Any, copy: bool) -> bool:
        """One ``[topic, header, payload]`` message; False when a full queue refused it (``nodrop``)."""
        try:
            # The high-water mark is checked on the first part only; once it passes, the rest of the message
            # always follows, so a message is sent whole or not at all.
            self._sock.send(topic, zmq.SNDMORE)
            self._sock.send(header, zmq.SNDMORE)
            self._sock.send(payload, copy=copy)
        except zmq.Again:
            return False
        return True

    def _poll_subscriptions(self) -> None:
        """Take the (un)subscriptions waiting on the XPUB socket (a few microseconds when there are none), at most
        ``_SUBS_PER_POLL`` a call: a peer sending thousands must not hold the live loop (the rest wait a turn; one
        sending far more than a subscriber does is cut: :mod:`streamfuse.peer_budget`)."""
        changed = False
        for _ in range(_SUBS_PER_POLL):
            try:  # recv, not ZMQ_EVENTS: libzmq takes in a flood in either, and recv lets the peers' cut run meanwhile
                part = self._sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = part.bytes  # b"\x01" + topic: subscribe, b"\x00" + topic: last one gone
            if self._budget.local:
                with contextlib.suppress(zmq.ZMQError):  # none: libzmq's own, for a peer that left
                    self._budget.took(part.get("Peer-Address"), len(msg))
            topic = msg[1:]
            if not any(mine.startswith(topic) for mine in self._published):
                continue  # matches nothing sent here (libzmq filters by it alone): not kept, so never a growing set
            changed = True
            if msg[:1] == b"\x01":
                self._subs.add(topic)
                if self._h264 is not None and self._topic.startswith(topic):
                    self._h264.request_keyframe()  # a new consumer starts now instead of waiting for h264_keyint
            else:
                self._subs.discard(topic)
            if topic.startswith(PREVIEW_PREFIX.encode()):
                (self._preview_subs.add if msg[:1] == b"\x01" else self._preview_subs.discard)(topic)
        if changed:
            self._update_wants()

    def _update_wants(self) -> None:
        """Whether some subscription matches the payload topic, one that names ``shm/`` the pool's descriptors, one
        that names ``ring/shm/`` its ring (a catch-all subscriber does not make the publisher fill the pool)."""
        self._want_payload = any(self._topic.startswith(sub) for sub in self._subs)
        self._want_descriptors = any(self._shm_topic.startswith(sub) and sub.startswith(_SHM_PREFIX)
                                     for sub in self._subs)
        self._want_ring = any(self._ring_topic.startswith(sub) and sub.startswith(_RING_PREFIX) for sub in self._subs)
        self._want_shm = self._shm_on and (self._want_descriptors or self._want_ring)

    def wait_for_subscriber(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` until a subscription for the fused frames (or their shared-memory copy) arrives;
        True when one has. Frames sent before a subscription arrives never reach that subscriber."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._poll_subscriptions()
            if self._want_payload or self._want_shm or time.monotonic() >= deadline:
                return self._want_payload or self._want_shm
            self._sock.poll(100)  # a subscription is a message on the XPUB socket

    def send_stats(self, stats: dict[str, Any]) -> bool:
        """Send a telemetry snapshot as ``[stats_topic, JSON]`` (numpy scalars and arrays become JSON numbers)."""
        body = {"schema": STATS_SCHEMA, "t_ns": time.time_ns(), **self.stats_extra, **stats}
        try:
            self._sock.send_multipart([self._stats_topic, encode_json(body)], zmq.NOBLOCK)
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
                header = self._preview_headers[stream].encode(fused, image, seq=self._preview_seq)
                with contextlib.suppress(zmq.Again):  # a viewer that is behind gets the next one
                    self._sock.send_multipart([topic, header, image], zmq.NOBLOCK, copy=False)
        self._preview_seq += 1

    def close(self) -> None:
        """Close the socket and free the shared memory; ``nodrop``: return once the queue is sent, or ``wait_ms``.

        The socket lingers without limit: libzmq 4.3 aborts the whole process (zeromq/libzmq#3442) when a consumer's
        link drops while a closing socket whose linger ran out still holds a message half sent to it, as a stalled
        consumer's sender does. A consumer that stays stalled is dropped by TCP (``TCP_MAXRT``, ``_PEER_TIMEOUT_MS``):
        one stalled in the middle of a frame never gets the heartbeat's ping, queued behind that frame. The endpoint is
        free once this returns: a publisher made again at once on it is not refused."""
        if self._budget is not None:
            self._budget.close()
        close_bound(self._sock, linger=-1)
        if self._auth is not None:
            self._auth.stop()
        if self._ctx is not None:  # ZeroMQ sends the queue from the context's thread: ending the context waits for it
            ender = threading.Thread(target=self._ctx.term, name="publisher-context-end", daemon=True)
            ender.start()
            ender.join(self.cfg.wait_ms / 1000 if self.cfg.nodrop else 0)
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _downscale(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` resized to ``width`` columns (aspect kept; never enlarged), C-contiguous."""
    h, w = image.shape[:2]
    if w <= width:
        return np.ascontiguousarray(image)
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
