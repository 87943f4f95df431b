"""Two looped inputs of different spans start each pass together: the shorter one waits for the longer one."""

from __future__ import annotations

import logging
import types
from dataclasses import replace

import cv2
import numpy as np
import pytest
from test_producer import assert_stopped, collect, write_video

from streamfuse.capture.loop_spans import PassStarts
from streamfuse.capture.producer import start_producers
from streamfuse.capture.producer_process import process_context
from streamfuse.capture.sources import SourceConfig, open_source
from streamfuse.capture.time_line import left, pace_lines
from streamfuse.frames import Frame
from streamfuse.recording import RecordConfig, Recorder

FPS, PERIOD_NS = 100, 10_000_000


def _looped(kind: str, folder, frames: int) -> SourceConfig:
    """``frames`` frames at FPS, frame i of grey level i, looped and paced in real time (a recording's of the stream
    named by the folder)."""
    folder.mkdir()
    if kind == "mcap":
        with Recorder(RecordConfig(path=str(folder / "rig.mcap")), queue_size=64) as rec:
            for i in range(frames):
                rec.write(Frame(folder.name, i, 10**9 + i * PERIOD_NS, np.full((8, 8), i, np.uint8)))
        return SourceConfig(kind="mcap", path=str(folder / "rig.mcap"), loop=True)
    if kind == "file":
        write_video(folder / "clip.mkv", frames, FPS)
        return SourceConfig(kind="file", path=str(folder / "clip.mkv"), loop=True)
    for i in range(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.full((48, 64, 3), i, np.uint8))
    return SourceConfig(kind="folder", path=str(folder), fps=FPS, loop=True)


@pytest.mark.parametrize("kind", ["file", "folder", "mcap"])
def test_looped_inputs_of_30_and_32_frames_start_every_pass_together(tmp_path, caplog, kind):
    # each input started again one frame after its own last: the 30-frame input's frame 0 came 2 frames earlier at
    # each pass than the 32-frame input's (on its eleventh pass it paired with frame 12 of the other)
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    ir, vis = _looped(kind, tmp_path / "ir", 30), _looped(kind, tmp_path / "vis", 32)
    prod = start_producers(ir, vis, backoff_s=0.1)
    names = prod.shm_names()
    try:
        frames, events = collect(prod, lambda f, e: e or {x.stream for x in f if x.seq >= 4 * 32}
                                 == {"ir", "vis"})
    finally:
        assert_stopped(prod, names)
    assert not events
    t0 = min(f.t_capture_ns for f in frames)
    for frame in frames:  # frame i of pass k at k x 32 frames + i, in both inputs
        index = int(frame.image.reshape(-1)[0])
        assert (frame.t_capture_ns - t0 - index * PERIOD_NS) % (32 * PERIOD_NS) == 0, (frame.stream, frame.seq, index)
    said = [r.getMessage() for r in caplog.records if "its passes span" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("ir: ") and "0.300 s, another looped input's 0.320 s" in said[0]


class _Longer:
    """The spans shared with another looped input of 32 frames."""

    def longest(self, section: str, span_ns: int, wait) -> int:
        return max(span_ns, 32 * PERIOD_NS)

    def first_word(self, section: str) -> bool:
        return True

    def never(self) -> list[str]:
        return []


@pytest.mark.parametrize("kind", ["file", "folder", "mcap"])
def test_a_restarted_producer_of_the_shorter_input_skips_to_where_it_was_in_step(tmp_path, kind):
    cfg = replace(_looped(kind, tmp_path / "ir", 30), realtime=False)
    with open_source("ir", cfg) as src:
        src.pace_origin = types.SimpleNamespace(loop_spans=_Longer())
        expected = [src.read() for _ in range(5 * 30 + 8)]
    assert [f.t_capture_ns - expected[0].t_capture_ns for f in expected[::30]] == [
        k * 32 * PERIOD_NS for k in range(6)]
    with open_source("ir", cfg) as src:
        src.pace_origin = types.SimpleNamespace(loop_spans=_Longer())
        assert src.skip(len(expected) - 1) == len(expected) - 1
        got = src.read()
    assert (got.seq, got.t_capture_ns) == (expected[-1].seq, expected[-1].t_capture_ns)


def test_a_looped_input_waits_no_more_for_the_span_of_one_whose_producer_ended_for_good(tmp_path):
    # the shorter input's second pass waited for the other's span until the run was stopped
    cfg = SourceConfig(kind="folder", path=str(tmp_path), fps=FPS, loop=True)
    lines, said, waits = pace_lines(process_context(), {"ir": cfg, "vis": cfg}), [], []
    left(lines["vis"], "vis")  # a producer that restarts: its span is still waited for
    spans, passes = lines["ir"].loop_spans, PassStarts()

    def wait(seconds: float) -> bool:  # a stop after 100 waits: one that never ends of itself fails the test
        waits.append(seconds)
        return len(waits) >= 100

    passes.begin(1, 0, spans, "ir", "ir: clip", wait, said.append)
    passes.begin(2, 30 * PERIOD_NS, spans, "ir", "ir: clip", wait, said.append)
    assert len(waits) == 100 and said == []
    waits.clear()
    left(lines["vis"], "vis", for_good=True)
    passes = PassStarts()
    passes.begin(1, 0, spans, "ir", "ir: clip", wait, said.append)
    passes.begin(2, 30 * PERIOD_NS, spans, "ir", "ir: clip", wait, said.append)
    assert waits == [] and passes.held_ns == 0
    assert said == ["ir: clip: its passes go on without waiting for vis, whose producer ended for good before its "
                    "first pass did (its span unknown)"]


def test_a_looped_input_goes_on_past_its_first_pass_when_the_others_source_failed_for_good(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    ir = _looped("folder", tmp_path / "ir", 30)
    (tmp_path / "vis").mkdir()  # no images: a final error before its first frame
    prod = start_producers(ir, replace(ir, path=str(tmp_path / "vis")), backoff_s=0.1)
    names = prod.shm_names()
    try:
        frames, events = collect(prod, lambda f, e: any(x.seq >= 2 * 30 for x in f))
    finally:
        assert_stopped(prod, names)
    assert [(e.stream, e.kind, e.restarting) for e in events] == [("vis", "error", False)]
    seqs = [f.seq for f in frames]  # a busy host's reader may miss a frame of the 3-slot ring: none come twice
    assert seqs == sorted(set(seqs)) and seqs[-1] >= 2 * 30
    said = [r.getMessage() for r in caplog.records if "its passes go on" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("ir: ")


@pytest.mark.parametrize("kind", ["file", "folder", "mcap"])
def test_a_producer_restarted_before_its_second_passs_first_frame_does_not_say_the_wait_again(tmp_path, kind):
    # the line is said as the shorter input's wait begins, before its next pass's first frame: a producer restarted
    # meanwhile (in a 10 s clip's wait of 50 s beside a 60 s one) resumed there and said it again, once per restart
    cfg = replace(_looped(kind, tmp_path / "ir", 30), realtime=False)
    lines, said = pace_lines(process_context(), {"ir": cfg, "vis": cfg}), []
    lines["vis"].loop_spans.longest("vis", 32 * PERIOD_NS, lambda s: True)
    with open_source("ir", cfg) as src:
        src.pace_origin, src.warn = lines["ir"], said.append
        first = [src.read() for _ in range(31)]
    for _ in range(3):  # restarted: it skips the first pass the producers before it delivered
        with open_source("ir", cfg) as src:
            src.pace_origin, src.warn = lines["ir"], said.append
            assert src.skip(30) == 30
            assert src.read().t_capture_ns == first[30].t_capture_ns
    assert len(said) == 1 and said[0].startswith("ir: ") and "its passes span 0.300 s" in said[0]
