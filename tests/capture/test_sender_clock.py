"""``clock: sender``'s judge of a camera's clock, frame by frame, on arrival times the test gives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from streamfuse.capture.sender_clock import SenderClock
from streamfuse.capture.sources import SourceConfig, open_source
from streamfuse.capture.video_sources import AvSource

S = 10**9
REPORT_US = 1_700_000_000 * 10**6  # the stream's NTP time of pts 0, from its sender reports


@pytest.fixture
def source(monkeypatch):
    """An RTSP source with ``clock: sender``, opened on a stand-in container whose reports give REPORT_US; its warnings
    in ``source.lines``."""
    container = SimpleNamespace(format=SimpleNamespace(name="rtsp"), start_time_realtime=REPORT_US)
    monkeypatch.setattr(AvSource, "_open_container", lambda self: setattr(self, "_container", container))
    src = open_source("vis", SourceConfig(kind="stream", path="rtsp://camera/1", clock="sender"))
    src.lines = []
    src.warn = src.lines.append
    src._open()
    return src


def _frame(src, pts_s: float, lag_s: float, stepped_s: float = 0) -> int | None:
    """The sender time given to a frame of pts ``pts_s`` that arrives ``lag_s`` after its capture, on a wall clock
    stepped ``stepped_s`` ahead of the monotonic clock since the run began."""
    wall_ns = REPORT_US * 1000 + round((pts_s + lag_s) * S)
    return src._sent_ns(round(pts_s * S), wall_ns, wall_ns - REPORT_US * 1000 - round(stepped_s * S))


def test_frames_a_decoder_gives_seconds_late_keep_their_capture_times_once_the_clock_was_found_ours(source):
    # a busy machine's decoder fell 6 s behind the camera after its first frames came 0.3 s after their capture:
    # stamped by arrival, they were 6 s late, said to be of a clock not NTP-synced, and squeezed together after it
    assert _frame(source, 0, 0.3) == REPORT_US * 1000
    assert [_frame(source, 10 + k / 25, 6 + k / 25) for k in range(25)] == \
        [REPORT_US * 1000 + (10 * 25 + k) * S // 25 for k in range(25)]
    assert source.lines == []


def test_a_clock_behind_for_a_minute_is_another_clock_however_it_began(source):
    # a clock that drifted behind: told once none of the last minute's frames came within 5 s of their sender time
    assert _frame(source, 0, 0.3) is not None
    assert all(_frame(source, t, 6) is not None for t in range(1, 55))
    assert _frame(source, 61, 6) is None and _frame(source, 62, 6) is None
    assert source.lines == ["vis: rtsp://camera/1: clock: sender: the sender's clock is -6.000 s off this machine's at "
                            "its frame's arrival (not NTP-synced?): stamped by arrival"]


@pytest.mark.parametrize("lag_s, offset", [(6, "-6.000"), (-0.6, "+0.600")])
def test_a_clock_off_from_the_first_frame_is_told_once_and_stamped_by_arrival(source, lag_s, offset):
    assert _frame(source, 0, lag_s) is None and _frame(source, 1, lag_s) is None
    assert source.lines == [f"vis: rtsp://camera/1: clock: sender: the sender's clock is {offset} s off this "
                            f"machine's at its frame's arrival (not NTP-synced?): stamped by arrival"]


def test_a_step_of_this_machines_clock_makes_the_camera_clock_another_at_once(source):
    # NTP stepped this machine's clock 10 s ahead: the camera, found ours before, is now 10 s behind, and its frames
    # were stamped 10 s in the past (paired with nothing) for a minute, on the lags of before the step
    assert _frame(source, 0, 0.3) is not None and _frame(source, 1, 0.3) is not None
    assert _frame(source, 2, 10.3, stepped_s=10) is None
    assert source.lines == ["vis: rtsp://camera/1: clock: sender: the sender's clock is -10.300 s off this machine's "
                            "at its frame's arrival (not NTP-synced?): stamped by arrival"]


def test_a_step_back_of_the_camera_clock_makes_it_another_at_once(source):
    # the camera's clock stepped 10 s back (its pts, from its sender reports, go back with it)
    assert _frame(source, 0, 0.3) is not None and _frame(source, 1, 0.3) is not None
    assert _frame(source, -8, 10.3) is None
    assert source.lines == ["vis: rtsp://camera/1: clock: sender: the sender's clock is -10.300 s off this machine's "
                            "at its frame's arrival (not NTP-synced?): stamped by arrival"]


def _judged(frames: list[tuple[float, float]], *, step_s: float = 0, pts_s: list[float] | None = None) -> list[bool]:
    """Whether :class:`SenderClock` keeps the sender time of each frame, given as (monotonic arrival, lag) in
    seconds, pts its capture time unless ``pts_s`` gives them; the wall clock stepped ``step_s`` ahead from the last
    frame on."""
    judge, kept = SenderClock(), []
    for i, (mono_s, lag_s) in enumerate(frames):
        mono_ns = round(mono_s * S)
        pts_ns = round((mono_s - lag_s if pts_s is None else pts_s[i]) * S)
        wall_ns = REPORT_US * 1000 + mono_ns + (round(step_s * S) if i == len(frames) - 1 else 0)
        sent = judge.sent_ns(REPORT_US, pts_ns, wall_ns, mono_ns)
        assert sent in (None, REPORT_US * 1000 + pts_ns)
        assert judge.kind == ("" if sent is not None else "off")
        kept.append(sent is not None)
    return kept


def test_a_frame_without_a_sender_report_is_stamped_by_arrival() -> None:
    judge = SenderClock()
    assert judge.sent_ns(None, 0, REPORT_US * 1000, 0) is None
    assert (judge.kind, judge.note) == ("none", "no RTCP sender report (yet): stamped by arrival")


def test_a_sender_time_up_to_half_a_second_after_arrival_is_ours_and_later_is_not() -> None:
    assert _judged([(10, -0.5)]) == [True]
    assert _judged([(10, -0.5 - 1e-9)]) == [False]


def test_a_lag_of_up_to_five_seconds_is_a_delivery_and_the_least_lag_of_a_minute_bounds_the_offset() -> None:
    assert _judged([(10, 5.0)]) == [True] and _judged([(10, 5.0 + 1e-9)]) == [False]
    # the frame in time keeps the judging for exactly a minute; a later, smaller lag takes over from it
    assert _judged([(10, 1), (16, 6), (70, 6), (70.5, 6)]) == [True, True, True, False]
    assert _judged([(10, 1), (16, 6), (18, 3), (71.5, 6)]) == [True, True, True, True]
    assert _judged([(10, 6), (11, 1), (17, 6)]) == [False, True, True]


def test_a_step_of_exactly_the_clock_step_limit_or_a_repeated_pts_keeps_the_judging() -> None:
    assert _judged([(10, 4.95), (11, 5.05)], step_s=0.1) == [True, True]
    assert _judged([(10, 4.95), (11, 5.05)], step_s=0.1 + 1e-9) == [True, False]
    assert _judged([(10, 4.95), (11, 5.05)], pts_s=[5.05, 5.05]) == [True, True]
