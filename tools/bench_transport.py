"""Transport benchmark on loopback: streamfuse PUB/SUB vs imagezmq (default REQ/REP) for bgr8 frames.

Receivers run in a child process, senders in this one, so each side has its own interpreter. Phases:

1. capacity: frames/s delivered with nothing lost, median and best of ``--rounds`` interleaved runs (the load
   of a shared machine changes from second to second). imagezmq: send_image/recv_image/send_reply in lock-step.
   streamfuse: a ``nodrop`` publisher with ``wait_ms`` (back-pressure instead of drops, as offline replay into a
   recorder runs), at the default high-water marks (2) and at ``--hwm``.
2. latency: frames paced at ``--rate``; receive time minus the send time stamped just before sending (the same
   ``time.time_ns`` clock on both sides), median and p99.
3. stalled subscriber: duration of each ``send_fused`` call at ``--rate`` with no subscriber, with one that is
   connected but never reads (default mode: its drops show as gaps in seq once it reads again), and the same in
   ``nodrop`` mode, where the publisher counts the drops.

Needs imagezmq (``pip install imagezmq``, a benchmark-only dependency). Run from the repository root:
``PYTHONPATH=. python tools/bench_transport.py``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from streamfuse.client import Subscriber
from streamfuse.frames import Frame, FramePair, FusedFrame
from streamfuse.publish import PublishConfig, Publisher

try:
    import imagezmq
except ImportError:  # a benchmark-only dependency; main() says how to get it
    imagezmq = None

STOP = "stop"


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _fused(image: np.ndarray, seq: int) -> FusedFrame:
    t = time.time_ns()
    pair = FramePair(Frame("ir", seq, t, image[..., 0]), Frame("vis", seq, t, image))
    return FusedFrame(pair, image, "bench", "0", t)


def _summary(latencies_ns: list[int], arrivals_s: list[float]) -> dict[str, float]:
    """Received frames, frames/s between the first and last arrival, latency median and p99 (ms)."""
    lat_ms = np.asarray(latencies_ns) / 1e6
    span = arrivals_s[-1] - arrivals_s[0] if len(arrivals_s) > 1 else float("nan")
    return {"frames": len(arrivals_s), "fps": (len(arrivals_s) - 1) / span,
            "median_ms": float(np.median(lat_ms)), "p99_ms": float(np.percentile(lat_ms, 99))}


# --- receivers (child processes) ---

def _sub_receiver(endpoint: str, ready: Any, done: Any, results: Any, hwm: int = 2) -> None:
    """Receive until ``done`` is set and the stream has gone quiet; report the summary."""
    latencies, arrivals = [], []
    with Subscriber(endpoint, timeout_s=0.2, rcvhwm=hwm) as sub:
        while (frame := sub.recv()) is not None or not done.is_set():
            if frame is None:
                continue
            if not ready.is_set():  # the first frame proves the subscription reached the publisher
                ready.set()
                continue
            latencies.append(time.time_ns() - frame[0]["t_publish_ns"])
            arrivals.append(time.perf_counter())
        results.put({**_summary(latencies, arrivals), "missed": sub.missed})


def _hub_receiver(endpoint: str, ready: Any, done: Any, results: Any) -> None:
    """imagezmq ImageHub: receive, reply, until the sender says stop."""
    latencies, arrivals = [], []
    hub = imagezmq.ImageHub(open_port=endpoint)
    ready.set()
    while True:
        msg, _ = hub.recv_image()
        hub.send_reply(b"OK")
        if msg == STOP:
            break
        latencies.append(time.time_ns() - int(msg))
        arrivals.append(time.perf_counter())
    hub.close()
    results.put(_summary(latencies, arrivals))


def _stalled_receiver(endpoint: str, ready: Any, done: Any, results: Any) -> None:
    """Connect, take one frame, then stop reading until ``done``; then drain and report what got through."""
    with Subscriber(endpoint, timeout_s=0.2) as sub:
        while sub.recv() is None:
            pass
        ready.set()
        done.wait()
        while sub.recv() is not None:
            pass
        results.put({"received": sub.received - 1, "missed": sub.missed})


class _Receiver:
    """A receiver function in a spawned process, with ready/done events and a result queue."""

    def __init__(self, target: Any, endpoint: str, *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.done, self.results = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=target, args=(endpoint, self.ready, self.done, self.results, *args),
                                daemon=True)
        self.proc.start()

    def result(self) -> dict[str, float]:
        self.done.set()
        out = self.results.get(timeout=30)
        self.proc.join(timeout=10)
        return out


# --- senders ---

def _paced(send: Callable[[int], int], seconds: float, rate: float) -> int:
    """Call ``send(seq)`` for ``seconds``, at ``rate`` frames/s (0 = back to back); ``send`` returns how many frames
    went out (0 = dropped), so ``seq`` and the schedule count delivered frames only. Returns the total sent."""
    start = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - start < seconds:
        if rate and now < start + sent / rate:
            time.sleep(min(0.001, start + sent / rate - now))
            continue
        sent += send(sent)
    return sent


def _ours(image: np.ndarray, seconds: float, rate: float, hwm: int = 2) -> dict[str, float]:
    """Publish for ``seconds`` at ``rate`` frames/s to a subscriber process; rate 0: as fast as it takes them."""
    endpoint = _free_endpoint()
    lossless = PublishConfig(endpoint=endpoint, sndhwm=hwm, nodrop=True, wait_ms=1000)
    with Publisher(lossless if not rate else PublishConfig(endpoint=endpoint, sndhwm=hwm)) as pub:
        rx = _Receiver(_sub_receiver, endpoint, hwm)
        while not rx.ready.wait(0.01):
            pub.send_fused(_fused(image, 0))
        sent = _paced(lambda seq: pub.send_fused(_fused(image, seq)), seconds, rate)
        return {**rx.result(), "sent": sent}


def _imagezmq(image: np.ndarray, seconds: float, rate: float) -> dict[str, float]:
    """imagezmq REQ/REP for ``seconds`` at ``rate`` frames/s (0 = as fast as the round trip allows)."""
    endpoint = _free_endpoint()
    rx = _Receiver(_hub_receiver, endpoint)
    rx.ready.wait(30)
    sender = imagezmq.ImageSender(connect_to=endpoint)
    sender.send_image(str(time.time_ns()), image)  # connect and warm up

    def send(_: int) -> int:
        sender.send_image(str(time.time_ns()), image)  # returns once the hub has replied: never dropped
        return 1

    sent = _paced(send, seconds, rate)
    sender.send_image(STOP, image)
    out = rx.result()
    out["frames"] -= 1  # the warm-up frame
    sender.close()
    return {**out, "sent": sent}


def _stall(image: np.ndarray, seconds: float, rate: float, stalled: bool, nodrop: bool) -> dict[str, float]:
    """send_fused call times (ms) at ``rate`` with no subscriber or a stalled one."""
    endpoint = _free_endpoint()
    with Publisher(PublishConfig(endpoint=endpoint, nodrop=nodrop)) as pub:
        rx = _Receiver(_stalled_receiver, endpoint) if stalled else None
        while rx is not None and not rx.ready.wait(0.01):
            pub.send_fused(_fused(image, 0))
        dropped0, calls = pub.dropped, []
        for i in range(round(seconds * rate)):
            t0 = time.perf_counter()
            pub.send_fused(_fused(image, i))
            calls.append(time.perf_counter() - t0)
            time.sleep(max(0.0, 1.0 / rate - calls[-1]))
        got = rx.result() if rx is not None else {}
    ms = np.asarray(calls) * 1e3
    return {"calls": len(calls), "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "dropped": pub.dropped - dropped0, **got}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each capacity run")
    parser.add_argument("--rounds", type=int, default=5, help="capacity runs per transport")
    parser.add_argument("--paced-seconds", type=float, default=2.0, help="length of each latency and stall run")
    parser.add_argument("--hwm", type=int, default=10, help="high-water mark of the second streamfuse row")
    parser.add_argument("--rate", type=float, default=100.0, help="frames/s of the latency and stall runs")
    args = parser.parse_args()
    if imagezmq is None:
        raise SystemExit("tools/bench_transport.py needs imagezmq: pip install imagezmq (or pip install -e .[bench])")
    image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    print(f"{args.width}x{args.height} bgr8 ({image.nbytes / 1e6:.2f} MB/frame) on loopback, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

    runs: dict[str, list[dict[str, float]]] = {"imagezmq": [], "ours": [], "ours_hwm": []}
    for _ in range(args.rounds):
        runs["imagezmq"].append(_imagezmq(image, args.seconds, 0))
        runs["ours"].append(_ours(image, args.seconds, 0))
        runs["ours_hwm"].append(_ours(image, args.seconds, 0, hwm=args.hwm))
    fps = {name: float(np.median([r["fps"] for r in rs])) for name, rs in runs.items()}
    izmq_lat = _imagezmq(image, args.paced_seconds, args.rate)
    ours_lat = _ours(image, args.paced_seconds, args.rate)

    print(f"\ncapacity: median and best of {args.rounds} runs of {args.seconds:g} s; latency: {args.paced_seconds:g} s "
          f"at {args.rate:g} frames/s, receive minus send time")
    print(f"{'':36s} {'frames/s':>8s} {'best':>5s} {'ratio':>6s} {'latency median':>15s} {'p99':>9s}   runs")
    rows = [("imagezmq REQ/REP", "imagezmq", izmq_lat), ("streamfuse PUB/SUB, hwm 2 (default)", "ours", ours_lat),
            (f"streamfuse PUB/SUB, hwm {args.hwm}", "ours_hwm", None)]
    for label, name, lat in rows:
        each = " ".join(f"{r['fps']:.0f}" for r in runs[name])
        best = max(r["fps"] for r in runs[name])
        tail = f"{lat['median_ms']:12.2f} ms {lat['p99_ms']:6.2f} ms" if lat else f"{'':25s}"
        print(f"{label:36s} {fps[name]:8.0f} {best:5.0f} {fps[name] / fps['imagezmq']:5.2f}x {tail}   {each}")

    print(f"\nsend_fused call time at {args.rate:g} frames/s ({args.paced_seconds:g} s each):")
    for name, stalled, nodrop in [("no subscriber", False, False), ("stalled subscriber", True, False),
                                  ("stalled subscriber, nodrop", True, True)]:
        r = _stall(image, args.paced_seconds, args.rate, stalled, nodrop)
        extra = (f"; stalled one got {r['received']} of {r['calls']} (missed {r['missed']} seen as seq gaps)"
                 if stalled else "")
        print(f"  {name:28s} median {r['median_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  max {r['max_ms']:.3f} ms  "
              f"dropped (publisher count) {r['dropped']}{extra}")


if __name__ == "__main__":
    main()
