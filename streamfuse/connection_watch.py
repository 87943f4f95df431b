"""A consumer's SUB socket: opened with its limits and CURVE keys (:func:`connect_sub`), and the health of its
connection, followed through the socket's ZeroMQ monitor (:class:`ConnectionWatch`).

libzmq retries an ordinary dropped connection itself, but not one dropped on a protocol error (a part over
``ZMQ_MAXMSGSIZE``, a failed CURVE handshake): the monitor tells such drops from ordinary ones, and the watch
reconnects after them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamfuse.checks import tcp_port_ok

__all__ = ["ConnectionWatch", "connect_sub"]

log = logging.getLogger(__name__)

_RESTORE_AFTER_S = 0.5  # a connection dropped without libzmq's own retry is restored after this long
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_RETRYING = zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED


class ConnectionWatch:
    """Monitors ``sock`` (before it connects to ``endpoint``): counts failed handshakes in ``handshake_failures``,
    notes a drop that libzmq will not retry (``dropped_at``) and restores the connection after it."""

    def __init__(self, sock: zmq.Socket, endpoint: str) -> None:
        self._sock, self._endpoint = sock, endpoint
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | _RETRYING | _HANDSHAKE_FAILED)
        self.fd = self._monitor.getsockopt(zmq.FD)  # fires only for events after an EVENTS that found none
        self.handshake_failures = 0
        self.dropped_at: float | None = None  # when the connection dropped with no retry (yet) from libzmq
        self._handshake_failed = False  # the current connection attempt failed its handshake

    def on_events(self) -> None:
        """Follow the connection's events: count failed handshakes, note a drop that libzmq will not retry."""
        while self._monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = recv_monitor_message(self._monitor)["event"]
            if event & _HANDSHAKE_FAILED:
                self.handshake_failures += 1
                self._handshake_failed = True
                if self.handshake_failures == 1:
                    log.warning("CURVE handshake with %s failed: the publisher's public key differs from the one "
                                "given, or only one side encrypts", self._endpoint)
            elif event & _RETRYING:  # a new attempt (libzmq's retry follows an ordinary drop at once)
                self.dropped_at, self._handshake_failed = None, False
            elif event == zmq.EVENT_DISCONNECTED and self.dropped_at is None:
                self.dropped_at = time.monotonic()

    def restore_due(self) -> bool:
        """True when a drop that libzmq did not retry is old enough to be restored here."""
        return self.dropped_at is not None and time.monotonic() - self.dropped_at >= _RESTORE_AFTER_S

    def restore(self) -> bool:
        """Reconnect after a drop that libzmq did not retry; True when it was a refused (malformed) part, False when
        a failed handshake."""
        refused = not self._handshake_failed
        self.dropped_at, self._handshake_failed = None, False
        try:
            self._sock.disconnect(self._endpoint)
        except zmq.ZMQError:  # libzmq had already forgotten the endpoint
            pass
        self._sock.connect(self._endpoint)
        return refused

    def close(self) -> None:
        """Stop monitoring and close the monitor's socket (linger 0)."""
        self._sock.disable_monitor()
        self._monitor.close(linger=0)


def connect_sub(endpoint: str, topics: Iterable[bytes], *, rcvhwm: int, max_part_bytes: int,
                server_key: str = "") -> tuple[zmq.Socket, ConnectionWatch]:
    """A SUB socket connected to ``endpoint`` (linger 0), subscribed to ``topics``, and the watch of its connection
    (monitoring from before the connect, so that no event is missed).

    Args:
        rcvhwm: messages queued on this side before ZeroMQ stops reading from the network.
        max_part_bytes: largest message part accepted (``ZMQ_MAXMSGSIZE``: a larger one drops the connection as it
            arrives, before it is buffered; the watch restores it).
        server_key: the publisher's CURVE public key (Z85, 40 characters); empty = plain. The socket gets a key pair
            of its own.

    Raises:
        ValueError: a bad server key or endpoint (one line).
    """
    if not tcp_port_ok(endpoint):
        raise ValueError(f"cannot connect to {endpoint}: its TCP port must be 1..65535")
    if server_key and len(server_key) != 40:
        raise ValueError(f"server_key must be the publisher's 40-character Z85 CURVE public key, got "
                         f"{len(server_key)} characters")
    sock = zmq.Context.instance().socket(zmq.SUB)
    watch = None
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, max_part_bytes)
        if server_key:
            sock.curve_serverkey = server_key.encode()
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        watch = ConnectionWatch(sock, endpoint)
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        if watch is not None:
            watch.close()
        sock.close(linger=0)
        raise ValueError(f"cannot connect to {endpoint}: {exc}") from None
    return sock, watch
