"""``clock: sender``: whether an RTSP camera's capture times, from its RTCP sender reports, are on this machine's
clock, judged at each frame.

A frame's lag (its arrival less its sender time) is the sender clock's offset behind ours plus the frame's delivery:
the camera's encoder, the network, and a decoder catching up after a busy moment (FFmpeg's probe of the stream as it
opens, a load peak). Delivery is never negative, so a frame ahead of its arrival shows the clock ahead, while a lag of
seconds may be either: the least lag of the last minute bounds the offset. One frame delivered in time shows the
clock ours, and a decoder seconds behind after it keeps its frames' capture times instead of stamping them by arrival
(seconds late, then squeezed together as it caught up); a clock drifting behind shows within the minute. A step
of either clock (this machine's, seen against its monotonic clock; the sender's, as its pts going back) makes the
last minute's lags another clock's: the judging starts again from the next frame, as at the first.
"""

from __future__ import annotations

from collections import deque

from streamfuse.sync import CLOCK_STEP_NS

__all__ = ["SenderClock", "SENDER_AHEAD_NS", "SENDER_BEHIND_NS"]

# a sender's capture time more than this after its frame's arrival, or (every frame of the last minute) before it,
# is another clock's
SENDER_AHEAD_NS, SENDER_BEHIND_NS = 500 * 10**6, 5 * 10**9
_WINDOW_NS = 60 * 10**9


class SenderClock:
    """Each frame's sender capture time, or None where the sender's clock is not this machine's.

    Attributes:
        kind: why the last frame had none: ``none`` (no sender report yet), ``off`` (another clock); '' where it had.
        note: that reason in words.
    """

    def __init__(self) -> None:
        # (monotonic arrival, lag) of the window, lags increasing: least first
        self._lags: deque[tuple[int, int]] = deque()
        self._pts_ns = self._wall_less_mono_ns = 0
        self.kind = self.note = ""

    def sent_ns(self, real_us: int | None, pts_ns: int, wall_ns: int, mono_ns: int) -> int | None:
        """The sender's capture time of the frame with this pts arriving at ``wall_ns`` (``time.time_ns()``) and
        ``mono_ns`` (``time.monotonic_ns()``), given the stream's NTP time of pts 0 in microseconds (None without a
        report), or None."""
        if real_us is None:
            self.kind, self.note = "none", "no RTCP sender report (yet): stamped by arrival"
            return None
        sent = real_us * 1000 + pts_ns
        lag = wall_ns - sent
        stepped = abs(wall_ns - mono_ns - self._wall_less_mono_ns) > CLOCK_STEP_NS or pts_ns < self._pts_ns
        self._pts_ns, self._wall_less_mono_ns = pts_ns, wall_ns - mono_ns
        while self._lags and (stepped or self._lags[-1][1] >= lag):
            self._lags.pop()
        self._lags.append((mono_ns, lag))
        while self._lags[0][0] < mono_ns - _WINDOW_NS:
            self._lags.popleft()
        if lag < -SENDER_AHEAD_NS or self._lags[0][1] > SENDER_BEHIND_NS:
            self.kind, self.note = "off", (f"the sender's clock is {-lag / 1e9:+.3f} s off this machine's at its "
                                           f"frame's arrival (not NTP-synced?): stamped by arrival")
            return None
        self.kind = self.note = ""
        return sent
