"""The live viewer under many pages: the viewer process's CPU and the messages each page gets, with N WebSocket
pages that read and acknowledge every message as the page does (asking for per-message compression, as browsers do).

It starts the demo (``fuse.name=max``, so that the pipeline's own CPU stays low) publishing on a free port, then the
viewer of this checkout and, with ``--against DIR``, the viewer of another checkout (``DIR`` first on its
``PYTHONPATH``) watching the same pipeline; the rounds alternate between them, so that a shared machine's load falls
on both alike. Per round: pages connected, messages/s per page (median and lowest), messages/s in all, the viewer's
CPU in cores (from ``/proc``, Linux) and the load average. Needs aiohttp (``pip install 'streamfuse[view]'``).
Run: ``python -m streamfuse bench view --pages 50``.

With ``--foxglove``, the Foxglove bridge (``foxglove --raw``) instead: its clients subscribe to ``/fused/image``, and
the rounds alternate between the bridge's relay (``--port``, where clients connect) and the Foxglove SDK's own
loopback port behind it, so the relay's cost is the difference (``--pages 1 --foxglove``; needs foxglove-sdk too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from streamfuse.bench import child
from streamfuse.cli.args import HelpFormatter, Parser, int_at_least, path_arg, positive
from streamfuse.view.gate import MAX_CONNECTIONS

_PROG = "streamfuse bench view"  # as its usage errors and every command's own lines start
__all__ = ["main"]

WARM_UP_S = 3.0  # pages connect and the previews start before a round is timed
async def _pages(port: int, n: int, seconds: float, cpu_s: Callable[[], float],
                 foxglove: bool = False) -> tuple[int, list[float], float]:
    """``n`` pages reading and acknowledging (``foxglove``: Foxglove clients reading ``/fused/image``); pages
    connected, each one's messages/s and the cores of ``cpu_s``'s CPU seconds, over the ``seconds`` that follow the
    warm-up."""
    import aiohttp

    counts = [0] * n
    connected = 0

    async def page(http: aiohttp.ClientSession, i: int) -> None:
        nonlocal connected
        async with http.ws_connect(f"http://127.0.0.1:{port}/ws", compress=15, max_msg_size=0) as ws:
            connected += 1
            async for _ in ws:
                counts[i] += 1
                await ws.send_str("next")

    async def client(http: aiohttp.ClientSession, i: int) -> None:
        nonlocal connected
        async with http.ws_connect(f"ws://127.0.0.1:{port}", protocols=("foxglove.sdk.v1",),
                                   max_msg_size=0) as ws:
            connected += 1
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY and message.data[0] == 1:  # 1: message data
                    counts[i] += 1
                elif message.type == aiohttp.WSMsgType.TEXT and (sent := json.loads(message.data))["op"] == "advertise":
                    await ws.send_str(json.dumps({"op": "subscribe", "subscriptions": [
                        {"id": i, "channelId": c["id"]} for c in sent["channels"] if c["topic"] == "/fused/image"]}))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = [asyncio.create_task((client if foxglove else page)(http, i)) for i in range(n)]
        try:
            await asyncio.sleep(WARM_UP_S)
            start, cpu0, t0 = list(counts), cpu_s(), time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - t0
            cores = (cpu_s() - cpu0) / elapsed
            rates = [(b - a) / elapsed for a, b in zip(start, counts)]
        finally:  # a stop too: the pages end before their session closes, not after it with an error no one reads
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return connected, rates, cores


def _round(name: str, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> None:
    load = os.getloadavg()[0]
    connected, rates, cores = asyncio.run(_pages(port, args.pages, args.seconds, lambda: child.cpu_s(proc.pid),
                                                 args.foxglove))
    print(f"{name:<10}{connected:>6}{statistics.median(rates):>10.1f}{min(rates):>8.1f}{sum(rates):>9.0f}"
          f"{cores:>8.2f}{load:>7.2f}", flush=True)


def _viewers(endpoint: str, tmp: Path, args: argparse.Namespace, procs: list[subprocess.Popen]) -> list[tuple]:
    """``(name, process, port)`` of each viewer the rounds alternate between, started and added to ``procs``."""
    if args.foxglove:  # one bridge: its relay's port, and the SDK server's behind it that its log names first
        log = Path(tmp, "foxglove.log")
        cap = [] if args.pages < MAX_CONNECTIONS else ["--max-connections", str(args.pages + 8)]
        argv = [sys.executable, "-m", "streamfuse", "foxglove", endpoint, "--raw", "--port", "0", *cap]
        proc, port = child.start(_PROG, argv, log, r"connect to ws://127\.0\.0\.1:(\d+) ")
        procs.append(proc)
        sdk = re.search(r"Started server on 127\.0\.0\.1:(\d+)", log.read_text())
        if sdk is None:
            raise SystemExit(f"{_PROG}: error: the Foxglove SDK's log named no port of its server")
        return [("relay", proc, int(port)), ("direct", proc, int(sdk[1]))]
    viewers = []
    for name, src in (("this", None), ("against", args.against)):
        if name == "against" and src is None:
            continue
        cap = [] if src or args.pages < MAX_CONNECTIONS else ["--max-connections", str(args.pages + 8)]
        proc, port = child.start(_PROG, [sys.executable, "-m", "streamfuse", "view", endpoint, "--port", "0", *cap],
                                 Path(tmp, f"{name}.log"), r"viewer on http://127\.0\.0\.1:(\d+)/",
                                 src and src.resolve())
        procs.append(proc)
        viewers.append((name, proc, int(port)))
    return viewers


def main(argv: list[str] | None = None) -> int:
    """Run the viewer benchmark; returns the exit status."""
    parser = Parser(prog="python -m streamfuse bench view", description=__doc__,
                    formatter_class=HelpFormatter)
    parser.add_argument("--pages", type=int_at_least(1, 1000), default=50, help="WebSocket pages per viewer")
    parser.add_argument("--seconds", type=positive(600), default=10.0, help="timed seconds per round")
    parser.add_argument("--rounds", type=int_at_least(1, 20), default=2, help="rounds per viewer, alternating")
    parser.add_argument("--against", type=path_arg, help="also run the viewer of the checkout in DIR")
    parser.add_argument("--foxglove", action="store_true",
                        help="the Foxglove bridge instead, through its relay and straight to the SDK's server")
    args = parser.parse_args(argv)
    if args.against is not None and args.foxglove:
        parser.error("--against compares browser viewers: not with --foxglove")
    if args.against is not None and not (args.against / "streamfuse" / "view").is_dir():
        parser.error(f"--against {args.against}: no streamfuse/view there")
    with tempfile.TemporaryDirectory(prefix="streamfuse-bench-view-") as tmp:
        demo, endpoint = child.start(_PROG, [sys.executable, "-m", "streamfuse", "run", "--config", "demo", "--set",
                                             "fuse.name=max", "--set", "publish.endpoint=tcp://127.0.0.1:*"],
                                     Path(tmp, "demo.log"), r"publishing \S+ on (tcp://127\.0\.0\.1:\d+) ")
        procs = [demo]
        try:
            viewers = _viewers(endpoint, tmp, args, procs)
            print(f"{args.pages} pages per viewer, {args.seconds:g} s a round; {os.cpu_count()} cores")
            print(f"{'viewer':<10}{'pages':>6}{'msg/s/pg':>10}{'lowest':>8}{'msg/s':>9}{'cores':>8}{'load':>7}")
            for _ in range(args.rounds):
                for name, proc, port in viewers:
                    _round(name, proc, port, args)
        finally:
            for proc in procs:
                child.stop(proc)
    return 0
