"""Serve a live web page of a running pipeline: IR, visible and fused frames side by side, with its stats.

The page (one HTML file, no build step, nothing fetched from the network) opens a WebSocket; the server sends
one message at a time (JPEG frames and the newest stats) and the next only after the page has drawn the last,
so a slow or frozen browser gets fewer frames, never a growing queue. While no page is open the viewer only
listens to the stats and the pipeline sends no previews. At most --max-connections connections are open at once,
and one that has not sent its request within 10 s is closed (see ``gate``).

Exits 0 on Ctrl-C or SIGTERM (or once --screenshot is written), 1 when the page or the screenshot cannot be
made, 2 on bad arguments (or when the pipeline's host name still does not resolve after --name-wait seconds: one started
before its pipeline's name exists waits that long for it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
import types
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamfuse.atomic_write import write_refusal
from streamfuse.cli.args import DefaultsFormatter, Parser, int_at_least, path_arg, positive
from streamfuse.connection_watch import load_server_key
from streamfuse.endpoints import bind_shown, faces_network, url_host
from streamfuse.errors import io_reason, one_line, printable
from streamfuse.flood_log import FloodLog
from streamfuse.log_queue import install_direct
from streamfuse.signals import handled, raise_interrupt, said_last, takeable
from streamfuse.view.feed import Feed
from streamfuse.view.gate import (BACKLOG, MAX_CONNECTIONS, Gate, allow_host_option, connections_option, listen,
                                  room_left)
from streamfuse.view.options import connect_options, stream_options

if TYPE_CHECKING:  # aiohttp is optional: imported at run time only by _aiohttp, which says how to install it
    from aiohttp import web

__all__ = ["main", "make_app", "serve", "Served"]

log = logging.getLogger("streamfuse.view")


def _aiohttp() -> types.ModuleType:  # the module, imported late so that a missing extra is one line
    try:
        import aiohttp.web
    except ImportError:
        raise SystemExit("streamfuse view: needs aiohttp: pip install 'streamfuse[view]'") from None
    return aiohttp


def make_app(feed: Feed, gate: Gate) -> web.Application:
    """The web app: ``/`` is the page, ``/ws`` its WebSocket; each request takes its connection's deadline off."""
    web = _aiohttp().web

    @web.middleware
    async def requested(request: web.Request, handler: Any) -> web.StreamResponse:
        gate.requested(request.transport)
        if gate.misnamed(request.headers.getall("Host", ()), request.transport):
            raise web.HTTPForbidden(text="the viewer answers only to this machine's names here (see --allow-host)\n")
        return await handler(request)

    app = web.Application(middlewares=[requested])
    # a page's WebSocket closed for what it sent (a message over max_msg_size, fragments past it, no WebSocket at all)
    broken = FloodLog(log, "WebSockets closed for what their page sent")

    async def say_broken(_app: web.Application) -> None:
        broken.flush()

    app.on_cleanup.append(say_broken)
    page = resources.files("streamfuse.view").joinpath("page.html").read_text(encoding="utf-8")

    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        if _other_site(request):  # counted: a page the user opened tried to read the frames
            gate.foreign.add()
            raise web.HTTPForbidden(text="the viewer's frames are for its own page, not another site's\n")
        return await _websocket(request, feed, broken)

    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    return app


async def _websocket(request: web.Request, feed: Feed, broken: FloodLog) -> web.WebSocketResponse:
    """One page: its acks (``next``) give the sender one message of credit each; one that breaks the protocol is closed
    and said in ``broken``."""
    web = _aiohttp().web
    # no per-message deflate, which browsers ask for: JPEGs do not shrink, and it doubled the CPU a message costs
    ws = web.WebSocketResponse(max_msg_size=4096, heartbeat=30, compress=False)
    try:
        await ws.prepare(request)
    except ConnectionError:  # the page went away during the handshake (a reset): aiohttp's quiet end of a request
        raise asyncio.CancelledError from None  # whose client left (a ConnectionError here it logs with a traceback)
    changed = feed.acquire()
    credit = asyncio.Event()
    credit.set()
    sender = asyncio.create_task(_send(ws, feed, changed, credit))
    try:
        async for msg in ws:
            if msg.type == web.WSMsgType.TEXT and msg.data == "next":
                credit.set()
            elif msg.type == web.WSMsgType.ERROR:  # aiohttp closes it after this
                broken.say(f"closed the WebSocket of {printable(request.remote or 'a page')}: {one_line(msg.data)}")
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        feed.release(changed)
    return ws


def _other_site(request: web.Request) -> bool:
    """Whether a browser opens the WebSocket from another site's page (its ``Origin`` is not the viewer's own address):
    WebSockets have no same-origin rule, so any page the user visits could read the frames of a viewer on loopback.
    Clients that are no browser send no ``Origin`` and are let in."""
    origin = request.headers.get("Origin")
    return origin is not None and origin.partition("://")[2].rstrip("/").lower() != (request.host or "").lower()


async def _send(ws: web.WebSocketResponse, feed: Feed, changed: asyncio.Event, credit: asyncio.Event) -> None:
    """Send what is newest whenever the page has drawn the last message and something new has arrived."""
    seen: dict[str, int] = {}
    while not ws.closed:
        await credit.wait()
        while not feed.newer(seen):
            changed.clear()
            if not feed.newer(seen):
                await changed.wait()
        credit.clear()
        message = await feed.message(seen)
        feed.sent += 1
        await ws.send_bytes(message)


class _BadRequests(logging.Filter):
    """aiohttp logs a client's malformed request (a header over 8190 bytes, a bad chunk) at ERROR with its traceback,
    ten lines a request for any peer to send: one line each, the first 20 in 10 s, the rest counted
    (:class:`~streamfuse.flood_log.FloodLog`); the server's own errors are said each, in one line."""

    window_s = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.flood = FloodLog(log, "malformed requests", window_s=self.window_s)

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError  # loaded with the server that logs this

        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        if isinstance(exc, HttpProcessingError):  # the client's fault: any peer can send thousands
            self.flood.say(f"{record.getMessage()}: {one_line(exc)}")
            return False
        record.msg, record.args = "%s: %s", (record.getMessage(), one_line(exc, typed=True))
        record.exc_info = record.exc_text = None
        return True


@dataclasses.dataclass(frozen=True)
class Served:
    """A viewer serving its page: the port it listens on, its gate; ``cleanup()`` stops it."""

    port: int
    gate: Gate
    server: asyncio.AbstractServer
    runner: Any  # aiohttp.web.AppRunner
    bad_requests: _BadRequests

    async def cleanup(self) -> None:
        self.server.close()
        await self.runner.cleanup()
        self.gate.close()
        logging.getLogger("aiohttp.server").removeFilter(self.bad_requests)
        self.bad_requests.flood.flush()


async def serve(feed: Feed, host: str, port: int, gate: Gate | None = None) -> Served:
    """Start the app on ``host:port`` (0 = a free port) behind ``gate`` (default: :class:`Gate`'s defaults).

    Raises:
        OSError: the address cannot be bound.
    """
    web = _aiohttp().web
    gate = gate or Gate()
    loop = asyncio.get_running_loop()
    feed.start(loop)
    runner = web.AppRunner(make_app(feed, gate), access_log=None, handle_signals=False, shutdown_timeout=0.5,
                           keepalive_timeout=gate.request_s)
    await runner.setup()
    gate.handlers = runner.server
    try:
        server = await listen(functools.partial(loop.create_server, gate, host, backlog=BACKLOG), port)
    except OSError:
        await runner.cleanup()
        raise
    bad_requests = _BadRequests()
    logging.getLogger("aiohttp.server").addFilter(bad_requests)
    return Served(server.sockets[0].getsockname()[1], gate, server, runner, bad_requests)


def main(argv: list[str] | None = None) -> int:
    """Run the viewer CLI; returns the exit status."""
    parser = Parser(prog="python -m streamfuse view", description=__doc__,
                    formatter_class=DefaultsFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address the page is served on (loopback: this "
                        "machine only; the page has no password and the frames are not encrypted)")
    parser.add_argument("--port", type=int_at_least(0, 65535), default=8080,
                        help="port of the page (0 = any free port)")
    stream_options(parser, "fused topic (prefix) to show; name one rig (fused/rig0) when several publish on the "
                   "endpoint")
    parser.add_argument("--quality", type=int_at_least(1, 100), default=80,
                        help="JPEG quality of the frames on the page (1..100)")
    connections_option(parser, "connections open at once (a page holds two); one more is answered 503 and closed (at "
                       "most the open-file limit, ulimit -n, less 192)")
    allow_host_option(parser)
    connect_options(parser)
    parser.add_argument("--screenshot", type=path_arg, help="open the page in headless Chromium, write a PNG "
                        "screenshot here (NAME-2.png, ... when it exists) once frames and stats have arrived, print "
                        "what the page measured, exit")
    parser.add_argument("--wait", type=positive(), default=5.0, help="with --screenshot: seconds to watch the page")
    args = parser.parse_args(argv)
    if args.max_connections < 2:  # the page's own and its WebSocket's: with one, every page was answered 503
        parser.error(f"no room for a page, which holds two connections: --max-connections is {args.max_connections}"
                     f"{room_left()}")
    install_direct(logging.INFO, "%(levelname)s %(name)s: %(message)s")
    if args.screenshot and (why := _unwritable(args.screenshot)):  # said now, not after the page's watch
        return said_last(f"streamfuse view: error: {why}", 2)
    if args.max_connections < MAX_CONNECTIONS and (lowered := room_left()):
        log.warning("at most %d connections open at once, %d pages%s", args.max_connections,
                    args.max_connections // 2, lowered)
    _aiohttp()
    try:
        with handled(raise_interrupt, (signal.SIGTERM,)):  # stops the wait for the pipeline's host name
            feed = Feed(args.endpoint, args.topic, args.stats_topic, server_key=load_server_key(args.server_key),
                        client_key_file=args.client_key, quality=args.quality, name_wait_s=args.name_wait)
    except ValueError as exc:
        return said_last(f"streamfuse view: error: {printable(exc)}", 2)
    except KeyboardInterrupt:
        return 0
    serving = _main(feed, args)
    try:
        with handled(raise_interrupt, (signal.SIGTERM,)):  # until the page's loop takes the stops itself
            return asyncio.run(serving)
    except KeyboardInterrupt:  # a stop before the loop's handlers: the same end as after them
        return 0
    except OSError as exc:
        return said_last(f"streamfuse view: error: cannot serve the page on {printable(args.host)}:{args.port}: "
                         f"{io_reason(exc)}", 1)
    except RuntimeError as exc:  # the browser of --screenshot
        return said_last(f"streamfuse view: error: {printable(exc)}", 1)
    finally:
        serving.close()  # not yet awaited where a stop came first: no "never awaited" warning at exit
        feed.close()


async def _main(feed: Feed, args: argparse.Namespace) -> int:
    host, port = ("127.0.0.1", 0) if args.screenshot else (args.host, args.port)
    served = await serve(feed, host, port, Gate(args.max_connections, names=(host, *args.allow_host)))
    try:
        url = f"http://{url_host(host)}:{served.port}/"
        if args.screenshot:
            from streamfuse.view.browser import capture

            written, report = await capture(url, args.screenshot, args.wait, source=feed.endpoint)
            print(f"wrote {printable(written)}: {report}")
            return 0
        if faces_network(args.host):
            log.warning("serving the page on %s, reachable from other machines: no password, frames unencrypted",
                        bind_shown(args.host))
        log.info("viewer on %s (pipeline %s); Ctrl-C stops", url, feed.endpoint)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in takeable((signal.SIGINT, signal.SIGTERM)):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        await served.cleanup()


def _unwritable(path: Path) -> str:
    """Why no screenshot can be written at ``path`` (a folder's name, a folder missing or not writable); ''."""
    if path.is_dir():
        return f"--screenshot {printable(path)} is a folder; give a file name (such as {printable(path / 'view.png')})"
    if (exc := write_refusal(path.parent)) is not None:
        return f"cannot write the --screenshot {printable(path)} into {printable(path.parent)}: {io_reason(exc)}"
    return ""
