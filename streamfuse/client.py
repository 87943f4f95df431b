"""The consumer side: a Subscriber that yields decoded fused frames, with timeouts and a latest-frame mode.

Every format of the wire format is decoded transparently: raw, jpeg, h264 (from a keyframe after a start, a restart
or a missed frame) and a same-host publisher's shared-memory pool, falling back to ZeroMQ where it cannot be mapped.

>>> with Subscriber("tcp://127.0.0.1:1", timeout_s=0.05) as sub:  # nothing listens on port 1
...     sub.recv() is None
True
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import weakref
from typing import Any, Iterator

import numpy as np
import zmq

from streamfuse.codecs import DecodeError, H264Decoder, JpegDecoder
from streamfuse.connection_watch import connect_sub, on_this_host
from streamfuse.flood_log import FloodLog
from streamfuse.consumer_topics import consumer_topic
from streamfuse.newest_frame import NewestFrame
from streamfuse.pool_ring import RingError
from streamfuse.pool_view import PoolView
from streamfuse.recv_turn import RecvTurn
from streamfuse.ring_cursor import RingCursor
from streamfuse.seq_count import SeqCounter
from streamfuse.shm_pool import NotAPool, PoolError, ring_supported, shm_supported
from streamfuse.wire import (ENCODINGS, FUSED_PREFIX, MAX_HEADER_BYTES, MalformedMessage, decode_header, raw_image,
                             read_parts, ring_topic, shm_topic)

__all__ = ["Subscriber", "DEFAULT_MAX_FRAME_BYTES"]

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often a waiting reader checks for close() and for a connection to restore
# on shared memory only and silent this long: take the payload again (the publisher restarted, dropped this consumer
_RESUBSCRIBE_S = 1.0  # while it was stopped, or readers hold every pool slot)
_LATE_LOOKS = 4096  # frames found gone that recv() passes over after its deadline (a ring's worth) to find one there
_PARTS = ("topic", "header", "image")  # of a frame's message
DEFAULT_MAX_FRAME_BYTES = 7680 * 4320 * 3  # largest image part accepted by default: an 8K UHD bgr8 frame, 99.5 MB


class Subscriber:
    """Connects a SUB socket to a publisher and receives ``(header, image)`` frames.

    Args:
        endpoint: the publisher's, e.g. ``tcp://127.0.0.1:5555`` (IPv6: ``tcp://[::1]:5555``); reconnects are automatic.
        topic: topic prefix to receive (``fused/`` = every rig; bytes: UTF-8); not a ``shm/`` or ``ring/`` one.
        timeout_s: longest wait of one :meth:`recv`, seconds; iteration stops after one such silent wait. Also how
            long a host name that does not resolve (yet) is looked up again before giving up.
        latest: return only the newest frame (live viewers): a reader thread takes every frame off the socket and
            keeps the newest, so no backlog builds up while the caller is busy (replaced ones count as ``discarded``).
        rcvhwm: messages queued on this side before ZeroMQ stops reading from the network.
        server_key: the publisher's CURVE public key (Z85, 40 characters) when it encrypts; empty = plain.
        client_key_file: this consumer's ``.key_secret`` file, for a publisher with ``publish.curve_clients_dir``.
        shm: read a same-host publisher's frames from its shared-memory pool; None = when the endpoint is local
            (``ipc://``, ``inproc://``, TCP to loopback or a name whose addresses all are). Until the first pool
            frame, and for good where the pool cannot be mapped (another host or user), frames come over ZeroMQ.
        copy: None: images stay as they are while held (a shared-memory frame copied out of the pool, about 0.02 ms a
            VGA frame; a raw one its own message's memory); True: copies; False: a shared-memory
            frame as a read-only view of the pool, intact only until the next :meth:`recv` (no copy).
        ring: once the pool is mapped, take its frames' descriptors from the pool's notification ring (a futex, no
            ZeroMQ thread) while it can be read here; False: always ZeroMQ descriptors.
        max_frame_bytes: largest image part accepted, bytes: ZeroMQ refuses a larger part as it arrives
            (``ZMQ_MAXMSGSIZE``, then reconnects), so a peer cannot make this process hold more than about ``rcvhwm``
            such frames; a frame whose header says it is larger (shared memory; jpeg, h264 decoded) is skipped unread.

    Counters: ``received``; ``malformed`` (skipped and logged, ``last_malformed`` says why: not the wire format, a
    field out of range, a ``seq`` repeated or leaping (:class:`SeqCounter`), no pool, an undecodable payload, a frame
    over ``max_frame_bytes``); ``missed`` (gaps in ``seq``, shared-memory frames overwritten and ring entries lapped
    before they were read: never returned torn); ``restarts`` (a ``seq`` going back: the publisher restarted);
    ``via_shm``, ``via_ring``; ``awaiting_keyframe`` (h264); ``discarded`` (latest mode); ``handshake_failures`` (CURVE
    keys differ, or only one side encrypts). One thread receives from a Subscriber (ZeroMQ sockets are not shared
    between threads); :meth:`close` from another ends a :meth:`recv` waiting there (RuntimeError), then closes the
    sockets.

    Raises:
        ValueError: a bad argument, topic or endpoint, or a host name not resolving after ``timeout_s`` (one line).
    """

    def __init__(self, endpoint: str, topic: str = FUSED_PREFIX, *, timeout_s: float = 1.0, latest: bool = False,
                 rcvhwm: int = 2, server_key: str = "", client_key_file: str = "",
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, shm: bool | None = None, copy: bool | None = None,
                 ring: bool = True) -> None:
        if not 0 < timeout_s <= threading.TIMEOUT_MAX:  # NaN too
            raise ValueError(f"timeout_s={timeout_s} must be in (0, {threading.TIMEOUT_MAX:.3g}] s (receives time out)")
        for name, value, most in (("rcvhwm", rcvhwm, 2**31 - 1), ("max_frame_bytes", max_frame_bytes, 2**63 - 1)):
            if not 1 <= value <= most:  # ZeroMQ's int and int64 options: more raised OverflowError
                raise ValueError(f"{name}={value} must be in 1..{most}")
        self.endpoint, self.timeout_s, self.latest = endpoint, timeout_s, latest
        self.received = self.malformed = self.missed = self.via_shm = self.via_ring = 0
        self.awaiting_keyframe, self.last_malformed, self.copy, self.max_frame_bytes = 0, "", copy, max_frame_bytes
        self._said = FloodLog(log, f"malformed messages from {endpoint}")  # a peer's flood of them, not the log's
        topic = consumer_topic(topic)
        self._topic, self._shm_topic, self._ring_topic = map(str.encode, (topic, shm_topic(topic), ring_topic(topic)))
        self._ring_on = ring and ring_supported()
        self._ring: RingCursor | None = None  # set while descriptors come from the mapped pool's ring
        self._payload_on = True  # subscribed to the ZeroMQ payload (off while shared memory delivers)
        self._last_message, self._heard = time.monotonic(), False  # _heard: a message has come since the start
        self._taken, self._most_unended = False, max_frame_bytes + 2 * MAX_HEADER_BYTES + 65_536  # +lengths, CURVE
        self._pools = PoolView()
        self._jpeg, self._h264, self._seq = JpegDecoder(), H264Decoder(), SeqCounter(endpoint)
        wanted = (lambda: (on_this_host(endpoint) if shm is None else shm) and shm_supported())
        self._shm = early = wanted()  # an address: now, both topics going with the connection; a name: below
        self._sock, self._watch = connect_sub(endpoint, [self._topic, self._shm_topic][:2 if early else 1],
                                              rcvhwm=rcvhwm, server_key=server_key, name_wait_s=timeout_s,
                                              client_key_file=client_key_file,
                                              max_part_bytes=max(max_frame_bytes, MAX_HEADER_BYTES))
        if not early and wanted():  # a name connect_sub's one lookup found to be this host's
            self._shm = True
            self._sock.setsockopt(zmq.SUBSCRIBE, self._shm_topic)
        self._fds = select.poll()
        for fd in (self._sock.getsockopt(zmq.FD), self._watch.fd):  # one poll() a wait, not zmq.Poller's several
            self._fds.register(fd, select.POLLIN)
        self._watch.on_events()  # its descriptor fires only for events after an EVENTS that found none
        self._pid, cond = os.getpid(), threading.Condition()  # the sockets' process
        self._turn = RecvTurn(endpoint, cond)  # a close() from another thread waits for a recv() there to end
        self._newest = NewestFrame(endpoint, cond, self._turn.closing)
        # a Subscriber dropped without close() closes its sockets when collected (not at exit: a reader may run)
        self._close_links = weakref.finalize(self, self._watch.close)
        self._close_links.atexit = False
        if latest:
            self._newest.start(self._next, _POLL_S)

    def recv(self, timeout_s: float | None = None) -> tuple[dict[str, Any], np.ndarray] | None:
        """The next frame (``latest``: the newest not yet returned), or None when none arrives in time.

        Args:
            timeout_s: longest wait, seconds; None = the ``timeout_s`` given at construction; 0 = no wait, a frame
                only if one is already here.

        Returns:
            ``(header, image)``: the validated header and a BGR ``(H, W, 3)`` or ``(H, W)`` uint8 image (``copy``).

        Raises:
            ValueError: ``timeout_s`` negative, NaN or too large to wait for.
            RuntimeError: closed, forked since, or latest mode's reader thread stopped on an error (one line: which).
        """
        if timeout_s is not None and not 0 <= timeout_s <= threading.TIMEOUT_MAX:  # NaN too
            raise ValueError(f"recv timeout_s={timeout_s} must be in [0, {threading.TIMEOUT_MAX:.3g}] s")
        if os.getpid() != self._pid:  # a forked child's sockets hung it, timeouts unheeded
            raise RuntimeError(f"subscriber {self.endpoint} was made in process {self._pid}: a forked child makes "
                               "its own")
        self._turn.enter()
        try:
            frame = self._wait_frame(time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s))
        except zmq.ZMQError:
            self._turn.check()  # closed under it by a signal handler that interrupted this very wait
            raise
        finally:
            self._turn.leave()
        self.received += frame is not None
        return frame

    def _wait_frame(self, deadline: float) -> tuple[dict[str, Any], np.ndarray] | None:
        """The next frame by ``deadline``, or None; RuntimeError once :meth:`close` is called meanwhile."""
        frame, looks = None, 0
        while frame is None:
            self._turn.check()
            remaining = max(deadline - time.monotonic(), 0.0)  # one look even when no time is left
            if self.latest:
                if (item := self._newest.take(remaining, self._turn.check)) is None:
                    return None
            else:
                item = self._next(min(remaining, _POLL_S))
            if item is not None:  # past the deadline too: after it, a frame gone (overwritten) is followed by more
                frame, looks = self._take(*item), looks + 1
            if frame is None and deadline <= time.monotonic() and (item is None or looks > _LATE_LOOKS):
                return None
        return frame

    @property
    def discarded(self) -> int:
        """Frames replaced by a newer one before :meth:`recv` took them, or passed over in the ring (latest mode)."""
        return self._newest.discarded

    @property
    def restarts(self) -> int:
        """Frames whose ``seq`` began a new stream: the publisher restarted, or another took the endpoint."""
        return self._seq.restarts

    @property
    def handshake_failures(self) -> int:
        """CURVE handshakes that failed: the publisher's key differs from ``server_key``, or only one side encrypts."""
        return self._watch.handshake_failures

    @property
    def on_ring(self) -> bool:
        """True while frame descriptors come from the shared-memory pool's ring (not over ZeroMQ)."""
        return self._ring is not None

    def _next(self, timeout_s: float) -> tuple[dict[str, Any], Any] | None:
        """Socket owner: the next frame's ``(header, payload)`` within ``timeout_s``, from the ring or the socket."""
        if self._ring is not None:
            self._watch.glance()  # the socket is not polled while the ring delivers: its drops are seen here
            self._restore()
            item = self._ring_next(timeout_s)
            if item is None and self._ring is not None and time.monotonic() - self._last_message >= _RESUBSCRIBE_S:
                self._leave_ring(f"silent for {_RESUBSCRIBE_S:g} s", logging.DEBUG)  # a slow stream's every frame
            return item
        return self._read() if self._wait(timeout_s) else None

    def _ring_next(self, timeout_s: float) -> tuple[dict[str, Any], Any] | None:
        """The next ring entry's ``(header, None)`` (latest mode: the newest entry's); None when none came within
        ``timeout_s``, or the entry was lapped, is another topic's, a frame already taken or malformed."""
        try:
            got = self._ring.next(timeout_s, self._seq.last)
        except (RingError, MalformedMessage) as exc:
            self._skip(exc)
            return None
        if got is None:  # nothing came, or the pool was given up (``left`` says how): back to ZeroMQ then
            return self._leave_ring(self._ring.left, self._ring.left_level) if self._ring.left else None
        header, passed = got
        self._last_message = time.monotonic()
        if passed:
            self._seq.skip(passed)
            self._newest.discard(passed)
        taken = self._new_seq(header)  # False: a seq leaping ahead (the cursor skips those taken), or over-size
        self.via_ring += taken
        return (header, None) if taken else None

    def _enter_ring(self) -> None:
        """Take descriptors from the mapped pool's ring from now on: announce it (the publisher keeps filling the
        pool for us), then stop the ZeroMQ descriptors."""
        self._sock.setsockopt(zmq.SUBSCRIBE, self._ring_topic)
        self._sock.setsockopt(zmq.UNSUBSCRIBE, self._shm_topic)
        self._ring = RingCursor(self._pools.reader, self._shm_topic, self.latest)

    def _leave_ring(self, why: str, level: int = logging.INFO) -> None:
        """Back to the ZeroMQ descriptors (and payload) until a descriptor names a pool again."""
        log.log(level, "shared-memory ring of %s %s: taking ZeroMQ descriptors", self.endpoint, why)
        self._ring = None
        self._sock.setsockopt(zmq.SUBSCRIBE, self._shm_topic)
        self._sock.setsockopt(zmq.UNSUBSCRIBE, self._ring_topic)
        self._subscribe_payload(True)
        # a new connection: the old one may still hold copies sent before the ring was taken, queued here or on their
        # way (more than a look at the socket finds), which would come out as old frames, their seq going back
        self._watch.reconnect()
        self._last_message = time.monotonic()

    def _wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a message, tending the connection meanwhile; True when one is there."""
        ready = self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN
        if not ready:
            # A ZeroMQ descriptor signals commands, not messages: wait on it only after EVENTS said that no message
            # is queued (just now; the monitor is drained whenever its descriptor fires), then ask EVENTS again.
            fired, self._taken = self._fds.poll(round(self._watch.unended_wait(timeout_s, self._taken) * 1000)), False
            ready = self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN
            if any(fd == self._watch.fd for fd, _ in fired):
                self._watch.on_events()
        # a queued message is read before a drop is restored: it came before the refused part, and EVENTS has taken
        # its first part off already, whose rest a reconnect would drop (libzmq then aborts on "!_more")
        if ready:
            self._last_message, self._heard, self._taken = time.monotonic(), True, True
            return True
        if unended := self._watch.cut_unended(self._most_unended):
            self._skip(f"{unended / 2**20:.1f} MiB of a message not ended yet: more than max_frame_bytes="
                       f"{self.max_frame_bytes} and two headers; reconnected")
        self._restore()
        if not self._payload_on and time.monotonic() - self._last_message >= _RESUBSCRIBE_S:
            self._subscribe_payload(True)  # the publisher may have restarted without shared memory
        else:
            self._watch.remake_if_silent(self._last_message, heard=self._heard)
        return False

    def _restore(self) -> None:
        """Reconnect a connection libzmq dropped and will not retry; a refused part counts as malformed. Without it
        the publisher, seeing no subscription from us, stops filling the pool's ring too."""
        if self._watch.restore_due() and self._watch.restore():
            self._skip(f"ZeroMQ refused it (a part over max_frame_bytes={self.max_frame_bytes}, or a peer that is no "
                       f"publisher: another socket type, another protocol) and dropped the connection; reconnected")

    def _subscribe_payload(self, on: bool) -> None:
        if on != self._payload_on:
            self._sock.setsockopt(zmq.SUBSCRIBE if on else zmq.UNSUBSCRIBE, self._topic)
            self._payload_on = on

    def _read(self) -> tuple[dict[str, Any], Any] | None:
        """Socket owner: one message as ``(header, payload)`` (h264: decoded here, in order), or None when it was
        malformed (counted and logged), a duplicate, an h264 frame before a keyframe, or unreadable shared memory."""
        try:
            parts = read_parts(self._sock, _PARTS)
            if (header := decode_header(parts))["format"] == "shm" and not self._map_pool(header["shm_pool"]):
                return None  # fell back: the payload message of this seq follows
            if not self._new_seq(header):
                return None
            if header["format"] == "shm" and self._ring_on and self._pools.reader.ring is not None:
                self._enter_ring()
            if header["format"] != "h264":
                return header, parts[2]
            image = self._h264.decode(parts[2].buffer, bool(header["keyframe"]), header["height"], header["width"],
                                      ENCODINGS[header["encoding"]])
        except (MalformedMessage, DecodeError) as exc:
            self._skip(exc)
            return None
        self.awaiting_keyframe += image is None
        return None if image is None else (header, image)

    def _fits(self, header: dict[str, Any]) -> bool:
        """False (skipped as malformed) for a frame over ``max_frame_bytes``, whichever way it came (a raw part ZeroMQ
        did not refuse, a shared-memory descriptor or ring entry, a kB of jpeg that claims 65535 x 65535)."""
        if (size := header["height"] * header["step"]) > self.max_frame_bytes:  # step: width * channels unless raw
            self._skip(f"{header['format']} frame of {header['width']}x{header['height']} is {size} bytes, more than "
                       f"max_frame_bytes={self.max_frame_bytes}")
        return size <= self.max_frame_bytes

    def _skip(self, why: Exception | str) -> None:
        self.malformed += 1
        self.last_malformed = str(why)
        self._said.say(f"skipped malformed message from {self.endpoint}: {why}")

    def _new_seq(self, header: dict[str, Any]) -> bool:
        """Count gaps in the header's ``seq``; False for a frame taken through the other route, a malformed seq
        (SeqCounter) or a frame too large (:meth:`_fits`: once its seq is taken, so malformed, not missed as well)."""
        try:
            missed = self._seq.take(header["seq"], "shm" if (fmt := header["format"]) == "shm" else "payload")
        except MalformedMessage as exc:
            self._skip(exc)
            return False
        if (missed or self._seq.restarted) and fmt == "h264":
            self._h264.reset()  # the next inter frame refers to one we never saw
        self.missed += missed or 0
        return missed is not None and self._fits(header)

    def _map_pool(self, name: str) -> bool:
        """Socket owner: have pool ``name`` mapped and the payload unsubscribed; on failure fall back for good."""
        try:
            self._pools.map(name)
        except NotAPool as exc:  # a forged message: skipped, shared memory stays on for the real pool's
            raise MalformedMessage(str(exc)) from None
        except PoolError as exc:
            log.warning("shared memory of %s unavailable (%s): taking the ZeroMQ stream", self.endpoint, exc)
            self._shm = False
            self._sock.setsockopt(zmq.UNSUBSCRIBE, self._shm_topic)
            self._subscribe_payload(True)
            return False
        self._subscribe_payload(False)
        return True

    def _take(self, header: dict[str, Any], payload: Any) -> tuple[dict[str, Any], np.ndarray] | None:
        """Consumer: the image of a message (shared memory read here, so a view is held by the caller's thread);
        None when it is gone (counted in ``missed``) or does not decode (``malformed``)."""
        if (fmt := header["format"]) == "shm":
            return self._take_shm(header)
        self._pools.release()
        try:
            if fmt == "jpeg":
                return header, self._jpeg.decode(payload.buffer, header["height"], header["width"],
                                                 ENCODINGS[header["encoding"]])
        except DecodeError as exc:
            self._skip(exc)
            return None
        image = raw_image(header, payload) if fmt == "raw" else payload
        return header, image.copy() if self.copy and fmt == "raw" else image

    def _take_shm(self, header: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray] | None:
        """The frame of a shared-memory message, or None when it was overwritten since (or its pool replaced)."""
        try:
            image = self._pools.frame(header, copy=self.copy is not False)
        except PoolError as exc:
            self._skip(exc)
            return None
        if image is None:  # never returned torn
            self.missed += 1
            return None
        self.via_shm += 1
        return header, image

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """Frames until one :meth:`recv` times out."""
        while (frame := self.recv()) is not None:
            yield frame

    def close(self) -> None:
        """Close the socket at once (linger 0; latest mode: the reader thread first, within 50 ms), a recv() waiting in
        another thread ended first (RuntimeError, within 50 ms); again: nothing."""
        if os.getpid() != self._pid:  # a forked child leaves them alone: its parent's sockets, slot locks and _cond
            self._turn.closing.set()
            return
        if not self._turn.close():
            return
        self._newest.join()
        self._close_links()
        self._pools.close()
        self._said.flush()
        self._seq.flush()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

