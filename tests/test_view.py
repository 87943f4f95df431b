"""The viewer: previews only on request, the page's latest-only WebSocket, the CLIs (``python -m streamfuse``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import types
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zmq
from helpers_zmq import (ANY_PORT, PATIENCE_S, START_S, SilentLink, connect, fused_frame, has_ipv6_loopback,
                         plain_pub, published_on, wait_until)

from streamfuse import connection_watch
from streamfuse.cli import main as cli
from streamfuse.client import Subscriber
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.wire import decode_stats, preview_topic
from streamfuse.view.browser import Chromium, capture, find_chromium
from streamfuse.view.feed import Feed, unpack
from streamfuse.view.server import main as view_main
from streamfuse.view import server as server_module
from streamfuse.view.server import _send, serve
from streamfuse.view.gate import Door, Gate, listen

aiohttp = pytest.importorskip("aiohttp")
REPO = Path(__file__).resolve().parents[1]
CFG = PublishConfig(endpoint=ANY_PORT, topic="fused/t", stats_topic="stats/t", preview_width=80)


def _image(h: int = 120, w: int = 160) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)


def test_previews_are_sent_only_while_a_subscriber_asks_for_them():
    with Publisher(CFG) as pub, Subscriber(pub.endpoint, "fused/", timeout_s=0.05) as plain:
        connect(pub, plain, _image())
        assert not pub.previews_wanted()  # a consumer of fused frames costs the pipeline no previews
        with Subscriber(pub.endpoint, preview_topic("fused/t", "ir"), timeout_s=0.05) as sub:
            wait_until(pub.previews_wanted, "the preview subscription reached the publisher")
            fused = fused_frame(_image())
            got = None
            deadline = time.monotonic() + PATIENCE_S
            while got is None:
                assert time.monotonic() < deadline, "no preview arrived"
                pub.send_previews(fused)
                got = sub.recv()
        header, image = got
        assert image.shape == (60, 80) and header["encoding"] == "mono8"  # the IR image, downscaled to 80 wide
        assert (header["seq_ir"], header["seq_vis"]) == (fused.pair.ir.seq, fused.pair.vis.seq)
        wait_until(lambda: not pub.previews_wanted(), "the publisher saw the preview subscriber leave")
    with Publisher(PublishConfig(endpoint=ANY_PORT, preview_width=0)) as pub:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        for topic in (b"preview/", b"fused/"):
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(pub.endpoint)
        while not sock.poll(10):  # a fused frame arrived: both subscriptions have reached the publisher
            pub.send_fused(fused_frame(_image()))
        sock.close(linger=0)
        assert not pub.previews_wanted()  # preview_width 0: never


class _Pipeline(threading.Thread):
    """Publishes fused frames, previews when wanted, and stats, until stopped (owns the publisher's socket)."""

    def __init__(self, pub: Publisher) -> None:
        super().__init__(daemon=True)
        self.pub, self.stop, self.previews = pub, threading.Event(), False

    def run(self) -> None:
        while not self.stop.is_set():
            fused = fused_frame(_image())
            self.pub.send_fused(fused)
            self.previews = self.pub.previews_wanted()
            if self.previews:
                self.pub.send_previews(fused)
            if self.pub.published % 10 == 0:
                self.pub.send_stats({"rate_fps": 25.0, "stages": {"fuse": {"median_ms": 1.0, "p99_ms": 2.0}},
                                     "counters": {"published": self.pub.published}})
            time.sleep(0.005)


def _on_a_silent_feed(run: Callable[[Feed], Awaitable[Any]]) -> Any:
    """``run(feed)`` on a feed whose pipeline is not there (nothing listens at its endpoint), closed after."""
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")
    try:
        return asyncio.run(run(feed))
    finally:
        feed.close()


async def _next(ws) -> tuple[dict, list[bytes]]:  # noqa: ANN001
    msg = await asyncio.wait_for(ws.receive(), PATIENCE_S)
    assert msg.type == aiohttp.WSMsgType.BINARY, msg
    return unpack(msg.data)


async def _wait(condition, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {PATIENCE_S:g} s"
        await asyncio.sleep(0.01)


def test_page_gets_every_view_and_only_the_newest_frame_after_each_ack():
    async def page(feed: Feed, pipeline: _Pipeline) -> None:
        served = await serve(feed, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{served.port}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/") as resp:
                    html = await resp.text()
                assert "<canvas id=\"fused\">" in html and not re.search(r"(src|href)=", html)  # nothing fetched
                async with http.ws_connect(url + "/ws") as ws:
                    kinds, stats = {}, None
                    while len(kinds) < 3 or stats is None:
                        meta, jpegs = await _next(ws)
                        for frame, jpeg in zip(meta["frames"], jpegs):
                            kinds[frame["kind"]] = (frame["header"], cv2.imdecode(np.frombuffer(jpeg, np.uint8), 1))
                        if meta.get("stats") and stats is None:  # the first stats: with the plots' first points
                            assert meta["history"][-1]["stages"]["fuse"] == [1.0, 2.0]
                        stats = meta.get("stats") or stats
                        await ws.send_str("next")
                    assert {k: v[1].shape for k, v in kinds.items()} == \
                        {"fused": (120, 160, 3), "ir": (60, 80, 3), "vis": (60, 80, 3)}
                    assert stats["schema"] == "streamfuse.stats/1" and stats["rate_fps"] == 25.0
                    # no ack: nothing more is sent however many frames arrive (a frozen tab costs nothing)
                    last_seq = None
                    while last_seq is None:  # a message with a fused frame, left unacknowledged
                        meta, _ = await _next(ws)
                        last_seq = next((f["header"]["seq"] for f in meta["frames"] if f["kind"] == "fused"), None)
                        if last_seq is None:
                            await ws.send_str("next")
                    sent, arrived = feed.sent, feed.versions["fused"]
                    await _wait(lambda: feed.versions["fused"] >= arrived + 20, "20 more fused frames")
                    assert feed.sent == sent
                    await ws.send_str("next")  # the next message holds the newest frame, not the next in line
                    meta, _ = await _next(ws)
                    fused = [f for f in meta["frames"] if f["kind"] == "fused"]
                    assert fused and fused[0]["header"]["seq"] >= last_seq + 20
            # page closed: the viewer drops its frame subscriptions and the pipeline stops its previews
            await _wait(lambda: not pipeline.previews, "previews stopped after the page closed")
        finally:
            await served.cleanup()

    with Publisher(CFG) as pub:
        pipeline = _Pipeline(pub)
        feed = Feed(pub.endpoint, "fused/t", "stats/t")
        pipeline.start()
        try:
            asyncio.run(page(feed, pipeline))
        finally:
            pipeline.stop.set()
            pipeline.join()
            feed.close()


def test_a_frame_subscription_that_fails_is_tried_again_and_fails_no_page(monkeypatch, caplog):
    """A subscription that failed as a page opened (a host name not resolving while its machine restarts, no file
    left) raised in the page's handler and left the page registered: no later page ever got frames of that kind."""
    import streamfuse.view.feed as feed_module

    tries: list[str] = []

    def flaky(endpoint: str, topic: str, **kwargs: Any) -> Subscriber:
        tries.append(topic)
        if topic == "fused/t" and tries.count(topic) <= 2:
            raise ValueError(f"cannot connect to {endpoint}: host name not known (yet)")
        return Subscriber(endpoint, topic, **kwargs)

    monkeypatch.setattr(feed_module, "Subscriber", flaky)
    monkeypatch.setattr(feed_module, "_RETRY_S", 0.05, raising=False)

    async def pages(feed: Feed) -> None:
        feed.start(asyncio.get_running_loop())
        for _ in range(2):  # a page, closed once every kind came; then another one
            arrived = dict(feed.versions)
            changed = feed.acquire()
            await _wait(lambda: all(feed.versions[k] > arrived[k] for k in ("ir", "vis", "fused")),
                        "frames of every kind")
            feed.release(changed)

    with Publisher(CFG) as pub, caplog.at_level("INFO", logger="streamfuse.view.feed"):
        pipeline = _Pipeline(pub)
        feed = Feed(pub.endpoint, "fused/t", "stats/t")
        pipeline.start()
        try:
            asyncio.run(pages(feed))
        finally:
            pipeline.stop.set()
            pipeline.join()
            feed.close()
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"cannot subscribe to the fused frames of {pub.endpoint}: cannot connect to {pub.endpoint}: host "
                    f"name not known (yet) (trying again every 0.05 s)",
                    f"subscribed to the fused frames of {pub.endpoint} after 2 failed tries"]
    assert tries.count("fused/t") == 4  # 3 for the first page, 1 for the second


@contextlib.contextmanager
def _stats_consumer(consumer: str) -> Iterator[tuple[zmq.Socket, Any, Callable[[], int]]]:
    """A raw PUB socket and a view feed or Foxglove bridge reading its stats on ``stats/t``; with the count of stats
    messages the consumer passed on."""
    if consumer == "foxglove":
        pytest.importorskip("foxglove")
    with plain_pub() as sock:
        loop = asyncio.new_event_loop()  # never run: the feed only queues its page wake-ups on it
        reader, passed_on = _stats_reader(consumer, sock.getsockopt_string(zmq.LAST_ENDPOINT), loop)
        try:
            yield sock, reader, passed_on
        finally:
            reader.close()
            loop.close()


def _stats_reader(consumer: str, endpoint: str, loop: asyncio.AbstractEventLoop) -> tuple[Any, Callable[[], int]]:
    """A started view feed or Foxglove bridge reading stats on ``stats/t`` from ``endpoint``, and the count of stats
    messages it passed on."""
    if consumer == "view":
        reader = Feed(endpoint, "fused/t", "stats/t")
        reader.start(loop)
        return reader, lambda: reader.versions["stats"]
    from streamfuse.view.foxglove_bridge import Bridge

    reader = Bridge(endpoint, "fused/t", "stats/t", port=0)
    reader.start()
    return reader, lambda: reader.logged.get("/stats", 0)


def _stats(**fields: object) -> bytes:
    return json.dumps({"schema": "streamfuse.stats/1", **fields}).encode()


@pytest.mark.parametrize("consumer", ["view", "foxglove"])
def test_hostile_stats_are_skipped_and_the_stats_go_on(consumer):
    # These killed the view's stats thread (stages) and the bridge's (t_ns) for good.
    killer = b'{"schema":"streamfuse.stats/1","stages":[1,2],"t_ns":"abc"}'
    hostile = [b'{"schema":"streamfuse.stats/1","rate_fps":NaN}', b'{"schema":"streamfuse.stats/1","counters":[1]}']
    with _stats_consumer(consumer) as (sock, reader, passed_on):
        # sent every 10 ms until one arrives (the subscription is then there), so none of the rest is lost
        wait_until(lambda: sock.send_multipart([b"stats/t", killer]) or reader.stats_in.malformed, "stats arrive")
        for body in hostile:
            sock.send_multipart([b"stats/t", body])
        sock.send_multipart([b"stats/t", b'{"schema":"streamfuse.stats/1","t_ns":7,"rate_fps":25.0}'])
        wait_until(lambda: passed_on() == 1, "the valid stats message after the hostile ones")
        assert reader.stats_in.malformed >= 1 + len(hostile)
        if consumer == "view":
            assert reader.stats["t_ns"] == 7 and list(reader.history) == [{"t_ns": 7, "rate_fps": 25.0, "stages": {}}]


@pytest.mark.parametrize("consumer", ["view", "foxglove"])
def test_a_stats_message_of_countless_parts_is_refused_without_their_being_held(consumer):
    # each part of a message was held until the last had come: a peer's message of millions of tiny parts, a few
    # bytes each on the wire, took hundreds of MB
    parts = (b"stats/t", *[b"xy"] * 200_000)  # made before the count starts, sent part by part
    # an hour's stats interval: the 200 001 sends take over the 5 s silence on a loaded machine, and the connection
    # made again in the middle of the message lost its end (and the message) for good
    hourly = _stats(interval_s=3600.0)
    with _stats_consumer(consumer) as (sock, reader, passed_on):
        wait_until(lambda: sock.send_multipart([b"stats/t", hourly]) or passed_on(), "stats arrive")
        malformed = reader.stats_in.malformed
        tracemalloc.start()
        try:
            for part in parts:
                sock.send(part, zmq.SNDMORE)
            sock.send(b"")
            wait_until(lambda: reader.stats_in.malformed > malformed, "the message refused")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        seen = passed_on()
        wait_until(lambda: sock.send_multipart([b"stats/t", hourly]) or passed_on() > seen, "stats after it")
    assert peak < 2**20, f"{peak} bytes held while the parts were read"


@pytest.mark.parametrize("consumer", ["view", "foxglove"])
def test_stats_go_on_after_a_part_over_the_limit(consumer):
    # libzmq drops the connection on the oversized part and never retries it: the stats stopped for good, silently.
    with _stats_consumer(consumer) as (sock, reader, passed_on):
        assert reader.stats_in.sock.getsockopt(zmq.RCVHWM) <= 8  # a peer's flood holds a few MB here, not a GB
        wait_until(lambda: sock.send_multipart([b"stats/t", _stats()]) or passed_on(), "stats arrive")
        sock.send_multipart([b"stats/t", _stats(pad="x" * 2_000_000)])
        wait_until(lambda: reader.stats_in.malformed, "the oversized part refused")
        seen = passed_on()
        wait_until(lambda: sock.send_multipart([b"stats/t", _stats()]) or passed_on() > seen, "stats after it")


@pytest.mark.parametrize("consumer", ["view", "foxglove"])
def test_stats_go_on_after_the_link_went_silent(consumer):
    # TCP never reports a link whose peer vanished without a word: the frames' subscribers made their connections
    # again, the stats socket waited on its dead one for good
    if consumer == "foxglove":
        pytest.importorskip("foxglove")
    with plain_pub() as sock:
        link = SilentLink(int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rpartition(":")[2]))
        loop = asyncio.new_event_loop()
        reader, passed_on = _stats_reader(consumer, f"tcp://127.0.0.1:{link.port}", loop)
        send = lambda: sock.send_multipart([b"stats/t", _stats(interval_s=0.01)])  # noqa: E731 - every 10 ms in waits
        try:
            wait_until(lambda: send() or passed_on(), "stats arrive")
            link.cut()
            cut = link.accepted
            wait_until(lambda: send() or link.accepted > cut, "a connection made again")
            seen = passed_on()
            wait_until(lambda: send() or passed_on() > seen, "stats through the new connection")
        finally:
            reader.close()
            link.close()
            loop.close()


def test_stats_with_too_many_stages_or_long_stage_names_are_skipped():
    # 32 stages named ~31 kB each, 300 times over, made the view hold ~300 MB and send it as each page's first message.
    long_names = {f"{i:02d}" + "x" * 31_000: {"median_ms": 1.0} for i in range(32)}
    many = {f"s{i}": {"median_ms": 1.0, "p99_ms": 2.0} for i in range(33)}
    fine = {f"s{i}": {"median_ms": 1.0, "p99_ms": 2.0} for i in range(31)} | {"n" * 64: {"median_ms": 1.0}}
    with _stats_consumer("view") as (sock, feed, passed_on):
        wait_until(lambda: sock.send_multipart([b"stats/t", _stats()]) or passed_on(), "stats arrive")
        for t_ns, stages in enumerate((long_names, many, long_names), 1):  # t_ns tells each one apart once handled
            sock.send_multipart([b"stats/t", _stats(t_ns=t_ns, stages=stages)])
            wait_until(lambda: feed.stats_in.malformed == t_ns or feed.stats.get("t_ns") == t_ns, "the message handled")
        sock.send_multipart([b"stats/t", _stats(t_ns=7, stages=fine)])  # at the limits: kept
        wait_until(lambda: feed.stats.get("t_ns") == 7, "the stats message at the limits")
        assert feed.stats_in.malformed == 3 and feed.history[-1]["stages"].keys() == fine.keys()
        first = asyncio.run(feed.message({}))
        assert [p["t_ns"] for p in unpack(first)[0]["history"]][-1:] == [7]
        assert len(first) < 20_000  # a page's first message stays small (the skipped ones were 1 MB each)


def test_stats_after_the_event_loop_closed_are_no_traceback():
    # The viewer closes its event loop before its feed: a stats message in between raised in the stats thread.
    with _stats_consumer("view") as (sock, feed, passed_on):
        feed._loop.close()
        wait_until(lambda: sock.send_multipart([b"stats/t", _stats()]) or passed_on() >= 2, "stats keep arriving")


@pytest.mark.slow  # opt-in, as the other browser tests (tests/test_view_browser.py)
@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (Debian: apt-get install chromium)")
@pytest.mark.timeout(300)
def test_screenshot_without_a_pipeline_says_no_frames_arrived(tmp_path):
    async def shoot(feed: Feed) -> str:
        served = await serve(feed, "127.0.0.1", 0)
        try:
            with pytest.raises(RuntimeError) as info:
                await capture(f"http://127.0.0.1:{served.port}/", tmp_path / "shot.png", 1, timeout_s=1,
                              source=feed.endpoint)
        finally:
            await served.cleanup()
        return str(info.value)

    assert _on_a_silent_feed(shoot) == "no frames arrived from tcp://127.0.0.1:1 within 1 s: is the pipeline running?"
    assert not (tmp_path / "shot.png").exists()


def test_view_cli_says_what_is_wrong_in_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert view_main(["tcp://127.0.0.1:1", "--port", str(busy.getsockname()[1])]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot serve the page on 127.0.0.1" in err
    assert view_main(["bogus://x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect to bogus://x" in err
    for wait in ("nan", "inf", "0"):
        with pytest.raises(SystemExit) as exit_:
            view_main(["tcp://127.0.0.1:1", "--wait", wait])
        last = capsys.readouterr().err.splitlines()[-1]
        assert exit_.value.code == 2 and last.endswith(f"argument --wait: must be a finite number > 0, got {wait}")


@pytest.mark.parametrize("command", ["view", "foxglove"])
@pytest.mark.parametrize(("args", "said"), [(["--port", "99999"], "argument --port: must be in 0..65535, got 99999"),
                                            (["--quality", "0"], "argument --quality: must be in 1..100, got 0"),
                                            (["--port", "x"], "argument --port: 'x' is not an integer")])
def test_cli_option_out_of_range_names_that_option_only(command, args, said, capsys):
    # the line named every range at once ("--quality must be in 1..100, --port in 0..65535 and --wait ...")
    with pytest.raises(SystemExit) as exit_:
        cli([command, "tcp://127.0.0.1:1", *args])
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(f"error: {said}")


@pytest.mark.parametrize("command", ["view", "foxglove"])
def test_cli_bad_server_key_port_or_host_is_named(command, capsys, monkeypatch):
    # The stats socket took a short key for a connect error ("cannot connect to ...: Invalid argument"); libzmq
    # takes a TCP port modulo 65536 (70000 is 4464) and retries a host name that does not resolve in silence.
    if command == "foxglove":
        pytest.importorskip("foxglove")
    monkeypatch.setattr(connection_watch, "NAME_WAIT_S", 0.05)  # the name is waited for this long, then named
    for args, said in ((["tcp://127.0.0.1:1", "--server-key", "short"], "40-character Z85 CURVE public key, got 5"),
                       (["tcp://127.0.0.1:70000"], "cannot connect to tcp://127.0.0.1:70000: its TCP port must be"),
                       (["tcp://no-such-host.invalid:47001"], "the host name no-such-host.invalid does not resolve"),
                       (["tcp://127.0.0.1:1", f"--server-key={zmq.curve_keypair()[0].decode()}",  # Z85 may start "-"
                         "--client-key", "robot.key_secret"], "client key file robot.key_secret does not exist")):
        assert cli([command, *args, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err


@pytest.mark.parametrize("command", ["view", "foxglove"])
def test_cli_errors_write_control_characters_as_escapes(command, capsys):
    # an endpoint holding a newline or a terminal's escape sequence (a script's variable) must not split the error
    # over two lines, nor draw on the user's terminal
    if command == "foxglove":
        pytest.importorskip("foxglove")
    assert cli([command, "bogus://x\n\x1b[2J", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "bogus://x\\n\\x1b[2J" in err, err


def test_a_foxglove_server_that_cannot_start_says_why_in_one_line(monkeypatch, capsys):
    pytest.importorskip("foxglove")
    import streamfuse.view.foxglove_bridge as bridge_module

    def start(self: Any) -> None:  # as a bind that fails does: the stats socket closed, the host as typed
        self.stats_in.close()
        raise RuntimeError("cannot start the Foxglove server on a\x1b[2Jb:0: no such host")

    monkeypatch.setattr(bridge_module.Bridge, "start", start)
    assert cli(["foxglove", "tcp://127.0.0.1:1", "--port", "0"]) == 1
    said = capsys.readouterr().err
    assert said == "streamfuse foxglove: error: cannot start the Foxglove server on a\\x1b[2Jb:0: no such host\n", said


@pytest.mark.parametrize("stats_topic", ["", "f", "fused/", "p", "s", "shm/"])
def test_a_stats_topic_that_also_takes_frames_is_refused(stats_topic: str) -> None:
    # --stats-topic "": every frame came in on the stats socket, logged as a malformed stats message (a line a frame);
    # "s" (short for stats/) or "shm/": so did every shared-memory descriptor
    with pytest.raises(ValueError, match=f"^stats topic '{stats_topic}' also takes frames"):
        Feed("tcp://127.0.0.1:1", "fused/t", stats_topic).close()


@pytest.mark.parametrize(("stats_topic", "said"), [
    ("stats/\udcff", r"stats_topic='stats/\\udcff' is not UTF-8 text"), (b"\xff", r"stats_topic=b'\\xff' is not UTF-8"),
    (None, "stats_topic=None must be a str or UTF-8 bytes")])
def test_a_stats_topic_that_is_no_text_is_refused_naming_it(stats_topic: Any, said: str) -> None:
    # a surrogate failed in a UnicodeEncodeError traceback as the stats socket subscribed, bytes and None in a TypeError
    with pytest.raises(ValueError, match=f"^{said}"):
        Feed("tcp://127.0.0.1:1", "fused/t", stats_topic).close()


NOT_KNOWN = socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize("command", ["view", "foxglove"])
def test_cli_name_wait_sets_how_long_the_pipeline_name_is_waited_for(command, capsys, monkeypatch):
    # subscribe's --timeout sets this wait; the viewer and the bridge waited a fixed 10 s
    if command == "foxglove":
        pytest.importorskip("foxglove")
    lookups = []

    def never_resolves(name: str) -> list[tuple]:  # no real DNS: connection_watch's resolver seam
        lookups.append(name)
        raise NOT_KNOWN

    monkeypatch.setattr(connection_watch, "_resolve", never_resolves)
    monkeypatch.setattr(connection_watch, "_RETRY_S", (0.001, 0.002))  # lookups retried after a millisecond
    for wait, tries in (("0", lambda n: n == 1), ("1", lambda n: n > 1)):  # 0: one lookup, no wait
        lookups.clear()
        assert cli([command, "tcp://pub.invalid:47001", "--name-wait", wait, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err == (f"streamfuse {command}: error: cannot connect to tcp://pub.invalid:47001: the host name "
                       f"pub.invalid does not resolve (Name or service not known; waited {wait} s)\n")
        assert tries(len(lookups)) and set(lookups) == {"pub.invalid"}, lookups
    lookups.clear()
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit) as exit_:
            cli([command, "tcp://pub.invalid:47001", "--name-wait", bad])
        last = capsys.readouterr().err.splitlines()[-1]
        assert exit_.value.code == 2 and "error: argument --name-wait: " in last and bad in last, last
    assert not lookups


def test_module_cli_dispatches_to_each_command(capsys):
    assert cli([]) == 2 and "run,replay,recover,subscribe,view,foxglove" in capsys.readouterr().out
    assert cli(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    assert cli(["run", "--config", "missing.yaml"]) == 2  # run_stream.py's own config error
    assert "config error: missing.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli(["subscribe", "--help"])
    assert exc.value.code == 0 and "usage: python -m streamfuse subscribe" in capsys.readouterr().out


@pytest.mark.timeout(2 * START_S)
def test_live_pipeline_publishes_previews_on_request_and_its_fuser_in_the_stats():
    proc = subprocess.Popen([sys.executable, "-m", "streamfuse", "run", "--config", "demo", "--set",
                             "publish.endpoint=tcp://127.0.0.1:*", "--set", "fuse.name=max", "--set", "ir.width=160",
                             "--set", "ir.height=120", "--set", "vis.width=160", "--set", "vis.height=120", "--set",
                             "publish.preview_width=64", "--set", "telemetry.interval_s=0.2"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stats = zmq.Context.instance().socket(zmq.SUB)
    try:
        endpoint = published_on(proc)
        with Subscriber(endpoint, preview_topic("fused/demo", "vis"), timeout_s=PATIENCE_S) as sub:
            got = sub.recv(START_S)
            assert got is not None, "no visible preview from the pipeline"
            assert got[1].shape == (48, 64, 3)
        stats.setsockopt(zmq.LINGER, 0)
        stats.setsockopt(zmq.SUBSCRIBE, b"stats/demo")
        stats.connect(endpoint)
        assert stats.poll(PATIENCE_S * 1000), "no stats from the pipeline"
        assert decode_stats(stats.recv_multipart())["fuser"] == {"name": "max", "version": "1"}
    finally:
        stats.close(linger=0)
        proc.terminate()
        assert proc.wait(PATIENCE_S) == 0, proc.stderr.read()


def test_a_frame_jpeg_cannot_hold_is_skipped_and_the_page_goes_on():
    # A side over JPEG's 65500 (the wire allows 65535) raised in the page's sender, and the page froze for good.
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its messages are made here
    feed._latest = {"fused": (1, {"seq": 1}, np.zeros((1, 65501), np.uint8)), "ir": (1, {"seq": 2}, _image(4, 6))}
    seen: dict[str, int] = {}
    try:
        meta, jpegs = unpack(asyncio.run(feed.message(seen)))
    finally:
        feed.stats_in.close()
    assert [f["kind"] for f in meta["frames"]] == ["ir"] and len(jpegs) == 1
    assert seen == {"ir": 1, "fused": 1} and feed.unshown == 1


def test_a_frame_whose_encoding_fails_is_skipped_and_the_pages_go_on(monkeypatch, caplog):
    # the shared encoding's error reached every page waiting for it and ended its sender: every page froze for good
    failures = [cv2.error("Insufficient memory")]

    def imencode(*args: Any, real: Callable = cv2.imencode) -> Any:
        if failures:
            raise failures.pop()
        return real(*args)

    monkeypatch.setattr(cv2, "imencode", imencode)
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its messages are made here
    seen: list[dict[str, int]] = [{}, {}]

    async def pages(version: int) -> list[tuple[dict, list[bytes]]]:
        feed._latest = {"fused": (version, {"seq": version}, _image())}
        return [unpack(message) for message in await asyncio.gather(*(feed.message(s) for s in seen))]

    try:
        first, second = asyncio.run(pages(1)), asyncio.run(pages(2))
    finally:
        feed.close()
    assert all(meta["frames"] == [] and jpegs == [] for meta, jpegs in first) and feed.unshown == 1
    assert all(meta["frames"][0]["header"]["seq"] == 2 and len(jpegs) == 1 for meta, jpegs in second)
    assert [r.getMessage() for r in caplog.records] == [
        "skipped a (120, 160, 3) fused frame: its JPEG encoding failed: Insufficient memory (more such frames are "
        "counted, not logged)"]


def test_a_page_opened_after_the_last_one_closed_is_not_sent_empty_messages_without_end():
    """The last page's close clears the newest frames but not their counts: a page opened then was sent empty
    messages as fast as it answered them (one core busy) until a frame of every kind came again, for ever once the
    pipeline had stopped."""
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its messages are made here
    feed.versions.update(fused=7, ir=5, vis=5)  # frames that came while the earlier page was open
    seen: dict[str, int] = {}
    try:
        meta, jpegs = unpack(asyncio.run(feed.message(seen)))
    finally:
        feed.stats_in.close()
    assert meta["frames"] == [] and jpegs == []
    assert not feed.newer(seen)  # so the sender waits for the next frame instead of sending again


@pytest.mark.parametrize("shape, sent", [((1, 65500), 1), ((1, 65501), 0), ((65501, 1), 0)])
def test_a_frame_too_wide_for_jpeg_is_skipped_without_opencv_errors(capfd, shape, sent):
    # JPEG holds sides up to 65500 (the height too). One over was refused after OpenCV tried it: its own error lines on
    # stderr for every such frame, beside the viewer's one.
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its messages are made here
    feed._latest = {"fused": (1, {"seq": 1}, np.zeros(shape, np.uint8))}
    try:
        meta, jpegs = unpack(asyncio.run(feed.message({})))
    finally:
        feed.stats_in.close()
    assert [f["kind"] for f in meta["frames"]] == ["fused"] * sent and len(jpegs) == sent
    assert feed.unshown == 1 - sent and "imencode" not in capfd.readouterr().err


class _Page(Chromium):
    """A Chromium whose DevTools calls answer with a fixed PNG: the file handling of ``screenshot`` without a browser
    (none is installed on most test machines)."""

    async def call(self, method: str, **params: object) -> dict:
        assert method == "Page.captureScreenshot"
        return {"data": base64.b64encode(b"new png").decode()}


def test_a_screenshot_never_writes_over_a_file(tmp_path: Path) -> None:
    # it was path.write_bytes: an existing file overwritten, a half-written PNG left by a kill or a full disk
    shot = tmp_path / "page.png"
    shot.write_bytes(b"kept")
    written = [asyncio.run(_Page().screenshot(shot)) for _ in range(2)]
    assert written == [tmp_path / "page-2.png", tmp_path / "page-3.png"] and shot.read_bytes() == b"kept"
    assert all(p.read_bytes() == b"new png" for p in written) and sorted(tmp_path.iterdir()) == sorted([shot, *written])
    with pytest.raises(RuntimeError, match=r"^cannot write .*page\.png"):  # one line, nothing left behind
        asyncio.run(_Page().screenshot(tmp_path / "missing" / "page.png"))


def test_a_chromium_named_by_the_environment_that_is_not_there_is_said_so(monkeypatch, tmp_path):
    # it was told "no Chromium found ... or set STREAMFUSE_CHROMIUM", the variable it had set
    (tmp_path / "chromium").write_text("#!/bin/sh\n")
    (tmp_path / "chromium").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))  # one on the PATH is not taken instead of the one named
    monkeypatch.setenv("STREAMFUSE_CHROMIUM", str(tmp_path / "none"))
    assert find_chromium() is None
    with pytest.raises(RuntimeError, match=f"^STREAMFUSE_CHROMIUM={re.escape(str(tmp_path / 'none'))}: no such "
                                           f"executable$"):
        asyncio.run(Chromium().__aenter__())


def test_a_malformed_request_or_a_reset_handshake_is_one_log_line_or_none(caplog):
    """Any peer could make the viewer print aiohttp's ten-line traceback per request (a header over 8190 bytes), and
    a WebSocket client reset during the handshake gave a twenty-line one through the page's handler."""
    import base64
    import os
    import struct

    async def peers(feed: Feed) -> None:
        served = await serve(feed, "127.0.0.1", 0)
        port = served.port
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.0 400")
            writer.close()
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port)) as reset:
                    key = base64.b64encode(os.urandom(16)).decode()
                    reset.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                  f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
                    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            async with aiohttp.ClientSession() as http:  # the viewer goes on serving pages
                async with http.get(f"http://127.0.0.1:{port}/") as resp:
                    assert resp.status == 200
        finally:
            await served.cleanup()

    with caplog.at_level("DEBUG"):
        _on_a_silent_feed(peers)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    bad = [r.getMessage() for r in caplog.records if "Error handling request" in r.getMessage()]
    assert len(bad) == 1 and "\n" not in bad[0] and "8190" in bad[0], bad


def test_a_flood_of_malformed_requests_is_counted_in_one_line_and_a_server_error_is_still_said(caplog, monkeypatch):
    """A broken or hostile client made the viewer log one ERROR line per malformed request, as fast as it sent them."""
    monkeypatch.setattr(server_module._BadRequests, "window_s", 3600.0)  # one window, however slow the machine

    async def peers(feed: Feed) -> None:
        served = await serve(feed, "127.0.0.1", 0)
        try:
            for _ in range(25):
                reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
                writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
                assert (await reader.readline()).startswith(b"HTTP/1.0 400")
                writer.close()
            logging.getLogger("aiohttp.server").error("Error handling request from %s", "127.0.0.1",
                                                      exc_info=RuntimeError("a handler's own fault"))
        finally:
            await served.cleanup()

    with caplog.at_level("DEBUG"):
        _on_a_silent_feed(peers)
    said = [r.getMessage() for r in caplog.records if "request" in r.getMessage()]
    assert len(said) == 22 and all("8190" in line for line in said[:20]), said
    assert said[19].endswith("(20 said in 3600 s: further malformed requests are counted, then said as one line)")
    assert said[20] == "Error handling request from 127.0.0.1: RuntimeError: a handler's own fault"
    assert said[21].startswith("5 more malformed requests not said one by one; the last: Error handling request from")


def test_connections_over_the_cap_get_503_and_one_without_its_request_in_time_is_closed(caplog):
    """aiohttp took any number of connections and kept one that sent its headers a byte at a time for ever: enough of
    them used up the viewer's files, and then no page could connect and each failed accept logged a traceback."""

    async def peers(feed: Feed, gate: Gate) -> None:
        served = await serve(feed, "127.0.0.1", 0, gate)
        url = f"http://127.0.0.1:{served.port}"
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(url + "/ws", compress=15) as page:
                assert page.compress == 0  # no per-message deflate (browsers ask for it): JPEGs do not shrink
                slow = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(2)]
                for _, writer in slow:
                    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n")  # and never the blank line that ends it
                await _wait(lambda: len(gate.open) == 3, "the page and both slow clients connected")
                reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
                answer = await asyncio.wait_for(reader.read(), PATIENCE_S)
                assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"its cap (--max-connections)\n")
                writer.close()
                for reader, writer in slow:  # closed at their deadline
                    assert await asyncio.wait_for(reader.read(), PATIENCE_S) == b""
                    writer.close()
                await _wait(lambda: len(gate.open) == 1, "the slow clients gone")  # the page is kept: it came first
                async with http.get(url + "/") as resp:
                    assert resp.status == 200  # room again
        finally:
            await served.cleanup()

    with caplog.at_level("WARNING", "streamfuse.view"):  # 2 s: the refusal comes before either deadline
        _on_a_silent_feed(lambda feed: peers(feed, Gate(limit=3, request_s=2.0)))
    said = [r.getMessage() for r in caplog.records if r.name == "streamfuse.view"]
    assert said[0].startswith("answered 1 connection(s) 503 and closed them: 3 were open, the cap"), said
    closed = [int(line.split()[1]) for line in said if "sent no complete request within 2 s" in line]
    assert sum(closed) == 2 and len(said) == 1 + len(closed), said  # the second said at the end, not a line each


def test_pages_asking_for_a_new_frame_at_once_share_one_encoding(monkeypatch):
    # each page encoded the frame itself while the first encoding ran: 50 pages encoded every frame about 20 times
    encoded = []
    monkeypatch.setattr(cv2, "imencode", lambda *args, real=cv2.imencode: encoded.append(1) or real(*args))
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its messages are made here
    feed._latest = {"fused": (1, {"seq": 1}, _image())}

    async def pages() -> list[bytes]:
        return await asyncio.gather(*(feed.message({}) for _ in range(20)))

    try:
        messages = asyncio.run(pages())
    finally:
        feed.stats_in.close()
    assert len(encoded) == 1 and len(set(messages)) == 1 and len(unpack(messages[0])[1]) == 1


@pytest.mark.parametrize(("command", "host", "said"), [
    ("view", "", "serving the page on every address (''), reachable from other machines"),
    ("foxglove", "0.0.0.0", "serving Foxglove on 0.0.0.0, reachable from other machines")])
def test_a_server_for_other_machines_warns_that_it_has_no_password(command, host, said):
    # the bridge did not warn at all, and the viewer's warning named '' (every address) as an empty host
    if command == "foxglove":
        pytest.importorskip("foxglove")
    proc = subprocess.Popen([sys.executable, "-m", "streamfuse", command, "tcp://127.0.0.1:1", "--host", host,
                             "--port", "0"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("Ctrl-C stops" in line for line in lines):
            lines.append(proc.stderr.readline())
            assert lines[-1], lines  # stderr ended: it exited
        port = int(re.search(r"://\S+:(\d+)", lines[-1]).group(1))
        for address in ["127.0.0.1", *["::1"] * (host == "" and has_ipv6_loopback())]:  # each family on the port said
            socket.create_connection((address, port), timeout=PATIENCE_S).close()
    finally:
        proc.terminate()
        proc.wait(PATIENCE_S)
    assert said in lines[-2] and "no password, frames unencrypted" in lines[-2], lines
    assert proc.returncode == 0 and "://:" not in lines[-1], lines  # the URL names a host


def _answers_http(port: int) -> bool:
    """Whether a server on the loopback ``port`` answers a Foxglove client's WebSocket handshake (whatever it says: the
    viewer's page, the bridge's switch of protocols)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Protocol: foxglove.sdk.v1\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("command", ["view", "foxglove"])
def test_a_server_started_with_ctrl_c_ignored_goes_on_past_one_and_stops_on_sigterm(command):
    # a script's `streamfuse view ... &`: the shell ignores Ctrl-C for it, and the server's own handler made the Ctrl-C
    # that stops the script's foreground command stop it too
    if command == "foxglove":
        pytest.importorskip("foxglove")
    proc = subprocess.Popen([sys.executable, "-m", "streamfuse", command, "tcp://127.0.0.1:1", "--port", "0"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        while "Ctrl-C stops" not in (line := proc.stderr.readline()):
            assert line, "the server exited"
        port = int(re.search(r"://\S+:(\d+)", line).group(1))
        assert _answers_http(port), "the server does not answer"  # its handlers are in place before it serves
        status = Path(f"/proc/{proc.pid}/status").read_text()
        ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
        assert ignored >> (signal.SIGINT - 1) & 1, "a Ctrl-C would stop it"  # what the kernel will do with one
        proc.send_signal(signal.SIGINT)
        # a stopped server closes its port at once: one request after another finds it still serving
        assert _answers_http(port) and _answers_http(port), "the Ctrl-C stopped the server"
        proc.send_signal(signal.SIGTERM)
        proc.wait(PATIENCE_S)
    finally:
        proc.kill()
    assert proc.returncode == 0


class _Peer:
    """A transport as the door sees one: its client's address, what it was sent, whether it was closed."""

    def __init__(self, host: str, own: str = "") -> None:
        self.host, self.own, self.sent, self.closed = host, own, b"", False

    def get_extra_info(self, name: str) -> Any:
        if name == "sockname":
            return (self.own, 8080) if self.own else None
        return (self.host, 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


def test_one_other_machine_holds_at_most_a_quarter_of_the_cap(caplog):
    """With one cap for everyone, a single host that kept its connections open (each renewed within its deadline)
    kept every other client out; this machine's own clients (loopback) still have the whole cap."""
    door = Door(limit=8)  # 2 a host
    far = [_Peer("192.0.2.7") for _ in range(3)]
    with caplog.at_level("WARNING", "streamfuse.view"):
        assert [door.enter(t) for t in far] == [True, True, False]
        assert far[2].closed and far[2].sent.startswith(b"HTTP/1.1 503 ") and b"from this address" in far[2].sent
        assert not door.enter(_Peer("192.0.2.7"))  # within the same seconds, no event loop here: said at the close
        assert door.enter(_Peer("192.0.2.8")) and door.enter(_Peer("2001:db8::1"))  # other hosts get in
        local = ("::1", "::ffff:127.0.0.1", "::ffff:127.0.0.1", "::ffff:127.0.0.1")  # 4 > 2: loopback has the cap
        assert all(door.enter(_Peer(host)) for host in local)  # (an IPv4 client of a dual-stack socket included)
        door.leave(far[0])
        assert door.enter(_Peer("::ffff:192.0.2.7"))  # the same host over IPv6: its place again
        assert door.count == 8 and not door.enter(_Peer("127.0.0.1"))  # the cap
    door.close()
    said = [r.getMessage() for r in caplog.records if r.name == "streamfuse.view"]
    assert said == ["answered 1 connection(s) 503 and closed them: their address held 2, its share of the cap "
                    "(--max-connections)",
                    "answered 1 connection(s) 503 and closed them: 8 were open, the cap (--max-connections)",
                    "answered 1 connection(s) 503 and closed them: their address held 2, its share of the cap "
                    "(--max-connections)"], said


@pytest.mark.parametrize("limit", range(2, 8))
def test_a_page_on_another_machine_has_its_two_connections_under_a_small_cap(limit):
    # its share, a quarter of a cap of 2 to 7 rounded down, held one connection: a page on another machine got in,
    # its WebSocket was answered 503, and it showed nothing
    gate = Gate(limit)
    assert [gate.enter(_Peer("192.0.2.7")) for _ in range(3)] == [True, True, False]
    gate.close()


def test_this_machine_through_its_own_network_address_has_the_whole_cap():
    # a browser on the viewer's machine that opened its network name (http://robot.local:8080/, --host 0.0.0.0)
    # comes from that address, not loopback: it was held to a quarter of the cap as another machine
    door = Door(limit=8)  # 2 a host
    assert all(door.enter(_Peer("192.0.2.2", own="192.0.2.2")) for _ in range(8))
    assert door.enter(_Peer("192.0.2.9", own="192.0.2.2")) is False  # the cap still holds
    door = Door(limit=8)
    assert [door.enter(_Peer("192.0.2.9", own="192.0.2.2")) for _ in range(3)] == [True, True, False]  # another host


def test_refusals_held_back_are_said_once_their_seconds_have_passed(monkeypatch, caplog):
    """A count held back (one line every 10 s at most) waited for the next refusal, or for the server's stop: 842
    connections refused in a burst were logged as 1 until minutes later."""
    import streamfuse.view.gate as gate_module

    monkeypatch.setattr(gate_module, "SAY_EVERY_S", 0.2)
    door = Door(limit=1)

    async def burst() -> None:
        assert door.enter(_Peer("127.0.0.1"))
        for _ in range(500):
            door.enter(_Peer("127.0.0.1"))
        await _wait(lambda: len(caplog.records) == 2, "the held-back count said")
        for _ in range(3):  # a later burst: held back and said in its turn too, not only at the server's stop
            door.enter(_Peer("127.0.0.1"))
        await _wait(lambda: sum(int(r.getMessage().split()[1]) for r in caplog.records) == 503, "the later burst said")

    with caplog.at_level("WARNING", "streamfuse.view"):
        asyncio.run(burst())
    said = [r.getMessage().split(" connection(s)")[0] for r in caplog.records]
    assert said[:2] == ["answered 1", "answered 499"], said


def test_the_bridge_caps_connections_at_a_third_of_its_files():
    """A relayed Foxglove client holds three files (its own, the relay's to the SDK, the SDK's): the cap allowed up to
    the open-file limit less 192, and at such a cap the SDK ran out of files and stopped listening for good."""
    import resource

    from streamfuse.view.gate import _OWN_FILES, most_connections

    with pytest.MonkeyPatch.context() as patch:  # a limit that its own files take whole still leaves one connection:
        patch.setattr(resource, "getrlimit", lambda _: (_OWN_FILES, _OWN_FILES))  # a cap of 0 refused every client
        assert most_connections(files_each=3) == 1
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no open-file limit here")
    assert most_connections(files_each=3) == max(1, (soft - _OWN_FILES) // 3)
    most = most_connections(files_each=3)
    with pytest.raises(SystemExit):
        cli(["foxglove", "tcp://127.0.0.1:1", "--max-connections", str(most + 1)])


def test_a_page_is_sent_a_frame_once_and_then_only_newer_ones():
    # the frame a page had drawn was sent again on each of its acks until a newer one came: a still stream (a paused
    # pipeline) sent the same JPEGs at the page's full rate
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its messages are made here
    feed._latest = {"fused": (1, {"seq": 1}, _image())}

    async def page() -> list[list[dict]]:
        seen: dict[str, int] = {}
        first, again = await feed.message(seen), await feed.message(seen)
        feed._latest["fused"] = (2, {"seq": 2}, _image())
        return [unpack(m)[0]["frames"] for m in (first, again, await feed.message(seen))]

    try:
        sent = asyncio.run(page())
    finally:
        feed.stats_in.close()
    assert [[f["header"]["seq"] for f in frames] for frames in sent] == [[1], [], [2]]


def test_a_page_gets_the_stats_history_once_then_only_each_new_snapshot():
    # the plots' whole history (300 snapshots) went out with every stats update, not only to a page just opened:
    # megabytes a second to each page for a few numbers
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its messages are made here
    for t in range(3):
        feed.stats = {"t_ns": t}
        feed.history.append({"t_ns": t, "rate_fps": 30.0, "stages": {}})
        feed.versions["stats"] += 1

    async def page() -> list[dict]:
        seen: dict[str, int] = {}
        first = await feed.message(seen)
        feed.stats, feed.versions["stats"] = {"t_ns": 3}, feed.versions["stats"] + 1
        return [unpack(m)[0] for m in (first, await feed.message(seen), await feed.message(seen))]

    try:
        sent = asyncio.run(page())
    finally:
        feed.stats_in.close()
    assert [len(m["history"]) for m in sent[:1]] == [3] and sent[0]["stats"] == {"t_ns": 2}
    assert sent[1] == {"frames": [], "stats": {"t_ns": 3}} and sent[2] == {"frames": []}


def test_a_host_that_cannot_be_served_on_is_named_with_its_control_characters_as_escapes(monkeypatch, capsys):
    # the viewer wrote --host as it came: a newline in it (a script's variable) split the error over two lines, a
    # terminal's escape sequence drew on the user's terminal (the bridge's error has them as escapes)
    import streamfuse.view.server as server_module

    async def serve(*args: Any) -> None:
        raise NOT_KNOWN  # as the host's lookup fails, with no lookup here

    monkeypatch.setattr(server_module, "serve", serve)
    assert view_main(["tcp://127.0.0.1:1", "--host", "no\x1b[2Jhost\nx", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and " on no\\x1b[2Jhost\\nx:0: " in err, err


def test_every_address_is_served_on_the_one_port_said():
    # with host '' and port 0, IPv4 and IPv6 each listened on a free port of their own and the port said was one of
    # them: a client of the other family found nothing there
    async def pages(feed: Feed) -> None:
        served = await serve(feed, "", 0)
        try:
            assert {sock.getsockname()[1] for sock in served.server.sockets} == {served.port}
            async with aiohttp.ClientSession() as http:
                for host in ["127.0.0.1", *["[::1]"] * has_ipv6_loopback()]:
                    async with http.get(f"http://{host}:{served.port}/") as resp:
                        assert resp.status == 200, host
        finally:
            await served.cleanup()

    _on_a_silent_feed(pages)


def test_listen_takes_another_pair_of_ports_where_the_first_one_s_is_taken_on_another_address():
    class Bound:  # a server of start_serving=False on these ports, one an address
        def __init__(self, *ports: int) -> None:
            self.sockets = [types.SimpleNamespace(getsockname=lambda p=p: ("::", p)) for p in ports]
            self.closed = self.serving = False

        def close(self) -> None:
            self.closed = True

        async def start_serving(self) -> None:
            self.serving = True

    asked, made = [], []

    async def start(port: int, start_serving: bool) -> Bound:
        assert not start_serving
        asked.append(port)
        if len(asked) == 2:
            raise OSError(errno.EADDRINUSE, "taken on the other address")
        made.append(Bound(port, port) if port else Bound(50420 + len(asked), 50430 + len(asked)))
        return made[-1]

    server = asyncio.run(listen(start, 0))
    assert asked == [0, 50421, 0, 50423] and server is made[-1] and server.serving
    assert all(bound.closed and not bound.serving for bound in made[:-1])

    async def busy(port: int, start_serving: bool) -> Bound:
        raise OSError(errno.EADDRINUSE, "taken")

    with pytest.raises(OSError, match="taken"):  # a port asked for is that port or an error, as before
        asyncio.run(listen(busy, 50425))


def test_the_page_is_never_cached_and_a_kept_alive_connection_idle_past_the_deadline_is_closed():
    """A kept-alive connection waits for its next request as long as a new one for its first (aiohttp's 75 s
    otherwise: a client holds its place that long with no request); the page is not cached, so a new viewer's page
    is loaded."""

    async def peer(feed: Feed) -> None:
        served = await serve(feed, "127.0.0.1", 0, Gate(request_s=0.2))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE_S)
            assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nCache-Control: no-store\r\n" in head, head
            length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", head).group(1))
            await asyncio.wait_for(reader.readexactly(length), PATIENCE_S)
            assert await asyncio.wait_for(reader.read(), PATIENCE_S) == b""  # closed by the viewer
            writer.close()
        finally:
            await served.cleanup()

    _on_a_silent_feed(peer)


def test_a_page_of_another_site_cannot_open_the_frames(caplog):
    """WebSockets have no same-origin rule: any page the user's browser opened (https://evil.example) could connect
    to the viewer on loopback and read the camera's frames. Its own page, and clients that are no browser, get in.
    The refusals are counted in the log (they were answered 403 without a word)."""

    async def origins(feed: Feed) -> list[int]:
        served = await serve(feed, "127.0.0.1", 0)
        own = f"http://127.0.0.1:{served.port}"
        statuses = []
        try:
            async with aiohttp.ClientSession() as http:
                for origin in ("https://evil.example", "null", f"https://127.0.0.1:{served.port}.evil.example", "",
                               own, own.upper().replace("HTTP", "http"), own + "/", None):
                    try:
                        async with http.ws_connect(own + "/ws", origin=origin):
                            statuses.append(101)
                    except aiohttp.WSServerHandshakeError as exc:
                        statuses.append(exc.status)
        finally:
            await served.cleanup()
        return statuses

    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # nothing listens there
    try:
        with caplog.at_level(logging.WARNING, "streamfuse.view"):
            assert asyncio.run(origins(feed)) == [403, 403, 403, 403, 101, 101, 101, 101]
    finally:
        feed.close()
    said = [re.fullmatch(r"answered (\d+) WebSocket request\(s\) 403 from another site's page .*", m)
            for m in caplog.messages]
    assert sum(int(m.group(1)) for m in said if m) == 4, caplog.messages


def test_a_websocket_message_over_the_limit_closes_the_page_s_socket_with_a_line(caplog):
    """A page sending a message over 4096 bytes, or fragments that never end below it, was closed without a word."""

    def said() -> list[str]:
        return [m for m in caplog.messages if m.startswith("closed the WebSocket of 127.0.0.1: ")]

    async def too_long(feed: Feed) -> list[aiohttp.WSMsgType]:
        served = await serve(feed, "127.0.0.1", 0)
        closes = []
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(3):
                    async with http.ws_connect(f"http://127.0.0.1:{served.port}/ws") as ws:
                        await ws.send_str("x" * 5000)
                        closes.append((await asyncio.wait_for(ws.receive(), PATIENCE_S)).type)
            await _wait(lambda: len(said()) == 3, "a line for each close")
        finally:
            await served.cleanup()
        return closes

    with caplog.at_level(logging.WARNING, "streamfuse.view"):
        assert _on_a_silent_feed(too_long) == [aiohttp.WSMsgType.CLOSE] * 3
    assert "Message size 5000 exceeds limit 4096" in said()[0], caplog.messages


def test_a_request_reaching_loopback_that_names_another_host_is_refused(caplog):
    """DNS rebinding: a site (evil.example) whose name its owner points at 127.0.0.1 is, to the browser, the site of
    the viewer's page loaded from there (its Origin and Host agree), so the Origin check let it read the frames. A
    request reaching loopback names an address, localhost, this machine's name or one allowed (any case, root dot)."""
    hosts = ("evil.example:{port}", "evil.example", "localhost.evil.example", "127.0.0.1.evil.example",
             "127.0.0.1:{port}", "localhost:{port}", "LOCALHOST.", "app.localhost", "[::1]:{port}",
             "viewer.example:443", socket.gethostname(), None)

    async def statuses(feed: Feed) -> list[int]:
        served = await serve(feed, "127.0.0.1", 0, Gate(names=["Viewer.Example."]))
        got = []
        try:
            for host in hosts:
                reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
                named = f"HTTP/1.1\r\nHost: {host.format(port=served.port)}" if host else "HTTP/1.0"
                writer.write(f"GET / {named}\r\nConnection: close\r\n\r\n".encode())
                got.append(int((await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE_S)).split()[1]))
                writer.close()
        finally:
            await served.cleanup()
        return got

    with caplog.at_level(logging.INFO, "streamfuse.view"):
        assert _on_a_silent_feed(statuses) == [403] * 4 + [200] * 8
    assert any("answered 1 request(s) 403 that reached loopback naming another host" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_only_a_request_reaching_loopback_is_held_to_this_machine_s_names(caplog):
    """A viewer on another machine's address (--host 0.0.0.0) is opened by whatever name leads there (robot.lan);
    loopback, where a rebound name lands, is reached by an IPv4 client of a dual-stack socket (--host '') too; a
    request naming two hosts gets in only if both are this machine's; the refusals held back are said at the stop."""
    door = Door()
    loopback, dual = _Peer("127.0.0.1", own="127.0.0.1"), _Peer("::ffff:127.0.0.1", own="::ffff:127.0.0.1")
    with caplog.at_level("WARNING", "streamfuse.view"):
        assert not door.misnamed(["robot.lan:8080"], _Peer("192.0.2.9", own="192.0.2.2"))
        assert not door.misnamed(["localhost:8080"], dual) and door.misnamed(["evil.example:8080"], dual)
        assert door.misnamed(["localhost:8080", "evil.example:8080"], loopback)
        assert door.misnamed(["evillocalhost:8080"], loopback)  # not a name under localhost
        door.close()  # no event loop here: the two held back are said now
    said = [r.getMessage() for r in caplog.records if r.name == "streamfuse.view"]
    assert [line.split()[1] for line in said] == ["1", "2"] and "naming another host" in said[1], said


def test_an_open_file_limit_that_leaves_no_room_for_a_page_is_refused_naming_it(monkeypatch, capsys, caplog):
    # under ulimit -n 64 (any limit below 194) the viewer started with a cap of one connection without a word, and
    # answered every page's WebSocket 503, its log blaming --max-connections
    import resource

    import streamfuse.view.server as server_module

    async def serve_nothing(*args) -> None:
        raise OSError(errno.EADDRINUSE, "taken")

    monkeypatch.setattr(server_module, "Feed", lambda *args, **kwargs: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(server_module, "serve", serve_nothing)
    monkeypatch.setattr(resource, "getrlimit", lambda _: (64, 64))
    room = ("(the open-file limit, ulimit -n, is 64: room for 1 connection(s) besides the server's own 192 files; 256 "
            "gives 64)")
    for argv, said in (([], f"no room for a page, which holds two connections: --max-connections is 1 {room}"),
                       (["--max-connections", "10"], f"argument --max-connections: must be in 1..1, got 10 {room}")):
        with pytest.raises(SystemExit) as exc:
            view_main(argv)
        assert exc.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"streamfuse view: error: {said}"
    monkeypatch.setattr(resource, "getrlimit", lambda _: (230, 230))  # room for 19 pages: started, and said
    with caplog.at_level(logging.WARNING, "streamfuse.view"):
        assert view_main([]) == 1
    assert [r.getMessage() for r in caplog.records if r.name == "streamfuse.view"] == [
        "at most 38 connections open at once, 19 pages (the open-file limit, ulimit -n, is 230: room for 38 "
        "connection(s) besides the server's own 192 files; 256 gives 64)"]


def test_the_view_cli_lets_in_the_host_it_serves_and_each_allowed_name(monkeypatch):
    import streamfuse.view.server as server_module
    from streamfuse.view.gate import MAX_CONNECTIONS, most_connections

    made = []

    async def serve_nothing(feed: Feed, host: str, port: int, gate: Gate) -> None:
        made.append((host, port, gate.limit, gate.names))
        raise OSError(errno.EADDRINUSE, "taken")

    monkeypatch.setattr(server_module, "Feed", lambda *args, **kwargs: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(server_module, "serve", serve_nothing)
    assert view_main(["--host", "Robot.lan", "--allow-host", "a.example", "--allow-host", "B.example.", "--port", "0",
                      "--max-connections", "5"]) == 1
    assert made[0][:3] == ("Robot.lan", 0, 5) and {"robot.lan", "a.example", "b.example"} <= made[0][3]
    assert view_main([]) == 1  # on loopback, port 8080, at most 64 connections (or what the open-file limit leaves)
    assert made[1][:3] == ("127.0.0.1", 8080, min(MAX_CONNECTIONS, most_connections()))
    for bad in ("", "http://a.example", "a.example:80"):  # an empty name would let in requests naming no host
        with pytest.raises(SystemExit):
            view_main(["--allow-host", bad])


def test_a_page_is_closed_when_it_sends_more_than_4_kb_and_each_message_it_was_sent_is_counted():
    # a page only sends "next": a bigger message is a peer making the viewer buffer what it sends
    async def page(feed: Feed) -> None:
        served = await serve(feed, "127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as http, \
                    http.ws_connect(f"http://127.0.0.1:{served.port}/ws") as ws:
                meta, _ = await _next(ws)
                assert meta["stats"] == {"t_ns": 1} and feed.sent == 1
                await ws.send_str("next" + " " * 4096)
                msg = await asyncio.wait_for(ws.receive(), PATIENCE_S)
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG, msg
        finally:
            await served.cleanup()

    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # nothing listens there: its stats are set here
    feed.stats, feed.versions["stats"] = {"t_ns": 1}, 1
    try:
        asyncio.run(page(feed))
    finally:
        feed.close()


class _Socket:
    """A page's WebSocket as the sender sees it: keeps what it is sent."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_bytes(self, message: bytes) -> None:
        self.sent.append(message)


def test_a_page_with_nothing_new_to_draw_waits_without_holding_the_event_loop():
    """The sender waits on its wake-up event once the page has drawn everything; left set from the last arrival, the
    event made it spin, and the viewer's event loop served nothing more."""
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its stats are set here
    feed.stats, feed.versions["stats"] = {"t_ns": 1}, 1
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)  # the test watches it from here
    thread.start()
    changed, credit, ws = asyncio.Event(), asyncio.Event(), _Socket()
    credit.set()
    sender = asyncio.run_coroutine_threadsafe(_send(ws, feed, changed, credit), loop)
    try:
        wait_until(lambda: len(ws.sent) == 1, "the stats sent")
        loop.call_soon_threadsafe(credit.set)  # drawn: nothing new yet
        feed.versions["stats"] = 2  # the next stats, and their wake-up
        loop.call_soon_threadsafe(changed.set)
        wait_until(lambda: len(ws.sent) == 2, "the next stats sent")
        loop.call_soon_threadsafe(credit.set)  # drawn again: nothing new since
        for _ in range(2):  # the loop still runs other work
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(PATIENCE_S)
    finally:
        sender.cancel()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(PATIENCE_S)
        feed.stats_in.close()
    loop.run_until_complete(asyncio.sleep(0))  # the sender's cancellation
    loop.close()


def test_view_cli_quality_reaches_the_feed(monkeypatch):
    import streamfuse.view.server as server_module

    made = {}

    def feed(*args: Any, **kwargs: Any) -> None:
        made.update(kwargs)
        raise ValueError("no feed here")

    monkeypatch.setattr(server_module, "Feed", feed)
    assert view_main(["tcp://127.0.0.1:1", "--quality", "33"]) == 2
    assert made["quality"] == 33


def test_view_cli_screenshot_opens_its_own_page_on_loopback_and_exits_0(monkeypatch, tmp_path, capsys):
    # --screenshot serves a page of its own for the browser it starts: on loopback and a free port, whatever --host
    # and --port say (those of a viewer already running, say)
    import streamfuse.view.browser as browser_module

    opened = []

    async def capture(url: str, path: Path, watch_s: float, **kwargs: Any) -> tuple[Path, str]:
        opened.append(url)
        return path, "what the page measured"

    monkeypatch.setattr(browser_module, "capture", capture)
    assert view_main(["tcp://127.0.0.1:1", "--host", "0.0.0.0", "--port", "1", "--screenshot",
                      str(tmp_path / "shot.png")]) == 0
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", opened[0]) and not opened[0].endswith(":1/"), opened
    assert capsys.readouterr().out == f"wrote {tmp_path / 'shot.png'}: what the page measured\n"


def test_view_cli_screenshot_that_fails_says_why_in_one_line(monkeypatch, capsys):
    import streamfuse.view.browser as browser_module

    async def capture(url: str, path: Path, watch_s: float, **kwargs: Any) -> tuple[Path, str]:
        raise RuntimeError("Chromium: Page.navigate: net::ERR\nfailed")  # the browser's own words

    monkeypatch.setattr(browser_module, "capture", capture)
    assert view_main(["tcp://127.0.0.1:1", "--screenshot", "shot.png"]) == 1
    assert capsys.readouterr().err == "streamfuse view: error: Chromium: Page.navigate: net::ERR\\nfailed\n"


def test_view_cli_screenshot_names_its_file_escaped(monkeypatch, tmp_path, capsys):
    # a name's control characters went to the terminal raw
    import streamfuse.view.browser as browser_module

    async def capture(url: str, path: Path, watch_s: float, **kwargs: Any) -> tuple[Path, str]:
        return path, "what the page measured"

    monkeypatch.setattr(browser_module, "capture", capture)
    assert view_main(["tcp://127.0.0.1:1", "--screenshot", str(tmp_path / "a\x1b[31mb.png")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path}/a\\x1b[31mb.png: what the page measured\n"


@pytest.mark.parametrize("where, why", [("missing/shot.png", "No such file or directory"),
                                        ("notes.txt/shot.png", "Not a directory"), ("", "is a folder")])
def test_view_cli_screenshot_it_cannot_write_is_refused_before_the_page_is_watched(monkeypatch, tmp_path, capsys,
                                                                                     where, why):
    # it was said only after the browser had watched the page (seconds), or the pipeline's host name had been waited for
    import streamfuse.view.browser as browser_module
    from streamfuse.view import server as server_module

    monkeypatch.setattr(browser_module, "capture", lambda *args, **kwargs: pytest.fail("the page was watched"))
    monkeypatch.setattr(server_module, "Feed", lambda *args, **kwargs: pytest.fail("the feed began"))
    (tmp_path / "notes.txt").write_text("not a folder")
    assert view_main(["tcp://127.0.0.1:1", "--screenshot", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamfuse view: error: ") and why in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_closed_connection_s_request_deadline_is_dropped_with_it():
    """A connection closed before its first request kept its deadline: at it the gate counted it as timed out and took
    it back into its open connections, for good."""

    async def peers(feed: Feed, gate: Gate) -> None:
        served = await serve(feed, "127.0.0.1", 0, gate)
        try:
            _, gone = await asyncio.open_connection("127.0.0.1", served.port)
            await _wait(lambda: gate.count == 1, "the first client connected")
            gone.close()
            await _wait(lambda: gate.count == 0, "the first client's close seen")
            reader, slow = await asyncio.open_connection("127.0.0.1", served.port)  # its deadline comes later
            assert await asyncio.wait_for(reader.read(), PATIENCE_S) == b""  # closed at its deadline
            slow.close()
            await _wait(lambda: gate.count == 0, "the slow client's close seen")
            assert gate.handlers.connections == []  # aiohttp was told of each close too: it forgot them
        finally:
            await served.cleanup()

    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # nothing listens there
    gate = Gate(request_s=0.2)
    try:
        asyncio.run(peers(feed, gate))
    finally:
        feed.close()
    assert gate.timed_out.count == 1 and gate.open == {}


def test_the_gate_itself_closes_a_connection_at_its_deadline_and_passes_on_the_write_pauses():
    """The close at the deadline is the gate's own, whatever aiohttp's version does with a connection that has sent
    part of a head; aiohttp behind the gate still hears when to stop and resume writing to a page that reads slowly
    (else its writes never wait and a stalled page's buffer grows without bound)."""
    from streamfuse.view.gate import _Guarded

    heard: list[str] = []
    inner = types.SimpleNamespace(connection_made=lambda t: heard.append("made"),
                                  pause_writing=lambda: heard.append("pause"),
                                  resume_writing=lambda: heard.append("resume"))
    gate = Gate(request_s=0.05)
    peer = _Peer("127.0.0.1")

    async def deadline() -> None:
        guarded = _Guarded(gate, inner)
        guarded.connection_made(peer)
        guarded.pause_writing()
        guarded.resume_writing()
        await _wait(lambda: peer.closed, "the gate's close at the deadline")

    asyncio.run(deadline())
    assert heard == ["made", "pause", "resume"] and gate.timed_out.count == 1


def test_another_machine_has_a_place_under_any_cap_and_is_forgotten_once_its_connections_close():
    door = Door(limit=3)  # a quarter of it is under one connection
    far = _Peer("192.0.2.7")
    assert door.enter(far) and not far.closed
    door.leave(far)
    assert door.count == 0 and door.peers == {}  # one entry per address ever seen made a flood of them stay


def test_a_503_answer_says_the_length_of_its_body():
    door = Door(limit=1)
    assert door.enter(_Peer("127.0.0.1"))
    refused = _Peer("127.0.0.1")
    assert not door.enter(refused)
    head, _, body = refused.sent.partition(b"\r\n\r\n")
    assert int(re.search(rb"\r\nContent-Length: (\d+)(\r\n|$)", head).group(1)) == len(body) > 0
    assert b"\r\nConnection: close\r\n" in head  # or an HTTP/1.1 client takes the connection for one to reuse


def test_a_page_opened_after_the_last_one_closed_gets_no_frame_from_before():
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its messages are made here
    feed._latest, feed.versions["fused"] = {"fused": (1, {"seq": 1}, _image())}, 1
    try:
        feed.release(feed.acquire())  # a page opened and closed
        meta, jpegs = unpack(asyncio.run(feed.message({})))
    finally:
        feed.close()
        feed.stats_in.close()
    assert meta["frames"] == [] and jpegs == []


def test_the_previews_stop_once_every_page_has_closed():
    # a second page started frame subscriptions of its own, and the first page's were never ended
    with Publisher(CFG) as pub:
        feed = Feed(pub.endpoint, "fused/t", "stats/t")
        try:
            pages = [feed.acquire() for _ in range(2)]
            wait_until(pub.previews_wanted, "the pages' preview subscriptions reached the publisher")
            for changed in pages:
                feed.release(changed)
            wait_until(lambda: not pub.previews_wanted(), "the preview subscriptions ended")
        finally:
            feed.close()
            feed.stats_in.close()


def test_a_page_that_closes_leaves_the_frames_of_the_pages_still_open():
    # the frame subscriptions are every open page's: the first page to close must not freeze the others
    with Publisher(CFG) as pub:
        pipeline = _Pipeline(pub)
        feed = Feed(pub.endpoint, "fused/t", "stats/t")  # never started: no page to wake, the counts tell
        pipeline.start()
        try:
            staying, leaving = feed.acquire(), feed.acquire()
            for page in (leaving, staying):
                arrived = dict(feed.versions)
                wait_until(lambda: all(feed.versions[k] > arrived[k] for k in ("ir", "vis", "fused")),
                           "frames of every kind for the pages open")
                feed.release(page)
        finally:
            pipeline.stop.set()
            pipeline.join()
            feed.close()
            feed.stats_in.close()  # never started: no reader of its own closes it (left open, its socket's monitor
            # could answer for a later socket given the same descriptor number)


def test_a_frame_subscription_that_fails_waits_before_trying_again(monkeypatch):
    import streamfuse.view.feed as feed_module

    tries: list[str] = []

    def failing(endpoint: str, topic: str, **kwargs: Any) -> Subscriber:
        tries.append(topic)
        raise ValueError(f"cannot connect to {endpoint}: host name not known (yet)")

    monkeypatch.setattr(feed_module, "Subscriber", failing)
    monkeypatch.setattr(feed_module, "_RETRY_S", 2 * PATIENCE_S)  # longer than the test: the page's close ends it
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")
    try:
        changed = feed.acquire()
        wait_until(lambda: len(tries) >= 3, "each kind tried")
        feed.release(changed)
        wait_until(lambda: not any(thread.is_alive() for thread in feed._threads), "the readers ended by the close")
    finally:
        feed.close()
        feed.stats_in.close()
    assert sorted(tries) == ["fused/t", "preview/ir/fused/t", "preview/vis/fused/t"]


def test_each_panel_subscribes_to_its_own_camera_s_frames(monkeypatch):
    # the IR and the visible preview look alike to a page (both 80 wide, both sent as JPEGs): swapped topics would
    # show each camera under the other's name, and nothing else would tell
    import streamfuse.view.feed as feed_module

    monkeypatch.setattr(feed_module, "Subscriber", lambda endpoint, topic, **kwargs: topic)
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its subscriptions are made here
    try:
        topics = {kind: feed._subscribe(kind, threading.Event()) for kind in feed_module.KINDS}
    finally:
        feed.stats_in.close()
    assert topics == {"ir": "preview/ir/fused/t", "vis": "preview/vis/fused/t", "fused": "fused/t"}


def test_a_new_page_s_subscription_waits_for_the_closed_pages_reader_to_end(monkeypatch):
    """Pages opened and closed in turn each left a set of sockets open for a while (a reader notices its stop within
    its poll): the next page's reader subscribes only once the one before it has ended."""
    import streamfuse.view.feed as feed_module

    order: list[str] = []
    stop = threading.Event()
    monkeypatch.setattr(feed_module, "Subscriber",
                        lambda *args, **kwargs: order.append("subscribed") or _OneFrame(None, stop))
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its reader runs here
    try:
        feed._read_frames("fused", stop, types.SimpleNamespace(join=lambda: order.append("the reader before ended")))
    finally:
        feed.stats_in.close()
    assert order == ["the reader before ended", "subscribed"]


def test_every_open_page_is_woken_by_what_arrives():
    # each page's sender waits on a wake-up event of its own: one left unset keeps its page on its last frame
    async def pages(feed: Feed) -> None:
        feed.start(asyncio.get_running_loop())
        woken = [feed.acquire() for _ in range(3)]
        try:
            feed._arrived("stats")  # as the stats thread does
            await asyncio.wait_for(asyncio.gather(*(changed.wait() for changed in woken)), PATIENCE_S)
        finally:
            for changed in woken:
                feed.release(changed)

    _on_a_silent_feed(pages)


def test_frames_a_page_cannot_be_sent_are_logged_once_then_summed_up_at_close(caplog):
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its messages are made here

    async def page() -> None:
        for version in (1, 2):
            feed._latest = {"fused": (version, {"seq": version}, np.zeros((1, 65501), np.uint8))}
            await feed.message({})

    with caplog.at_level("WARNING", "streamfuse.view.feed"):
        try:
            asyncio.run(page())
        finally:
            feed.close()
            feed.stats_in.close()
    said = [r.getMessage() for r in caplog.records if r.name == "streamfuse.view.feed"]
    assert len(said) == 2 and said[0].startswith("skipped a (1, 65501) fused frame: JPEG cannot hold it"), said
    assert said[1] == "skipped 2 frames in all that the page could not be sent (the first one logged)"


def test_a_page_that_closes_while_a_frame_is_encoded_leaves_the_encoding_to_the_others(monkeypatch):
    # the page's cancelled wait cancelled the one shared encoding: every other page waiting for it ended its sender
    encoding = threading.Event()
    monkeypatch.setattr(cv2, "imencode", lambda *args, real=cv2.imencode: encoding.wait(PATIENCE_S) and real(*args))
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its messages are made here
    feed._latest = {"fused": (1, {"seq": 1}, _image())}

    async def pages() -> bytes:
        closing, staying = asyncio.ensure_future(feed.message({})), asyncio.ensure_future(feed.message({}))
        await asyncio.sleep(0)  # both wait for the one encoding
        closing.cancel()
        encoding.set()
        return await staying

    try:
        meta, jpegs = unpack(asyncio.run(pages()))
    finally:
        feed.stats_in.close()
    assert [f["kind"] for f in meta["frames"]] == ["fused"] and len(jpegs) == 1


def test_the_stats_link_is_silent_after_two_of_its_intervals_from_its_last_message():
    with _stats_consumer("view") as (sock, feed, passed_on):
        start = feed.stats_in._last_message
        wait_until(lambda: sock.send_multipart([b"stats/t", _stats(interval_s=4.0)]) or passed_on(), "stats arrive")
        assert feed.stats_in._silent_s == 8.0 and feed.stats_in._last_message > start


class _Calls(Chromium):
    """A Chromium whose DevTools calls are kept, and answered from ``answers`` (by method; others with {})."""

    def __init__(self, answers: dict[str, dict] | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[str, dict]] = []
        self.answers = answers or {}

    async def call(self, method: str, **params: object) -> dict:
        self.calls.append((method, params))
        return self.answers.get(method, {})


def test_the_page_is_frozen_and_resumed_and_an_expression_s_value_read():
    page = _Calls({"Runtime.evaluate": {"result": {"type": "number", "value": 5}}})

    async def drive() -> Any:
        await page.freeze(True)
        await page.freeze(False)
        return await page.evaluate("1 + 4")

    assert asyncio.run(drive()) == 5
    assert page.calls == [("Page.setWebLifecycleState", {"state": "frozen"}),
                          ("Page.setWebLifecycleState", {"state": "active"}),
                          ("Runtime.evaluate", {"expression": "1 + 4", "returnByValue": True})]


def test_waiting_for_an_expression_the_page_never_reaches_fails_saying_which():
    page = _Calls({"Runtime.evaluate": {"result": {"type": "undefined"}}})
    with pytest.raises(RuntimeError, match=r"^the page did not reach `window\.x` within 0\.05 s$"):
        asyncio.run(asyncio.wait_for(page.wait_for("window.x", 0.05), PATIENCE_S))
    with pytest.raises(RuntimeError, match=r"^no frames arrived$"):  # or what the caller says went wrong
        asyncio.run(asyncio.wait_for(page.wait_for("window.x", 0.05, "no frames arrived"), PATIENCE_S))


class _DevTools:
    """Chromium's end of the DevTools WebSocket: answers each command with ``reply(command)``; a None answer closes
    the connection."""

    def __init__(self, reply: Callable[[dict], dict | None]) -> None:
        self.reply, self.queue = reply, asyncio.Queue()

    async def send_str(self, text: str) -> None:
        await self.queue.put(self.reply(json.loads(text)))

    def __aiter__(self) -> _DevTools:
        return self

    async def __anext__(self) -> Any:
        answer = await self.queue.get()
        if answer is None:
            raise StopAsyncIteration
        return aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, json.dumps(answer), None)


def test_a_devtools_error_is_raised_and_a_closed_connection_ends_the_calls_waiting():
    def reply(command: dict) -> dict | None:
        return {"id": command["id"], "error": {"message": "boom"}} if command["method"] == "Page.navigate" else None

    async def drive() -> None:
        browser = Chromium()
        browser._ws = _DevTools(reply)
        reader = asyncio.create_task(browser._read())
        with pytest.raises(RuntimeError, match=r"^Chromium: Page\.navigate: boom$"):
            await asyncio.wait_for(browser.call("Page.navigate", url="about:blank"), PATIENCE_S)
        with pytest.raises(RuntimeError, match="^Chromium closed the DevTools connection$"):
            await asyncio.wait_for(browser.call("Page.enable"), PATIENCE_S)  # the connection closes instead
        await reader

    asyncio.run(drive())


def test_the_devtools_port_is_read_once_written_whole_and_never_from_a_chromium_that_exited(tmp_path):
    browser = Chromium(start_timeout_s=0.2)
    browser._profile = types.SimpleNamespace(name=str(tmp_path))
    browser._proc = types.SimpleNamespace(returncode=None)
    (tmp_path / "DevToolsActivePort").write_text("92")  # half written
    with pytest.raises(RuntimeError, match=r"^Chromium did not open its DevTools port within 0\.2 s$"):
        asyncio.run(browser._devtools_port())
    (tmp_path / "DevToolsActivePort").write_text("9222\n/devtools/browser/x")
    assert asyncio.run(browser._devtools_port()) == 9222
    browser._proc.returncode = 1
    with pytest.raises(RuntimeError, match=r"^Chromium exited at start \(status 1\)$"):
        asyncio.run(browser._devtools_port())


@pytest.mark.parametrize("root", [False, True])
def test_chromium_runs_without_its_sandbox_only_as_root_and_a_failed_start_leaves_nothing(root, tmp_path,
                                                                                          monkeypatch):
    import os
    import tempfile

    args, exe, temp = tmp_path / "args", tmp_path / "chromium", tmp_path / "tmp"
    exe.write_text(f'#!/bin/sh\necho "$@" > "{args}"\nexit 3\n')
    exe.chmod(0o755)
    temp.mkdir()
    monkeypatch.setenv("STREAMFUSE_CHROMIUM", str(exe))
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 1000)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the profile is made
    browser = Chromium()
    with pytest.raises(RuntimeError, match=r"^Chromium exited at start \(status 3\)$"):
        asyncio.run(browser.__aenter__())
    assert ("--no-sandbox" in args.read_text().split()) == root
    assert list(temp.iterdir()) == [] and browser._http.closed


class _Viewer:
    """Stands for Chromium in ``capture``: a page whose state is each of ``states`` in turn."""

    def __init__(self, states: list[dict]) -> None:
        self.states = states

    async def __aenter__(self) -> _Viewer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def goto(self, url: str) -> None:
        pass

    async def wait_for(self, expression: str, timeout_s: float, failure: str = "") -> bool:
        return True

    async def evaluate(self, expression: str) -> dict:
        return self.states.pop(0)

    async def screenshot(self, path: Path) -> Path:
        return path


def test_a_screenshot_reports_the_frames_shown_while_it_watched(monkeypatch, tmp_path):
    import streamfuse.view.browser as browser_module

    start = {"frames": {"ir": 3, "vis": 3, "fused": 10}, "firstFrameMs": 120.4, "statsUpdates": 1}
    end = {"frames": {"ir": 40, "vis": 41, "fused": 60}, "firstFrameMs": 120.4, "statsUpdates": 4}
    monkeypatch.setattr(browser_module, "Chromium", lambda: _Viewer([start, end]))
    written, report = asyncio.run(capture("http://127.0.0.1:1/", tmp_path / "shot.png", 0.01))
    assert written == tmp_path / "shot.png"
    assert report == ("first fused frame 120 ms after the page opened, 5000.0 frames/s shown over 0.01 s, frames "
                      "IR/vis/fused 40/41/60, 4 stats updates")


class _Drawing(_Viewer):
    """A page that has drawn 50 more fused frames at each look, and 1000 more while the stats it waits for come."""

    def __init__(self) -> None:
        super().__init__([])
        self.state = {"frames": {"ir": 1, "vis": 1, "fused": 1}, "firstFrameMs": 80.0, "statsUpdates": 0}

    async def wait_for(self, expression: str, timeout_s: float, failure: str = "") -> bool:
        if "statsUpdates" in expression:
            self.state["frames"]["fused"] += 1000
            self.state["statsUpdates"] = 2
        return True

    async def evaluate(self, expression: str) -> dict:
        seen = json.loads(json.dumps(self.state))
        self.state["frames"]["fused"] += 50
        return seen


def test_a_screenshot_s_rate_counts_no_frame_drawn_while_it_waited_for_the_stats(monkeypatch, tmp_path):
    """The stats were waited for after the watch, and the frames drawn meanwhile (up to two stats intervals, 5 s
    each by default) were counted as shown within the watch: a rate up to three times the page's."""
    import streamfuse.view.browser as browser_module

    monkeypatch.setattr(browser_module, "Chromium", _Drawing)
    _, report = asyncio.run(capture("http://127.0.0.1:1/", tmp_path / "shot.png", 0.01))
    assert "first fused frame 80 ms after the page opened, 5000.0 frames/s shown over 0.01 s" in report, report


class _OneFrame:
    """A frame subscription as a feed's reader sees it: ``recv`` gives ``frame`` once, then sets ``stop`` (the pages
    closed); ``closing``: ``stop`` is set as the frame arrives."""

    def __init__(self, frame: tuple[dict, np.ndarray], stop: threading.Event, closing: bool = False) -> None:
        self.frame, self.stop, self.closing = frame, stop, closing

    def __enter__(self) -> _OneFrame:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def recv(self) -> tuple[dict, np.ndarray] | None:
        if self.frame is None or self.closing:
            self.stop.set()
        frame, self.frame = self.frame, None
        return frame


@pytest.mark.parametrize("closing", [False, True])
def test_a_frame_read_is_sent_once_unless_it_came_as_the_last_page_closed(closing, monkeypatch):
    """A frame is stored with its count, so that a page is sent it and then has nothing newer; one that arrives as the
    last page closes is dropped (kept, the next page's first message showed it, however old)."""
    import streamfuse.view.feed as feed_module

    stop = threading.Event()
    monkeypatch.setattr(feed_module, "Subscriber", lambda *args, **kwargs: _OneFrame(({"seq": 1}, _image()), stop,
                                                                                     closing))
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its reader runs here
    seen: dict[str, int] = {}
    try:
        feed._read_frames("fused", stop, None)
        meta, _ = unpack(asyncio.run(feed.message(seen)))
    finally:
        feed.stats_in.close()
    assert [f["header"]["seq"] for f in meta["frames"]] == ([] if closing else [1]) and not feed.newer(seen)


class _ReleasedFirst:
    """The feed's lock, which the last page's release takes first once ``armed``: the page closes while the reader
    that has just read a frame waits for the lock to store it."""

    def __init__(self, release: Callable[[], None]) -> None:
        self.lock, self.release, self.armed = threading.Lock(), release, True

    def __enter__(self) -> None:
        if self.armed:
            self.armed = False
            self.release()  # takes this lock too, unarmed now
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_a_frame_read_as_the_last_page_closes_is_dropped_whenever_the_close_comes(monkeypatch):
    """The reader looked at the pages' stop flag and then took the lock to store the frame: a release in between
    cleared the frames first, and the frame stored after it was the next page's first message, however old."""
    import streamfuse.view.feed as feed_module

    stop = threading.Event()
    monkeypatch.setattr(feed_module, "Subscriber", lambda *args, **kwargs: _OneFrame(({"seq": 1}, _image()), stop))
    feed = Feed("tcp://127.0.0.1:1", "fused/t", "stats/t")  # never started: its reader runs here
    changed = asyncio.Event()
    feed._waiters.add(changed)  # one page open, its frame subscriptions stopped by ``stop``
    feed._frames_stop = stop
    feed._lock = _ReleasedFirst(lambda: feed.release(changed))
    try:
        feed._read_frames("fused", stop, None)
        meta, _ = unpack(asyncio.run(feed.message({})))
    finally:
        feed.stats_in.close()
    assert stop.is_set() and meta["frames"] == []


def test_a_stop_before_the_page_takes_the_stops_ends_it_as_one_after_in_silence(monkeypatch):
    # a Ctrl-C as the page's loop started, before its handlers, ended the command with 130 where a moment earlier or
    # later it ended with 0, and then Python's "coroutine '_main' was never awaited" warning
    import gc
    import warnings

    import streamfuse.view.server as server

    def stopped(_main: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(server.asyncio, "run", stopped)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            code = view_main(["tcp://127.0.0.1:1", "--port", "0"])
        except KeyboardInterrupt:
            code = "a KeyboardInterrupt"
        gc.collect()
    assert code == 0
    assert not [str(w.message) for w in seen if "never awaited" in str(w.message)]
