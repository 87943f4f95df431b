"""Capture times from pts: a file's stay strictly increasing across discontinuities and repeats, a live stream's
stay on the wall clock (never after arrival, no drift) while keeping the sender's spacing."""

from __future__ import annotations

import numpy as np
import pytest

from streamfuse.capture.timestamps import JUMP_NS, STILL_REPEATS, FileClock, StreamClock

MS = 1_000_000


def test_file_clock_keeps_pts_and_shifts_out_discontinuities_one_period_after_the_previous_frame() -> None:
    clock = FileClock(period_ns=40 * MS)
    pts = [p * MS for p in (0, 40, 80, 120, 40, 80, 80, 120)]
    pts += [pts[-1] + JUMP_NS + MS, pts[-1] + JUMP_NS + 41 * MS]  # more than 10 s ahead
    t, fixes = [], []
    for p in pts:
        t.append(clock.stamp(p))
        fixes.append(clock.fix)
    assert t[:4] == [0, 40 * MS, 80 * MS, 120 * MS] and fixes[:4] == [""] * 4  # normal frames keep their pts
    assert t[4] == 160 * MS and fixes[4] == "rebased"  # back 80 ms: one period after the previous frame
    assert t[6] == t[5] + 1 and fixes[6] == "nudged"  # a repeated pts: just after the previous frame...
    assert t[7] == t[5] + 40 * MS  # ...and the frames after it keep their own spacing
    assert t[8] == t[7] + 40 * MS and fixes[8] == "rebased"  # a discontinuity, not a gap
    assert t[9] == t[8] + 40 * MS and fixes[9] == ""
    assert all(b > a for a, b in zip(t, t[1:]))


def test_file_clock_new_pass_continues_one_period_after_the_last_frame_without_a_report() -> None:
    clock = FileClock(period_ns=40 * MS)
    first = [clock.stamp(p * MS) for p in (0, 40, 80)]
    clock.new_pass()
    second = [clock.stamp(p * MS) for p in (0, 40)]
    assert first + second == [i * 40 * MS for i in range(5)]
    assert clock.fix == ""


def test_file_clock_keeps_an_honest_gap_below_the_jump_threshold() -> None:
    clock = FileClock(period_ns=40 * MS)
    assert [clock.stamp(p) for p in (0, 40 * MS, 3_000 * MS)] == [0, 40 * MS, 3_000 * MS]  # 3 s of lost frames


def _arrivals(n: int, sender_step_ns: int, pts_step_ns: int, jitter_ms: float, seed: int = 0) -> list[tuple[int, int]]:
    """(pts, arrival) of n frames sent every ``sender_step_ns`` but stamped ``pts_step_ns`` apart, with network delay
    50 ms + up to ``jitter_ms``."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000 * 10**9
    return [(i * pts_step_ns, t0 + i * sender_step_ns + 50 * MS + int(rng.uniform(0, jitter_ms) * MS))
            for i in range(n)]


@pytest.mark.parametrize("sender_step_ms", [40.0, 42.0, 38.0])  # true rate, a sender clock slow, fast by 5%
def test_stream_clock_stays_on_the_wall_clock_and_never_stamps_after_arrival(sender_step_ms: float) -> None:
    clock = StreamClock()
    frames = _arrivals(1500, round(sender_step_ms * MS), 40 * MS, jitter_ms=5.0)  # a minute of a 25 fps stream
    t = [clock.stamp(pts, arrival, arrival) for pts, arrival in frames]
    lag_ms = [(arrival - ti) / MS for (_, arrival), ti in zip(frames, t)]
    assert min(lag_ms) >= 0  # never later than the frame's arrival
    # Bounded by the jitter plus the drift over one 2 s window (5% of 2 s = 100 ms), the same at the end as early on:
    # pts alone would be 3 s off after a minute at 5% drift.
    assert max(lag_ms[50:]) < 5 + 110
    assert all(b > a for a, b in zip(t, t[1:]))


def test_stream_clock_keeps_the_sender_spacing_while_delays_only_jitter() -> None:
    clock = StreamClock()
    frames = _arrivals(200, 40 * MS, 40 * MS, jitter_ms=5.0)
    t = [clock.stamp(pts, arrival, arrival) for pts, arrival in frames]
    steps = np.diff(t[100:]) / MS
    # The window's smallest delay changes only when a faster frame comes: most steps are exactly the pts step.
    assert np.mean(steps == 40.0) > 0.8 and np.all(np.abs(steps - 40.0) < 6.0)


def test_stream_clock_catches_up_after_a_buffered_start_and_restarts_when_pts_go_back() -> None:
    clock = StreamClock()
    t0 = 1_700_000_000 * 10**9
    # FFmpeg hands over 2 s of buffered frames at once, then frames come in real time.
    burst = [(i * 40 * MS, t0 + i * MS) for i in range(50)]
    live = [((50 + i) * 40 * MS, t0 + 50 * MS + (i + 1) * 40 * MS) for i in range(20)]
    t = [clock.stamp(p, a, a) for p, a in burst + live]
    assert all(ti <= a for ti, (_, a) in zip(t, burst + live))
    assert 0 <= live[-1][1] - t[-1] <= MS  # in step with the wall clock once the backlog is gone
    end = live[-1][1]
    back = clock.stamp(0, end + 40 * MS, end + 40 * MS)  # the sender restarted its pts
    assert clock.restarted and back == end + 40 * MS
    assert clock.stamp(0, end + 41 * MS, end + 41 * MS) == back + 1 and not clock.restarted  # a repeat: just after


@pytest.mark.parametrize("step_s", [-10, 3600])
def test_a_stepped_wall_clock_moves_a_streams_stamps_at_once(step_s: int) -> None:
    clock = StreamClock()
    frames = _arrivals(100, 40 * MS, 40 * MS, jitter_ms=5.0)  # arrivals on the monotonic clock
    wall = [a + 7 * MS + (step_s * 10**9 if i >= 50 else 0) for i, (_, a) in enumerate(frames)]  # stepped at 50
    t = [clock.stamp(p, a, w) for (p, a), w in zip(frames, wall)]
    assert all(b > a for a, b in zip(t[:50], t[1:50])) and all(b > a for a, b in zip(t[50:], t[51:]))
    lag_ms = [(w - ti) / MS for ti, w in zip(t, wall)]
    assert min(lag_ms) >= 0 and max(lag_ms[50:]) < 60  # the stream's own delay, before and after the step
    assert np.diff(t[50:]).mean() == pytest.approx(40 * MS, rel=0.05)
    fresh, mono = StreamClock(), []
    for (p, a), w in zip(frames, wall):
        fresh.stamp(p, a, w)
        mono.append(fresh.mono_ns)
    # the same stamps on the monotonic clock, which latency is measured on: never after arrival, the step not in them
    assert all(0 <= a - m < 60 * MS for (_, a), m in zip(frames, mono))
    assert [ti - m for ti, m in zip(t, mono)] == [7 * MS + (step_s * 10**9 if i >= 50 else 0) for i in range(100)]


def test_file_clock_keeps_a_forward_jump_when_told_to_so_times_stay_the_pts() -> None:
    clock = FileClock(period_ns=40 * MS, rebase_ahead=False)  # an unpaced source: nothing would sleep through it
    pts = [0, JUMP_NS + 40 * MS, JUMP_NS + 80 * MS, 40 * MS]
    assert [clock.stamp(p) for p in pts] == pts[:3] + [JUMP_NS + 120 * MS]  # a jump back is still shifted out


def test_file_clock_reports_no_fix_for_the_first_frame_of_a_new_pass() -> None:
    """A loop's new pass is expected, not a discontinuity: ``fix`` stays empty on the frame that starts it."""
    clock = FileClock(period_ns=40 * MS)
    for p in (0, 40, 80):
        clock.stamp(p * MS)
    clock.new_pass()
    assert clock.stamp(0) == 120 * MS and clock.fix == ""


def test_file_clock_new_pass_moves_only_the_first_frame_of_the_pass() -> None:
    """After the pass's first frame the file's own pts spacing comes back (here a 100 ms gap), not one period each."""
    clock = FileClock(period_ns=40 * MS)
    clock.stamp(0)
    clock.new_pass()
    assert [clock.stamp(p * MS) for p in (0, 100, 140)] == [40 * MS, 140 * MS, 180 * MS]
    assert clock.fix == ""


def test_file_clock_keeps_a_forward_step_of_exactly_the_jump_threshold() -> None:
    """Only a step of more than :data:`JUMP_NS` is a discontinuity (FFmpeg's dts_delta_threshold)."""
    clock = FileClock(period_ns=40 * MS)
    assert [clock.stamp(p) for p in (0, JUMP_NS)] == [0, JUMP_NS] and clock.fix == ""
    assert clock.stamp(2 * JUMP_NS + 1) == JUMP_NS + 40 * MS and clock.fix == "rebased"


def test_file_clock_places_each_of_several_repeated_pts_just_after_the_previous_frame() -> None:
    clock = FileClock(period_ns=40 * MS)
    t = [clock.stamp(p * MS) for p in (0, 40, 40, 40, 80)]
    assert t == [0, 40 * MS, 40 * MS + 1, 40 * MS + 2, 80 * MS]


def test_file_clock_spaces_frames_whose_times_stand_still_by_the_declared_period() -> None:
    # a file whose frames all carry one pts went out at once, unpaced, and was played again and again
    clock = FileClock(period_ns=MS // 2, still_ns=40 * MS)  # an average rate taken from those very times: ~0
    t = [clock.stamp(0) for _ in range(STILL_REPEATS + 4)]
    assert t[:STILL_REPEATS + 1] == list(range(STILL_REPEATS + 1))  # a few repeats: 1 ns apart, as any repeat
    assert [b - a for a, b in zip(t[STILL_REPEATS:], t[STILL_REPEATS + 1:])] == [40 * MS] * 3
    assert clock.fix == "frozen" and clock.stamp(1000 * MS) == 1000 * MS  # times that advance again are kept


def test_a_wall_clock_read_a_few_ms_apart_from_the_monotonic_one_is_no_step() -> None:
    """The two clocks are read one after the other; a thread preempted between them reads them apart by a few ms,
    which must not move the stream's stamps (only a step beyond 10 ms does): the sender's spacing is kept."""
    rng = np.random.default_rng(0)
    clock = StreamClock()
    frames = _arrivals(100, 40 * MS, 40 * MS, jitter_ms=0.0)
    t = [clock.stamp(p, a, a + 7 * MS + int(rng.uniform(0, 5) * MS)) for p, a in frames]
    assert np.diff(t).tolist() == [40 * MS] * 99


def test_file_clock_places_a_frame_back_by_up_to_one_period_just_after_the_previous_one() -> None:
    """Back by less than a period, or by exactly one, is no discontinuity: the frame comes 1 ns after the previous
    one and the frames after it keep their own times (only more than a period back moves the offset)."""
    clock = FileClock(period_ns=40 * MS)
    t, fixes = [], []
    for p in (0, 40, 80, 60, 120, 80, 160):
        t.append(clock.stamp(p * MS))
        fixes.append(clock.fix)
    assert t == [0, 40 * MS, 80 * MS, 80 * MS + 1, 120 * MS, 120 * MS + 1, 160 * MS]
    assert fixes == ["", "", "", "nudged", "", "nudged", ""]


def test_file_clock_takes_a_forward_step_of_ffmpegs_ten_seconds_as_a_gap_and_beyond_as_a_discontinuity() -> None:
    kept, moved = FileClock(period_ns=40 * MS), FileClock(period_ns=40 * MS)
    assert [kept.stamp(p) for p in (0, 9_990 * MS)] == [0, 9_990 * MS] and kept.step_ns == 9_990 * MS
    assert [moved.stamp(p) for p in (0, 10_010 * MS)] == [0, 40 * MS] and moved.fix == "rebased"


def test_file_clock_first_frame_has_no_step_and_a_new_pass_before_any_frame_keeps_its_pts() -> None:
    clock = FileClock(period_ns=40 * MS)
    assert clock.stamp(5 * MS) == 5 * MS and clock.step_ns == 0 and clock.fix == ""
    fresh = FileClock(period_ns=40 * MS)
    fresh.new_pass()
    assert fresh.stamp(5 * MS) == 5 * MS


def test_file_clock_shift_moves_every_later_time_also_one_placed_after_the_previous_frame() -> None:
    """A loop's passes stepped over (a copied-over file's lost frames) shift the times that follow: those of the
    same pass, the next pass's first frame (one period after the shifted last one), and a first frame not yet read."""
    clock = FileClock(period_ns=40 * MS)
    assert [clock.stamp(p * MS) for p in (0, 40)] == [0, 40 * MS]
    clock.shift(1_000 * MS)
    assert clock.stamp(80 * MS) == 1_080 * MS
    clock.new_pass()
    clock.shift(1_000 * MS)
    assert clock.stamp(0) == 2_120 * MS
    unread = FileClock(period_ns=40 * MS)
    unread.shift(1_000 * MS)
    assert unread.stamp(0) == 1_000 * MS


def test_stream_clock_offset_is_the_least_of_the_last_two_seconds_of_arrivals() -> None:
    clock = StreamClock()
    assert clock.stamp(0, 1_000 * MS, 1_000 * MS) == 1_000 * MS  # the least delay: 1 s
    assert clock.stamp(40 * MS, 3_000 * MS, 3_000 * MS) == 1_040 * MS  # 2 s later: still in the window
    assert clock.stamp(80 * MS, 3_100 * MS, 3_100 * MS) == 3_040 * MS  # out of it: the next least, 2.96 s


def test_stream_clock_takes_the_clocks_read_ten_ms_apart_as_no_step_and_beyond_as_one() -> None:
    epoch = 1_700_000_000 * 10**9
    clock = StreamClock()
    assert clock.stamp(0, 1_000 * MS, epoch + 1_000 * MS) == epoch + 1_000 * MS
    assert clock.stamp(40 * MS, 1_040 * MS, epoch + 1_050 * MS) == epoch + 1_040 * MS  # read 10 ms apart
    assert clock.stamp(80 * MS, 1_080 * MS, epoch + 1_090 * MS + 1) == epoch + 1_090 * MS + 1  # stepped
