"""Capture times of decoded video frames: a file's pts kept strictly increasing, a live stream's pts put on this
machine's epoch clock. Both take pts already converted once to ns (``pts * time_base``) and return ``t_capture_ns``.

Files (:class:`FileClock`): ``t = pts + offset``. A discontinuity (pts back by more than one frame period, as in
concatenated MPEG-TS recordings or a camera that restarted, or forward by more than :data:`JUMP_NS`, FFmpeg's
``dts_delta_threshold``, unless the caller keeps such gaps) moves the offset so that the frame comes one period
after the previous one; a frame whose pts repeats or goes back by less than a period is placed 1 ns after the previous
one, and the frames after it keep their own times. A pts repeated more than :data:`STILL_REPEATS` times in a row says
the frame times do not advance (a broken file): such frames go one period apart (``"frozen"``), at the rate the file
declares, from the first repeat on where the caller looked at the frames after it (a file source does). Either way
times stay strictly increasing, so pairing and realtime pacing never see time run backwards.

Live streams (:class:`StreamClock`): ``t = pts + offset``, where the offset is the smallest ``arrival - pts`` over the
last :data:`WINDOW_NS` of frames. A stamp is therefore never later than its frame's arrival: frames FFmpeg buffered
while it probed the stream (seconds of them, delivered at once) do not push every later time into the future, and a
sender whose clock runs slower or faster than ours is followed within the window instead of drifting away from the
wall clock. Within the window the sender's frame spacing is kept; pts that go backwards (a sender restart) start the
window again, and a repeated pts is placed 1 ns after the previous frame. All of this runs on a clock that never
steps (``time.monotonic_ns()``), put on the epoch as the wall clock reads at the frame's arrival: a wall clock stepped
by NTP or by hand moves the stamps at once, as it moves a camera's, instead of freezing them until it comes back.

>>> clock = FileClock(period_ns=40)
>>> [clock.stamp(p) for p in (0, 40, 80, 80, 10, 50)]  # a repeat, then back by more than a period
[0, 40, 80, 81, 121, 161]
>>> still = FileClock(period_ns=40)
>>> [still.stamp(0) for _ in range(8)]  # times that do not advance
[0, 1, 2, 3, 4, 5, 45, 85]
>>> still = FileClock(period_ns=40)
>>> [still.stamp(0, repeats_ahead=min(7 - i, 5)) for i in range(8)]  # the same, known from the first repeat
[0, 40, 80, 120, 160, 200, 240, 280]
>>> live = StreamClock()
>>> [live.stamp(pts, arrival, arrival) for pts, arrival in ((0, 1000), (40, 1001), (80, 1050))]  # two came at once
[1000, 1001, 1041]
"""

from __future__ import annotations

from collections import deque

__all__ = ["FileClock", "StreamClock", "JUMP_NS", "STILL_REPEATS", "WINDOW_NS"]

JUMP_NS = 10 * 10**9  # a forward pts step beyond this is a discontinuity, not a gap (FFmpeg's dts_delta_threshold)
STILL_REPEATS = 5  # a pts repeated by more frames in a row than a duplicated picture's few: the times stand still
WINDOW_NS = 2 * 10**9  # a live stream's offset is the smallest arrival - pts over this much recent arrival time
# wall minus monotonic clock moves by more than this only when the wall clock is stepped: NTP slews smaller offsets
# (ntpd steps from 128 ms on), and a thread preempted between the two clocks' reads seldom waits this long
_READ_APART_NS = 10 * 10**6


class FileClock:
    """A video file's times: pts plus an offset that absorbs discontinuities (see the module docstring).

    After each :meth:`stamp`, ``fix`` says what was corrected (``""``, ``"rebased"``: a discontinuity, ``"nudged"``:
    a repeated pts, ``"frozen"``: one of times that stand still, placed ``still_ns`` on) and ``step_ns`` is the raw
    pts step from the previous frame.

    Args:
        period_ns: the video's frame interval, ns: the step after a discontinuity or a new loop pass.
        rebase_ahead: shift out a forward jump beyond :data:`JUMP_NS` (a source paced in real time would sleep
            through it); False keeps it, so the times stay the file's pts (a replay writes them back as pts).
        still_ns: the step between frames whose times stand still (``"frozen"``); default ``period_ns``.
    """

    def __init__(self, period_ns: int, *, rebase_ahead: bool = True, still_ns: int | None = None) -> None:
        self.period_ns, self.still_ns = period_ns, still_ns or period_ns
        self.rebase_ahead = rebase_ahead
        self.fix, self.step_ns = "", 0
        self._repeats = 0  # frames in a row whose pts is the previous one's
        self._offset_ns = 0
        self._last_pts_ns: int | None = None
        self._last_t_ns: int | None = None
        self._new_pass = False

    def new_pass(self) -> None:
        """A loop starts the video again: its next frame comes one period after the last one (not a discontinuity)."""
        self._new_pass = True

    def shift(self, ns: int) -> None:
        """Move the times of every later frame by ``ns``: a loop's whole passes stepped over (times repeat from pass
        to pass, shifted, as each pass starts one period after the last one's end)."""
        self._offset_ns += ns
        if self._last_t_ns is not None:
            self._last_t_ns += ns

    def stamp(self, pts_ns: int, repeats_ahead: int = 0) -> int:
        """The capture time of the frame with this pts, ns; ``repeats_ahead``: how many frames right after it repeat
        its pts (as far as the caller looked), so that times standing still are spaced from their first repeat on."""
        last_pts, last_t = self._last_pts_ns, self._last_t_ns
        self.step_ns = 0 if last_pts is None else pts_ns - last_pts
        self.fix, self._last_pts_ns = "", pts_ns
        self._repeats = self._repeats + 1 if last_pts is not None and self.step_ns == 0 else 0
        ahead = self.rebase_ahead and self.step_ns > JUMP_NS
        if last_t is not None and (self._new_pass or self.step_ns < -self.period_ns or ahead):
            self._offset_ns = last_t + self.period_ns - pts_ns
            self.fix = "" if self._new_pass else "rebased"
            self._new_pass = False
        elif last_t is not None and pts_ns + self._offset_ns <= last_t:
            # just after the previous frame, the frames after it keeping their own times; a period on where the
            # times stand still (else a whole file would go at once, unpaced)
            still = self._repeats + repeats_ahead > STILL_REPEATS
            self.fix = "frozen" if still else "nudged"
            self._last_t_ns = last_t + (self.still_ns if still else 1)
            return self._last_t_ns
        self._last_t_ns = pts_ns + self._offset_ns
        return self._last_t_ns


class StreamClock:
    """A live stream's times on the epoch clock (see the module docstring).

    After each :meth:`stamp`, ``restarted`` is True when pts went backwards (the window started again).
    """

    def __init__(self) -> None:
        self.restarted = False
        self._candidates: deque[tuple[int, int]] = deque()  # (arrival_ns, arrival - pts), offsets increasing
        self._last_pts_ns: int | None = None
        self._last_t_ns: int | None = None
        self._epoch_ns = 0  # the wall clock minus the monotonic one, as last stepped
        self.mono_ns = 0  # the last stamp on the monotonic clock, which latency is measured on (Frame.t_mono_ns)

    def stamp(self, pts_ns: int, arrival_ns: int, wall_ns: int) -> int:
        """The capture time (epoch ns) of the frame with this pts, decoded at ``arrival_ns`` on the monotonic clock,
        when the wall clock read ``wall_ns``."""
        if self._last_t_ns is None or abs(wall_ns - arrival_ns - self._epoch_ns) > _READ_APART_NS:
            self._epoch_ns = wall_ns - arrival_ns  # the first frame, or the wall clock was stepped
        self.restarted = self._last_pts_ns is not None and pts_ns < self._last_pts_ns
        if self.restarted:
            self._candidates.clear()
        self._last_pts_ns = pts_ns
        offset = arrival_ns - pts_ns
        # Sliding-window minimum: a candidate not smaller than a newer one can never be the minimum again.
        while self._candidates and self._candidates[-1][1] >= offset:
            self._candidates.pop()
        self._candidates.append((arrival_ns, offset))
        while self._candidates[0][0] < arrival_ns - WINDOW_NS:
            self._candidates.popleft()
        t = pts_ns + self._candidates[0][1]
        if self._last_t_ns is not None and t <= self._last_t_ns:
            t = self._last_t_ns + 1  # a repeated pts, or a restart below the previous stamp: keep times increasing
        self._last_t_ns = self.mono_ns = t
        return t + self._epoch_ns
