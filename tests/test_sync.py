"""Pairing IR and visible frames: jitter, drops, different rates, out-of-order arrival, latest mode, counters."""

from __future__ import annotations

import numpy as np
import pytest

from streamfuse.frames import Frame
from streamfuse.sync import Pairer, SyncConfig

_IMG = np.zeros((2, 2), np.uint8)
MS = 1_000_000


def frames(stream: str, fps: float, n: int, *, start_ms: float = 0.0, jitter_ms: float = 0.0, seed: int = 0,
           skip: frozenset[int] = frozenset()) -> list[Frame]:
    """n frames at fps with uniform capture-time jitter; indices in ``skip`` are dropped before pairing."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = start_ms + i * 1000.0 / fps + rng.uniform(-jitter_ms, jitter_ms)
        if i not in skip:
            out.append(Frame(stream, i, round(t * MS), _IMG))
    return out


def run(pairer: Pairer, arrivals: list[Frame], flush: bool = True) -> list:
    pairs = []
    for f in arrivals:
        pairs += pairer.push(f)
    if flush:
        pairs += pairer.flush()
    return pairs


def by_time(*streams: list[Frame]) -> list[Frame]:
    return sorted((f for s in streams for f in s), key=lambda f: f.t_capture_ns)


def assert_consistent(stats: dict) -> None:
    for s in ("ir", "vis"):
        c = stats[s]
        assert c["received"] == c["paired"] + c["unpaired"] + c["dropped"] + c["queued"], c


def test_equal_rates_with_jitter_pair_every_frame_in_order() -> None:
    ir = frames("ir", 30, 90, jitter_ms=4, seed=1)
    vis = frames("vis", 30, 90, jitter_ms=4, seed=2)
    pairs = run(Pairer(SyncConfig(slop_ms=20)), by_time(ir, vis))
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(i, i) for i in range(90)]
    assert all(abs(p.ir.t_capture_ns - p.vis.t_capture_ns) <= 20 * MS for p in pairs)


def test_pairs_are_emitted_without_waiting_for_the_next_frame_once_rate_is_known() -> None:
    pairer = Pairer(SyncConfig(slop_ms=20))
    ir, vis = frames("ir", 30, 10), frames("vis", 30, 10, start_ms=2)
    emitted_on_push = [len(pairer.push(f)) for f in by_time(ir, vis)]
    # After a few frames the period is known: each visible frame (2 ms after its IR frame) completes its pair.
    assert emitted_on_push[-6:] == [0, 1] * 3


def test_25_vs_30_fps_every_slow_frame_pairs_and_the_extra_fast_frames_are_counted() -> None:
    ir = frames("ir", 25, 50)  # 2 s
    vis = frames("vis", 30, 60)
    pairer = Pairer(SyncConfig(slop_ms=20))
    pairs = run(pairer, by_time(ir, vis))
    st = pairer.stats()
    assert len(pairs) == 50 and st["ir"]["paired"] == 50
    assert st["vis"]["paired"] == 50 and st["vis"]["unpaired"] == 10
    assert st["skew_ms_max"] <= 1000 / 60 + 1e-6  # nearest neighbour: never more than half a visible period
    assert len({p.vis.seq for p in pairs}) == 50  # no visible frame used twice
    assert_consistent(st)


def test_dropped_partner_leaves_frame_unpaired_and_counted() -> None:
    lost = frozenset({5, 17, 18, 40})
    ir = frames("ir", 30, 60, jitter_ms=3, seed=3)
    vis = frames("vis", 30, 60, jitter_ms=3, seed=4, skip=lost)
    pairer = Pairer(SyncConfig(slop_ms=15))
    pairs = run(pairer, by_time(ir, vis))
    st = pairer.stats()
    assert {p.ir.seq for p in pairs} == set(range(60)) - lost
    assert st["ir"]["unpaired"] == len(lost) and st["vis"]["unpaired"] == 0
    assert_consistent(st)


def test_one_stream_arriving_late_still_pairs_everything() -> None:
    # The visible stream is delivered 4 frames behind the IR stream (a slower transport), yet pairing by
    # capture time recovers every pair.
    ir, vis = frames("ir", 30, 40, jitter_ms=2, seed=5), frames("vis", 30, 40, jitter_ms=2, seed=6)
    arrivals = []
    for i in range(44):
        if i < 40:
            arrivals.append(ir[i])
        if i >= 4:
            arrivals.append(vis[i - 4])
    pairs = run(Pairer(SyncConfig(slop_ms=20)), arrivals)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(i, i) for i in range(40)]


def test_small_reordering_is_sorted_and_a_frame_older_than_a_decided_one_is_counted() -> None:
    ir, vis = frames("ir", 30, 20), frames("vis", 30, 20, start_ms=1)
    arrivals = by_time(ir, vis)
    # vis 10 overtakes ir 10 (cross-stream reordering is normal); then a stale duplicate of vis 3 arrives.
    i_ir, i_vis = arrivals.index(ir[10]), arrivals.index(vis[10])
    arrivals[i_ir], arrivals[i_vis] = arrivals[i_vis], arrivals[i_ir]
    arrivals.append(Frame("vis", 3, vis[3].t_capture_ns, _IMG))
    pairer = Pairer(SyncConfig(slop_ms=10))
    pairs = run(pairer, arrivals)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(i, i) for i in range(20)]
    st = pairer.stats()
    assert st["vis"]["unpaired"] == 1 and st["vis"]["received"] == 21
    assert_consistent(st)


def test_a_frame_delivered_twice_after_its_pair_is_counted_not_fused_again() -> None:
    # A camera driver hands IR frame 2 over a second time after it was already paired. Without this the repeat
    # (same capture time as the frame just decided) would be queued again and fused a second time with the next
    # visible frame: the output would show the same IR frame twice and the counters would call both pairs good.
    arrivals = [Frame(s, i, t * MS, _IMG) for i, t in enumerate((0, 33, 66)) for s in ("ir", "vis")]
    arrivals += [Frame("ir", 2, 66 * MS, _IMG), Frame("vis", 3, 70 * MS, _IMG),
                 Frame("ir", 4, 99 * MS, _IMG), Frame("vis", 4, 99 * MS, _IMG)]
    pairer = Pairer(SyncConfig(slop_ms=20))
    pairs = run(pairer, arrivals)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(0, 0), (1, 1), (2, 2), (4, 4)]
    st = pairer.stats()
    assert st["ir"]["unpaired"] == 1 and st["ir"]["paired"] == 4 and st["ir"]["received"] == 5
    assert_consistent(st)


def test_a_frame_waits_for_a_nearer_partner_that_can_still_come() -> None:
    # Visible frames at 0, 40 and 85 ms, IR frames at 0, 40 and 100 ms (20 ms slop, both streams about 40 ms apart).
    # The visible frame at 85 ms is 15 ms before IR 100, but the next visible frame may come as early as 105 ms
    # (half a period of margin), nearer: the pairer must wait for it. Without that wait IR 100 would be fused with
    # visible 85 instead of the visible frame at 112 ms that the camera did deliver, 12 ms away.
    arrivals = [Frame("vis", i, t * MS, _IMG) for i, t in enumerate((0, 40, 85))]
    arrivals += [Frame("ir", i, t * MS, _IMG) for i, t in enumerate((0, 40, 100))]
    arrivals.append(Frame("vis", 3, 112 * MS, _IMG))
    pairer = Pairer(SyncConfig(slop_ms=20))
    pairs = run(pairer, arrivals)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(0, 0), (1, 1), (2, 3)]  # each the other's nearest
    st = pairer.stats()
    assert st["vis"]["unpaired"] == 1 and st["skew_ms_max"] == pytest.approx(12.0)
    assert_consistent(st)


def test_stalled_stream_bounds_the_other_queue_and_counts_drops() -> None:
    pairer = Pairer(SyncConfig(slop_ms=20, queue_size=5))
    for f in frames("vis", 30, 100):
        assert pairer.push(f) == []
    st = pairer.stats()
    assert st["vis"]["queued"] == 5 and st["vis"]["dropped"] == 95
    # When IR comes back, the queued frames still pair if close enough.
    pairs = pairer.push(Frame("ir", 0, frames("vis", 30, 100)[99].t_capture_ns, _IMG)) + pairer.flush()
    assert len(pairs) == 1 and pairs[0].vis.seq == 99
    assert_consistent(pairer.stats())


def test_latest_mode_pairs_each_fast_frame_with_newest_slow_frame() -> None:
    ir = frames("ir", 10, 10)  # slow IR camera
    vis = frames("vis", 30, 30, start_ms=1)
    pairer = Pairer(SyncConfig(mode="latest", hold_ms=150))
    pairs = run(pairer, by_time(ir, vis))
    assert len(pairs) == 30  # every visible frame (the faster stream leads, detected automatically)
    for p in pairs:
        newest_ir = max(f.t_capture_ns for f in ir if f.t_capture_ns <= p.vis.t_capture_ns)
        assert p.ir.t_capture_ns == newest_ir
    st = pairer.stats()
    assert st["ir"]["paired"] == 10 and st["vis"]["paired"] == 30
    assert_consistent(st)


def test_latest_mode_lead_can_be_forced_and_a_stale_hold_is_not_used() -> None:
    pairer = Pairer(SyncConfig(mode="latest", lead="ir", hold_ms=100))
    run(pairer, frames("vis", 30, 3), flush=False)
    assert len(pairer.push(Frame("ir", 0, 80 * MS, _IMG))) == 1  # vis at 66.7 ms is 13 ms old
    assert pairer.push(Frame("ir", 1, 500 * MS, _IMG)) == []  # the held visible frame is 433 ms old
    pairer.flush()
    st = pairer.stats()
    assert st["ir"]["unpaired"] == 1 and st["vis"]["unpaired"] == 2
    assert_consistent(st)


def test_latest_mode_does_not_pair_a_lead_frame_with_a_held_frame_far_newer_than_it() -> None:
    # The hold limit is on the time difference either way. The held IR frame is from 1 s, the visible (lead) frame
    # from 0 s (a late visible camera, or a stepped clock): without this they would be fused though a second apart.
    pairer = Pairer(SyncConfig(mode="latest", lead="vis", hold_ms=100))
    assert pairer.push(Frame("ir", 0, 1000 * MS, _IMG)) == []
    assert pairer.push(Frame("vis", 0, 0, _IMG)) == []
    pairer.flush()
    st = pairer.stats()
    assert st["pairs"] == 0 and st["ir"]["unpaired"] == 1 and st["vis"]["unpaired"] == 1
    assert_consistent(st)


def test_latest_mode_keeps_the_faster_lead_when_one_slow_frame_comes_twice() -> None:
    ir = frames("ir", 9, 27, start_ms=5)  # a 9 fps IR camera ...
    ir.insert(14, Frame("ir", 99, ir[13].t_capture_ns + MS, _IMG))  # ... whose driver hands one frame over twice
    vis = frames("vis", 30, 90)
    pairer = Pairer(SyncConfig(mode="latest"))
    pairs = run(pairer, by_time(ir, vis))
    late = [p for p in pairs if p.vis.t_capture_ns > ir[14].t_capture_ns]
    # Every visible frame still pairs: the output does not fall to the IR rate while the hiccup is recent.
    assert len(late) == sum(f.t_capture_ns > ir[14].t_capture_ns for f in vis)
    assert len(pairs) == 89 and pairer.stats()["vis"]["paired"] == 89  # all but the one before the first IR frame
    assert_consistent(pairer.stats())


def test_unknown_stream_and_bad_config_raise_naming_the_value() -> None:
    with pytest.raises(ValueError, match="thermal"):
        Pairer(SyncConfig()).push(Frame("thermal", 0, 0, _IMG))
    with pytest.raises(ValueError, match="slop_ms"):
        SyncConfig(slop_ms=0)
    with pytest.raises(ValueError, match="queue_size"):
        SyncConfig(queue_size=1)


def test_latest_mode_refuses_a_hold_of_zero_or_past_a_minute() -> None:
    # hold_ms=0 (a typo for a small hold) would leave every frame of the other stream too stale to pair: a run that
    # fuses nothing instead of a one-line config error
    with pytest.raises(ValueError, match="0 < hold_ms <= 60000"):
        SyncConfig(mode="latest", hold_ms=0)
    with pytest.raises(ValueError, match="hold_ms"):
        SyncConfig(mode="latest", hold_ms=60_001)
    assert SyncConfig(mode="latest", hold_ms=60_000).hold_ms == 60_000


def _stepped(stream: str, n: int, step_at_ms: float, step_ms: float, *, fps: float = 30, start_ms: float = 0.0
             ) -> list[Frame]:
    """n frames at ``fps`` whose clock is stepped by ``step_ms`` (an NTP step) at ``step_at_ms`` of their time."""
    return [Frame(f.stream, f.seq, f.t_capture_ns + (round(step_ms * MS) if f.t_capture_ns >= step_at_ms * MS else 0),
                  _IMG) for f in frames(stream, fps, n, start_ms=start_ms)]


def _arrival_order(ir: list[Frame], vis: list[Frame]) -> list[Frame]:
    """As a live loop receives them: each IR frame, then the visible frame captured 2 ms after it."""
    return [f for pair in zip(ir, vis) for f in pair]


@pytest.mark.parametrize("mode", ["slop", "latest"])
@pytest.mark.parametrize("step_ms", [-10_000.0, -150.0, 3_600_000.0])
def test_a_clock_step_loses_at_most_a_pair_and_is_counted(mode: str, step_ms: float) -> None:
    # The wall clock both cameras stamp with is stepped (back 10 s, back 0.15 s, forward an hour) between frames 59
    # and 60: pairing goes on within a frame instead of waiting for the clock to come back to where it was.
    ir, vis = _stepped("ir", 120, 1990, step_ms), _stepped("vis", 120, 1990, step_ms, start_ms=2)
    pairer = Pairer(SyncConfig(mode=mode))
    pairs = run(pairer, _arrival_order(ir, vis))
    seqs = {(p.ir.seq, p.vis.seq) for p in pairs}
    assert {(i, i) for i in range(119) if i not in (59, 60)} <= seqs, sorted(seqs)
    st = pairer.stats()
    assert_consistent(st)
    assert st["ir"]["clock_steps"] == st["vis"]["clock_steps"] == (step_ms < 0)  # forward: a gap, as a lost frame


def test_a_stale_frame_far_back_is_not_a_clock_step() -> None:
    ir, vis = frames("ir", 30, 20), frames("vis", 30, 20, start_ms=1)
    arrivals = by_time(ir, vis)
    arrivals.insert(arrivals.index(ir[15]), Frame("ir", 5, ir[5].t_capture_ns, _IMG))  # a duplicate, 10 frames late
    pairer = Pairer(SyncConfig())
    pairs = run(pairer, arrivals)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(i, i) for i in range(20)]
    assert pairer.stats()["ir"]["clock_steps"] == 0 and pairer.stats()["ir"]["unpaired"] == 1


@pytest.mark.parametrize("mode", ["slop", "latest"])
def test_a_clock_step_under_a_9_fps_thermal_camera_is_told_too(mode: str) -> None:
    # a 9 fps thermal camera (frames 111 ms apart) beside a 30 fps visible one; the clock stepped back 10 s at 2 s
    ir = _stepped("ir", 36, 2000, -10_000, fps=9)
    vis = _stepped("vis", 120, 2000, -10_000, start_ms=2)
    pairer = Pairer(SyncConfig(mode=mode, slop_ms=20))
    vis = [f for f in vis if not 1900 <= f.seq * 1000 / 30 < 2300]  # the visible camera stalled across the step
    pairs = run(pairer, sorted(ir + vis, key=lambda f: (f.seq * 1000 / (9 if f.stream == "ir" else 30), f.stream)))
    after = {p.ir.seq for p in pairs if p.ir.seq >= 18}  # IR frame 18 is the first after the step
    st = pairer.stats()
    assert st["ir"]["clock_steps"] == st["vis"]["clock_steps"] == 1
    assert after >= set(range(21, 35)), sorted(after)  # the visible camera is back at 2.3 s, with IR frame 21
