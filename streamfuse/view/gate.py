"""The viewer's door (and the Foxglove bridge's, see ``relay``): at most so many connections open at once, and none kept
that has not sent its request in time.

aiohttp keeps every connection it accepts for as long as its client sends a byte now and then, and takes any number
of them: clients that send a request's headers a byte at a time (a slowloris) each hold a file descriptor until the
process has none left; then no page can connect, and every failed accept is logged with its traceback. Here a
connection over the cap is answered 503 and closed as it comes, and one whose first request has not arrived within
``request_s`` is closed (later requests on a kept-alive connection have aiohttp's ``keepalive_timeout``, which the
server sets to the same). Both are counted, and said at most once every ``SAY_EVERY_S`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import ipaddress
import logging
import resource
import socket
import time
from typing import Any, Awaitable, Callable, Iterable

from streamfuse.cli.args import int_at_least

__all__ = ["Door", "Gate", "BACKLOG", "MAX_CONNECTIONS", "REQUEST_S", "allow_host_option", "connections_option",
           "listen", "most_connections", "room_left"]

log = logging.getLogger("streamfuse.view")

MAX_CONNECTIONS = 64  # a page holds two (the page and its WebSocket): dozens of viewers, far below a process's files
REQUEST_S = 10.0  # a browser sends its request as it connects; a slowloris never finishes one
SAY_EVERY_S = 10.0
# Connections waiting to be accepted; the event loop also accepts up to this many at a time, and one over the cap
# holds its file for a few turns of the loop before its close: a small backlog keeps a flood's files in check.
BACKLOG = 16
_OWN_FILES = 64 + 8 * BACKLOG  # files besides the open connections: about 30 of its own, a flood's accepts in flight
_LISTEN_TRIES = 8  # binds of listen(): another program taking the port between two of them is rare


def most_connections(files_each: int = 1) -> int:
    """The most connections that the process's open-file limit (``ulimit -n``) leaves room for besides its own files,
    where each connection holds ``files_each`` of them (a relayed one three: its client's, the relay's to the server
    behind it, and that server's)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else max(1, (soft - _OWN_FILES) // files_each)


def room_left(files_each: int = 1) -> str:
    """Said after a cap that the open-file limit lowers below :data:`MAX_CONNECTIONS`: the limit, the room it leaves
    and the limit that would not lower it; "" where it lowers none."""
    most = most_connections(files_each)
    if most >= MAX_CONNECTIONS:
        return ""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (f" (the open-file limit, ulimit -n, is {soft}: room for {most} connection(s) besides the server's own "
            f"{_OWN_FILES} files; {_OWN_FILES + MAX_CONNECTIONS * files_each} gives {MAX_CONNECTIONS})")


def connections_option(parser: argparse.ArgumentParser, help: str, files_each: int = 1) -> None:
    """Add ``--max-connections``: :data:`MAX_CONNECTIONS`, or fewer where the open-file limit leaves room for fewer
    (:func:`most_connections`); a value over that room is refused naming the limit ("must be in 1..1" named none)."""
    most = most_connections(files_each)
    within = int_at_least(1, most)

    def parse(text: str) -> int:
        try:
            return within(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc}{room_left(files_each)}") from None

    parser.add_argument("--max-connections", type=parse, default=min(MAX_CONNECTIONS, most), help=help)


async def listen(start: Callable[..., Awaitable[asyncio.Server]], port: int) -> asyncio.Server:
    """The server of ``start(port=..., start_serving=...)`` (``loop.create_server`` or ``asyncio.start_server`` with
    its host given), one port for every address it listens on.

    With port 0, asyncio binds each of the host's addresses (IPv4 and IPv6 of '' or of a name such as localhost) to a
    free port of its own, and a client of the other family found nothing on the port said. Here every address is
    bound again on the first one's port (another pair of ports where one of them is taken meanwhile).

    Raises:
        OSError: the address cannot be bound.
    """
    chosen = port
    for _ in range(_LISTEN_TRIES):
        try:
            server = await start(port=chosen, start_serving=False)  # bound, not yet listening: nothing to lose below
        except OSError as exc:
            if chosen == port or exc.errno != errno.EADDRINUSE:
                raise
            chosen = 0  # the first address's port is another's on the second: a new pair
            continue
        if len({sock.getsockname()[1] for sock in server.sockets}) == 1:
            await server.start_serving()
            return server
        chosen = server.sockets[0].getsockname()[1]
        server.close()
    raise OSError(errno.EADDRINUSE, f"no port was free on every address in {_LISTEN_TRIES} tries")


class _Tally:
    """Counts an event and logs it at most once every ``SAY_EVERY_S`` seconds, with how many since the last line: a
    peer that repeats it cannot flood the log. Counts held back are said once those seconds have passed (on the
    running event loop; with none, at :meth:`say` when the server stops)."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.log, self.what, self.count, self._said, self._next_s, self._due = logger, what, 0, 0, 0.0, False

    def add(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now >= self._next_s:
            self.say()
        elif not self._due:
            with contextlib.suppress(RuntimeError):  # no running loop (a direct call): said when the server stops
                asyncio.get_running_loop().call_later(self._next_s - now, self._say_due)
                self._due = True

    def say(self) -> None:
        """Log the count since the last line, if any (also when the server stops)."""
        if self.count > self._said:
            self.log.warning(self.what, self.count - self._said)
            self._said, self._next_s = self.count, time.monotonic() + SAY_EVERY_S

    def _say_due(self) -> None:
        self._due = False
        self.say()


class Door:
    """What the viewer's :class:`Gate` and the Foxglove bridge's relay share: the cap, each address's share of it, the
    deadline, their counts and the 503 answers. A client on another machine may hold at most a quarter of the cap, so
    that one host cannot keep every other out, but never fewer than one client's connections (a quarter of a cap of
    2 to 7 held one, and a page on another machine got in without its WebSocket); this machine's clients, loopback,
    have the whole cap.

    Args:
        limit: connections open at once; one more is answered 503 and closed.
        request_s: seconds a new connection has to send its first request.
        who: the server, as the 503 answer names it; logger: where the counts are said.
        names: host names a request that reaches loopback may name besides addresses, ``localhost`` and this
            machine's name (see :meth:`misnamed`).
        client: the connections one client holds (a Foxglove client one, a page two).
    """

    def __init__(self, limit: int = MAX_CONNECTIONS, request_s: float = REQUEST_S, *, who: str = "the viewer",
                 logger: logging.Logger = log, names: Iterable[str] = (), client: int = 1) -> None:
        self.limit, self.request_s, self.per_address = limit, request_s, min(limit, max(client, limit // 4))
        self.names = frozenset(_bare(name) for name in (*names, socket.gethostname()))
        self.count = 0  # connections admitted and not yet closed
        self.peers: collections.Counter[str] = collections.Counter()  # of them, from other machines, by address
        self.refused = _Tally(logger, f"answered %d connection(s) 503 and closed them: {limit} were open, the cap "
                                      "(--max-connections)")
        self.crowded = _Tally(logger, f"answered %d connection(s) 503 and closed them: their address held "
                                      f"{self.per_address}, its share of the cap (--max-connections)")
        self.timed_out = _Tally(logger, f"closed %d connection(s) that sent no complete request within "
                                        f"{request_s:g} s")
        self.busy = _answer(f"{who} has {limit} connections open, its cap (--max-connections)\n")
        self.busy_here = _answer(f"{who} has {self.per_address} connections open from this address, its share of "
                                 f"its cap (--max-connections)\n")
        self.rebound = _Tally(logger, "answered %d request(s) 403 that reached loopback naming another host (a web "
                                      "page's name pointed at this machine; a proxy's public name: --allow-host)")
        self.other_host = _answer(f"{who} answers only to this machine's names here (see --allow-host)\n",
                                  "403 Forbidden")

    def enter(self, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection in: False (answered 503, closed, counted) when the cap or its address's share is
        reached."""
        peer = _remote_address(transport)
        crowded = peer is not None and self.peers[peer] >= self.per_address
        if self.count >= self.limit or crowded:
            transport.write(self.busy if self.count >= self.limit else self.busy_here)  # type: ignore[attr-defined]
            transport.close()
            (self.refused if self.count >= self.limit else self.crowded).add()
            return False
        self.count += 1
        if peer is not None:
            self.peers[peer] += 1
        return True

    def misnamed(self, hosts: Iterable[str], transport: asyncio.BaseTransport | None) -> bool:
        """Whether a request that reached a loopback address names (its ``Host``) neither an address, ``localhost``
        nor one of :attr:`names`: a web page whose site's name was pointed at 127.0.0.1 (DNS rebinding) would read
        the frames as its own, which the ``Origin`` check cannot tell. Counted."""
        own = transport.get_extra_info("sockname") if transport is not None else None
        address = _address(own[0]) if isinstance(own, tuple) and own else None
        if address is None or not address.is_loopback:
            return False
        if all(_local(_bare(_host_of(host)), self.names) for host in hosts):
            return False
        self.rebound.add()
        return True

    def leave(self, transport: asyncio.BaseTransport) -> None:
        """A connection that :meth:`enter` took has closed: its place is free."""
        self.count -= 1
        if (peer := _remote_address(transport)) is not None:
            self.peers[peer] -= 1
            if not self.peers[peer]:
                del self.peers[peer]

    def close(self) -> None:
        """Say what is still uncounted in the log."""
        for tally in (self.refused, self.crowded, self.timed_out, self.rebound):
            tally.say()


def allow_host_option(parser: Any) -> None:
    """The ``--allow-host`` option of the viewer and the Foxglove bridge (an argparse parser)."""
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME", type=_name_arg,
                        help="a host name a request reaching loopback may name besides addresses, localhost and this "
                        "machine's name (a reverse proxy's public name; repeat for more): others are answered 403, "
                        "as a web page whose name was pointed at this machine (DNS rebinding)")


def _name_arg(text: str) -> str:
    if not (name := _bare(text)) or any(char in name for char in ":/[]@ \t"):
        raise argparse.ArgumentTypeError(f"a host name, without scheme or port, got {text!r}")
    return name


def _answer(body: str, status: str = "503 Service Unavailable") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def _host_of(header: str) -> str:
    """The host of a ``Host`` header's value (``name:port``, ``[v6]:port``, ``name``)."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, colon, port = header.rpartition(":")
    return name if colon and port.isdigit() else header


def _bare(name: str) -> str:
    return name.strip().lower().removesuffix(".")  # a name's case and its root's dot name the same host


def _local(name: str, names: frozenset[str]) -> bool:
    """An address, ``localhost`` or a name under it (RFC 6761: never looked up elsewhere), or one of ``names``."""
    return _address(name) is not None or name == "localhost" or name.endswith(".localhost") or name in names


def _remote_address(transport: asyncio.BaseTransport) -> str | None:
    """The client's address when it is another machine's; None for this machine's (loopback, or the address it
    connected to: a browser on this machine that opened its network name comes from that address)."""
    peer, own = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not isinstance(peer, tuple) or not peer or (isinstance(own, tuple) and own and own[0] == peer[0]):
        return None
    address = _address(peer[0])
    return None if address is None or address.is_loopback else str(address)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an address (an IPv4 client of a dual-stack socket, ``--host ''``, as IPv4's); None if none."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


class Gate(Door):
    """A protocol factory for ``loop.create_server`` in front of aiohttp's (``handlers``: the runner's server, set
    once the runner is set up). The app calls :meth:`requested` as each request starts (a middleware). Args: as
    :class:`Door`'s."""

    def __init__(self, limit: int = MAX_CONNECTIONS, request_s: float = REQUEST_S, names: Iterable[str] = ()) -> None:
        super().__init__(limit, request_s, names=names, client=2)  # a page: its own connection and its WebSocket's
        self.handlers: Callable[[], asyncio.Protocol] | None = None
        self.open: dict[asyncio.BaseTransport, asyncio.TimerHandle | None] = {}  # with its first request's deadline
        self.foreign = _Tally(log, "answered %d WebSocket request(s) 403 from another site's page (their Origin is not "
                                   "the viewer's address)")

    def __call__(self) -> asyncio.Protocol:
        assert self.handlers is not None, "the runner is set up before the server starts"
        return _Guarded(self, self.handlers())

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Whether a new connection is taken (:meth:`Door.enter`), with its first request's deadline."""
        if not self.enter(transport):
            return False
        self.open[transport] = asyncio.get_running_loop().call_later(self.request_s, self._expire, transport)
        return True

    def requested(self, transport: asyncio.BaseTransport | None) -> None:
        """A request has arrived on ``transport``: its deadline is off."""
        handle = self.open.get(transport) if transport is not None else None
        if handle is not None:
            handle.cancel()
            self.open[transport] = None

    def left(self, transport: asyncio.BaseTransport) -> None:
        """A connection closed: its place is free."""
        self.leave(transport)
        handle = self.open.pop(transport, None)
        if handle is not None:
            handle.cancel()

    def close(self) -> None:
        """Say what is still uncounted in the log, other sites' pages too."""
        super().close()
        self.foreign.say()

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        self.open[transport] = None
        transport.close()
        self.timed_out.add()


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the gate: it sees the connection only once admitted."""

    def __init__(self, gate: Gate, inner: Any) -> None:
        self._gate, self._inner, self._transport = gate, inner, None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._gate.admit(transport):
            self._transport = transport
            self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._gate.left(self._transport)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._transport is not None else None

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._inner.resume_writing()
