"""The viewer's subscriptions: the newest fused, IR and visible frames and the pipeline's stats, latest only.

A page gets at most one message in flight: the server sends the next one only after the page says it has drawn
the last (see ``server``), and what it sends is whatever is newest at that moment, so a slow or frozen browser gets
fewer frames, never a queue. The frame subscriptions (and so the pipeline's previews) exist only while a page is
open; the stats subscription runs all along to keep the plots' history.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import struct
import threading
import time
from typing import Any

import numpy as np
import zmq

from streamfuse.client import Subscriber
from streamfuse.codecs import JPEG_MAX_SIDE
from streamfuse.consumer_topics import consumer_stats_topic, consumer_topic
from streamfuse.errors import one_line
from streamfuse.view.stats_in import POLL_S, StatsMessages
from streamfuse.wire import FUSED_PREFIX, STATS_PREFIX, preview_topic

__all__ = ["Feed", "KINDS", "pack", "unpack"]

log = logging.getLogger(__name__)

KINDS = ("ir", "vis", "fused")  # left to right on the page
_RETRY_S = 1.0  # how often a frame subscription that failed is tried again
_HISTORY = 300  # stats snapshots kept for the plots of a page that opens later


class Feed:
    """Newest frames and stats of one pipeline, shared by every open page.

    Args:
        endpoint: the pipeline's publish endpoint.
        topic: fused topic (prefix) to show; the previews are on ``preview/ir/<topic>`` and ``preview/vis/<topic>``.
        stats_topic: stats topic (prefix).
        server_key: the publisher's CURVE public key (Z85) when it encrypts.
        client_key_file: this consumer's ``.key_secret`` file, for a publisher with ``publish.curve_clients_dir``.
        quality: JPEG quality of the frames sent to the page (1..100).
        name_wait_s: how long a host name that does not resolve (yet) is looked up again before giving up, seconds;
            None = ``connection_watch.NAME_WAIT_S``.

    Raises:
        ValueError: a shared-memory descriptor ``topic``, a ``stats_topic`` that takes frames too, the endpoint cannot
            be connected, or its host name still does not resolve after ``name_wait_s`` (one line).
    """

    def __init__(self, endpoint: str, topic: str = FUSED_PREFIX, stats_topic: str = STATS_PREFIX, *,
                 server_key: str = "", client_key_file: str = "", quality: int = 80,
                 name_wait_s: float | None = None) -> None:
        self.endpoint, self.keys, self.quality = endpoint, (server_key, client_key_file), quality
        self.topic = consumer_topic(topic)  # refused here, not when a page opens
        self.versions = dict.fromkeys((*KINDS, "stats"), 0)  # messages received per kind
        self.sent = 0  # messages handed to the pages' sockets
        self.unshown = 0  # frames JPEG cannot hold (a side over 65500, which the wire allows) or failed to encode
        self.stats: dict[str, Any] = {}
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=_HISTORY)
        self._latest: dict[str, tuple[int, dict[str, Any], np.ndarray]] = {}
        self._jpeg: dict[str, tuple[int, asyncio.Future[bytes | None]]] = {}  # the newest frame's, per kind
        self._lock = threading.Lock()
        self._waiters: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = threading.Event()
        self._frames_stop: threading.Event | None = None
        self._threads: list[threading.Thread] = []
        self._readers: dict[str, threading.Thread] = {}  # the newest frame reader of each kind
        self.stats_in = StatsMessages(endpoint, consumer_stats_topic(stats_topic, self.topic), self.keys, self._closing,
                                      name_wait_s=name_wait_s)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start receiving stats; pages are woken on ``loop``."""
        self._loop = loop
        self._spawn(self._read_stats)

    def close(self) -> None:
        """Stop every subscription (within ``POLL_S``)."""
        self._closing.set()
        if self._frames_stop is not None:
            self._frames_stop.set()
        for thread in self._threads:
            thread.join()
        if self.unshown > 1:
            log.warning("skipped %d frames in all that the page could not be sent (the first one logged)", self.unshown)

    def acquire(self) -> asyncio.Event:
        """A page opened: its wake-up event (set whenever something new arrives). The first page starts the frame
        subscriptions, which makes the pipeline publish its previews; they are made on their reader threads, so
        that a host name's lookup never holds the event loop, and one that fails is tried again there."""
        changed = asyncio.Event()
        self._waiters.add(changed)
        if len(self._waiters) == 1:
            self._frames_stop = stop = threading.Event()
            for kind in KINDS:
                self._readers[kind] = self._spawn(self._read_frames, kind, stop, self._readers.get(kind))
        return changed

    def release(self, changed: asyncio.Event) -> None:
        """A page closed; the last one ends the frame subscriptions (the pipeline stops its previews)."""
        self._waiters.discard(changed)
        if not self._waiters and self._frames_stop is not None:
            self._frames_stop.set()
            with self._lock:
                self._latest.clear()
                self._jpeg.clear()

    def newer(self, seen: dict[str, int]) -> bool:
        """Whether anything arrived since the versions in ``seen``."""
        return any(v > seen.get(k, 0) for k, v in self.versions.items())

    async def message(self, seen: dict[str, int]) -> bytes:
        """What arrived since ``seen`` as one message for the page (see :func:`pack`); updates ``seen``."""
        meta: dict[str, Any] = {"frames": []}
        jpegs = []
        for kind in KINDS:
            with self._lock:
                item, version = self._latest.get(kind), self.versions[kind]
            if item is None:
                if version:  # cleared as the last page closed: the versions so far have nothing left to send
                    seen[kind] = version
                continue
            if item[0] <= seen.get(kind, 0):
                continue
            jpeg = await self._encode(kind, item)
            seen[kind] = item[0]
            if jpeg is not None:
                meta["frames"].append({"kind": kind, "header": item[1]})
                jpegs.append(jpeg)
        if self.versions["stats"] > seen.get("stats", 0):
            with self._lock:
                meta["stats"] = self.stats
                if not seen.get("stats"):
                    meta["history"] = list(self.history)
            seen["stats"] = self.versions["stats"]
        return pack(meta, jpegs)

    async def _encode(self, kind: str, item: tuple[int, dict[str, Any], np.ndarray]) -> bytes | None:
        """JPEG of a frame, encoded once for all pages: the pages that ask while it is being encoded wait for that
        encoding (each made its own: 50 pages encoded every frame about 20 times)."""
        cached = self._jpeg.get(kind)
        if cached is None or cached[0] != item[0]:
            cached = self._jpeg[kind] = (item[0], asyncio.ensure_future(self._jpeg_of(kind, item[2])))
        return await asyncio.shield(cached[1])  # a page that closes meanwhile does not cancel the others' encoding

    async def _jpeg_of(self, kind: str, image: np.ndarray) -> bytes | None:
        """The JPEG (off the event loop: cv2 releases the GIL); None (counted in ``unshown``) for a frame that JPEG
        cannot hold or whose encoding failed: the pages go on with the next frame. The first such frame is logged,
        the count of all at :meth:`close` (one line a frame would flood the log at the frame rate)."""
        jpeg, why = None, f"JPEG cannot hold it (sides up to {JPEG_MAX_SIDE})"
        if max(image.shape[:2]) <= JPEG_MAX_SIDE:
            jpeg, failed = await asyncio.get_running_loop().run_in_executor(None, _jpeg_bytes, image, self.quality)
            why = failed or why
        if jpeg is None:
            self.unshown += 1
            if self.unshown == 1:
                log.warning("skipped a %s %s frame: %s (more such frames are counted, not logged)", image.shape, kind,
                            why)
        return jpeg

    def _spawn(self, target: Any, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=f"view {target.__name__}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    def _wake(self) -> None:
        for changed in self._waiters:
            changed.set()

    def _arrived(self, kind: str) -> None:
        """Called on a reader thread after storing a ``kind`` message: wake the pages on the event loop."""
        self.versions[kind] += 1
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the viewer is shutting down
                self._loop.call_soon_threadsafe(self._wake)

    def _read_frames(self, kind: str, stop: threading.Event, before: threading.Thread | None) -> None:
        """Subscribe to ``kind``, then take every frame off the socket as it arrives and keep the newest (no backlog
        anywhere). The subscription is made once the reader before it (of pages that have all closed) has closed its
        own: pages opened and closed in turn otherwise held a set of sockets each for a while."""
        if before is not None:
            before.join()
        sub = self._subscribe(kind, stop)
        if sub is None:
            return
        with sub:
            while not (stop.is_set() or self._closing.is_set()):
                frame = sub.recv()
                if frame is not None:
                    with self._lock:  # stop looked at under the lock: a release between a look and the store
                        if not stop.is_set():  # cleared the frames first, this one then the next page's first
                            self._latest[kind] = (self.versions[kind] + 1, *frame)
                            self._arrived(kind)

    def _subscribe(self, kind: str, stop: threading.Event) -> Subscriber | None:
        """The subscription of ``kind``, tried again every ``_RETRY_S`` while it fails (a host name that does not
        resolve while its machine restarts, no file left to open); None once the pages or the viewer have closed."""
        topic = self.topic if kind == "fused" else preview_topic(self.topic, kind)
        failed = 0
        while not stop.is_set():
            try:
                sub = Subscriber(self.endpoint, topic, timeout_s=POLL_S, server_key=self.keys[0],
                                 client_key_file=self.keys[1])
            except (ValueError, OSError, zmq.ZMQError) as exc:
                failed += 1
                if failed == 1:
                    log.warning("cannot subscribe to the %s frames of %s: %s (trying again every %g s)", kind,
                                self.endpoint, one_line(exc), _RETRY_S)
                stop.wait(_RETRY_S)
                continue
            if failed:
                log.info("subscribed to the %s frames of %s after %d failed tries", kind, self.endpoint, failed)
            return sub
        return None

    def _read_stats(self) -> None:
        for stats in self.stats_in:  # the socket was handed over by start()
            with self._lock:
                self.stats = stats
                self.history.append(_plot_point(stats))
                self._arrived("stats")


def _jpeg_bytes(image: np.ndarray, quality: int) -> tuple[bytes | None, str]:
    """``(JPEG, "")`` of ``image`` at ``quality``, or ``(None, why)`` (``""``: OpenCV did not say), on an executor
    thread (cv2 releases the GIL). OpenCV is imported here, off the event loop, at the first frame a page is sent: a
    viewer that no page watches needs none of it."""
    import cv2

    try:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    except (cv2.error, MemoryError) as exc:  # raised to every page waiting for it, whose sender then stopped
        return None, f"its JPEG encoding failed: {one_line(exc)}"
    return (buf.tobytes(), "") if ok else (None, "")


def _plot_point(stats: dict[str, Any]) -> dict[str, Any]:
    """What the plots keep of a snapshot (validated by :class:`StatsMessages`): time, output rate,
    per-stage median, p99."""
    stages = {name: [s.get("median_ms"), s.get("p99_ms")] for name, s in stats.get("stages", {}).items()}
    return {"t_ns": stats.get("t_ns", time.time_ns()), "rate_fps": stats.get("rate_fps"), "stages": stages}


def pack(meta: dict[str, Any], jpegs: list[bytes]) -> bytes:
    """One page message: 4-byte big-endian JSON length, the JSON, then the JPEGs of ``meta["frames"]`` in order
    (each frame entry gets its ``bytes``)."""
    for frame, jpeg in zip(meta["frames"], jpegs):
        frame["bytes"] = len(jpeg)
    head = json.dumps(meta, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + b"".join(jpegs)


def unpack(message: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """The inverse of :func:`pack` (what the page does in JavaScript; used by tests)."""
    (n,) = struct.unpack_from(">I", message)
    meta = json.loads(message[4:4 + n])
    jpegs, pos = [], 4 + n
    for frame in meta["frames"]:
        jpegs.append(message[pos:pos + frame["bytes"]])
        pos += frame["bytes"]
    return meta, jpegs
