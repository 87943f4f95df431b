"""The subscriber's own cost of a same-host frame: ``Subscriber.recv`` of a bgr8 frame from the publisher's
shared-memory pool, copied out of it (``copy=True``, the default) and as a read-only view of the pool
(``copy=False``). Publisher and subscribers share this process and each frame is published before the timed
``recv``, so the time is the read alone (the ring entry, the header's checks, the slot's lock and, for a copy, the
copy), with no wake-up of another process. Batches of 100 reads alternate between the two, so both see the same load
of a shared machine; prints the median and p90 of ``--reads`` reads of each.

Example: ``python -m streamfuse bench client --reads 2000``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from streamfuse.bench import parse_size
from streamfuse.cli.args import DefaultsFormatter, Parser, int_at_least
from streamfuse.client import DEFAULT_MAX_FRAME_BYTES, Subscriber
from streamfuse.frames import Frame, FramePair, FusedFrame
from streamfuse.publish import PublishConfig, Publisher

BATCH = 100
MAX_READS = 10**6  # each read's time is kept: 10**20 ran on for good, its lists growing
READY_S = 30.0  # a subscriber's first frame from the pool's ring: its subscriptions reach the publisher in ms


def _publish(pub: Publisher, image: np.ndarray, seq: int) -> None:
    t = time.time_ns()
    pair = FramePair(Frame("ir", seq, t, image[..., 0]), Frame("vis", seq, t, image))
    pub.send_fused(FusedFrame(pair, image, "bench", "0", t))


def _on_ring(pub: Publisher, sub: Subscriber, image: np.ndarray) -> None:
    """Publish until ``sub`` reads from the pool's ring, as every same-host subscriber ends up doing."""
    deadline = time.monotonic() + READY_S
    while not sub.on_ring:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no frame from the shared-memory ring in {READY_S:g} s (not Linux x86-64?)")
        _publish(pub, image, 0)
        sub.recv(0.05)


def _timed(pub: Publisher, sub: Subscriber, image: np.ndarray, reads: int) -> list[float]:
    """Seconds of each of ``reads`` ``recv`` calls, each of a frame published just before it."""
    while sub.recv(0) is not None:  # the frames published while the other subscriber was timed: not timed
        pass
    times = []
    for seq in range(reads):
        _publish(pub, image, seq)
        t0 = time.perf_counter()
        got = sub.recv(1.0)
        times.append(time.perf_counter() - t0)
        if got is None or got[0]["format"] != "shm":
            raise RuntimeError("a frame did not come from the shared-memory pool")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m streamfuse bench client", description=__doc__, formatter_class=DefaultsFormatter)
    parser.add_argument("--size", type=parse_size, default="640x480", help="frame size WxH (bgr8)")
    parser.add_argument("--reads", type=int_at_least(BATCH, MAX_READS), default=2000, help="timed reads of each kind")
    args = parser.parse_args(argv)
    width, height = args.size
    if width * height * 3 > DEFAULT_MAX_FRAME_BYTES:  # the subscribers refused it: a traceback 30 s on
        parser.error(f"--size {width}x{height}: a {width * height * 3 / 1e6:.1f} MB frame, over the "
                     f"{DEFAULT_MAX_FRAME_BYTES / 1e6:.1f} MB a Subscriber takes by default")
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    times: dict[bool, list[float]] = {True: [], False: []}
    with Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*", shm_slots=8)) as pub:
        subs = {copy: Subscriber(pub.endpoint, timeout_s=1.0, shm=True, copy=copy) for copy in times}
        try:
            for sub in subs.values():
                _on_ring(pub, sub, image)
            for _ in range(-(-args.reads // BATCH)):
                for copy, sub in subs.items():
                    times[copy] += _timed(pub, sub, image, BATCH)
        finally:
            for sub in subs.values():
                sub.close()
    print(f"Subscriber.recv of a {width}x{height} bgr8 frame from shared memory, {len(times[True])} reads each, "
          f"load average {os.getloadavg()[0]:.2f}:")
    for copy, label in ((True, "copied out of the pool (copy=True)"), (False, "a view of the pool (copy=False)")):
        ms = np.asarray(times[copy]) * 1e3
        print(f"  {label:36s} median {np.median(ms):.4f} ms, p90 {np.percentile(ms, 90):.4f} ms")
    return 0
