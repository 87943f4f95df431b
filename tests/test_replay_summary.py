"""What a replay reports (:mod:`streamfuse.replay.summary`): each count where the block says it is, the note on
inputs of unequal spans, and the stage table's units."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from test_replay import _replay_halves, make_cfg, write_video

import streamfuse.publish
from streamfuse.frames import Frame
from streamfuse.replay import run_replay
from streamfuse.replay.frame_times import FrameTimes
from streamfuse.replay.left_frames import LeftFrames
from streamfuse.replay.summary import ReplaySummary, StageClock
from streamfuse.sync import Pairer, SyncConfig


def test_the_summary_block_gives_each_streams_counts_in_their_places():
    summary = ReplaySummary(ir="ir.mp4", vis="vis.mp4", out="o.mkv", frames={"ir": 90, "vis": 100}, pairs=80,
                            fused=70, reused=10, written=80, unpaired={"ir": 3, "vis": 11},
                            dropped={"ir": 7, "vis": 9}, stopped="interrupted (Ctrl-C)")
    lines = summary.format().splitlines()
    assert lines[0] == "replay ir.mp4 + vis.mp4 -> o.mkv (NOT complete: interrupted (Ctrl-C))"
    assert lines[1] == ("  read ir 90, vis 100 | pairs 80 | fused 70 | reused 10 | written 80 | unpaired ir 3, vis 11 "
                        "| dropped ir 7, vis 9")


def test_a_run_whose_every_frame_the_publisher_refused_says_so():
    """Nothing published and every frame refused (a subscriber stuck from the start): the line that says so stays."""
    lines = ReplaySummary(ir="ir.mp4", vis="vis.mp4", out="o.mkv", publish_refused=4).format().splitlines()
    assert "  published 0 | refused by the publisher 4 (a subscriber's queue stayed full)" in lines


@pytest.mark.parametrize("after", [1, 12])
def test_frames_left_unpaired_after_the_other_input_ended_are_noted_down_to_one(after):
    summary = ReplaySummary(ir="ir.mp4", vis="vis.mp4", out="o.mkv", frames={"ir": 40, "vis": 40 + after})
    summary.outside["vis"]["after"] = after
    assert summary.unequal_note() == (f"the IR input ended first (after 40 frames): {after} visible frames after its "
                                      f"end are unpaired")


def test_an_input_without_frames_is_not_said_to_start_later():
    """Every visible frame is "before" an IR input that has none; the summary says the IR input has no frames, and the
    note must not call it one that starts later."""
    summary = ReplaySummary(ir="ir.mp4", vis="vis.mp4", out="o.mkv", frames={"ir": 0, "vis": 5})
    summary.outside["vis"]["before"] = 5
    assert summary.unequal_note() == ""
    summary.frames["ir"] = 3
    assert summary.unequal_note() == "the IR input starts later: 5 visible frames before its first frame are unpaired"


def test_the_pairers_leftovers_are_outside_the_other_span_only_beyond_the_pairing_tolerance():
    """Read in recorded order, the frames the pairer left are told apart at the end: those farther than the slop from
    the other stream's span could never pair (outside it, said in the note); the nearer ones lost a partner to a
    closer frame, unpaired among the pairs (80 and 220 ms: just the slop away, so they could have paired)."""
    ms, img = 1_000_000, np.zeros((2, 2), np.uint8)
    ir = [Frame("ir", i, t * ms, img) for i, t in enumerate((50, 80, 85, 98, 200, 215, 220, 260))]
    vis = [Frame("vis", i, t * ms, img) for i, t in enumerate((100, 200))]
    pairer, left, pairs = _paired(SyncConfig(slop_ms=20), sorted(ir + vis, key=lambda f: f.t_capture_ns))
    assert len(pairs) == 2
    summary = ReplaySummary(ir="ir.mcap", vis="ir.mcap", out="o.mkv", frames={"ir": 8, "vis": 2})
    summary.take_pairer(pairer, left)
    assert summary.outside == {"ir": {"before": 1, "after": 1}, "vis": {"before": 0, "after": 0}}
    assert summary.unpaired == {"ir": 6, "vis": 0} and summary.dropped == {"ir": 0, "vis": 0}


def test_visible_frames_while_the_ir_camera_paused_are_unpaired_not_dropped(tmp_path):
    """A fast replay reads the visible frames of an IR pause into the pairer's queue, which overflows: they had no IR
    frame within the tolerance and could never pair, and were counted dropped (frames lost, it read)."""
    kept = {"ir": [*range(10), *range(40, 50)], "vis": list(range(50))}
    summary, halves = _replay_halves(tmp_path, kept, 5)
    assert halves == [(i, i) for i in kept["ir"]]
    assert summary.unpaired == {"ir": 0, "vis": 30} and summary.dropped == {"ir": 0, "vis": 0}


@pytest.mark.parametrize("offset_ms", [0, 10], ids=["same_time", "just_the_tolerance_away"])
def test_a_dropped_frame_with_a_partner_in_the_tolerance_stays_dropped(offset_ms):
    """Read in recorded order with IR logged late, visible frames that had an IR frame of their time (or just the
    tolerance away, which the pairer pairs) were dropped from a full queue: a longer one would have paired them, so
    they stay ``dropped`` (the note's queue advice)."""
    ms, img = 1_000_000, np.zeros((2, 2), np.uint8)
    vis = [Frame("vis", i, i * 33 * ms, img) for i in range(6)]
    ir = [Frame("ir", i, (i * 33 + offset_ms) * ms, img) for i in range(6)]
    pairer, left, pairs = _paired(SyncConfig(slop_ms=10, queue_size=2), vis + ir)
    summary = ReplaySummary(ir="r.mcap", vis="r.mcap", out="o.mkv", frames={"ir": 6, "vis": 6})
    summary.take_pairer(pairer, left)
    assert len(pairs) == 2 and summary.dropped == {"ir": 0, "vis": 4} and summary.unpaired == {"ir": 4, "vis": 0}


def _paired(sync: SyncConfig, frames: list[Frame]) -> tuple[Pairer, LeftFrames, list]:
    """``frames`` read in this order and paired as a replay pairs them; the pairer, its leftovers and the pairs."""
    left = LeftFrames(sync.tolerance_ns)
    pairer = Pairer(sync, on_left=lambda frame, outcome: left.left(frame.stream, outcome, frame.t_capture_ns))
    pairs = []
    for frame in frames:
        left.read(frame.stream, frame.t_capture_ns)
        pairs += pairer.push(frame)
    pairs += pairer.flush()
    left.end()
    return pairer, left, pairs


def _kept_bytes_after(n: int) -> int:
    """What a replay's frame times hold after ``n`` frames a stream read in time order (60 frames/s; every 7th IR
    frame lost, its visible frame unpaired; a 0.5 s IR pause each 1000 frames, the visible frames then dropped)."""
    sync, period, img = SyncConfig(slop_ms=5, queue_size=4), 16_666_667, np.zeros((1, 1), np.uint8)
    times = FrameTimes(None, period, sync.tolerance_ns)  # the visible input is only asked for output pts
    pairer = Pairer(sync, on_left=times.left_pairer)
    tracemalloc.start()
    try:
        for i in range(n):
            for frame in (Frame("vis", i, i * period, img), Frame("ir", i, i * period + 2_000_000, img)):
                if frame.stream == "ir" and (i % 7 == 3 or i % 1000 >= 970):
                    continue
                times.read(frame, frame.t_capture_ns)
                pairer.push(frame)
                times.forget(pairer)
        kept = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*streamfuse*replay*")])
        return sum(stat.size for stat in kept.statistics("filename"))
    finally:
        tracemalloc.stop()


def test_a_long_replay_keeps_the_times_its_pairing_window_needs_not_those_of_every_frame():
    """A day of 60 frames/s video is 5 M frames a stream: the times kept for the end report (each frame's time line,
    each unpaired or dropped frame's time) grew by 8 bytes a frame, 80 MB a day; they stay as they were after a few
    thousand frames."""
    assert _kept_bytes_after(20_000) - _kept_bytes_after(2_000) < 4096


def test_the_stage_table_gives_ms_and_the_share_of_wall_time():
    clock = StageClock()
    for ms in range(1, 101):  # the frame processor's timings: 1 .. 100 ms
        clock.add({"fuse": float(ms)})
    table = clock.table(wall_s=10.1)
    fuse = table["fuse"]
    assert fuse["median_ms"] == pytest.approx(50.5) and fuse["p99_ms"] == pytest.approx(99.01)
    assert fuse["total_s"] == pytest.approx(5.05) and fuse["share"] == pytest.approx(0.5)
    assert set(table) == {"fuse"}  # stages without samples are left out


def test_a_stage_timed_on_two_threads_at_once_gives_its_share_per_thread():
    # both decoders' busy time made one share: 150% of the wall time, read as one thread busier than it can be
    clock = StageClock()
    clock.threads["decode_thread"] = 2
    for _ in range(2):  # each decoder busy 1.5 of the 2 s
        clock.add({"decode_thread": 1500.0})
    table = clock.table(wall_s=2.0)
    assert table["decode_thread"]["share"] == pytest.approx(0.75)
    summary = ReplaySummary(ir="ir.mp4", vis="vis.mp4", out="o.mp4", stages=table)
    assert summary.format().splitlines()[-1].endswith("75.0% each of 2 threads")


def test_a_long_replay_keeps_a_bounded_sample_of_each_stage_s_times():
    clock = StageClock(kept=100)
    for ms in range(1, 1001):  # a replay of 1000 frames, 100 durations kept a stage
        clock.add({"fuse": float(ms)})
        clock.lap("encode")
    assert len(clock.ns["fuse"].kept()) == 100 and len(clock.ns["encode"].kept()) == 100
    fuse = clock.table(wall_s=1000.0)["fuse"]
    assert fuse["total_s"] == pytest.approx(500.5)  # every frame counts in the total
    assert 300.0 < fuse["median_ms"] < 700.0 and fuse["p99_ms"] > 900.0  # a uniform sample of the whole run


class _RefusingPublisher:
    """A publisher whose subscriber's queue is full for every third frame (``nodrop``: refused, not sent)."""

    def __init__(self, cfg, **kwargs):
        self.calls = 0

    def send_fused(self, fused):
        self.calls += 1
        return self.calls % 3 != 0

    def close(self):
        pass


def test_frames_the_publisher_refused_are_counted_apart_from_those_it_published(tmp_path, monkeypatch):
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 9, 30, grey=True)
    write_video(vis, 9, 30)
    monkeypatch.setattr(streamfuse.publish, "Publisher", _RefusingPublisher)
    cfg = make_cfg(replay={"publish": True}, publish={"wait_subscriber_s": 0})
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert summary.written == 9 and (summary.published, summary.publish_refused) == (6, 3)
    assert "  published 6 | refused by the publisher 3 " in summary.format()


# the IR's frames read with the visible ones' first (0: none), whether it comes back after them, and the verdicts on
# the visible frames left while it had none: after its span where it stopped, lone where it came back, before its
# span where it started late, none where it never started
_IR_GONE = {"stops for good": (10, False, "after", {"unpaired": 663, "dropped": 1327}),
            "comes back": (10, True, "lone", 1327),
            "never starts": (0, False, "before", {"unpaired": 0, "dropped": 0}),
            "starts late": (0, True, "before", {"unpaired": 667, "dropped": 1333})}


@pytest.mark.parametrize("case", list(_IR_GONE))
def test_a_stream_without_the_other_holds_no_memory_a_frame_of_it(monkeypatch, case):
    """A recording read in logged order whose IR stopped early kept 9 bytes for each visible frame left unpaired or
    dropped, until the IR's next frame or the end, and 16 for its time (2.7 MB an hour at 30 frames/s); one whose IR
    had no frame yet kept them all, and a span for each frame read. The verdicts stay those of keeping them all."""
    import streamfuse.replay.left_frames

    along, comes, verdict, expected = _IR_GONE[case]

    def verdicts(kept: int) -> tuple[dict, int]:
        monkeypatch.setattr(streamfuse.replay.left_frames, "_KEPT", kept, raising=False)
        left, held, period = LeftFrames(5_000_000), 0, 33_333_333
        for i in range(along):
            left.read("vis", i * period)
            left.read("ir", i * period)
        for i in range(along, 2000):  # no IR frame: each visible frame left, most dropped
            left.read("vis", i * period)
            left.left("vis", "unpaired" if i % 3 == 0 else "dropped", i * period)
            left.forget({"ir": [], "vis": []})
            held = max(held, left.held())
        if comes:
            left.read("ir", 2000 * period)
        left.end()
        return left.verdicts, held

    counted, held = verdicts(100)
    assert counted == verdicts(10**9)[0]
    assert held <= 2 * 100 + 8
    assert counted["vis"][verdict] == expected
