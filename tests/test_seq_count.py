"""SeqCounter: a subscriber's account of the publisher's seq (gaps, restarts, repeats, leaps no publisher makes)."""

from __future__ import annotations

import logging
import types

import pytest

from streamfuse import seq_count
from streamfuse.seq_count import MAX_FPS, SeqCounter
from streamfuse.wire import MalformedMessage


@pytest.fixture(autouse=True)
def own_restart_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's restarts are said as if no earlier test's subscriber had said one."""
    monkeypatch.setattr(seq_count, "_said_restart", {}, raising=False)


def test_a_restart_is_said_once_for_all_the_subscribers_of_its_endpoint(monkeypatch, caplog) -> None:
    # a process with several subscribers on one publisher (the viewer's fused frames and previews, a program's own
    # Subscribers) said "publisher at ENDPOINT restarted (seq 0 after N)" once for each: five lines from five
    ticks = iter(range(1000))
    monkeypatch.setattr(seq_count, "time", types.SimpleNamespace(monotonic=lambda: float(next(ticks))))
    endpoint = "tcp://pub.test:14005"
    counters = [SeqCounter(endpoint) for _ in range(3)]
    other = SeqCounter("tcp://other.test:14006")
    with caplog.at_level(logging.DEBUG, "streamfuse.seq_count"):
        for seq in (40, 0, 1):  # the last frame of the old publisher, the first two of the new one
            for counter in (*counters, other):
                counter.take(seq, "payload")
        assert counters[1].take(0, "payload") == 0  # it restarts again, after a frame of its new stream
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    line = "publisher at {} restarted (seq 0 after {})".format
    assert said == [(logging.INFO, line(endpoint, 40))] + [(logging.DEBUG, line(endpoint, 40))] * 2 + \
        [(logging.INFO, line("tcp://other.test:14006", 40)), (logging.INFO, line(endpoint, 1))]
    assert [c.restarts for c in (*counters, other)] == [1, 2, 1, 1]


def test_gaps_and_restarts_are_counted_as_before(caplog: pytest.LogCaptureFixture) -> None:
    seqs = SeqCounter("tcp://x")
    with caplog.at_level(logging.INFO, "streamfuse.seq_count"):
        assert [seqs.take(seq, "payload") for seq in (40, 41, 45, MAX_FPS + 45, 0, 1)] == [0, 0, 3, MAX_FPS - 1, 0, 0]
    assert caplog.messages == [f"publisher at tcp://x restarted (seq 0 after {MAX_FPS + 45})"]


def test_a_repeated_seq_is_malformed_unless_it_is_the_other_routes_copy() -> None:
    seqs = SeqCounter("tcp://x")
    assert seqs.take(7, "shm") == 0
    assert seqs.take(7, "payload") is None  # the same frame as the descriptor, while the subscriber switches
    for route in ("payload", "shm"):
        with pytest.raises(MalformedMessage, match="seq 7 repeats the last frame's"):
            seqs.take(7, route)
    assert seqs.take(8, "payload") == 0


def test_a_leap_no_publisher_makes_is_malformed(caplog: pytest.LogCaptureFixture) -> None:
    # A forged seq of 2^63-1 made missed 2^63 and the next real frame log "restarted (seq 68 after 2^63-1)".
    seqs = SeqCounter("tcp://x")
    with caplog.at_level(logging.INFO, "streamfuse.seq_count"):
        assert seqs.take(67, "payload") == 0
        for forged in (2**63 - 1, 2**62, 2**63 - 1):  # none goes on from the one before
            with pytest.raises(MalformedMessage, match=f"seq {forged} after 67: more than {MAX_FPS} frames a second"):
                seqs.take(forged, "payload")
        assert (seqs.take(68, "payload"), seqs.last) == (0, 68)
    assert caplog.messages == []


def test_a_stream_going_on_from_a_leap_is_taken_as_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    # another publisher, long running, took the endpoint: one frame is refused, then its stream is followed
    seqs = SeqCounter("tcp://x")
    seqs.take(3, "payload")
    with pytest.raises(MalformedMessage):
        seqs.take(10**12, "payload")
    with caplog.at_level(logging.INFO, "streamfuse.seq_count"):
        assert (seqs.take(10**12 + 2, "payload"), seqs.restarted) == (0, True)  # an h264 decoder starts afresh
        assert (seqs.take(10**12 + 3, "payload"), seqs.restarted) == (0, False)
    assert caplog.messages == [f"publisher at tcp://x restarted (seq {10**12 + 2} after 3)"]


def test_frames_passed_over_on_purpose_are_not_missed() -> None:
    # latest mode skips the ring entries older than the newest: discarded, not lost on the way
    seqs = SeqCounter("tcp://x")
    seqs.take(5, "shm")
    seqs.skip(3)
    assert (seqs.take(9, "shm"), seqs.last) == (0, 9)


def test_frames_passed_over_after_the_first_frame_of_seq_0_are_not_missed_either() -> None:
    # seq 0 is a frame taken like any other: the frames passed over after it are counted from it
    seqs = SeqCounter("tcp://x")
    seqs.take(0, "shm")
    seqs.skip(3)
    assert (seqs.take(4, "shm"), seqs.last) == (0, 4)


def test_a_restart_one_frame_back_is_a_restart_not_minus_two_missed() -> None:
    seqs = SeqCounter("tcp://x")
    assert seqs.take(5, "payload") == 0
    assert (seqs.take(4, "payload"), seqs.restarted, seqs.last) == (0, True, 4)


def test_a_forged_leap_sent_twice_is_refused_twice() -> None:
    # the second copy of a refused leap is no stream going on from it: it must not take the counter over
    seqs = SeqCounter("tcp://x")
    seqs.take(3, "payload")
    for _ in range(2):
        with pytest.raises(MalformedMessage, match=r"seq 1000000000000 after 3"):
            seqs.take(10**12, "payload")
    assert (seqs.take(4, "payload"), seqs.last, seqs.restarted) == (0, 4, False)


def test_a_frame_taken_forgets_the_leap_refused_before_it() -> None:
    seqs = SeqCounter("tcp://x")
    seqs.take(3, "payload")
    with pytest.raises(MalformedMessage):
        seqs.take(10**12, "payload")
    assert seqs.take(4, "payload") == 0
    with pytest.raises(MalformedMessage, match=r"seq 1000000000001 after 4"):  # a leap of its own, refused
        seqs.take(10**12 + 1, "payload")


def test_how_far_ahead_a_seq_may_be_is_timed_from_the_last_frame_and_the_last_leap(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(seq_count, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    seqs = SeqCounter("tcp://x")
    seqs.take(0, "payload")
    assert seqs.take(MAX_FPS, "payload") == MAX_FPS - 1  # at once: a second's worth (the 1 s of slack) is allowed
    now[0] = 100.0
    seqs.take(MAX_FPS + 1, "payload")
    with pytest.raises(MalformedMessage):  # no time since the last frame: not 100 s since the first
        seqs.take(3 * MAX_FPS, "payload")
    now[0] = 105.0
    leap = MAX_FPS + 1 + 20 * MAX_FPS  # 6 s' worth is allowed after 5 s
    with pytest.raises(MalformedMessage):
        seqs.take(leap, "payload")
    now[0] = 106.0
    with pytest.raises(MalformedMessage):  # 5 s' worth past the leap, 1 s after it: refused as well
        seqs.take(leap + 5 * MAX_FPS, "payload")


def test_a_fast_publisher_s_real_gap_is_counted_as_missed(monkeypatch) -> None:
    # small frames published at 40 000 a second while the consumer stalled for 2.5 s: 100 000 frames lost on the way,
    # a gap to count, not a forged seq to refuse
    now = [0.0]
    monkeypatch.setattr(seq_count, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    seqs = SeqCounter("tcp://x")
    seqs.take(7, "payload")
    now[0] = 2.5
    assert (seqs.take(7 + 100_001, "payload"), seqs.restarted) == (100_000, False)
