"""Stalled-peers benchmark: how old a reading consumer's frames are while many subscribers connect and never read.

The publisher (this process) sends the synthetic rig's frames at ``--rate`` over raw ZeroMQ; a consumer in a
child process reads every frame and takes each one's age, its receipt minus its capture time (one ``time.time_ns``
clock on both sides). Once it reads, a second child connects ``--stalled`` SUB sockets (a queue of 2 each, as
``Subscriber``'s) that never read, and the consumer's ages from then on for ``--seconds`` are reported: median, p99,
max, the worst of each second, and the frames it missed, for each ``publish.unsent_kb`` of ``--unsent-kb`` (0: the
kernel's own send buffers, megabytes a subscriber, which libzmq's one I/O thread fills at the others' expense).
Then, for each ``--unsent-kb``, the stale frames: a subscriber (``Subscriber``, a queue of 2) stops reading for
``PAUSE_S`` while frames go on at ``--rate``, and the frames it then still gets that were published before it read
again are counted (the queues and socket buffers on its way held them). ``--peer-rcvbuf-kb`` gives the stalled
peers a receive buffer of their own size (``SO_RCVBUF``) instead of the one the kernel's autotuning grows.
Example: ``python -m streamfuse bench peers --size 320x240 --stalled 0,50,200 --unsent-kb 0,64``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from streamfuse.bench import parse_size
from streamfuse.bench.receiver_process import Receiver, done_or_gone
from streamfuse.bench.transport import ANY_PORT, _demo_frames, _fused, _paced
from streamfuse.cli.args import DefaultsFormatter, Parser, config_value, int_at_least, positive
from streamfuse.client import Subscriber
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.wire import FUSED_PREFIX

PAUSE_S = 1.0  # a stale-frame subscriber's pause: every queue on its way fills within it at any --rate
STALE_WAIT_S = 60.0  # its first frame published after the pause reaches it within this (a busy machine)
_PROG = "streamfuse bench peers"  # as the lines of its receivers start
# The stalled peers' sockets share one ZeroMQ context, whose default limit is 1023 sockets: more failed in their child
# with "Too many open files"
MAX_STALLED = 1000
MAX_PORT = 65535
MAX_RCVBUF_KB = 1 << 20  # a GiB: the kernel caps it at net.core.rmem_max anyway


def _reader(endpoint: str, ready: Any, done: Any, results: Any) -> None:
    """Read every frame until ``done`` and the stream is quiet; report (arrival epoch s, age ms) pairs and misses."""
    arrivals, ages = [], []
    with Subscriber(endpoint, timeout_s=0.2, shm=False, copy=False) as sub:
        while (frame := sub.recv()) is not None or not done_or_gone(done):
            if frame is None:
                continue
            now = time.time_ns()
            ready.set()
            arrivals.append(now / 1e9)
            ages.append((now - max(frame[0]["t_capture_ir_ns"], frame[0]["t_capture_vis_ns"])) / 1e6)
        results.put({"arrivals": arrivals, "ages": ages, "missed": sub.missed})


def stalled_socket(ctx: zmq.Context, endpoint: str, rcvbuf_kb: int) -> zmq.Socket:
    """A SUB socket connected to ``endpoint`` with a queue of 2, its ``SO_RCVBUF`` ``rcvbuf_kb`` (0: the kernel's)."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 2)
    if rcvbuf_kb:
        sock.setsockopt(zmq.RCVBUF, rcvbuf_kb * 1024)
    sock.setsockopt(zmq.SUBSCRIBE, FUSED_PREFIX.encode())
    sock.connect(endpoint)
    return sock


def _stalled(endpoint: str, ready: Any, done: Any, results: Any, count: int, rcvbuf_kb: int = 0) -> None:
    """Connect ``count`` SUB sockets that never read, until ``done``."""
    with zmq.Context() as ctx:
        socks = [stalled_socket(ctx, endpoint, rcvbuf_kb) for _ in range(count)]
        ready.set()
        while not done_or_gone(done, 1.0):
            pass
        for sock in socks:
            sock.close(linger=0)
    results.put({})


def _run(image: np.ndarray, stalled: int, unsent_kb: int, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """The reading consumer's ages (ms) and misses over ``args.seconds`` from the moment ``stalled`` peers start, the
    publisher on loopback ``port`` (0: any free one)."""
    endpoint = f"tcp://127.0.0.1:{port}" if port else ANY_PORT
    with Publisher(PublishConfig(endpoint=endpoint, shm_slots=0, unsent_kb=unsent_kb)) as pub:
        reader = Receiver(_reader, pub.endpoint, prog=_PROG)
        while not reader.started():
            pub.send_fused(_fused(image, 0))
        since = time.time()
        peers = Receiver(_stalled, pub.endpoint, stalled, args.peer_rcvbuf_kb, prog=_PROG) if stalled else None

        def send(seq: int) -> int:  # every frame counts, dropped for some peer or not
            pub.send_fused(_fused(image, seq))
            return 1

        sent = _paced(send, args.seconds, args.rate)
        got = reader.result()
        if peers is not None:
            peers.result()
    arrivals, ages = np.asarray(got["arrivals"]) - since, np.asarray(got["ages"])
    arrivals, ages = arrivals[arrivals >= 0], ages[arrivals >= 0]
    worst = [ages[(arrivals >= s) & (arrivals < s + 1)].max(initial=0) for s in range(int(args.seconds))]
    return {"sent": sent, "got": len(ages), "missed": got["missed"], "ages": ages, "worst": worst}


def _stale(image: np.ndarray, unsent_kb: int, rate: float) -> int:
    """Frames published before a subscriber read again after ``PAUSE_S`` without reading, that it still gets."""
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=0, unsent_kb=unsent_kb)) as pub, \
            Subscriber(pub.endpoint, timeout_s=0.2, shm=False, copy=False) as sub:
        while sub.recv() is None:  # until its subscription reached the publisher
            pub.send_fused(_fused(image, 0))
        while sub.recv(0) is not None:
            pass

        def send(seq: int) -> int:
            pub.send_fused(_fused(image, seq))
            return 1

        _paced(send, PAUSE_S, rate)
        resumed, stale, deadline = time.time_ns(), 0, time.monotonic() + STALE_WAIT_S
        while time.monotonic() < deadline:
            pub.send_fused(_fused(image, 0))  # one new frame per read, as the stream goes on
            if (frame := sub.recv(1 / rate)) is None:
                continue
            if frame[0]["t_capture_vis_ns"] >= resumed:
                return stale
            stale += 1
    raise RuntimeError(f"no frame published after the pause reached the subscriber in {STALE_WAIT_S:g} s")


def main(argv: list[str] | None = None) -> None:
    """Print the reading consumer's frame ages for each ``--unsent-kb`` and number of stalled peers."""
    parser = Parser(prog="python -m streamfuse bench peers", description=__doc__, formatter_class=DefaultsFormatter)
    parser.add_argument("--size", type=parse_size, default="320x240", help="frame size, WIDTHxHEIGHT (bgr8)")
    parser.add_argument("--rate", type=positive(), default=60.0, help="frames/s published")
    parser.add_argument("--seconds", type=positive(), default=8.0, help="length of each run")
    parser.add_argument("--stalled", type=_listed(int_at_least(0, MAX_STALLED)), default="0,50,200",
                        help="comma-separated numbers of stalled peers")
    parser.add_argument("--unsent-kb", type=_listed(config_value(PublishConfig, "unsent_kb", zero_is_off=False)),
                        default="0,64", help="comma-separated publish.unsent_kb values")
    parser.add_argument("--port", type=int_at_least(0, MAX_PORT), default=0,
                        help="loopback port of the first run, the next port the next run's (a closed publisher's port "
                             "is free only once its peers' connections are gone); 0: each run a free one")
    parser.add_argument("--peer-rcvbuf-kb", type=int_at_least(0, MAX_RCVBUF_KB), default=0,
                        help="the stalled peers' SO_RCVBUF in KiB; 0: the kernel's autotuned buffer")
    args = parser.parse_args(argv)
    runs = [(unsent_kb, stalled) for unsent_kb in args.unsent_kb for stalled in args.stalled]
    if args.port + len(runs) - 1 > MAX_PORT and args.port:
        parser.error(f"--port {args.port}: its {len(runs)} runs take the ports up to {args.port + len(runs) - 1}, "
                     f"past {MAX_PORT}")
    width, height = args.size
    image = _demo_frames(width, height, 1)[0]
    rcvbuf = f"{args.peer_rcvbuf_kb} KiB" if args.peer_rcvbuf_kb else "the kernel's"
    print(f"loopback, {width}x{height} bgr8 at {args.rate:g} frames/s, {args.seconds:g} s a run, {os.cpu_count()} "
          f"CPUs, the stalled peers' SO_RCVBUF {rcvbuf}; the reading consumer's frame age (capture to receipt) from "
          f"the moment the stalled peers connect")
    print(f"{'unsent_kb':>9s} {'stalled':>7s} {'got':>9s} {'missed':>6s} {'median':>9s} {'p99':>9s} {'max':>9s}  "
          f"worst of each second (ms), load average")
    for i, (unsent_kb, stalled) in enumerate(runs):
        r = _run(image, stalled, unsent_kb, args.port + i if args.port else 0, args)
        ages = r["ages"] if len(r["ages"]) else np.asarray([np.nan])
        print(f"{unsent_kb:9d} {stalled:7d} {r['got']:4d}/{r['sent']:<4d} {r['missed']:6d} "
              f"{np.median(ages):6.1f} ms {np.percentile(ages, 99):6.1f} ms {ages.max():6.1f} ms  "
              f"{' '.join(f'{w:.0f}' for w in r['worst'])}, {os.getloadavg()[0]:.1f}", flush=True)
    for unsent_kb in args.unsent_kb:
        print(f"stale frames, unsent_kb {unsent_kb}: a subscriber that stopped reading for {PAUSE_S:g} s then got "
              f"{_stale(image, unsent_kb, args.rate)} frames published before it read again "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)


def _listed(parse: Callable[[str], int]) -> Callable[[str], list[int]]:
    """An argparse ``type``: ``'0,50,200'`` -> ``[0, 50, 200]``, each read by ``parse``."""
    return lambda text: [parse(part) for part in text.split(",")]
