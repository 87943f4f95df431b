"""Pairing IR and visible frames: jitter, drops, different rates, out-of-order arrival, latest mode, counters."""

from __future__ import annotations

import logging

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
    # The first two pairs wait for the next IR frame, which could be nearer while the IR rate is unknown; from the
    # third IR frame on (two intervals seen) each visible frame, 2 ms after its IR frame, completes its pair at once.
    assert emitted_on_push == [0, 0, 1, 0, 1] + [1, 0] * 7 + [1]


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


@pytest.mark.parametrize("early", ["vis", "ir"])  # either stream's frame may be the one before its partner
def test_a_frame_waits_for_a_nearer_partner_that_can_still_come(early: str) -> None:
    # Visible frames at 0, 40 and 85 ms, IR frames at 0, 40 and 100 ms (20 ms slop, both streams about 40 ms apart).
    # The visible frame at 85 ms is 15 ms before IR 100, but the next visible frame may come as early as 105 ms
    # (half a period of margin), nearer: the pairer must wait for it. Without that wait IR 100 would be fused with
    # visible 85 instead of the visible frame at 112 ms that the camera did deliver, 12 ms away.
    late = "ir" if early == "vis" else "vis"
    arrivals = [Frame(early, i, t * MS, _IMG) for i, t in enumerate((0, 40, 85))]
    arrivals += [Frame(late, i, t * MS, _IMG) for i, t in enumerate((0, 40, 100))]
    arrivals.append(Frame(early, 3, 112 * MS, _IMG))
    pairer = Pairer(SyncConfig(slop_ms=20))
    pairs = run(pairer, arrivals)
    seqs = [(p.ir.seq, p.vis.seq) if late == "ir" else (p.vis.seq, p.ir.seq) for p in pairs]
    assert seqs == [(0, 0), (1, 1), (2, 3)]  # (late, early): each the other's nearest
    st = pairer.stats()
    assert st[early]["unpaired"] == 1 and st["skew_ms_max"] == pytest.approx(12.0)
    assert_consistent(st)


def test_a_frame_lost_before_does_not_make_the_pairer_take_a_farther_partner() -> None:
    # As above with visible frame 80 lost: visible frames at 0, 40, 120 and 165 ms. The next one may still come as
    # early as 185 ms, half the smallest recent interval (40 ms) on: without it the 80 ms gap the lost frame left
    # would be taken for the stream's period, the next frame for due no earlier than 205 ms, and IR 180 fused with
    # visible 165 (15 ms away) instead of visible 192 (12 ms away).
    arrivals = [Frame("vis", i, t * MS, _IMG) for i, t in enumerate((0, 40, 120, 165))]
    arrivals += [Frame("ir", i, t * MS, _IMG) for i, t in enumerate((0, 40, 120, 180))]
    arrivals.append(Frame("vis", 4, 192 * MS, _IMG))
    pairs = run(Pairer(SyncConfig(slop_ms=20)), arrivals)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(0, 0), (1, 1), (2, 2), (3, 4)]


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


@pytest.mark.parametrize("queue_size", [2, 8])
def test_a_frame_waiting_for_a_nearer_partner_pairs_when_the_other_stream_pauses_and_its_queue_fills(
        queue_size: int) -> None:
    # A 30 fps IR camera pauses 2 s (its shutter) after its frame at 0 ms, whose nearest visible frame comes 12 ms
    # later: a later IR frame could still have been nearer to that one, so both waited; the visible frames of the
    # pause filled the queue and the one waited for was dropped, the IR frame left unpaired: a pair lost
    ir = frames("ir", 30, 4, start_ms=-100) + frames("ir", 30, 2, start_ms=2000)
    vis = frames("vis", 60, 140, start_ms=-88, skip=frozenset({5}))  # 60 fps; the frame at -5 ms lost
    pairer = Pairer(SyncConfig(slop_ms=20, queue_size=queue_size))
    pairs = run(pairer, by_time(ir, vis))
    assert [(round(p.ir.t_capture_ns / MS), round(p.vis.t_capture_ns / MS)) for p in pairs] == [
        (-100, -88), (-67, -71), (-33, -38), (0, 12), (2000, 1995), (2033, 2029)]
    assert pairer.stats()["ir"]["unpaired"] == 0
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


@pytest.mark.parametrize("twice", ["vis", "ir"])
def test_latest_mode_fuses_a_frame_delivered_twice_once(twice: str) -> None:
    # A camera driver hands a frame over a second time, with its capture time. As in slop mode the repeat is counted
    # unpaired: without it a repeat of the lead (visible) frame would be fused a second time with the held IR frame,
    # the output would show the same pair twice and the counters would call both pairs good.
    pairer = Pairer(SyncConfig(mode="latest", lead="vis"))
    assert pairer.push(Frame("ir", 0, 0, _IMG)) == []
    assert len(pairer.push(Frame("vis", 0, MS, _IMG))) == 1
    assert pairer.push(Frame(twice, 0, 0 if twice == "ir" else MS, _IMG)) == []
    assert len(pairer.push(Frame("vis", 1, 34 * MS, _IMG))) == 1  # the hold is still the first IR frame
    pairer.flush()
    st = pairer.stats()
    assert st["pairs"] == 2 and st[twice]["unpaired"] == 1 and st[twice]["received"] == st[twice]["paired"] + 1
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


@pytest.mark.parametrize("jitter_ms", [0.0, 2.0])
def test_latest_mode_keeps_one_lead_for_two_cameras_at_one_rate(jitter_ms: float) -> None:
    # Two 30 fps cameras (the rig config's): their typical intervals differ only by the stamps' jitter (or a
    # nanosecond of rounding), which must not pass the lead back and forth, each swap fusing a frame twice.
    ir, vis = frames("ir", 30, 60, jitter_ms=jitter_ms, seed=1), frames("vis", 30, 60, start_ms=3, seed=2)
    pairer = Pairer(SyncConfig(mode="latest"))
    pairs = run(pairer, by_time(ir, vis))
    assert [p.vis.seq for p in pairs] == list(range(60))  # the visible camera leads throughout, every frame once
    assert_consistent(pairer.stats())


def test_unknown_stream_and_bad_config_raise_naming_the_value() -> None:
    with pytest.raises(ValueError, match="thermal"):
        Pairer(SyncConfig()).push(Frame("thermal", 0, 0, _IMG))
    with pytest.raises(ValueError, match="slop_ms"):
        SyncConfig(slop_ms=0)
    with pytest.raises(ValueError, match="queue_size"):
        SyncConfig(queue_size=1)


def test_a_mode_or_lead_not_offered_is_refused_and_the_slop_and_queue_limits_are_inclusive() -> None:
    # a typo (mode: lastest, lead: IR) would otherwise run slop mode, or lead with a stream that never comes: a run
    # that fuses nothing instead of a one-line config error
    with pytest.raises(ValueError, match="mode='lastest' is out of range; allowed: slop | latest"):
        SyncConfig(mode="lastest")
    with pytest.raises(ValueError, match="lead='IR' is out of range; allowed: auto | ir | vis"):
        SyncConfig(lead="IR")
    assert SyncConfig(slop_ms=10_000, queue_size=10_000).queue_size == 10_000
    with pytest.raises(ValueError, match="slop_ms"):
        SyncConfig(slop_ms=10_001)
    with pytest.raises(ValueError, match="queue_size"):
        SyncConfig(queue_size=10_001)


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


@pytest.mark.parametrize("copies", [1, 2])  # two: the second, at the same time as the first, does not follow it
def test_a_stale_frame_far_back_is_not_a_clock_step(copies: int) -> None:
    ir, vis = frames("ir", 30, 20), frames("vis", 30, 20, start_ms=1)
    arrivals = by_time(ir, vis)
    at = arrivals.index(ir[15])
    arrivals[at:at] = [Frame("ir", 5, ir[5].t_capture_ns, _IMG)] * copies  # a duplicate, 10 frames late
    pairer = Pairer(SyncConfig())
    pairs = run(pairer, arrivals)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(i, i) for i in range(20)]
    assert pairer.stats()["ir"]["clock_steps"] == 0 and pairer.stats()["ir"]["unpaired"] == copies


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


@pytest.mark.parametrize("mode", ["slop", "latest"])
def test_a_clock_step_under_two_10_fps_cameras_is_told_too(mode: str) -> None:
    # frames exactly 100 ms apart (a recording's stamps): the frame after a stale one follows it by CLOCK_STEP_NS
    ir, vis = _stepped("ir", 40, 2000, -10_000, fps=10), _stepped("vis", 40, 2000, -10_000, fps=10, start_ms=2)
    pairer = Pairer(SyncConfig(mode=mode, slop_ms=20))
    pairs = run(pairer, _arrival_order(ir, vis))
    st = pairer.stats()
    assert st["ir"]["clock_steps"] == st["vis"]["clock_steps"] == 1
    assert {p.ir.seq for p in pairs} >= set(range(22, 40))


@pytest.mark.parametrize("mode", ["slop", "latest"])
def test_frames_exactly_the_limit_apart_pair(mode: str) -> None:
    # "at most slop_ms / hold_ms apart": the limit itself pairs, either stream first. 33.3 ms is 33299999.999... ns as
    # a float product: the limit is rounded to the nearest ns, not truncated to one short of a third of 100 ms.
    pairer = Pairer(SyncConfig(mode=mode, slop_ms=33.3, hold_ms=33.3, lead="vis"))
    limit = 33_300_000
    arrivals = [Frame("ir", 0, 0, _IMG), Frame("vis", 0, limit, _IMG),  # the visible frame newer by the limit
                Frame("vis", 1, 1000 * MS, _IMG), Frame("ir", 1, 1000 * MS + limit, _IMG),  # the IR frame newer
                Frame("vis", 2, 1000 * MS + 10, _IMG)]  # latest mode: the lead frame that pairs with IR 1
    # slop mode pairs each frame with its nearest: visible 2, 10 ns nearer to IR 1, would take it from visible 1
    pairs = run(pairer, arrivals[:-1] if mode == "slop" else arrivals)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(0, 0), (1, 1 if mode == "slop" else 2)]
    assert pairer.stats()["skew_ms_max"] == pytest.approx(33.3)


def test_the_skew_of_the_pairs_is_their_mean_and_largest_capture_time_difference_in_ms() -> None:
    # without it, the telemetry's skew_ms_mean and skew_ms_max could be off by a unit, or the last pair's skew
    ir = [Frame("ir", i, t * MS, _IMG) for i, t in enumerate((0, 100, 200))]
    vis = [Frame("vis", i, t * MS, _IMG) for i, t in enumerate((2, 106, 204))]
    pairer = Pairer(SyncConfig(slop_ms=20))
    assert len(run(pairer, by_time(ir, vis))) == 3
    st = pairer.stats()
    # whole ns summed and divided once: exact, so that a sum or largest value starting a ns off would show
    assert st["pairs"] == 3 and st["skew_ms_mean"] == 4.0 and st["skew_ms_max"] == 6.0
    assert {k: v for k, v in Pairer(SyncConfig()).stats().items() if k.startswith("skew")} == {
        "skew_ms_mean": 0.0, "skew_ms_max": 0.0}  # no pair yet


@pytest.mark.parametrize("mode", ["slop", "latest"])
def test_the_counters_add_up_after_every_frame_not_only_at_the_end(mode: str) -> None:
    # The live loop reports the counters every interval_s, mid-run: a frame held (latest mode) or one far back that
    # waits for the next to tell a stepped clock from a stale frame is queued, not missing from the sum.
    ir, vis = frames("ir", 30, 20), frames("vis", 30, 20, start_ms=1)
    arrivals = by_time(ir, vis)
    arrivals.insert(arrivals.index(ir[15]), Frame("ir", 5, ir[5].t_capture_ns, _IMG))  # 10 frames late
    pairer = Pairer(SyncConfig(mode=mode))
    for f in arrivals:
        pairer.push(f)
        assert_consistent(pairer.stats())


def test_a_frame_sorted_back_into_its_own_stream_still_pairs() -> None:
    # IR frame 1 is delivered after IR frame 2 (a few ms late, not a stepped clock): it is put back in place and
    # pairs, rather than taken for a frame far back and counted unpaired
    arrivals = [Frame("ir", 0, 0, _IMG), Frame("vis", 0, MS, _IMG), Frame("ir", 2, 66 * MS, _IMG),
                Frame("ir", 1, 33 * MS, _IMG), Frame("vis", 1, 34 * MS, _IMG), Frame("vis", 2, 67 * MS, _IMG)]
    pairer = Pairer(SyncConfig())
    assert [(p.ir.seq, p.vis.seq) for p in run(pairer, arrivals)] == [(0, 0), (1, 1), (2, 2)]
    assert pairer.stats()["ir"]["unpaired"] == 0


def test_a_frame_delivered_twice_does_not_hold_up_the_pairs_after_it() -> None:
    # IR frame 4 comes twice with one capture time; the repeat is no frame interval of 0 ns: without that, the
    # stream's rate would be unknown again and each pair would wait for the next frame instead of leaving at once
    pairer = Pairer(SyncConfig(slop_ms=20))
    ir, vis = frames("ir", 30, 12), frames("vis", 30, 12, start_ms=2)
    arrivals = by_time(ir, vis)
    arrivals.insert(arrivals.index(ir[4]) + 1, Frame("ir", 4, ir[4].t_capture_ns, _IMG))
    emitted_on_push = [len(pairer.push(f)) for f in arrivals]
    assert emitted_on_push[-6:] == [0, 1] * 3  # each visible frame completes its pair, as before the repeat


@pytest.mark.parametrize("lag, lost", [(2, ()), (0, (59, 60))], ids=["late", "stalled"])
def test_the_other_stream_across_a_clock_step_loses_no_pair_it_can_make(lag: int, lost: tuple[int, ...]) -> None:
    # The clock both cameras stamp with is stepped back 10 s at frame 60, and the IR stream's step is told first.
    # late: the visible frames reach the loop two frames after the IR ones (a slower transport), so two visible frames
    # of the old time line come after it: they are counted unpaired, not taken for a new time line of their own (a
    # second step, dropping the IR frames queued). stalled: the visible frames around the step are lost, and the
    # first one on the new time pairs though it is newer than the newest IR frame.
    ir, vis = _stepped("ir", 120, 1990, -10_000), _stepped("vis", 120, 1990, -10_000, start_ms=2)
    arrivals = [f for i in range(120 + lag)
                for f in ([ir[i]] if i < 120 else []) + ([vis[i - lag]] if i >= lag and i - lag not in lost else [])]
    pairer = Pairer(SyncConfig())
    seqs = {(p.ir.seq, p.vis.seq) for p in run(pairer, arrivals)}
    assert seqs == {(i, i) for i in range(120) if i not in (59, *lost)}, sorted({(i, i) for i in range(120)} ^ seqs)
    st = pairer.stats()
    assert st["ir"]["clock_steps"] == st["vis"]["clock_steps"] == 1
    assert_consistent(st)


def test_the_pair_waiting_for_its_next_frame_when_the_clock_steps_is_still_fused() -> None:
    # Each visible frame comes 14 ms after its IR frame, so every pair waits for the next IR frame (a nearer one
    # could still come). IR frame 59's is still waiting when the clock steps back 10 s: the step makes it at once,
    # instead of counting both frames unpaired.
    ir, vis = _stepped("ir", 120, 1990, -10_000), _stepped("vis", 120, 1990, -10_000, start_ms=14)
    pairer = Pairer(SyncConfig(slop_ms=20))
    seqs = [(p.ir.seq, p.vis.seq) for p in run(pairer, _arrival_order(ir, vis))]
    assert seqs == [(i, i) for i in range(120)]
    assert pairer.stats()["ir"]["unpaired"] == pairer.stats()["vis"]["unpaired"] == 0


@pytest.mark.parametrize("late", ["ir", "vis"])
def test_a_frame_sorted_back_behind_a_later_one_pairs_at_once_before_the_rate_is_known(late: str) -> None:
    # frame 0 of one stream comes after its frame 1: frame 0 is then the nearest its stream will ever have for the
    # other stream's frame 0 (every frame to come is later than frame 1), so the pair leaves at once, not a frame later
    other = "vis" if late == "ir" else "ir"
    pairer = Pairer(SyncConfig(slop_ms=20))
    arrivals = [Frame(other, 0, 19 * MS, _IMG), Frame(late, 1, 35 * MS, _IMG), Frame(late, 0, 14 * MS, _IMG)]
    assert [[(p.ir.seq, p.vis.seq) for p in pairer.push(f)] for f in arrivals] == [[], [], [(0, 0)]]


def test_a_frame_lost_in_the_first_interval_does_not_make_the_pairer_take_a_farther_partner() -> None:
    # Visible frame 40 lost at the start (a folder missing frame_0001, a camera's first frame dropped): visible frames
    # at 0, 80 and 112 ms, IR frames at 0, 40, 100 and 140 ms. The one interval seen, 80 ms, is two periods: taken for
    # the stream's period, the next visible frame was due no earlier than 120 ms, and IR 100 was fused with visible 80
    # (20 ms away) instead of visible 112 (12 ms away).
    arrivals = by_time([Frame("vis", i, t * MS, _IMG) for i, t in enumerate((0, 80, 112))],
                       [Frame("ir", i, t * MS, _IMG) for i, t in enumerate((0, 40, 100, 140))])
    pairer = Pairer(SyncConfig(slop_ms=20))
    pairs = run(pairer, arrivals, flush=False)  # decided as the frames came, as a live run decides them
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(0, 0), (2, 2)]
    assert_consistent(pairer.stats())


def test_latest_mode_keeps_its_lead_when_the_first_interval_lost_a_frame() -> None:
    # Two 30 fps cameras, the visible one's second frame lost: its first interval (67 ms) read as a 15 fps camera
    # and passed the lead to the IR one for good (both at 33 ms from then on, neither clearly faster).
    ir, vis = frames("ir", 30, 60), frames("vis", 30, 60, start_ms=3, skip=frozenset({1}))
    pairer = Pairer(SyncConfig(mode="latest"))
    pairs = run(pairer, by_time(ir, vis))
    assert [p.vis.seq for p in pairs] == [0] + list(range(2, 60))  # the visible camera leads, every frame once
    assert_consistent(pairer.stats())


def test_latest_mode_passes_the_lead_to_a_clearly_faster_camera_once_both_rates_are_known() -> None:
    # IR at 30 fps, visible at 25 (20 % slower, past the 10 % margin): the visible camera leads until both streams
    # have shown three intervals (the visible one's fourth frame), every IR frame from then on
    ir, vis = frames("ir", 30, 12), frames("vis", 25, 10, start_ms=5)
    pairs = run(Pairer(SyncConfig(mode="latest")), by_time(ir, vis))
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(0, 0), (1, 1), (2, 2)] + [
        (4, 3), (5, 4), (6, 4), (7, 5), (8, 6), (9, 7), (10, 8), (11, 9)]


def test_latest_mode_keeps_its_lead_when_two_frames_close_together_are_lost() -> None:
    # the leading 30 fps camera loses frames 10 and 12: two of its last three intervals are two frames long, but not
    # of its last eight, so the 25 fps camera never looks faster and each visible frame is fused once, with the
    # newest IR frame before it (the first one came before any IR frame)
    ir, vis = frames("ir", 25, 50, start_ms=5), frames("vis", 30, 60, skip=frozenset({10, 12}))
    pairer = Pairer(SyncConfig(mode="latest"))
    pairs = run(pairer, by_time(ir, vis))
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [
        (max(f.seq for f in ir if f.t_capture_ns <= v.t_capture_ns), v.seq) for v in vis[1:]]
    assert_consistent(pairer.stats())


def test_latest_mode_an_ir_frame_delivered_late_at_the_start_does_not_make_its_camera_look_slower() -> None:
    # IR frame 1 comes after frame 2: its camera's intervals are 67, 33, 33 ms, not 67, 67, 33 (frame 3 measured from
    # the late frame), so the 30 fps IR camera takes the lead from the 25 fps visible one as soon as without the delay
    ir, vis = frames("ir", 30, 12), frames("vis", 25, 10, start_ms=5)
    arrivals = by_time(ir, vis)
    arrivals.insert(arrivals.index(ir[2]) + 1, arrivals.pop(arrivals.index(ir[1])))
    pairs = run(Pairer(SyncConfig(mode="latest")), arrivals)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(0, 0), (0, 1), (2, 2), (3, 3)] + [
        (4, 3), (5, 4), (6, 4), (7, 5), (8, 6), (9, 7), (10, 8), (11, 9)]


def test_latest_mode_keeps_its_lead_when_the_other_camera_sends_a_short_burst() -> None:
    # the 25 fps IR camera sends three frames 10 ms apart once: three of its last seven intervals are short, but its
    # median interval stays 40 ms, so the 30 fps visible camera keeps the lead and each of its frames is fused once
    ir = [Frame("ir", i, (5 + t) * MS, _IMG) for i, t in enumerate((0, 40, 80, 120, 160, 170, 180, 190, 230, 270, 310))]
    vis = frames("vis", 30, 11)
    pairer = Pairer(SyncConfig(mode="latest"))
    pairs = run(pairer, by_time(ir, vis))
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [
        (max(f.seq for f in ir if f.t_capture_ns <= v.t_capture_ns), v.seq) for v in vis[1:]]


@pytest.mark.parametrize("early", ["vis", "ir"])
@pytest.mark.parametrize(("times_ms", "late_ms"), [((0, 40, 80), 90), ((0, 10, 20), 20)],
                         ids=["next_no_nearer", "all_queued_first"])
def test_a_frame_pairs_at_once_when_the_next_frame_could_at_best_be_as_near(early: str, times_ms: tuple[int, ...],
                                                                            late_ms: int) -> None:
    # frames of one stream at 0, 40 and 80 ms: the next comes at 100 ms at the earliest (half a period of margin),
    # 10 ms after the other stream's frame at 90 ms, as far as the one at 80 ms: no wait for a frame no nearer.
    # At 0, 10 and 20 ms, all queued before the other stream's frame at 20 ms: each of the first two has a nearer one
    # after it, so the one at 20 ms pairs, not the one at 10 ms
    late = "ir" if early == "vis" else "vis"
    pairer = Pairer(SyncConfig(slop_ms=20))
    for i, t in enumerate(times_ms):
        pairer.push(Frame(early, i, t * MS, _IMG))
    pairs = pairer.push(Frame(late, 0, late_ms * MS, _IMG))
    assert [(getattr(p, early).seq, getattr(p, late).seq) for p in pairs] == [(2, 0)]
    assert pairer.stats()[early]["unpaired"] == 2

@pytest.mark.parametrize("middle", ["vis", "ir"])
def test_of_two_frames_equally_near_the_earlier_pairs(middle: str) -> None:
    # the later one is left for the other stream's next frame
    other = "ir" if middle == "vis" else "vis"
    arrivals = [Frame(other, 0, 10 * MS, _IMG), Frame(middle, 0, 20 * MS, _IMG), Frame(other, 1, 30 * MS, _IMG)]
    pairer = Pairer(SyncConfig(slop_ms=20))
    pairs = run(pairer, arrivals)
    assert [(getattr(p, middle).seq, getattr(p, other).seq) for p in pairs] == [(0, 0)]
    assert pairer.stats()[other]["unpaired"] == 1


def test_a_queue_holding_queue_size_frames_still_waits_for_a_nearer_partner() -> None:
    # visible frames arrive 40 ms after their capture: IR 20 ms has both its IR successor and visible frame 0 (20 ms
    # off) queued when visible frame 1 (13 ms off) comes; a queue of two frames is not yet over its queue_size of 2
    ir, vis = frames("ir", 30, 10, start_ms=20), frames("vis", 30, 10)
    arrivals = sorted(ir + vis, key=lambda f: f.t_capture_ns + 40 * MS * (f.stream == "vis"))
    pairer = Pairer(SyncConfig(slop_ms=20, queue_size=2))
    pairs = run(pairer, arrivals)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(i, i + 1) for i in range(9)]
    assert pairer.stats()["ir"]["dropped"] == pairer.stats()["vis"]["dropped"] == 0


def test_a_frame_sorted_back_behind_two_queued_frames_of_its_stream_takes_its_place() -> None:
    # the visible camera lags: IR 40 ms overtakes IR 20 ms while IR 0 still waits; each IR frame pairs with its own
    ir = [Frame("ir", 0, 0, _IMG), Frame("ir", 2, 40 * MS, _IMG), Frame("ir", 1, 20 * MS, _IMG)]
    vis = [Frame("vis", i, i * 20 * MS, _IMG) for i in range(3)]
    pairer = Pairer(SyncConfig(slop_ms=20))
    pairs = run(pairer, ir + vis)
    assert [(p.ir.seq, p.vis.seq) for p in pairs] == [(0, 0), (1, 1), (2, 2)]
    assert pairer.stats()["ir"]["unpaired"] == 0


def test_a_clock_step_says_how_far_back_the_clock_went(caplog: pytest.LogCaptureFixture) -> None:
    # IR frame 59 at 1966.667 ms, frame 60 stepped back 10 s to -8000 ms: 9.967 s before the newest
    ir, vis = _stepped("ir", 70, 1990, -10_000), _stepped("vis", 70, 1990, -10_000, start_ms=2)
    with caplog.at_level(logging.WARNING, logger="streamfuse.sync"):
        run(Pairer(SyncConfig()), _arrival_order(ir, vis))
    assert [r.getMessage() for r in caplog.records] == [
        "ir: capture times went back 9.967 s (the clock was stepped?): pairing goes on from the new time"]


def test_of_two_frames_of_a_stream_at_one_capture_time_the_first_received_pairs() -> None:
    # a camera that stamps two frames alike (a coarse clock): the later one is no nearer, arrival order decides
    arrivals = [Frame("ir", 0, 0, _IMG), Frame("ir", 1, 0, _IMG), Frame("vis", 0, 0, _IMG)]
    pairer = Pairer(SyncConfig(slop_ms=20))
    assert [(p.ir.seq, p.vis.seq) for p in run(pairer, arrivals)] == [(0, 0)]
    assert pairer.stats()["ir"]["unpaired"] == 1
