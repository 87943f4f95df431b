"""The figures ``bench transport`` prints, from runs of the test's own: frames/s between the first and the last
arrival, latency median and p99 in ms, the ratios to imagezmq and to raw bytes."""

from __future__ import annotations

import argparse
import queue
import threading
import time

import numpy as np
import pytest
from helpers_clock import SleptClock

from streamfuse.bench import transport as bench_transport


def test_a_runs_summary_gives_frames_per_second_between_arrivals_and_latencies_in_ms():
    summary = bench_transport._summary([ms * 1_000_000 for ms in range(1, 101)], [10.0 + i / 50 for i in range(101)])
    assert summary["frames"] == 101 and summary["fps"] == pytest.approx(50.0)  # 100 intervals in 2 s
    assert summary["median_ms"] == pytest.approx(50.5) and summary["p99_ms"] == pytest.approx(99.01)


def test_a_few_slow_frames_move_the_p99_not_the_median_latency():
    summary = bench_transport._summary([1_000_000] * 99 + [1_000_000_000], [i / 10 for i in range(100)])
    assert summary["median_ms"] == pytest.approx(1.0) and summary["p99_ms"] > 10.0


@pytest.mark.parametrize("arrived", [0, 1])
def test_a_run_that_got_one_frame_or_none_through_is_a_row_of_its_own_not_a_crash(arrived):
    # a rate needs two arrivals: one frame says 0 frames/s and no latency in the table, not a ZeroDivisionError
    summary = bench_transport._summary([5_000_000] * arrived, [10.0] * arrived)
    assert (summary["frames"], summary["fps"]) == (arrived, 0.0)
    assert np.isnan(summary["median_ms"]) and np.isnan(summary["p99_ms"])


def test_the_table_gives_each_rows_ratio_to_imagezmq_and_the_codecs_to_raw(monkeypatch, capsys):
    fps = {"imagezmq": 100.0, "raw": 250.0, "shm": 400.0, "loan": 500.0, "loan-zmq": 450.0, "jpeg": 50.0, "h264": 20.0}

    rounds = {mode: iter([1, 4, 2, 1]) for mode in fps}  # three rounds, then the latency run

    def run(mode):
        return {"fps": fps[mode] * next(rounds[mode]), "cpu_ms": 1.0, "median_ms": 2.0, "p99_ms": 3.0, "missed": 0,
                "reader_us": 12.5}

    monkeypatch.setattr(bench_transport, "_imagezmq", lambda f, s, r: run("imagezmq"))
    monkeypatch.setattr(bench_transport, "_ours", lambda f, s, r, mode: run(mode))
    monkeypatch.setattr(bench_transport, "_codec", lambda f, mode, q: {"bytes": 64 * 48 * 3 / 8, "enc_ms": 1.0,
                                                                        "dec_ms": 1.0, "psnr": 40.0})
    monkeypatch.setattr(bench_transport, "_stall_report", lambda *a: None)
    bench_transport._size_report(64, 48, argparse.Namespace(rounds=3, seconds=1.0, latency_seconds=1.0, rate=100.0,
                                                            quality=90))
    out = capsys.readouterr().out
    for mode, label in bench_transport.MODES.items():  # the median of the rounds (2x), the best (4x), the ratio
        row = next(ln for ln in out.splitlines() if ln.startswith(label))
        assert row.startswith(f"{label:26s} {2 * fps[mode]:8.0f} {4 * fps[mode]:6.0f} {fps[mode] / 100:6.2f}x "
                              f"{12.5:13.1f} us ")
    assert "  jpeg: 1152 bytes/frame (8.0x fewer than raw)" in out


def test_the_stall_report_gives_the_stalled_readers_cost_relative_to_a_reading_one(monkeypatch, capsys):
    medians = {"none": 0.1, "reading": 0.2, "stalled": 0.5}

    def stall(image, seconds, rate, peer, shm, loan):
        return {"median_ms": medians[peer], "p99_ms": 1.0, "max_ms": 2.0, "received": 7, "calls": 9}

    monkeypatch.setattr(bench_transport, "_stall", stall)
    bench_transport._stall_report(np.zeros((4, 4, 3), np.uint8), argparse.Namespace(rate=100.0, paced_seconds=1.0))
    stalled = [ln for ln in capsys.readouterr().out.splitlines() if "stalled subscriber" in ln]
    assert len(stalled) == 3 and all("  2.50x reading; the stalled one got 7 of 9 when" in ln for ln in stalled)


def test_a_paced_run_ends_at_its_seconds_when_the_next_frame_is_due_after_them(monkeypatch):
    # --rate 0.001: each 5 s latency run slept 1000 s after its first frame
    clock = SleptClock()
    monkeypatch.setattr(bench_transport, "time", clock)
    assert bench_transport._paced(lambda seq: 1, 5.0, 0.001) == 1
    assert clock.ns == 5_000_000_000


@pytest.mark.parametrize("rate, calls", [(0.4, 1), (1e6, 50)])
def test_a_stall_run_calls_at_its_rate_for_its_seconds_alone(rate, calls, monkeypatch):
    # --rate 0.4 --paced-seconds 1 made no call (round(0.4) of them) and ended the benchmark in a numpy traceback; a
    # rate the publisher cannot keep made round(seconds x rate) calls however long they took (2e6 at --rate 1e6)
    clock = SleptClock()
    monkeypatch.setattr(bench_transport, "time", clock)
    monkeypatch.setattr(bench_transport, "_publish", lambda pub, frame, seq, loan: clock.sleep(1e-3))  # 1 ms a call
    run = bench_transport._stall(np.zeros((4, 4, 3), np.uint8), 0.05, rate, "none", False, False)
    assert run["calls"] == calls and run["median_ms"] == pytest.approx(1.0)


def test_imagezmqs_warm_up_frame_is_neither_counted_nor_timed():
    # its latency (the REQ socket's connection: 2-9 ms against a median of 0.5 ms) was the row's worst and in its p99,
    # while the streamfuse rows leave their first frame out
    imagezmq = pytest.importorskip("imagezmq")
    ready, done, results = threading.Event(), threading.Event(), queue.Queue()
    hub = threading.Thread(target=bench_transport._hub_receiver, args=(bench_transport.ANY_PORT, ready, done, results),
                           daemon=True)
    hub.start()
    sender = imagezmq.ImageSender(connect_to=results.get(timeout=30))
    image = np.zeros((4, 4, 3), np.uint8)
    sender.send_image(str(time.time_ns() - 1_000_000_000), image)  # the warm-up, as if a second in the making
    for _ in range(3):
        sender.send_image(str(time.time_ns()), image)
    sender.send_image(bench_transport.STOP, image)
    hub.join(timeout=30)
    sender.close()
    summary = results.get(timeout=30)
    assert summary["frames"] == 3 and summary["p99_ms"] < 500


class _CpuClock(SleptClock):
    """A clock whose process CPU time moves only by what the test's stand-ins say they spent."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_s = 0.0

    def process_time(self) -> float:
        return self.cpu_s


class _Pool:
    """A publisher's shared-memory pool of ``SLOTS`` slots: the frame being written takes the slot of the frame
    ``SLOTS`` before it, which must not be the one the reader has in hand or one it has yet to read."""

    def __init__(self, clock: _CpuClock, frame_cpu_s: float) -> None:
        self.clock, self.frame_cpu_s = clock, frame_cpu_s
        self.endpoint, self.published, self.taken, self.leads = "tcp://127.0.0.1:1", 0, None, []

    def __call__(self, cfg):  # as Publisher(cfg)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def loan(self, shape):
        return np.zeros(shape, np.uint8)

    def send_fused(self, fused) -> bool:
        if self.taken is not None:
            self.leads.append(self.published - self.taken.value)  # the frame written, ahead of the one in hand
        self.published += 1
        self.clock.cpu_s += self.frame_cpu_s
        return True


def test_the_publishers_cpu_per_frame_and_the_shared_memory_window_are_as_the_table_says(monkeypatch):
    """A publisher that spends 0.25 ms of CPU a frame is said to take 0.25 ms a frame; over shared memory (8 slots)
    the sender runs up to 6 frames ahead of the frame the reader has in hand, never more: 7 slots in use (that frame,
    the 5 after it and the one being written), one to spare, so none is overwritten unread."""
    clock = _CpuClock()
    pool = _Pool(clock, 0.25e-3)

    class Reader:  # takes the next frame whenever the sender backs off (sleeps), as the receiver process would
        def __init__(self, target, endpoint, hwm, shm, taken, ring):
            pool.taken = taken

        def started(self) -> bool:
            return True

        def result(self) -> dict:
            return {"fps": 1.0}

    def sleep(seconds: float) -> None:
        SleptClock.sleep(clock, seconds)
        if pool.taken.value < pool.published - 1:
            pool.taken.value += 1

    monkeypatch.setattr(clock, "sleep", sleep)
    monkeypatch.setattr(bench_transport, "time", clock)
    monkeypatch.setattr(bench_transport, "Publisher", pool)
    monkeypatch.setattr(bench_transport, "_Receiver", Reader)
    result = bench_transport._ours([np.zeros((4, 4, 3), np.uint8)], 0.01, 0.0, "shm")
    assert bench_transport.SLOTS == 8 and max(pool.leads) == 6 and len(pool.leads) > 100
    assert result["sent"] == pool.published and result["cpu_ms"] == pytest.approx(0.25)


def test_imagezmqs_cpu_per_frame_is_its_senders_cpu_over_its_frames(monkeypatch):
    clock = _CpuClock()

    class Socket:  # imagezmq's: send_image is its send_array, then its recv of the hub's reply
        def setsockopt(self, option: int, value: int) -> None:
            pass

        def send_array(self, image, name: str, copy: bool) -> None:
            clock.sleep(1e-3)
            clock.cpu_s += 0.5e-3

        def recv(self) -> bytes:
            return b"OK"

    class Sender:
        def __init__(self, connect_to: str) -> None:
            self.zmq_socket = Socket()

        def close(self) -> None:
            pass

    class Hub:
        def __init__(self, target, endpoint) -> None:
            self.results = queue.Queue()
            self.results.put("tcp://127.0.0.1:1")

        def started(self) -> bool:
            return True

        def result(self) -> dict:
            return {"fps": 1.0}

    monkeypatch.setattr(bench_transport, "time", clock)
    monkeypatch.setattr(bench_transport, "imagezmq", argparse.Namespace(ImageSender=Sender))
    monkeypatch.setattr(bench_transport, "_Receiver", Hub)
    result = bench_transport._imagezmq([np.zeros((4, 4, 3), np.uint8)], 0.05, 0.0)
    assert 50 <= result["sent"] <= 51 and result["cpu_ms"] == pytest.approx(0.5)  # not the warm-up's CPU


def test_the_tables_cpu_columns_are_each_modes_own_reader_at_capacity_and_publisher_in_its_latency_run(monkeypatch,
                                                                                                         capsys):
    # the capacity rounds run back to back (warm caches), the paced latency run is what a live stream costs; the
    # reader's CPU a frame is its cost where it is the bound, at capacity
    cpu = {mode: 0.1 * (i + 1) for i, mode in enumerate(bench_transport.MODES)}

    def run(mode, rate):
        return {"fps": 100.0, "cpu_ms": cpu[mode] if rate else 99.0, "median_ms": 2.0, "p99_ms": 3.0, "missed": 0,
                "reader_us": 99.0 if rate else 100 * cpu[mode]}

    monkeypatch.setattr(bench_transport, "_imagezmq", lambda f, s, r: run("imagezmq", r))
    monkeypatch.setattr(bench_transport, "_ours", lambda f, s, r, mode: run(mode, r))
    monkeypatch.setattr(bench_transport, "_codec", lambda f, mode, q: {"bytes": 100.0, "enc_ms": 1.0, "dec_ms": 1.0,
                                                                        "psnr": 40.0})
    monkeypatch.setattr(bench_transport, "_stall_report", lambda *a: None)
    bench_transport._size_report(64, 48, argparse.Namespace(rounds=2, seconds=1.0, latency_seconds=1.0, rate=30.0,
                                                            quality=90))
    out = capsys.readouterr().out
    for mode, label in bench_transport.MODES.items():
        row = next(ln for ln in out.splitlines() if ln.startswith(label))
        assert row[len(label):].split()[3:7] == [f"{100 * cpu[mode]:.1f}", "us", f"{cpu[mode]:.3f}", "ms"], row
