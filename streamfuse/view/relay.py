"""The Foxglove bridge's door: a TCP relay in front of the Foxglove SDK's WebSocket server, with the viewer's cap and
request deadline (:class:`streamfuse.view.gate.Door`).

The SDK's server takes any number of connections and keeps those that never finish their handshake; once they hold
every file the process may open, its accept fails and it stops listening for good (measured: 258 idle connections
under a limit of 256 files, and no Foxglove client could connect again after they had gone, until a restart). The
SDK listens on a loopback port of its own; the relay listens where the user asked, answers a connection over the cap
503, closes one that has not sent its request's head (up to ``MAX_HEAD`` bytes) within the deadline, and passes the
others through, both ways, with back-pressure (a slow client slows its own connection, as it did the SDK's).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
from typing import Iterable

from streamfuse.view.gate import BACKLOG, MAX_CONNECTIONS, REQUEST_S, Door, listen

__all__ = ["Relay"]

log = logging.getLogger("streamfuse.foxglove")

MAX_HEAD = 16 * 1024  # a WebSocket upgrade request's head is under a kilobyte
_CHUNK = 1 << 16


class Relay(Door):
    """Listens on ``host:port`` (0: any free port) on a thread of its own; passes admitted connections to
    ``127.0.0.1:upstream``. :meth:`start` returns the port; :meth:`close` stops it and every connection.

    Args:
        upstream: the SDK server's port on loopback.
        limit, request_s, names: as :class:`~streamfuse.view.gate.Door`'s (``host`` is one of the names).
    """

    def __init__(self, host: str, port: int, upstream: int, limit: int = MAX_CONNECTIONS,
                 request_s: float = REQUEST_S, names: Iterable[str] = ()) -> None:
        super().__init__(limit, request_s, who="the Foxglove bridge", logger=log, names=(host, *names))
        self.host, self.port, self.upstream = host, port, upstream
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        # a connection's task, held here: once the client's side has ended its sending nothing else reaches it (the
        # loop keeps its tasks weakly, the upstream side its reader so), and a garbage collection in the wait for
        # the answer destroyed it with its connection (the client got an empty close)
        self._connections: set[asyncio.Task[None]] = set()

    def start(self) -> int:
        """Bind and start; the port listened on.

        Raises:
            OSError: ``host:port`` cannot be bound.
        """
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="foxglove relay", daemon=True)
        self._thread.start()
        try:
            self.port = ready.result()
        except OSError:
            self._thread.join()  # it ends as it says so: a close() now finds nothing to stop, not a closed loop
            raise
        return self.port

    def close(self) -> None:
        """Stop listening, end every connection, say the counts not yet said."""
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        super().close()

    def _run(self, ready: concurrent.futures.Future[int]) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            start = functools.partial(asyncio.start_server, self._client, self.host, backlog=BACKLOG, limit=MAX_HEAD)
            server = loop.run_until_complete(listen(start, self.port))
        except OSError as exc:
            loop.close()
            ready.set_exception(exc)
            return
        ready.set_result(server.sockets[0].getsockname()[1])
        loop.run_forever()
        server.close()
        while tasks := asyncio.all_tasks(loop):  # again: a connection accepted as the server closed starts a task
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.enter(writer.transport):
            return
        task = asyncio.current_task()
        assert task is not None  # the stream server runs each connection as a task
        self._connections.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.request_s)
            except asyncio.TimeoutError:
                self.timed_out.add()
                return
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return  # gone, or a head over MAX_HEAD: no WebSocket client
            hosts = [line[5:].decode("latin-1") for line in head.split(b"\r\n")[1:] if line[:5].lower() == b"host:"]
            if self.misnamed(hosts, writer.transport):
                writer.write(self.other_host)
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            try:
                up_writer.write(head)
                await _both_ways(reader, writer, up_reader, up_writer)
            finally:
                up_writer.close()
        except (ConnectionError, OSError):
            pass  # either side went away: the other is closed below
        except asyncio.CancelledError:  # the relay stops: ended here, as Python 3.11's server logs a cancelled
            pass  # connection's task with a traceback
        finally:
            self.leave(writer.transport)
            writer.close()
            self._connections.discard(task)


async def _both_ways(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up_reader: asyncio.StreamReader,
                     up_writer: asyncio.StreamWriter) -> None:
    """Copy each side to the other until the server's side ends or either fails. A client that ends its sending (a
    half-close once its request is out) has that passed on and still gets the answer."""
    upward, downward = asyncio.ensure_future(_pipe(reader, up_writer)), asyncio.ensure_future(_pipe(up_reader, writer))
    try:
        done, _ = await asyncio.wait((upward, downward), return_when=asyncio.FIRST_COMPLETED)
        if downward not in done and upward.exception() is None:
            if up_writer.can_write_eof():
                up_writer.write_eof()
            await downward
    finally:
        for pipe in (upward, downward):
            pipe.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await asyncio.gather(upward, downward)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(_CHUNK):
        dst.write(data)
        await dst.drain()  # a slow reader holds this side back instead of growing a buffer
