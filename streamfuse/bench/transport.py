"""Transport benchmark on loopback, side by side in one run: imagezmq (default REQ/REP) and streamfuse raw PUB/SUB,
shared memory, jpeg and h264, for bgr8 frames like the demo's (the synthetic rig's scene, IR max visible) at each
``--sizes``.

Receivers run in a child process, senders in this one, so each side has its own interpreter. Phases per size:

1. capacity: frames/s delivered (decoded, for jpeg and h264) with nothing lost, median and best of ``--rounds``
   interleaved runs (the load of a shared machine changes from second to second), and the reader's CPU time per
   frame there (its process's, first timed frame to last; the median of the runs), where it is the bound.
   imagezmq: send_image/recv_image/send_reply in lock-step. streamfuse: a ``nodrop`` publisher with ``wait_ms``
   (back-pressure instead of drops); over shared memory, whose writer never waits, the sender stays within
   ``WINDOW`` frames of the one the reader has in hand (a shared counter; while that far ahead it sleeps, as
   imagezmq's sender blocks for its reply), so none is overwritten unread. Both ends run their default settings.
   ``shm, loaned`` makes each frame in :meth:`Publisher.loan`'s slot (no copy), ``shm, 1 copy`` copies it in; both
   take the descriptors from the pool's ring (a futex wakes the reader), ``shm, zmq headers`` is the loaned frame
   with its descriptor over ZeroMQ instead (what consumers that do not read the ring get).
2. latency: frames paced at ``--rate`` for ``--latency-seconds``; time the decoded image is in the receiver's
   hands minus the publish time stamped in the header (the same ``time.time_ns`` clock on both sides), median and
   p99; and the publisher's CPU time per frame (all its threads, ZeroMQ's included). Paced frames find cold caches
   (on a shared machine the other processes run in between), so they cost several times a back-to-back frame.
3. codecs: bytes per frame on the wire, encode and decode ms, PSNR against the raw frame.
4. stalled subscriber: duration of each ``send_fused`` call at ``--rate`` with no subscriber and with one that is
   connected but never reads, over ZeroMQ and over shared memory (where the stalled reader holds one pool slot).

Needs imagezmq (``pip install imagezmq``, a benchmark-only dependency). Example:
``python -m streamfuse bench transport --sizes 640x480``.
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from streamfuse.bench import parse_sizes, refuse_beyond_memory
from streamfuse.bench.receiver_process import PATIENCE_S, done_or_gone
from streamfuse.bench.receiver_process import Receiver as _Receiver
from streamfuse.capture.synthetic import SyntheticScene
from streamfuse.cli.args import DefaultsFormatter, Parser, int_at_least, positive
from streamfuse.client import Subscriber
from streamfuse.codecs import H264Decoder, H264Encoder, JpegDecoder, JpegEncoder
from streamfuse.frames import Frame, FramePair, FusedFrame
from streamfuse.publish import PublishConfig, Publisher

try:
    import imagezmq
except ImportError:  # a benchmark-only dependency; main() says how to get it
    imagezmq = None

_PROG = "streamfuse bench transport"  # as its usage errors and every command's own lines start
STOP = "stop"
SLOTS = 8  # the pool of the shared-memory runs (PublishConfig's default)
# Capacity over shared memory: frames the sender may be ahead of the frame the reader has in hand. The reader's slot,
# the WINDOW - 1 frames after it and the one being written take WINDOW + 1 slots: none is overwritten unread, with
# one slot to spare.
WINDOW = SLOTS - 2
BACKOFF_S = 50e-6  # a sender WINDOW ahead sleeps (imagezmq's blocks for its reply), leaving the reader the CPU
_REPLY_POLL_MS = 1000  # how often imagezmq's sender, waiting for its hub's reply, looks whether the hub is still there
# Every socket binds a port the OS picks as it binds: one picked first and bound later (by the receiver's process,
# seconds on) could be taken meanwhile, by another benchmark's picks too
ANY_PORT = "tcp://127.0.0.1:*"
FRAMES = 30  # the demo frames each size cycles through
# Memory a size holds at its peak, per pixel: 187 bytes building its FRAMES frames (the scene's float layers
# besides them; tracemalloc at 640x480), the pool's SLOTS bgr8 frames and a few more in the receiver's hands
BYTES_PER_PIXEL = 187 + 3 * (SLOTS + 4)


def _fused(image: np.ndarray, seq: int) -> FusedFrame:
    t = time.time_ns()
    pair = FramePair(Frame("ir", seq, t, image[..., 0]), Frame("vis", seq, t, image))
    return FusedFrame(pair, image, "bench", "0", t)


def _summary(latencies_ns: list[int], arrivals_s: list[float]) -> dict[str, float]:
    """Received frames, frames/s between the first and last arrival, latency median and p99 (ms)."""
    if len(arrivals_s) < 2:  # nothing got through: say so in the table instead of failing
        return {"frames": len(arrivals_s), "fps": 0.0, "median_ms": float("nan"), "p99_ms": float("nan")}
    lat_ms = np.asarray(latencies_ns) / 1e6
    return {"frames": len(arrivals_s), "fps": (len(arrivals_s) - 1) / (arrivals_s[-1] - arrivals_s[0]),
            "median_ms": float(np.median(lat_ms)), "p99_ms": float(np.percentile(lat_ms, 99))}


# --- receivers (child processes) ---

def _per_frame_us(cpu: list[float], frames: int) -> float:
    """A receiver's CPU µs a frame between its first timed frame and its last (``cpu``: their process times)."""
    return (cpu[-1] - cpu[0]) * 1e6 / (frames - 1) if frames > 1 else float("nan")


def _sub_receiver(endpoint: str, ready: Any, done: Any, results: Any, hwm: int = 2, shm: bool = False,
                  taken: Any = None, ring: bool = True) -> None:
    """Receive until ``done`` is set and the stream has gone quiet; report the summary. ``taken``: a shared counter
    set to the ``seq`` of each frame in hand (the publisher's window over shared memory); ``ring``: shared-memory
    descriptors from the pool's ring (else over ZeroMQ)."""
    latencies, arrivals, cpu = [], [], []
    with Subscriber(endpoint, timeout_s=0.2, rcvhwm=hwm, shm=shm, ring=ring, copy=False) as sub:  # zero-copy: timed
        while (frame := sub.recv()) is not None or not done_or_gone(done):
            if frame is None:
                continue
            if taken is not None:
                taken.value = frame[0]["seq"]
            if not ready.is_set():  # the first frame (from shared memory, if asked) proves the subscriptions arrived
                if not shm or frame[0]["format"] == "shm":
                    ready.set()
                continue
            latencies.append(time.time_ns() - frame[0]["t_publish_ns"])
            arrivals.append(time.perf_counter())
            cpu[1:] = [time.process_time()]  # at the first timed frame and the latest: the quiet end not counted
        results.put({**_summary(latencies, arrivals), "missed": sub.missed, "via_shm": sub.via_shm,
                     "via_ring": sub.via_ring, "reader_us": _per_frame_us(cpu, len(arrivals))})


def _hub_receiver(endpoint: str, ready: Any, done: Any, results: Any) -> None:
    """imagezmq ImageHub: receive, reply, until the sender says stop; its bound endpoint is the first result."""
    latencies, arrivals, cpu = [], [], []
    hub = imagezmq.ImageHub(open_port=endpoint)
    results.put(hub.zmq_socket.getsockopt_string(zmq.LAST_ENDPOINT))
    ready.set()
    _hub_waits(hub, done)
    hub.recv_image()  # the sender's warm-up frame, slowed by its connection's set-up: untimed, as a subscriber's first
    hub.send_reply(b"OK")
    while True:
        _hub_waits(hub, done)
        msg, _ = hub.recv_image()
        hub.send_reply(b"OK")
        if msg == STOP:
            break
        latencies.append(time.time_ns() - int(msg))
        arrivals.append(time.perf_counter())
        cpu[1:] = [time.process_time()]
    hub.close()
    results.put({**_summary(latencies, arrivals), "reader_us": _per_frame_us(cpu, len(arrivals))})


def _hub_waits(hub: Any, done: Any) -> None:
    """Until the hub has a request (a benchmark gone meanwhile is one line)."""
    while not hub.zmq_socket.poll(1000):
        done_or_gone(done)


def _stalled_receiver(endpoint: str, ready: Any, done: Any, results: Any, shm: bool = False) -> None:
    """Connect, take one frame (holding its shared-memory slot), then stop reading until ``done``; then drain and
    report what got through."""
    with Subscriber(endpoint, timeout_s=0.2, shm=shm, copy=False) as sub:  # holds its slot
        while (frame := sub.recv()) is None or (shm and frame[0]["format"] != "shm"):
            done_or_gone(done)
        ready.set()
        while not done_or_gone(done, 1.0):
            pass
        while sub.recv() is not None:
            pass
        results.put({"received": sub.received - 1, "missed": sub.missed})


# --- senders ---

def _paced(send: Callable[[int], int], seconds: float, rate: float) -> int:
    """Call ``send(seq)`` for ``seconds``, at ``rate`` frames/s (0 = back to back); ``send`` returns how many frames
    went out (0 = dropped), so ``seq`` and the schedule count delivered frames only. Returns the total sent."""
    start = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - start < seconds:
        if rate and now < start + sent / rate:
            # one sleep per frame: the loop itself costs next to no CPU; none past the end (a frame due after it)
            time.sleep(min(start + sent / rate, start + seconds) - now)
            continue
        sent += send(sent)
    return sent


def _publish(pub: Publisher, frame: np.ndarray, seq: int, loan: bool) -> bool:
    """``send_fused`` of ``frame``; with ``loan`` the frame is made in :meth:`Publisher.loan`'s array instead, as a
    producer writing its output there would: only the first row is written, the producer's own write of the body
    is not the transport's cost (it writes the body into its own array on the one-copy path too)."""
    if loan:
        image = pub.loan(frame.shape)
        image[0] = frame[0]
        frame = image
    return pub.send_fused(_fused(frame, seq))


def _ours(frames: list[np.ndarray], seconds: float, rate: float, mode: str) -> dict[str, float]:
    """Publish ``frames`` round and round for ``seconds`` at ``rate`` frames/s to a subscriber process (rate 0: as
    fast as it takes them) in ``mode`` (raw, shm, loan, loan-zmq, jpeg, h264); adds the publisher's CPU ms per
    frame."""
    encoding = mode if mode in ("jpeg", "h264") else "raw"
    shm, loan = mode in ("shm", "loan", "loan-zmq"), mode in ("loan", "loan-zmq")
    cfg = dict(endpoint=ANY_PORT, encoding=encoding, shm_slots=SLOTS if shm else 0)
    # Capacity: back-pressure instead of drops. The pool never makes its writer wait (wait_ms turns it off), and
    # ZeroMQ's queue does not bound it either (the kernel's socket buffers hold thousands of slot messages), so over
    # shared memory the sender keeps within WINDOW frames of the one the reader has in hand: nothing is overwritten
    # unread (imagezmq's lock-step is a window of one). A frame refused by the full queue is offered again.
    wait_ms = 0 if rate or shm else 1000
    taken = mp.get_context("spawn").Value("q", 0, lock=False) if shm and not rate else None
    with Publisher(PublishConfig(**cfg, nodrop=not rate, wait_ms=wait_ms)) as pub:
        rx = _Receiver(_sub_receiver, pub.endpoint, 2, shm, taken, mode != "loan-zmq")
        while not rx.started():
            _publish(pub, frames[0], 0, loan)

        def send(seq: int) -> int:
            if (taken is None or pub.published - taken.value <= WINDOW) and \
                    _publish(pub, frames[seq % len(frames)], seq, loan):
                return 1
            time.sleep(BACKOFF_S)  # refused, or the reader is WINDOW behind: let it run, then offer the frame again
            return 0

        cpu0 = time.process_time()
        sent = _paced(send, seconds, rate)
        cpu_ms = (time.process_time() - cpu0) * 1e3 / max(1, sent)
        return {**rx.result(), "sent": sent, "cpu_ms": cpu_ms}


def _imagezmq(frames: list[np.ndarray], seconds: float, rate: float) -> dict[str, float]:
    """imagezmq REQ/REP for ``seconds`` at ``rate`` frames/s (0 = as fast as the round trip allows)."""
    rx = _Receiver(_hub_receiver, ANY_PORT)
    while not rx.started():
        pass
    sender = imagezmq.ImageSender(connect_to=rx.results.get(timeout=PATIENCE_S))
    # its REQ waits for a reply without end; a request left to a dead hub held its context's end (and the exit) too
    for option, value in ((zmq.RCVTIMEO, _REPLY_POLL_MS), (zmq.SNDTIMEO, _REPLY_POLL_MS), (zmq.LINGER, 0)):
        sender.zmq_socket.setsockopt(option, value)

    def send(seq: int) -> int:
        _round_trip(sender, rx, str(time.time_ns()), frames[seq % len(frames)])  # returns once the hub replied
        return 1

    try:
        send(0)  # connect and warm up
        cpu0 = time.process_time()
        sent = _paced(send, seconds, rate)
        cpu_ms = (time.process_time() - cpu0) * 1e3 / max(1, sent)
        _round_trip(sender, rx, STOP, frames[0])
        return {**rx.result(), "sent": sent, "cpu_ms": cpu_ms}
    finally:  # its context, left to the garbage collector, waits for ever for the socket it outlived
        sender.close()


def _round_trip(sender: Any, rx: _Receiver, msg: str, image: np.ndarray) -> None:
    """imagezmq's ``send_image`` in its two steps, each wait cut in slices of :data:`_REPLY_POLL_MS`: a hub that died
    mid-round (killed, out of memory) or gives no reply in :data:`PATIENCE_S` is one line (SystemExit), not a hang."""
    deadline = time.monotonic() + PATIENCE_S
    request = functools.partial(sender.zmq_socket.send_array, np.ascontiguousarray(image), msg, copy=False)
    for step in (request, sender.zmq_socket.recv):
        while True:
            try:
                step()
                break
            except zmq.Again:
                if not rx.proc.is_alive():
                    raise SystemExit(f"{_PROG}: error: its imagezmq hub ended before it replied (exit status "
                                     f"{rx.proc.exitcode})") from None
                if time.monotonic() > deadline:
                    raise SystemExit(f"{_PROG}: error: its imagezmq hub gave no reply in {PATIENCE_S:g} s") from None


def _stall(image: np.ndarray, seconds: float, rate: float, peer: str, shm: bool, loan: bool) -> dict[str, float]:
    """Publish call times (ms: loan and send_fused) at ``rate`` with ``peer`` ``none``, one ``reading`` subscriber or
    one ``stalled`` (over shared memory with ``shm``, from a loaned slot with ``loan``)."""
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=SLOTS if shm else 0)) as pub:
        rx = None
        if peer != "none":
            rx = (_Receiver(_stalled_receiver, pub.endpoint, shm) if peer == "stalled"
                  else _Receiver(_sub_receiver, pub.endpoint, 2, shm))
        while rx is not None and not rx.started():
            _publish(pub, image, 0, loan)
        dropped0, calls = pub.dropped, []

        def send(seq: int) -> int:  # every call counts, dropped or not: the schedule is the calls'
            t0 = time.perf_counter()
            _publish(pub, image, seq, loan)
            calls.append(time.perf_counter() - t0)
            return 1

        _paced(send, seconds, rate)
        got = rx.result() if rx is not None else {}
    ms = np.asarray(calls) * 1e3
    return {**got, "calls": len(calls), "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "dropped": pub.dropped - dropped0}


def _demo_frames(width: int, height: int, n: int) -> list[np.ndarray]:
    """``n`` frames like the demo's output: the synthetic rig's night scene, pixel-wise max of IR and visible."""
    scene = SyntheticScene(width, height, 7)
    return [np.maximum(scene.render_vis(i * 33_333_333), scene.render_ir(i * 33_333_333)[..., None]) for i in range(n)]


def _codec(frames: list[np.ndarray], mode: str, quality: int) -> dict[str, float]:
    """Bytes per frame, encode and decode ms (medians) and the PSNR (dB) of all frames' squared error against the raw
    frames, in this process: inf where every frame came back exact (a mean of per-frame PSNRs would be inf for one)."""
    h, w = frames[0].shape[:2]
    if mode == "jpeg":
        enc, dec = JpegEncoder(quality), JpegDecoder()
        encode, decode = (lambda f: (enc.encode(f), True)), (lambda p, k: dec.decode(p, h, w, 3))
    else:
        enc, dec = H264Encoder(30, 23), H264Decoder()
        encode, decode = enc.encode, (lambda p, k: dec.decode(p, k, h, w, 3))
    sizes, enc_ms, dec_ms, sq_err = [], [], [], []
    for frame in frames:
        t0 = time.perf_counter()
        packet, key = encode(frame)
        t1 = time.perf_counter()
        out = decode(packet, key)
        t2 = time.perf_counter()
        sizes.append(len(packet))
        enc_ms.append((t1 - t0) * 1e3)
        dec_ms.append((t2 - t1) * 1e3)
        sq_err.append(np.mean((frame.astype(np.float64) - out) ** 2))
    mse = float(np.mean(sq_err))
    return {"bytes": float(np.mean(sizes)), "enc_ms": float(np.median(enc_ms)), "dec_ms": float(np.median(dec_ms)),
            "psnr": 10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf}


MODES = {"imagezmq": "imagezmq REQ/REP", "raw": "streamfuse raw PUB/SUB", "shm": "streamfuse shm, 1 copy",
         "loan": "streamfuse shm, loaned", "loan-zmq": "streamfuse shm, zmq headers", "jpeg": "streamfuse jpeg",
         "h264": "streamfuse h264"}


def _size_report(width: int, height: int, args: argparse.Namespace) -> None:
    frames = _demo_frames(width, height, FRAMES)
    nbytes = frames[0].nbytes
    print(f"\n== {width}x{height} bgr8 ({nbytes / 1e6:.2f} MB/frame), load average {os.getloadavg()[0]:.2f} ==")
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            run = _imagezmq if mode == "imagezmq" else (lambda f, s, r, m=mode: _ours(f, s, r, m))
            runs[mode].append(run(frames, args.seconds, 0))
    lat = {mode: (_imagezmq(frames, args.latency_seconds, args.rate) if mode == "imagezmq"
                  else _ours(frames, args.latency_seconds, args.rate, mode)) for mode in MODES}
    codecs = {mode: _codec(frames, mode, args.quality) for mode in ("jpeg", "h264")}
    wire = {"imagezmq": nbytes, "raw": nbytes, "shm": 0, "loan": 0, "loan-zmq": 0,
            **{m: c["bytes"] for m, c in codecs.items()}}
    fps = {mode: float(np.median([r["fps"] for r in rs])) for mode, rs in runs.items()}
    print(f"capacity and the reader's CPU: median and best of {args.rounds} runs of {args.seconds:g} s; latency and "
          f"publisher CPU: "
          f"{args.latency_seconds:g} s at {args.rate:g} frames/s, decoded image in hand minus publish time; bytes: "
          f"image payload per frame")
    print(f"{'':26s} {'frames/s':>8s} {'best':>6s} {'vs izmq':>7s} {'reader CPU/frame':>16s} {'pub CPU/frame':>13s} "
          f"{'lat median':>10s} {'p99':>8s} {'bytes/frame':>11s} {'missed':>6s}  runs")
    for mode, label in MODES.items():
        best = max(r["fps"] for r in runs[mode])
        cpu, reader_us = lat[mode]["cpu_ms"], float(np.median([r["reader_us"] for r in runs[mode]]))
        each = " ".join(f"{r['fps']:.0f}" for r in runs[mode])
        print(f"{label:26s} {fps[mode]:8.0f} {best:6.0f} {fps[mode] / fps['imagezmq']:6.2f}x {reader_us:13.1f} us "
              f"{cpu:10.3f} ms "
              f"{lat[mode]['median_ms']:7.3f} ms {lat[mode]['p99_ms']:5.3f} ms {wire[mode]:11.0f} "
              f"{sum(int(r.get('missed', 0)) for r in runs[mode]):6d}  {each}")
    for mode, c in codecs.items():
        print(f"  {mode}: {c['bytes']:.0f} bytes/frame ({nbytes / c['bytes']:.1f}x fewer than raw), encode "
              f"{c['enc_ms']:.2f} ms, decode {c['dec_ms']:.2f} ms (medians, one core), "
              + (f"PSNR {c['psnr']:.1f} dB" if math.isfinite(c["psnr"]) else "lossless")
              + (f" (quality {args.quality})" if mode == "jpeg" else " (crf 23, keyframe every 30)"))
    _stall_report(frames[0], args)


def _stall_report(image: np.ndarray, args: argparse.Namespace) -> None:
    """Publish call times with no subscriber, one that reads and one that stalls; the stalled/reading ratio."""
    print(f"publish call time (loan + send_fused) at {args.rate:g} frames/s ({args.paced_seconds:g} s each):")
    for label, shm, loan in (("ZeroMQ raw", False, False), ("shm, 1 copy", True, False), ("shm, loaned", True, True)):
        runs = {peer: _stall(image, args.paced_seconds, args.rate, peer, shm, loan)
                for peer in ("none", "reading", "stalled")}
        for peer, r in runs.items():
            extra = ""
            if peer == "stalled":
                extra = (f"  {r['median_ms'] / runs['reading']['median_ms']:.2f}x reading; the stalled one got "
                         f"{r['received']} of {r['calls']} when it read again")
            print(f"  {label + ', ' + peer + ' subscriber':34s} median {r['median_ms']:.3f} ms  p99 "
                  f"{r['p99_ms']:.3f} ms  max {r['max_ms']:.3f} ms{extra}")


def main(argv: list[str] | None = None) -> None:
    """Run every phase at each size and print the figures side by side."""
    parser = Parser(prog="python -m streamfuse bench transport", description=__doc__,
                    formatter_class=DefaultsFormatter)
    parser.add_argument("--sizes", type=parse_sizes, default="640x480,1280x1024", help="comma-separated WIDTHxHEIGHT")
    parser.add_argument("--seconds", type=positive(), default=1.0, help="length of each capacity run")
    parser.add_argument("--rounds", type=int_at_least(1), default=3, help="capacity runs per transport")
    parser.add_argument("--latency-seconds", type=positive(), default=5.0,
                        help="length of each latency run (at 100 frames/s, 5 s make p99 the 5th-worst of 500 frames)")
    parser.add_argument("--paced-seconds", type=positive(), default=2.0, help="length of each stall run")
    parser.add_argument("--rate", type=positive(), default=100.0, help="frames/s of the latency and stall runs")
    parser.add_argument("--quality", type=int_at_least(1, 100), default=90, help="JPEG quality, 1..100")
    args = parser.parse_args(argv)
    if imagezmq is None:
        raise SystemExit(f"{_PROG}: error: needs imagezmq: pip install imagezmq (or pip install -e .[bench])")
    sizes = [(w, h) for h, w in args.sizes]
    refuse_beyond_memory(_PROG, sizes, BYTES_PER_PIXEL)
    print(f"loopback, {os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for width, height in sizes:
        _size_report(width, height, args)
