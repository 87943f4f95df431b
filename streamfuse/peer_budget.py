"""What each ``tcp://`` consumer of a publisher has sent it, and the cut of one that sends far more than a subscriber
does. libzmq takes every subscription a peer sends into a trie of about 50 bytes a byte, kept until the peer leaves,
does that work inside the publisher's own socket calls (the live loop's sends), and has no limit of its own on how many
a peer may send: one peer sending 644,000 distinct subscriptions of 101 bytes in 10 s took a live run from 328 to
3047 MB, never given back, and held its loop at 0 frames/s for 24 s.

A subscriber sends its greeting and handshake, a few subscriptions and a pong every few seconds: a connection may send
``BURST_BYTES``, and ``BYTES_PER_S`` more for each second it has been connected (the kernel's count of the bytes it
received, ``TCP_INFO``); all of them together may send ``TOTAL_BURST_BYTES`` beyond their ``BYTES_PER_S``, the one
that sent the most of it cut first. Past that its connection is shut down, which libzmq takes as the peer leaving (its
subscriptions go with it), counted (:attr:`PeerBudget.cut`) and said a few lines a window
(:class:`~streamfuse.flood_log.FloodLog`). The kernel counts no bytes of an ``ipc://`` connection: there the publisher
counts the subscriptions it reads of each peer process (:meth:`PeerBudget.took`, by their ZeroMQ ``Peer-Address``),
under the same budgets, and cuts every connection of a process over them. ``inproc://`` peers are not counted, nor is
what ``BYTES_PER_S`` lets a connection send for as long as it stays (libzmq's trie grows by about 3 KB a second).

The same count, less what the kernel still holds, tells a consumer how much libzmq has read of its own connection
(:func:`bytes_read`): of a message that never ends, which libzmq holds unseen until its last part.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamfuse.flood_log import FloodLog

__all__ = ["BURST_BYTES", "BYTES_PER_S", "TOTAL_BURST_BYTES", "PeerBudget", "bytes_read", "peer_of", "tcp_info_option"]

log = logging.getLogger(__name__)
# the most a SUB sends as it connects: its 1000 queued subscriptions (its SNDHWM), each up to the publisher's cap
BURST_BYTES = 512 * 1024
BYTES_PER_S = 64  # a pong every 5 s (45 bytes in a CURVE box) and the odd (un)subscription, several times over
# what all connections may send together beyond their BYTES_PER_S: each under its own budget, twenty flooding peers
# took a publisher 456 MiB; a consumer of ours sends under a KiB as it connects, so 2000 may connect at once
TOTAL_BURST_BYTES = 4 * BURST_BYTES
CHECK_MS = 10  # the kernel's counts are read this often while any peer is connected: microseconds a connection
IDLE_MS = 100  # the wait for a connection while none is
STOP_S = 10.0  # the wait for the thread to end at the close (it ends at once: a loaded machine can take seconds)
EVENTS_PER_CHECK = 1000  # connections made or ended taken a check: a flood of them must not hold off the cuts


def tcp_info_option(platform: str = sys.platform) -> int | None:
    """``TCP_INFO`` where its struct is Linux's, whose byte count is read at :data:`_BYTES_RECEIVED`; None elsewhere
    (the BSDs have the option with another layout: that offset would read another field, and cut subscribers)."""
    return getattr(socket, "TCP_INFO", None) if platform.startswith("linux") else None


_TCP_INFO = tcp_info_option()
_BYTES_RECEIVED = 128  # offset of struct tcp_info's tcpi_bytes_received (a u64; Linux 4.1 and later)
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid of an ipc:// connection's peer process


class PeerBudget:
    """Watches, from a thread of its own (the live loop's turns are too far apart: a flood sent megabytes between two),
    the connections ``sock`` (bound to ``endpoint``) accepts and cuts those over their budget; :meth:`close` it
    before the socket closes."""

    def __init__(self, sock: zmq.Socket, endpoint: str) -> None:
        #: connections cut for sending more than their budget
        self.cut = 0
        self._sock, self._endpoint = sock, endpoint
        self._peers: dict[int, tuple[object, float]] = {}  # fd: (its peer's address, when it was seen, monotonic s)
        self._said = FloodLog(log, f"consumers cut from {endpoint}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: ipc:// (Linux): the publisher counts what it reads of each peer process (:meth:`took`); the thread only
        #: notes the connections, under ``_lock``
        self.local = endpoint.startswith("ipc://") and hasattr(socket, "SO_PEERCRED")
        self._lock = threading.Lock()
        self._sent: dict[int, int] = {}  # ipc: bytes of subscriptions read of each peer process (pid)
        if (endpoint.startswith("tcp://") and _TCP_INFO is not None) or self.local:
            # an address of its own: the bind's monitor (``endpoints.bind``) may still hold the default one
            monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED,
                                              f"inproc://peer-budget-{id(self):x}")
            self._thread = threading.Thread(target=self._watch, args=(monitor,), name="peer-budget", daemon=True)
            self._thread.start()

    def _watch(self, monitor: zmq.Socket) -> None:
        try:
            while not self._stop.is_set():
                monitor.poll(CHECK_MS if self._peers else IDLE_MS)
                now = time.monotonic()
                with self._lock:
                    self._take_events(monitor, now)
                if not self.local:
                    self._check(now)
        finally:
            monitor.close(linger=0)

    def _take_events(self, monitor: zmq.Socket, now: float) -> None:
        """The connections made and ended since the last call."""
        for _ in range(EVENTS_PER_CHECK):
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            fd = event["value"]
            if (gone := self._peers.pop(fd, None)) and self.local and not self._connections_of(gone[0][0]):
                self._sent.pop(gone[0][0], None)  # the process's last connection: a later one of its pid starts anew
            if event["event"] == zmq.EVENT_ACCEPTED and (peer := peer_of(fd)) is not None:
                self._peers[fd] = (peer, now)

    def _connections_of(self, pid: int) -> list[tuple[int, object, float]]:
        """The ipc connections of process ``pid``: (descriptor, peer, when seen)."""
        return [(fd, peer, since) for fd, (peer, since) in self._peers.items() if peer[0] == pid]

    def took(self, address: str, nbytes: int) -> None:
        """Count ``nbytes`` of a subscription the publisher read from the ``ipc://`` peer process at ``address`` (the
        message's ZeroMQ ``Peer-Address``, ``host:uid:gid:pid``); cut every connection of that process once it has
        sent more than its own budget (:meth:`_allowed`, with ``BURST_BYTES``), then, while what all processes sent
        beyond their ``BYTES_PER_S`` adds up to more than ``TOTAL_BURST_BYTES``, those of the one that sent the most."""
        if not (pid_text := address.rpartition(":")[2]).isdigit():
            return  # a kernel that did not say (libzmq asks SO_PEERCRED)
        pid, now = int(pid_text), time.monotonic()
        with self._lock:
            self._sent[pid] = self._sent.get(pid, 0) + nbytes
            if self._sent[pid] > self._allowed(pid, now, BURST_BYTES):
                self._cut_process(pid, now, "where a consumer sends a few KiB")
            if sum(self._sent.values()) <= TOTAL_BURST_BYTES:  # most often: no need to weigh each process's
                return
            bursts = {other: sent - self._allowed(other, now, 0) for other, sent in self._sent.items()}
            over = sum(burst for burst in bursts.values() if burst > 0) - TOTAL_BURST_BYTES
            for other in sorted(bursts, key=bursts.__getitem__, reverse=True):
                if over <= 0:
                    return
                self._cut_process(other, now, f"and the consumers together more than {TOTAL_BURST_BYTES // 1024} KiB")
                over -= bursts[other]

    def _allowed(self, pid: int, now: float, burst: int) -> float:
        """What process ``pid`` may send: ``burst``, and ``BYTES_PER_S`` a second since its first connection (its
        connections together: a consumer's several sockets send a few KiB in all)."""
        return burst + BYTES_PER_S * max((now - since for *_, since in self._connections_of(pid)), default=0.0)

    def _cut_process(self, pid: int, now: float, why: str) -> None:
        """Shut down every connection of process ``pid`` (libzmq takes each as the peer leaving), counted and said."""
        if not (connections := self._connections_of(pid)):
            return  # its connection not noted yet: cut at its next subscription
        sent = self._sent.pop(pid)
        for fd, peer, since in connections:
            del self._peers[fd]
            self._said_cut(peer, sent if _on_connection(fd, peer, _shut) is not None else None, now - since, why)

    def _check(self, now: float) -> None:
        """Cut the connections over their own budget, then, while what the others sent beyond their ``BYTES_PER_S``
        adds up to more than ``TOTAL_BURST_BYTES``, the one that sent the most of it."""
        bursts = {}
        for fd, (peer, since) in list(self._peers.items()):
            steady = BYTES_PER_S * (now - since)
            sent = _cut_over(fd, peer, BURST_BYTES + steady)
            if sent is None or sent > BURST_BYTES + steady:  # None: no longer that connection (its end's event lost)
                del self._peers[fd]
                self._said_cut(peer, sent, now - since, "where a consumer sends a few KiB")
            else:
                bursts[fd] = sent - steady
        over = sum(burst for burst in bursts.values() if burst > 0) - TOTAL_BURST_BYTES
        for fd in sorted(bursts, key=bursts.__getitem__, reverse=True):
            if over <= 0:
                return
            peer, since = self._peers.pop(fd)
            self._said_cut(peer, _cut_over(fd, peer, 0), now - since,
                           f"and the consumers together more than {TOTAL_BURST_BYTES // 1024} KiB")
            over -= bursts[fd]

    def _said_cut(self, peer: object, sent: int | None, age_s: float, why: str) -> None:
        """Count and say the cut of ``peer``'s connection (None: it was gone already, not cut)."""
        if sent is not None:
            self.cut += 1
            self._said.say(f"cut the connection of {_address(peer)} to {self._endpoint}: it sent {sent / 1024:.0f} KiB "
                           f"in {age_s:.1f} s, {why} (a flood of subscriptions, which libzmq keeps in memory until the "
                           f"peer leaves)")

    def close(self) -> None:
        """Stop watching (before the socket closes) and say the cuts not said yet."""
        if self._thread is not None:
            self._stop.set()
            self._sock.disable_monitor()  # its last event wakes the thread, which closes its end as it ends: before
            self._thread.join(STOP_S)  # the context's end, which waits for every socket of it to close
            self._thread = None
        self._said.flush()


def peer_of(fd: int) -> object | None:
    """The address of the peer of libzmq's connection ``fd`` (an ipc:// one's: its process's pid, uid and gid); None
    once it is gone."""
    try:
        conn = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return _peer(conn)
    except OSError:
        return None
    finally:
        conn.detach()  # libzmq's to close


def _peer(conn: socket.socket) -> object:
    if conn.family == socket.AF_UNIX:  # its address is no one's: the process at its other end
        return _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return conn.getpeername()


def _cut_over(fd: int, peer: object, budget: float) -> int | None:
    """The bytes connection ``fd`` has received, shut down when they are over ``budget``; None when ``fd`` is no
    longer the connection of ``peer`` (closed, or taken by another)."""
    def cut(conn: socket.socket) -> int | None:
        if (sent := _bytes_received(conn)) is not None and sent > budget:
            _shut(conn)
        return sent
    return _on_connection(fd, peer, cut)


def _shut(conn: socket.socket) -> int:
    """Shut down libzmq's connection ``conn``: it reads the end of the stream and drops the peer."""
    conn.shutdown(socket.SHUT_RDWR)
    return 0


def bytes_read(fd: int, peer: object) -> int | None:
    """The bytes libzmq has read of its tcp connection ``fd``: those the kernel received less those it still holds;
    None when ``fd`` is no longer the connection of ``peer``, or the kernel does not count them (not Linux)."""
    def read(conn: socket.socket) -> int | None:
        if (received := _bytes_received(conn)) is None:
            return None
        return received - struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0]
    return _on_connection(fd, peer, read)


def _on_connection(fd: int, peer: object, look: Callable[[socket.socket], int | None]) -> int | None:
    """What ``look`` finds of libzmq's connection ``fd`` (lent, not closed); None when ``fd`` is no longer the
    connection of ``peer`` (closed, or taken by another)."""
    try:
        conn = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return look(conn) if _peer(conn) == peer else None
    except OSError:
        return None
    finally:
        conn.detach()


def _bytes_received(conn: socket.socket) -> int | None:
    """The bytes the kernel has received on tcp connection ``conn``, where it counts them (Linux)."""
    if _TCP_INFO is None:
        return None
    info = conn.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _BYTES_RECEIVED + 8)
    if len(info) < _BYTES_RECEIVED + 8:
        return None  # a kernel that does not count them: not watched
    return struct.unpack_from("=Q", info, _BYTES_RECEIVED)[0]


def _address(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) == 3:  # an ipc:// peer's (pid, uid, gid)
        return f"process {peer[0]} (uid {peer[1]})"
    host, port = peer[:2] if isinstance(peer, tuple) else (peer, "")
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
