"""``python -m streamfuse bench view``: its pages really read the viewer, and bad arguments are one line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamfuse.bench import child
from streamfuse.bench import view as bench_view
from streamfuse.signals import Terminated

pytest.importorskip("aiohttp")


def _rounds_that_see(monkeypatch, pages: int, counted: Callable) -> None:
    """Each timed round of ``main()`` from now on lasts until each of its ``pages`` has received a message that
    ``counted`` says it counts and the viewer has used CPU time, and on the benchmark's clock its seconds exactly: a
    round of 1 s on a busy machine saw no message, or under a tick of the viewer's CPU."""
    import aiohttp

    got, pids, lag = {}, [], [0.0]
    receive, cpu_s, sleep = aiohttp.ClientWebSocketResponse.receive, child.cpu_s, asyncio.sleep

    async def received(ws, *args, **kwargs):
        message = await receive(ws, *args, **kwargs)
        got[ws] = got.get(ws, 0) + counted(message)
        return message

    async def timed(seconds: float) -> None:
        if seconds == bench_view.WARM_UP_S:
            return await sleep(seconds)
        start, before, cpu0 = time.monotonic(), dict(got), cpu_s(pids[-1])
        await sleep(seconds)
        deadline = time.monotonic() + 120
        while sum(n > before.get(ws, 0) for ws, n in got.items()) < pages or cpu_s(pids[-1]) <= cpu0:
            assert time.monotonic() < deadline, f"in 120 s: messages {got}, before {before}"
            await sleep(0.05)
        lag[0] += time.monotonic() - start - seconds  # the benchmark's clock saw the round's seconds alone

    monkeypatch.setattr(aiohttp.ClientWebSocketResponse, "receive", received)
    monkeypatch.setattr(child, "cpu_s", lambda pid: pids.append(pid) or cpu_s(pid))
    monkeypatch.setattr(bench_view, "asyncio", SimpleNamespace(sleep=timed, create_task=asyncio.create_task,
                                                               gather=asyncio.gather, run=asyncio.run))
    monkeypatch.setattr(bench_view, "time", SimpleNamespace(monotonic=lambda: time.monotonic() - lag[0],
                                                            sleep=time.sleep))


def test_pages_read_the_viewer_and_its_cpu_is_measured(capsys, monkeypatch) -> None:
    import aiohttp

    _rounds_that_see(monkeypatch, 2, lambda m: m.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY))
    assert bench_view.main(["--pages", "2", "--seconds", "1", "--rounds", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()
    name, pages, per_page, lowest, total, cores, _load = rows[-1].split()
    assert (name, pages) == ("this", "2") and float(lowest) > 0 and float(total) > 0 and float(cores) > 0, rows


def test_foxglove_clients_read_the_bridge_through_its_relay_and_straight(capsys, monkeypatch) -> None:
    # the README's cost of the bridge's relay named no command: these two rows give it
    pytest.importorskip("foxglove")
    import aiohttp

    def counted(message) -> bool:  # a client counts the messages of its subscription alone
        return message.type == aiohttp.WSMsgType.BINARY and message.data[0] == 1

    _rounds_that_see(monkeypatch, 1, counted)
    assert bench_view.main(["--foxglove", "--pages", "1", "--seconds", "1", "--rounds", "1"]) == 0
    rows = [row.split() for row in capsys.readouterr().out.splitlines()[-2:]]
    assert [row[:2] for row in rows] == [["relay", "1"], ["direct", "1"]], rows
    assert all(float(row[4]) > 0 and float(row[5]) > 0 for row in rows), rows


@pytest.mark.parametrize("args, message", [
    (["--pages", "0"], "argument --pages: must be in 1..1000, got 0"),
    (["--seconds", "nan"], "argument --seconds: must be a number in (0, 600], got nan"),
    (["--against", "."], "--against .: no streamfuse/view there"),
    (["--foxglove", "--against", "."], "--against compares browser viewers: not with --foxglove")])
def test_bad_arguments_are_one_line(args, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # '.' holds no checkout
    with pytest.raises(SystemExit) as exit_:
        bench_view.main(args)
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(message)


def test_cpu_seconds_are_the_process_user_and_system_time() -> None:
    sum(i * i for i in range(200_000))  # some CPU time to read
    tick = 1 / os.sysconf("SC_CLK_TCK")
    before = os.times()
    cpu = child.cpu_s(os.getpid())
    after = os.times()
    assert before.user + before.system - tick <= cpu <= after.user + after.system + tick


def test_a_child_that_ends_before_it_is_ready_is_one_line_with_its_last_words(tmp_path) -> None:
    code = "import sys; sys.stderr.write('loading\\nno camera here\\n')"
    with pytest.raises(SystemExit) as exc:
        child.start("streamfuse bench view", [sys.executable, "-c", code, "extra"], tmp_path / "child.log",
                    r"ready on (\d+)")
    assert exc.value.code == f"streamfuse bench view: error: {code} extra did not start: no camera here"


def test_a_viewer_of_another_checkout_runs_there_with_that_checkout_first_on_its_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    code = "import os, sys; sys.stderr.write(f'in {os.getcwd()} path {os.environ[\"PYTHONPATH\"]} ready\\n')"
    proc, said = child.start("streamfuse bench view", [sys.executable, "-c", code], tmp_path / "child.log",
                             r"(in .* ready)", tmp_path.resolve())
    proc.wait(timeout=60)
    assert said == f"in {tmp_path.resolve()} path {tmp_path.resolve()}{os.pathsep}/elsewhere ready"


class _Child:
    """A started process as main() uses it, that records its stop."""

    pid = 0

    def __init__(self) -> None:
        self.stopped = False

    def terminate(self) -> None:
        self.stopped = True

    def wait(self, timeout: float | None = None) -> int:
        return 0


def _scripted_main(monkeypatch, args: list[str]) -> tuple[list, list]:
    """``main(args)`` with its children and rounds recorded, not run: (argv, checkout, child) each, (viewer, port)."""
    started, rounds = [], []

    def start(prog, argv, log, ready, src=None):
        started.append((argv, src, _Child()))
        return started[-1][2], "tcp://127.0.0.1:5" if "run" in argv else str(8000 + len(started))

    monkeypatch.setattr(child, "start", start)
    monkeypatch.setattr(bench_view, "_round", lambda name, proc, port, args: rounds.append((name, port)))
    assert bench_view.main(args) == 0
    return started, rounds


def test_rounds_alternate_between_the_viewers_and_every_child_is_stopped(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "other" / "streamfuse" / "view").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # --against as a relative path: the child runs there, so it must be made absolute
    started, rounds = _scripted_main(monkeypatch, ["--pages", "2", "--rounds", "2", "--against", "other"])
    assert rounds == [("this", 8002), ("against", 8003)] * 2
    assert [src for _, src, _ in started] == [None, None, tmp_path / "other"]
    assert started[2][1].is_absolute()
    assert all(proc.stopped for *_, proc in started)


def test_a_viewer_is_given_room_for_more_pages_than_its_default_cap(monkeypatch, capsys) -> None:
    from streamfuse.view.gate import MAX_CONNECTIONS

    for pages, cap in ((MAX_CONNECTIONS - 1, []), (MAX_CONNECTIONS, ["--max-connections", str(MAX_CONNECTIONS + 8)]),
                       (100, ["--max-connections", "108"])):
        started, _ = _scripted_main(monkeypatch, ["--pages", str(pages), "--rounds", "1"])
        viewer = started[1][0]
        assert viewer[viewer.index("0") + 1:] == cap  # after --port 0


def test_a_round_prints_pages_their_messages_per_second_the_viewers_cores_and_the_load(monkeypatch, capsys) -> None:
    async def pages(port, n, seconds, cpu_s, foxglove):
        return 3, [5.0, 7.0, 12.0], 3.0

    monkeypatch.setattr(bench_view, "_pages", pages)
    monkeypatch.setattr(bench_view.os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    bench_view._round("this", SimpleNamespace(pid=0), 8000, argparse.Namespace(pages=2, seconds=2.0, foxglove=False))
    assert capsys.readouterr().out.split() == ["this", "3", "7.0", "5.0", "24", "3.00", "1.50"]  # the median page


@contextlib.contextmanager
def _feed() -> Iterator[int]:
    """A WebSocket server on a free port, in a thread of its own, that sends a message on connect and after each
    'next', as the viewer does; yields the port."""
    from aiohttp import web

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_bytes(b"frame")
        async for _ in sock:
            await asyncio.sleep(0.01)
            await sock.send_bytes(b"frame")
        return sock

    with _served(ws) as port:
        yield port


@contextlib.contextmanager
def _served(ws: Callable) -> Iterator[int]:
    """The WebSocket handler ``ws`` at ``/ws`` on a free port, in a thread of its own; yields the port."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/ws", ws)
    runner = web.AppRunner(app)
    listener = socket.create_server(("127.0.0.1", 0))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, listener).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def test_a_rounds_cores_are_the_viewers_cpu_over_its_timed_seconds_alone(monkeypatch, capsys) -> None:
    # the CPU of the warm-up (the pages connecting and reading) was divided by the timed seconds alone: a viewer busy
    # half a core all along was said to use 0.5 x (3 s + 1 s) / 1 s = 2 cores in a round of 1 s
    monkeypatch.setattr(bench_view, "WARM_UP_S", 1.0)
    monkeypatch.setattr(child, "cpu_s", lambda pid: 0.5 * time.monotonic())  # half a core, all along
    with _feed() as port:
        args = argparse.Namespace(pages=2, seconds=0.5, foxglove=False)
        bench_view._round("this", SimpleNamespace(pid=0), port, args)
    name, pages, _per_page, _lowest, _total, cores, _load = capsys.readouterr().out.split()
    assert (name, pages) == ("this", "2")  # pages' messages not asked for: a loaded machine may delay the first
    assert float(cores) == pytest.approx(0.5, abs=0.25)  # 1.50 before: (1 s + 0.5 s) / 0.5 s of half a core


@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated])
def test_a_stop_while_a_child_starts_stops_the_child(stop, tmp_path, monkeypatch) -> None:
    # a SIGTERM to the benchmark while the demo loaded left the demo publishing on, reparented to init
    log = tmp_path / "child.log"
    code = "import os, sys, time; sys.stderr.write(f'{os.getpid()}\\n'); sys.stderr.flush(); time.sleep(120)"

    def sleep(seconds: float) -> None:
        if log.read_text():  # the child runs: the stop comes now
            raise stop("interrupted (SIGTERM)")
        time.sleep(seconds)

    monkeypatch.setattr(child, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    with pytest.raises(stop):
        child.start("streamfuse bench view", [sys.executable, "-c", code], log, r"never said")
    pid = int(log.read_text())
    try:
        assert not Path(f"/proc/{pid}").exists(), "the child runs on"
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def test_a_pages_rate_leaves_out_the_messages_of_the_warm_up(monkeypatch) -> None:
    # a viewer that sent each page 20 messages as it connected, then none, was said to send them all through the
    # timed seconds: 20 messages over 0.5 s, 40 a second, for a viewer that had gone quiet
    from aiohttp import web

    warmed, acked = threading.Event(), []

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        for _ in range(20):
            await sock.send_bytes(b"frame")
        async for _ in sock:  # the page acknowledges each message once it has counted it
            acked.append(1)
            if len(acked) == 2 * 20:
                warmed.set()
        return sock

    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:  # the warm-up lasts until both pages have counted every message
        if seconds == bench_view.WARM_UP_S:
            assert await asyncio.get_running_loop().run_in_executor(None, warmed.wait, 120)
        else:
            await real_sleep(seconds)

    monkeypatch.setattr(bench_view, "asyncio", SimpleNamespace(sleep=sleep, create_task=asyncio.create_task,
                                                               gather=asyncio.gather))
    with _served(ws) as port:
        connected, rates, _cores = asyncio.run(bench_view._pages(port, 2, 0.5, lambda: 0.0))
    assert connected == 2 and rates == [0.0, 0.0]




@pytest.mark.parametrize("where", ["round", "page"])
def test_a_stop_in_a_round_leaves_no_page_failing_unheard(where, monkeypatch, caplog) -> None:
    # seen: a Ctrl-C in a round printed "Task exception was never retrieved" and a traceback around the stop's line:
    # RuntimeError('Session is closed') of pages that first ran after their session had closed (a stop as the round
    # made them), or the KeyboardInterrupt of the page it landed in
    import gc

    import aiohttp

    def stopped(*args: object, **kwargs: object) -> None:  # the Ctrl-C, where the round waits or a page connects
        raise KeyboardInterrupt

    if where == "round":  # its first wait, its pages made but not yet run
        monkeypatch.setattr(bench_view, "asyncio", SimpleNamespace(create_task=asyncio.create_task, sleep=stopped,
                                                                   gather=asyncio.gather))
    else:
        monkeypatch.setattr(aiohttp.ClientSession, "ws_connect", stopped)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections and never answers their handshake
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(bench_view._pages(silent.getsockname()[1], 3, 1.0, lambda: 0.0))
        gc.collect()
    assert not [r.getMessage() for r in caplog.records if r.name == "asyncio"]
