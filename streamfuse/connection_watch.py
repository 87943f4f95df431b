"""A consumer's SUB socket: opened with its limits and CURVE keys (:func:`connect_sub`), and the health of its
connection, followed through the socket's ZeroMQ monitor (:class:`ConnectionWatch`).

libzmq retries an ordinary dropped connection itself, but not one dropped on a protocol error (a part over
``ZMQ_MAXMSGSIZE``, a failed CURVE handshake): the monitor tells such drops from ordinary ones, and the watch
reconnects after them. It also retries, in silence, a host name that does not resolve: :func:`connect_sub` looks the
name up first, waits a while for one that does not resolve yet (a publisher whose DNS name appears once its container
or service is up), and says so when it never does.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from operator import itemgetter
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from streamfuse.checks import tcp_port_ok
from streamfuse.endpoints import ipc_refusal, is_ipv6, reachable_from_other_machines, tcp_host
from streamfuse.errors import io_reason, one_line
from streamfuse.peer_budget import bytes_read, peer_of

__all__ = ["ConnectionWatch", "connect_sub", "on_this_host", "load_server_key", "NAME_WAIT_S", "SILENT_S"]

log = logging.getLogger(__name__)

#: how long a consumer's connection may bring nothing before it is made again, seconds: a link that died without
#: closing (a publisher's power cut, a radio out of range) is never reported by TCP. A frame must arrive within it
#: (a 640x480 raw frame over a 1.5 Mbit/s link). Not ZeroMQ's heartbeats: with a consumer behind on its frames they
#: drop a live connection and then crash libzmq 4.3 ("Assertion failed: _input_stopped", libzmq issue 3937).
SILENT_S = 5.0
# how often the bytes of a message not ended yet are counted while they grow: a loopback link brought 10 MB in 5 ms
_UNENDED_LOOK_S = 0.005
_RESTORE_AFTER_S = 0.5  # a connection dropped without libzmq's own retry is restored after this long
# how often a reader whose frames come another way (the pool's ring) looks at the events: a look costs as much as a
# frame's transport there, and a drop waits _RESTORE_AFTER_S before its restore anyway
_GLANCE_S = 0.05
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_RETRYING = zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED
# getaddrinfo has no timeout of its own (glibc's resolver: 5 s a try, 2 tries for each of up to 3 name servers and
# each search domain): a lookup without an answer by then is left to libzmq, which resolves again at each attempt.
_RESOLVE_S = 2.0
_RETRY_S = (0.5, 2.0)  # pause between lookups of a name that does not resolve yet: the first, doubling up to this
#: how long a consumer without a timeout of its own (the viewer, the Foxglove bridge) waits for its publisher's host
#: name to resolve unless told (their ``--name-wait``), seconds: as long as ``subscribe --timeout``'s default
NAME_WAIT_S = 10.0
# host -> (whether its socket needs ZMQ_IPV6, whether all its addresses are loopback); looked up once: a viewer's
# later sockets (one per page) skip the lookup
_resolved: dict[str, tuple[bool, bool]] = {}
# The silence lines are about the publisher, so a consumer's several sockets on it (the Foxglove bridge's and the
# viewer's stats and frame sockets, a program's own Subscribers) say each silence once, the others at debug level:
_said_starting: set[str] = set()  # endpoints whose publisher was said to be still starting
_said_silent: dict[str, float] = {}  # endpoint -> when (monotonic) a socket last said that nothing came from it
_said_lock = threading.Lock()


class ConnectionWatch:
    """Monitors ``sock`` (before it connects to ``endpoint``; ``encrypted``: with a CURVE key): counts failed
    handshakes in ``handshake_failures`` (and, unencrypted, a peer that hangs up in the greeting, no ZeroMQ one, in
    ``hangups``), notes a drop that libzmq will not retry (``dropped_at``) and restores the connection after it."""

    def __init__(self, sock: zmq.Socket, endpoint: str, *, encrypted: bool = True) -> None:
        self._sock, self._endpoint, self._encrypted, self.hangups = sock, endpoint, encrypted, 0
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | _RETRYING | _HANDSHAKE_FAILED)
        self.fd = self._monitor.getsockopt(zmq.FD)  # fires only for events after an EVENTS that found none
        self.handshake_failures = 0
        self.dropped_at: float | None = None  # when the connection dropped with no retry (yet) from libzmq
        self._handshake_failed = False  # the current connection attempt failed its handshake
        self._remade_at = 0.0  # when remake_if_silent last made the connection again
        self._glanced_at = -_GLANCE_S  # when glance last looked
        self._conn: tuple[int, object] | None = None  # the tcp connection's descriptor and its peer's address
        self._mark: int | None = None  # bytes libzmq had read of it when a message was last taken (None: unknown)
        self._unended, self._growing = 0, False  # bytes it has read since (of a message not ended), and whether growing

    def on_events(self) -> None:
        """Follow the connection's events: count failed handshakes, note a drop that libzmq will not retry."""
        while self._monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event, fd = itemgetter("event", "value")(recv_monitor_message(self._monitor))
            if event == zmq.EVENT_CONNECTED and self._endpoint.startswith("tcp://"):
                self._conn = (fd, peer) if (peer := peer_of(fd)) is not None else None
                self._mark, self._unended, self._growing = 0, 0, True  # its handshake, and a message at once, maybe
            if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and not self._encrypted:
                # no CURVE mismatch (a plain socket meeting a CURVE one fails on the protocol): the peer hung up in
                # the greeting, as an HTTP or SSH server does; it was said to encrypt ("give its key")
                if not self.hangups:
                    log.warning("the peer at %s hung up during the ZeroMQ handshake: no ZeroMQ publisher listens "
                                "there (another service on that port?)", self._endpoint)
                self.hangups += 1
            elif event & _HANDSHAKE_FAILED:
                self.handshake_failures += 1
                self._handshake_failed = True
                if self.handshake_failures == 1 and event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # told by its ZAP handler
                    log.warning("the publisher at %s refused this consumer's CURVE key: its public key (.key) is not "
                                "in the publisher's publish.curve_clients_dir", self._endpoint)
                elif self.handshake_failures == 1:
                    log.warning("CURVE handshake with %s failed: the publisher's public key differs from the one "
                                "given, or only one side encrypts", self._endpoint)
            elif event & _RETRYING:  # a new attempt (libzmq's retry follows an ordinary drop at once)
                self.dropped_at, self._handshake_failed = None, False
            elif event == zmq.EVENT_DISCONNECTED and self.dropped_at is None:
                self.dropped_at = time.monotonic()

    def glance(self) -> None:
        """:meth:`on_events` at most once each ``_GLANCE_S``, for a reader that takes its frames elsewhere."""
        if (now := time.monotonic()) - self._glanced_at >= _GLANCE_S:
            self._glanced_at = now
            self.on_events()

    def restore_due(self) -> bool:
        """True when a drop that libzmq did not retry is old enough to be restored here."""
        return self.dropped_at is not None and time.monotonic() - self.dropped_at >= _RESTORE_AFTER_S

    def restore(self) -> bool:
        """Reconnect after a drop that libzmq did not retry; True when it was a refused (malformed) part, False when
        a failed handshake."""
        refused = not self._handshake_failed
        self.dropped_at, self._handshake_failed = None, False
        self.reconnect()
        return refused

    def remake_if_silent(self, last_message: float, silent_s: float = SILENT_S, *, heard: bool = True) -> bool:
        """Make the connection again when nothing has come for ``silent_s`` since ``last_message`` (``monotonic()``
        seconds) nor since this last did so; returns whether it did. Only while the socket's queue is empty: ZeroMQ
        is then reading the connection, which a new one replaces. ``heard``: whether anything came before
        ``last_message``; if not (``last_message`` is the start), the publisher is still starting as a rule (loading
        its model, bound but sending nothing yet), which is said as such, not as a lost connection."""
        now = time.monotonic()
        if now - max(last_message, self._remade_at) < silent_s:
            return False
        new = self._remade_at < last_message  # a silence of this socket's not said yet, not its every remake
        with _said_lock:
            if heard:  # unless another socket on the endpoint said it since this one last heard anything
                new = new and _said_silent.get(self._endpoint, -float("inf")) < last_message
                if new:
                    _said_silent[self._endpoint] = now
            else:
                new = new and self._endpoint not in _said_starting
                _said_starting.add(self._endpoint)
        level = logging.INFO if new else logging.DEBUG
        if heard:
            log.log(level, "nothing from %s for %g s: making the connection again", self._endpoint, silent_s)
        else:
            log.log(level, "nothing from %s yet: waiting for its publisher to start sending", self._endpoint)
        self._remade_at = now
        self.reconnect()
        return True

    def unended_wait(self, wait_s: float, taken: bool) -> float:
        """How long the caller, its socket's queue empty, waits for a message: ``wait_s``, or a few ms while a
        message not ended yet grows (:meth:`cut_unended`), and after a connection is made or a message taken.
        ``taken``: a message was taken since the last call, so that what libzmq reads from now on is of the next one."""
        if taken:  # looked at soon: the next message may follow at once
            self._mark = None if self._conn is None else bytes_read(*self._conn)
            self._unended, self._growing = 0, True
        return min(wait_s, _UNENDED_LOOK_S) if self._growing else wait_s

    def cut_unended(self, most: int) -> int:
        """With the socket's queue empty, the bytes libzmq has read of the connection since the last message taken
        (:meth:`unended_wait`): those of a message not ended yet, which libzmq holds whole, unseen, until its last
        part. Past ``most`` the connection is made again (one that never ended, parts with the more flag for ever,
        grew a subscriber by 770 MB in 5 s, until its silence was taken for a lost connection) and they are
        returned; otherwise 0, as where they are not counted (``ipc://``, not Linux)."""
        if self._conn is None or self._mark is None or (read := bytes_read(*self._conn)) is None:
            return 0
        self._growing, self._unended = read - self._mark > self._unended, read - self._mark
        if self._unended <= most:
            return 0
        self.reconnect()
        return read - self._mark

    def reconnect(self) -> None:
        """Make the connection again now; what the old one still held (queued or on its way) is dropped with it."""
        self._conn, self._unended, self._growing = None, 0, False
        try:
            self._sock.disconnect(self._endpoint)
        except zmq.ZMQError:  # libzmq had already forgotten the endpoint
            pass
        self._sock.connect(self._endpoint)

    def close(self) -> None:
        """Stop monitoring, close the monitor's socket, then the watched one (linger 0)."""
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)


def connect_sub(endpoint: str, topics: Iterable[bytes], *, rcvhwm: int, max_part_bytes: int, server_key: str = "",
                client_key_file: str = "", name_wait_s: float | None = None) -> tuple[zmq.Socket, ConnectionWatch]:
    """A SUB socket connected to ``endpoint`` (linger 0), subscribed to ``topics``, and the watch of its connection
    (monitoring from before the connect, so that no event is missed; closing the watch closes the socket).
    ``ZMQ_IPV6`` is set for an IPv6 address, or a host name with IPv6 addresses only.

    Args:
        rcvhwm: messages queued on this side before ZeroMQ stops reading from the network.
        max_part_bytes: largest message part accepted (``ZMQ_MAXMSGSIZE``: a larger one drops the connection as it
            arrives, before it is buffered; the watch restores it).
        server_key: the publisher's CURVE public key (Z85, 40 characters); empty = plain.
        client_key_file: with ``server_key``, this consumer's key pair: a ``.key_secret`` file made by
            ``zmq.auth.create_certificates``, whose ``.key`` twin is in the publisher's ``curve_clients_dir``;
            empty = a key pair made for this socket (a publisher without ``curve_clients_dir`` takes any).
        name_wait_s: how long a host name that does not resolve is looked up again (pausing 0.5 s, doubling up to
            2 s) before giving up, seconds; None = ``NAME_WAIT_S``.

    Raises:
        ValueError: a bad server key, client key file or endpoint, a host name that still does not resolve after
            ``name_wait_s``, or another user's ``ipc://`` socket this user may not connect to (one line).
    """
    if not tcp_port_ok(endpoint):
        raise ValueError(f"cannot connect to {endpoint}: its TCP port must be 1..65535")
    if server_key and len(server_key) != 40:
        raise ValueError(f"server_key must be the publisher's 40-character Z85 CURVE public key, got "
                         f"{len(server_key)} characters")
    if client_key_file and not server_key:
        raise ValueError(f"a client key ({client_key_file}) is for a publisher that encrypts: give its server key too")
    key_pair = _load_client_key(client_key_file) if client_key_file else zmq.curve_keypair()
    ipv6 = _check_host(endpoint, NAME_WAIT_S if name_wait_s is None else name_wait_s)
    if refusal := ipc_refusal(endpoint):
        raise ValueError(f"cannot connect to {endpoint}: {refusal}")
    sock = zmq.Context.instance().socket(zmq.SUB)
    watch = None
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IPV6, int(ipv6))
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, max_part_bytes)
        if server_key:
            sock.curve_serverkey = server_key.encode()
            sock.curve_publickey, sock.curve_secretkey = key_pair
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        watch = ConnectionWatch(sock, endpoint, encrypted=bool(server_key))
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        if watch is None:
            sock.close(linger=0)
        else:
            watch.close()
        raise ValueError(f"cannot connect to {endpoint}: {exc}") from None
    return sock, watch


def _check_host(endpoint: str, wait_s: float) -> bool:
    """Whether a ``tcp://[SOURCE;]HOST:PORT`` endpoint needs ``ZMQ_IPV6`` (an IPv6 address, a name with IPv6
    addresses only); ValueError when its host cannot be connected to: ``*``, none, a malformed name, or a name that
    still does not resolve after ``wait_s`` (libzmq would retry it forever in silence)."""
    host = tcp_host(endpoint)
    if host is None:
        return False
    if host in _resolved:
        return _resolved[host][0]
    if host in ("", "*"):
        given = "* (every interface) is for binding" if host else "no host given"
        raise ValueError(f"cannot connect to {endpoint}: {given}; name the publisher's host, e.g. "
                         f"tcp://127.0.0.1:{endpoint.rpartition(':')[2]}")
    name = host[1:-1] if host[:1] + host[-1:] == "[]" else host  # an IPv6 address in brackets
    if "[" in name or "]" in name:  # one bracket of a pair: libzmq retried it in silence, the lookup stripped it
        raise ValueError(f"cannot connect to {endpoint}: {host} is not a host name (unbalanced brackets; an IPv6 "
                         f"address goes in both: tcp://[::1]:{endpoint.rpartition(':')[2]})")
    addresses = _wait_for_name(endpoint, name, wait_s)
    if addresses is None:  # the resolver cannot answer now: libzmq resolves the name itself at each attempt
        return is_ipv6(name)
    # libzmq takes the first address of the family the option selects: IPv4 unless the name has no such address
    _resolved[host] = (all(family != socket.AF_INET for family, *_ in addresses),
                       all(ipaddress.ip_address(address[0].partition("%")[0]).is_loopback
                           for *_, address in addresses))
    return _resolved[host][0]


def on_this_host(endpoint: str) -> bool:
    """Whether a consumer's ``endpoint`` leads to a publisher on this host: not TCP (``ipc://``), a loopback address,
    ``localhost``, or a host name whose addresses were all loopback when :func:`connect_sub` looked it up (``tcp://
    myhost:5555`` where /etc/hosts says 127.0.1.1). Judged from that one lookup, bounded by ``_RESOLVE_S``, never a
    new one: a name the resolver did not answer for counts as another host's (the ZeroMQ payload, always right)."""
    host = tcp_host(endpoint)
    return not reachable_from_other_machines(endpoint) or _resolved.get(host, (False, False))[1]


def _wait_for_name(endpoint: str, name: str, wait_s: float) -> list[tuple] | None:
    """The addresses of host ``name``, looked up again while it does not resolve (yet: a publisher's container or
    service coming up), for up to ``wait_s``; None when the resolver cannot answer now (no reply within
    ``_RESOLVE_S``, or "try again"), which only gets a warning: libzmq keeps trying the name.

    Raises:
        ValueError: ``name`` is malformed, or still does not resolve after ``wait_s`` (one line).
    """
    deadline = time.monotonic() + wait_s
    pause, waiting = _RETRY_S[0], False
    while True:
        try:
            return _lookup(name)
        except concurrent.futures.TimeoutError:  # before OSError: from Python 3.11 it is one
            log.warning("no answer for the host name %s within %g s; connecting to %s anyway", name, _RESOLVE_S,
                        endpoint)
            return None
        except UnicodeError as exc:  # its IDNA encoding failed (a label empty or over 63 characters)
            why = exc.__cause__ or exc  # Python 3.13 raises the codec's error itself, its reason without the position
            raise ValueError(f"cannot connect to {endpoint}: {name} is not a host name "
                             f"({getattr(why, 'reason', None) or one_line(why)})") from None
        except OSError as exc:
            if exc.errno == socket.EAI_AGAIN:
                log.warning("cannot look up the host name %s now (%s); connecting to %s anyway", name, exc.strerror,
                            endpoint)
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise ValueError(f"cannot connect to {endpoint}: the host name {name} does not resolve "
                                 f"({io_reason(exc)}; waited {wait_s:g} s)") from None
            if not waiting:
                log.warning("the host name %s does not resolve (%s); waiting up to %g s for it", name,
                            io_reason(exc), wait_s)
                waiting = True
            time.sleep(min(pause, left))
            pause = min(2 * pause, _RETRY_S[1])


def _lookup(name: str) -> list[tuple]:
    """:func:`_resolve` ``name`` within ``_RESOLVE_S`` (on a thread of its own: a resolver may not answer for long);
    raises what it raised, or concurrent.futures.TimeoutError."""
    found: concurrent.futures.Future = concurrent.futures.Future()
    threading.Thread(target=_resolve_into, args=(name, found), name=f"lookup {name}", daemon=True).start()
    return found.result(_RESOLVE_S)


def _resolve_into(name: str, found: concurrent.futures.Future) -> None:
    try:
        found.set_result(_resolve(name))
    except (OSError, UnicodeError) as exc:
        found.set_exception(exc)


def _resolve(name: str) -> list[tuple]:
    """The addresses of host ``name`` (``getaddrinfo``'s TCP entries): every lookup of a consumer's host goes through
    here, where tests stand in for the resolver."""
    return socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)


def _load_client_key(path: str) -> tuple[bytes, bytes]:
    """A consumer's own CURVE key pair (public, secret) from the ``.key_secret`` file ``zmq.auth.create_certificates``
    made; its ``.key`` twin goes in the publisher's ``publish.curve_clients_dir``.

    Raises:
        ValueError: a file that does not exist, cannot be read or holds no secret key (one line).
    """
    if not Path(path).is_file():
        raise ValueError(f"client key file {path} does not exist or is not a regular file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise ValueError(f"cannot read the client key file {path}: {io_reason(exc)}") from None
    except ValueError:  # zmq.auth: "No public key found"
        public, secret = None, None
    if secret is None:
        raise ValueError(f"client key file {path} holds no secret key (give the .key_secret file; its .key twin goes "
                         f"in the publisher's publish.curve_clients_dir)")
    return public, secret


def load_server_key(value: str) -> str:
    """A ``--server-key`` value as the key: a Z85 key as given, or the public key in a ``.key`` file it names.

    Raises:
        ValueError: a file that does not exist, cannot be read or holds no public key (one line).
    """
    if Path(value).is_file():
        try:
            return zmq.auth.load_certificate(value)[0].decode(errors="replace")
        except OSError as exc:
            raise ValueError(f"cannot read the server key file {value}: {io_reason(exc)}") from None
        except ValueError:  # zmq.auth: "No public key found"
            raise ValueError(f"server key file {value} holds no public key (a line `public-key = \"...\"`; see "
                             f"zmq.auth.create_certificates)") from None
    # Z85 has "/" and ".", so a 40-character value is a key; anything else that looks like a path is a missing file
    if len(value) != 40 and (os.sep in value or value.endswith((".key", ".key_secret")) or os.path.exists(value)):
        raise ValueError(f"server key file {value} does not exist or is not a regular file")
    return value
