"""The figures ``bench fuse`` prints, from a fuser and a clock of the test's own: median and p99 in ms, frames/s of a
batch, GFLOPs."""

from __future__ import annotations

from itertools import count
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from streamfuse.bench import fuse as bench_fuse


def test_stats_are_the_median_and_the_99th_percentile():
    assert bench_fuse.stats_ms([float(v) for v in range(1, 101)]) == pytest.approx((50.5, 99.01))


class _Fuser:
    """What ``measure`` reads of an HCLFuser, on the CPU."""

    def __init__(self):
        self.engine = SimpleNamespace(device=torch.device("cpu"), threads=1, precision="fp32", cuda_graphs=False,
                                      flops=lambda h, w: 2.5e9)
        self.net = SimpleNamespace(use_student=True, steps=1, image_steps=0)

    def fuse_batch(self, irs, viss, streams):
        return irs

    def stats(self):
        return {"ot_hits": 3.0, "ot_misses": 1.0}


@pytest.mark.parametrize("batch", [1, 4])
def test_a_cpu_line_gives_the_batch_latency_in_ms_and_frames_per_second(batch, monkeypatch):
    ticks = count(0, 4_000_000)  # every clock reading 4 ms later: each batch takes 4 ms
    monkeypatch.setattr(bench_fuse, "time", SimpleNamespace(perf_counter_ns=lambda: next(ticks)))
    pairs = [(np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8))]
    line = bench_fuse.measure(_Fuser(), pairs, batch, frames=8, warmup=2, expected=None)
    assert f"64x48 batch={batch} precision=fp32: latency median 4.00 ms p99 4.00 ms per batch" in line
    assert f" | {1000 * batch / 4:.1f} frames/s (at the median latency) | 2.5 GFLOPs/frame | threads 1" in line
    assert line.endswith("OT cache 3 hits 1 misses")


def test_a_case_times_enough_batches_for_the_frames_asked(monkeypatch):
    # --frames 6 at batch 4: two batches timed (8 frames), not one (4 frames, fewer than asked; none at batch 8)
    ticks, batches = count(0, 4_000_000), []
    monkeypatch.setattr(bench_fuse, "time", SimpleNamespace(perf_counter_ns=lambda: next(ticks)))
    fuser = _Fuser()
    fuser.fuse_batch = lambda irs, viss, streams: batches.append(len(irs))
    pairs = [(np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8))]
    bench_fuse.measure(fuser, pairs, 4, frames=6, warmup=1, expected=None)
    assert batches == [4, 4, 4]  # the warm-up batch, then the two timed


def test_a_batch_feeds_each_rig_its_own_pair():
    # the same pair for every rig of a batch would make the OT cache's lookups those of one rig
    pairs = [(np.full((8, 8), i, np.uint8), np.full((8, 8), i, np.uint8)) for i in range(3)]
    case = bench_fuse.Case(_Fuser(), pairs, batch=2)
    assert [[int(ir[0, 0]) for ir in case.frames()[0]] for _ in range(3)] == [[0, 1], [1, 2], [2, 0]]


def test_a_baseline_line_leaves_the_warm_up_frames_out(monkeypatch, capsys):
    readings, t = [], 0
    for ms in [100] * 2 + [1] * 9 + [3]:  # two slow warm-up frames, then nine of 1 ms and one of 3 ms
        readings += [t, t + ms * 1_000_000]
        t += ms * 1_000_000
    clock = iter(readings)
    monkeypatch.setattr(bench_fuse, "time", SimpleNamespace(perf_counter_ns=lambda: next(clock)))
    monkeypatch.setattr(bench_fuse, "build_fuser", lambda cfg: SimpleNamespace(name="max", fuse=lambda ir, vis: ir))
    bench_fuse.bench_baseline(SimpleNamespace(fuser="max"), [(48, 64)], frames=10, warmup=2)
    assert " max 64x48 batch=1: latency median 1.00 ms p99 2.82 ms | 1000.0 frames/s |" in capsys.readouterr().out


def test_the_frames_asked_are_timed_by_the_fuser_and_by_the_stages_around_it(monkeypatch, capsys):
    cases = []  # a case of each: the stages around the fuser are benchmarked after it
    monkeypatch.setattr(bench_fuse, "bench_baseline", lambda args, sizes, frames, warmup: cases.append(frames))
    monkeypatch.setattr(bench_fuse, "bench_post", lambda sizes, frames, warmup: cases.append(frames))
    bench_fuse.main(["--device", "cpu", "--fuser", "max", "--frames", "7"])
    assert cases == [7, 7] and "7 frames per case" in capsys.readouterr().out


def test_the_stages_around_the_fuser_are_timed_after_the_warm_up_each_under_its_name(monkeypatch, capsys):
    made = []

    class Processor:  # the fuser's side 1 ms, the post stage 5 ms; the warm-up frame took 100 ms in both
        def __init__(self, fuser, stabilize, post):
            made.append((stabilize.strength, post.denoise))
            self.calls = 0

        def __call__(self, pair):
            self.calls += 1
            slow = 100.0 if self.calls == 1 else 0.0
            return SimpleNamespace(timings={"fuse": 1.0 + slow, "postprocess": 5.0 + slow})

    monkeypatch.setattr(bench_fuse, "FrameProcessor", Processor)
    bench_fuse.bench_post([(48, 64)], 20, 1)
    line = capsys.readouterr().out
    assert "IR stabilizer 0.8) median 1.00 ms p99 1.00 ms" in line
    assert "(denoise 0.85 + bgr8 colour) median 5.00 ms p99 5.00 ms" in line
    assert made == [(0.8, 0.85)]
