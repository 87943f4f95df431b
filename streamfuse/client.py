"""The consumer side: a Subscriber that yields decoded fused frames, with timeouts and a latest-frame mode.

>>> with Subscriber("tcp://127.0.0.1:1", timeout_s=0.05) as sub:  # nothing listens on port 1
...     sub.recv() is None
True
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from streamfuse.publish import MAX_HEADER_BYTES, MalformedMessage, decode_message

__all__ = ["Subscriber", "DEFAULT_MAX_FRAME_BYTES"]

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often a waiting reader checks for close() and for a connection to restore
_RESTORE_AFTER_S = 0.5  # a connection dropped without libzmq's own retry is restored after this long
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_RETRYING = zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED
DEFAULT_MAX_FRAME_BYTES = 7680 * 4320 * 3  # largest image part accepted by default: an 8K UHD bgr8 frame, 99.5 MB


class Subscriber:
    """Connects a SUB socket to a publisher and receives ``(header, image)`` frames.

    Args:
        endpoint: the publisher's endpoint, e.g. ``tcp://127.0.0.1:5555``; reconnects are automatic.
        topic: topic prefix to receive (``fused/`` = every rig).
        timeout_s: longest wait of one :meth:`recv`, seconds; iteration stops after one such silent wait.
        latest: return only the newest frame (live viewers). A reader thread takes every frame off the socket
            as it arrives and keeps the newest, so no backlog builds up in ZeroMQ or TCP buffers while the caller
            is busy; frames replaced before the caller took them count as ``discarded``.
        rcvhwm: messages queued on this side before ZeroMQ stops reading from the network.
        server_key: the publisher's CURVE public key (Z85, 40 characters) when it encrypts; empty = plain.
        max_frame_bytes: largest image part accepted, bytes. ZeroMQ refuses a larger message part as it arrives
            (``ZMQ_MAXMSGSIZE``: it drops the connection before buffering the part, then reconnects), so a peer
            cannot make this process hold more than about ``rcvhwm`` frames of this size.

    Counters: ``received`` (frames returned), ``malformed`` (skipped, logged: not the wire format, a header
    field out of range, or a part over ``max_frame_bytes``), ``missed`` (gaps in the publisher's ``seq``: frames
    dropped on the way to this subscriber), ``discarded`` (latest mode), ``handshake_failures`` (CURVE: the
    publisher's key differs from ``server_key``, or only one side encrypts).

    Raises:
        ValueError: a bad argument or endpoint (one line).
    """

    def __init__(self, endpoint: str, topic: str = "fused/", *, timeout_s: float = 1.0, latest: bool = False,
                 rcvhwm: int = 2, server_key: str = "", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0 (receives always have a timeout)")
        if rcvhwm < 1:
            raise ValueError(f"rcvhwm={rcvhwm} must be >= 1")
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes={max_frame_bytes} must be >= 1")
        if server_key and len(server_key) != 40:
            raise ValueError(f"server_key must be the publisher's 40-character Z85 CURVE public key, got "
                             f"{len(server_key)} characters")
        self.endpoint, self.timeout_s, self.latest = endpoint, timeout_s, latest
        self.received = self.malformed = self.missed = self.discarded = self.handshake_failures = 0
        self.max_frame_bytes = max_frame_bytes
        self._last_seq: int | None = None
        self._dropped_at: float | None = None  # when the connection dropped with no retry (yet) from libzmq
        self._handshake_failed = False  # the current connection attempt failed its handshake
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
            self._sock.setsockopt(zmq.MAXMSGSIZE, max(max_frame_bytes, MAX_HEADER_BYTES))  # per part
            if server_key:
                self._sock.curve_serverkey = server_key.encode()
                self._sock.curve_publickey, self._sock.curve_secretkey = zmq.curve_keypair()
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
            # libzmq does not reconnect after a protocol error (a part over MAXMSGSIZE, a failed handshake): the
            # monitor tells such drops from ordinary ones, which it retries itself (see _on_events).
            self._monitor = self._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | _RETRYING | _HANDSHAKE_FAILED)
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise ValueError(f"cannot connect to {endpoint}: {exc}") from None
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._newest: tuple[dict[str, Any], np.ndarray] | None = None
        self._failure = ""  # latest mode: why the reader thread stopped, raised at the next recv()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._reader = None
        if latest:
            # The socket is handed over to the reader thread here (start() is a full memory barrier, as ZeroMQ
            # requires for moving a socket between threads); only that thread touches it from now on.
            self._reader = threading.Thread(target=self._read_forever, name=f"subscriber {endpoint}", daemon=True)
            self._reader.start()

    def recv(self, timeout_s: float | None = None) -> tuple[dict[str, Any], np.ndarray] | None:
        """The next frame (``latest``: the newest not yet returned), or None when none arrives in time.

        Args:
            timeout_s: longest wait, seconds; None = the ``timeout_s`` given at construction.

        Returns:
            ``(header, image)`` as :func:`streamfuse.publish.decode_message` returns them (image: a view of the
            message).

        Raises:
            RuntimeError: latest mode's reader thread stopped on an unexpected error (one line saying which).
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if self.latest:
            with self._cond:
                if not self._cond.wait_for(lambda: self._newest is not None or self._failure, timeout_s):
                    return None
                if self._newest is None:
                    raise RuntimeError(f"subscriber {self.endpoint}: the reader thread stopped: {self._failure}")
                frame, self._newest = self._newest, None
        else:
            frame = None
            deadline = time.monotonic() + timeout_s
            while frame is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if self._wait(min(remaining, _POLL_S)):
                    frame = self._read()
        self.received += 1
        return frame

    def _wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a message, tending the connection meanwhile; True when one is there."""
        ready = dict(self._poller.poll(round(timeout_s * 1000)))
        if self._monitor in ready:
            self._on_events()
        if self._dropped_at is not None and time.monotonic() - self._dropped_at >= _RESTORE_AFTER_S:
            self._restore()
        return self._sock in ready

    def _on_events(self) -> None:
        """Follow the connection's events: count failed handshakes, note a drop that libzmq will not retry."""
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event & _HANDSHAKE_FAILED:
                self.handshake_failures += 1
                self._handshake_failed = True
                if self.handshake_failures == 1:
                    log.warning("CURVE handshake with %s failed: the publisher's public key differs from the one "
                                "given, or only one side encrypts", self.endpoint)
            elif event & _RETRYING:  # a new attempt (libzmq's retry follows an ordinary drop at once)
                self._dropped_at, self._handshake_failed = None, False
            elif event == zmq.EVENT_DISCONNECTED and self._dropped_at is None:
                self._dropped_at = time.monotonic()

    def _restore(self) -> None:
        """Reconnect after a drop that libzmq did not retry: a failed handshake, or a refused (malformed) part."""
        if not self._handshake_failed:
            self.malformed += 1
            log.warning("skipped malformed message from %s: ZeroMQ refused it (a part over max_frame_bytes=%d, or "
                        "not the ZeroMQ protocol) and dropped the connection; reconnected", self.endpoint,
                        self.max_frame_bytes)
        self._dropped_at, self._handshake_failed = None, False
        try:
            self._sock.disconnect(self.endpoint)
        except zmq.ZMQError:  # libzmq had already forgotten the endpoint
            pass
        self._sock.connect(self.endpoint)

    def _read_forever(self) -> None:
        """Latest mode's reader thread: keep only the newest frame until close(); a failure goes to the consumer."""
        try:
            while not self._closing.is_set():
                if not self._wait(_POLL_S):
                    continue
                frame = self._read()
                if frame is None:
                    continue
                with self._cond:
                    self.discarded += self._newest is not None
                    self._newest = frame
                    self._cond.notify()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the consumer must hear of it, not wait forever
            with self._cond:
                self._failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
                self._cond.notify()
        finally:
            self._close_sockets()

    def _read(self) -> tuple[dict[str, Any], np.ndarray] | None:
        """One message decoded, or None when it was malformed (counted and logged)."""
        parts = self._sock.recv_multipart(copy=False)
        try:
            header, image = decode_message(parts)
        except MalformedMessage as exc:
            self.malformed += 1
            log.warning("skipped malformed message from %s: %s", self.endpoint, exc)
            return None
        seq = header["seq"]
        if self._last_seq is not None and seq > self._last_seq:
            self.missed += seq - self._last_seq - 1
        elif self._last_seq is not None:
            log.info("publisher at %s restarted (seq %d after %d)", self.endpoint, seq, self._last_seq)
        self._last_seq = seq
        return header, image

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """Frames until one :meth:`recv` times out."""
        while (frame := self.recv()) is not None:
            yield frame

    def close(self) -> None:
        """Close the socket at once (linger 0); in latest mode stop the reader thread first (within 50 ms)."""
        if self._reader is None:
            self._close_sockets()
            return
        self._closing.set()
        self._reader.join()

    def _close_sockets(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
