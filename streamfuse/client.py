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

from streamfuse.publish import MalformedMessage, decode_message

__all__ = ["Subscriber"]

log = logging.getLogger(__name__)

_POLL_MS = 50  # latest mode: how often the reader thread checks for close()


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

    Counters: ``received`` (frames returned), ``malformed`` (skipped, logged), ``missed`` (gaps in the
    publisher's ``seq``: frames dropped on the way to this subscriber), ``discarded`` (latest mode).
    """

    def __init__(self, endpoint: str, topic: str = "fused/", *, timeout_s: float = 1.0, latest: bool = False,
                 rcvhwm: int = 2, server_key: str = "") -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0 (receives always have a timeout)")
        if rcvhwm < 1:
            raise ValueError(f"rcvhwm={rcvhwm} must be >= 1")
        if server_key and len(server_key) != 40:
            raise ValueError(f"server_key must be the publisher's 40-character Z85 CURVE public key, got "
                             f"{len(server_key)} characters")
        self.endpoint, self.timeout_s, self.latest = endpoint, timeout_s, latest
        self.received = self.malformed = self.missed = self.discarded = 0
        self._last_seq: int | None = None
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
            if server_key:
                self._sock.curve_serverkey = server_key.encode()
                self._sock.curve_publickey, self._sock.curve_secretkey = zmq.curve_keypair()
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise ValueError(f"cannot connect to {endpoint}: {exc}") from None
        self._newest: tuple[dict[str, Any], np.ndarray] | None = None
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._reader = None
        if latest:
            # The socket is handed over to the reader thread here (start() is a full memory barrier, as ZeroMQ
            # requires for moving a socket between threads); only that thread touches it from now on.
            self._reader = threading.Thread(target=self._read_forever, name=f"subscriber {endpoint}", daemon=True)
            self._reader.start()

    def recv(self) -> tuple[dict[str, Any], np.ndarray] | None:
        """The next frame (``latest``: the newest not yet returned), or None when none arrives within ``timeout_s``.

        Returns:
            ``(header, image)`` as :func:`streamfuse.publish.decode_message` returns them (image: a view of the
            message).
        """
        if self.latest:
            with self._cond:
                if not self._cond.wait_for(lambda: self._newest is not None, self.timeout_s):
                    return None
                frame, self._newest = self._newest, None
        else:
            frame = None
            deadline = time.monotonic() + self.timeout_s
            while frame is None:
                if not self._sock.poll(max(0, round((deadline - time.monotonic()) * 1000))):
                    return None
                frame = self._read()
        self.received += 1
        return frame

    def _read_forever(self) -> None:
        """Latest mode's reader thread: keep only the newest frame until close()."""
        try:
            while not self._closing.is_set():
                if not self._sock.poll(_POLL_MS):
                    continue
                frame = self._read()
                if frame is None:
                    continue
                with self._cond:
                    self.discarded += self._newest is not None
                    self._newest = frame
                    self._cond.notify()
        finally:
            self._sock.close(linger=0)

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
            self._sock.close(linger=0)
            return
        self._closing.set()
        self._reader.join()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
