"""The shared time line's start: each source's first frame waits for the others' (streamfuse.capture.time_line)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers_clock import SleptClock

from streamfuse.capture import time_line
from streamfuse.capture.producer_process import process_context
from streamfuse.capture.sources import SourceConfig, open_source
from streamfuse.capture.time_line import claimed, left, new_pass, pace_lines


def _folder(path: Path, n: int) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(path / f"{i:04d}.png"), np.full((24, 32), i, np.uint8))
    return path


def _sources(tmp_path: Path, frames: int = 3) -> tuple[dict, list[str]]:
    """Paced folder sources ``ir`` and ``vis`` on their one time line, their warnings said into the list."""
    cfg = SourceConfig(kind="folder", path=str(_folder(tmp_path / "frames", frames)), fps=20.0, realtime=True)
    lines, said = pace_lines(process_context(), {"ir": cfg, "vis": cfg}), []
    sources = {name: open_source(name, cfg) for name in lines}
    for name, src in sources.items():
        src.pace_origin, src.warn, src.stop_event = lines[name], said.append, threading.Event()
    return sources, said


def test_a_first_frame_waits_for_the_other_source_on_its_line_and_both_start_together(tmp_path: Path) -> None:
    # the first source to pace began the line alone: one whose producer started later found its first frames due
    # long before, and they came at once, after their partners had been paired or dropped
    sources, said = _sources(tmp_path)
    first = threading.Thread(target=sources["ir"].read)
    first.start()
    try:
        # ir's first frame is held until vis's is read (the line not begun meanwhile)
        assert not first.join(0.5) and first.is_alive() and not sources["ir"].pace_origin[0]
        sources["vis"].read()
    finally:
        first.join(30)
        for src in sources.values():
            src.close()
    assert not first.is_alive() and sources["ir"].pace_origin[0] and said == []


def test_a_first_frame_waits_for_the_other_source_no_longer_than_the_bound_and_says_so(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    monkeypatch.setattr(time_line, "READY_WAIT_S", 0.2)
    sources, said = _sources(tmp_path)
    with sources["ir"] as ir:
        assert int(ir.read().image[0, 0]) == 0
    assert said == ["ir: its time line starts without vis, not ready 0.2 s after ir's first frame (its frames of "
                    "the time it is late will be passed over)"]


@pytest.mark.parametrize("late_s", [2, 8])
def test_a_source_ready_after_its_line_began_without_it_joins_it_where_it_is_not_all_at_once(
        tmp_path: Path, monkeypatch, late_s: int) -> None:
    # left behind (not ready within the wait), its frames were due from the line's start on: those of the time gone
    # came at once, after the other source's of their time had been paired or dropped; over 5 s late, it was taken
    # for an input timed on another clock, paced on its own behind the other by its delay, and paired nothing
    monkeypatch.setattr(time_line, "READY_WAIT_S", 0.0)
    sources, said = _sources(tmp_path, 20 * late_s + 20)
    with sources["ir"] as ir:
        ir.read()
    line, period = sources["ir"].pace_origin, 50_000_000
    line[0] -= late_s * 1_000_000_000  # the line began late_s ago: the time of vis's first 20 x late_s frames is gone
    with sources["vis"] as vis:
        before = time.perf_counter_ns()
        frame = vis.read()
    index = int(frame.image[0, 0])
    assert index > 0 and index == frame.seq == vis.passed  # the frames passed over keep their numbers
    assert line[0] + frame.t_capture_ns - line[1] >= before - period  # due no more than a frame before it was read
    assert said[1:] == [f"vis: {vis.cfg.path}: ready after its time line began: its first {index} frames, of a time "
                        f"already gone on it, are passed over, not sent at once"]


def test_a_first_frame_waits_no_more_once_the_other_sources_producer_ended_or_the_run_stops(tmp_path: Path,
                                                                                           monkeypatch) -> None:
    monkeypatch.setattr(time_line, "READY_WAIT_S", 600.0)  # a wait that does not end of itself fails the test's timeout
    sources, said = _sources(tmp_path)
    left(sources["vis"].pace_origin, "vis")
    with sources["ir"] as ir:
        ir.read()
    assert said == ["ir: its time line starts without vis, whose producer ended before the line began"]
    sources, said = _sources(tmp_path / "stopped")
    sources["ir"].stop_event.set()
    with sources["ir"] as ir:
        ir.read()
    assert said == []


def test_a_restart_goes_on_on_its_begun_line_without_waiting(tmp_path: Path, monkeypatch) -> None:
    # the line is already anchored: a restarted producer (or a reopened recording) waits for no one again
    monkeypatch.setattr(time_line, "READY_WAIT_S", 600.0)
    sources, said = _sources(tmp_path)
    line = sources["ir"].pace_origin
    line[0], line[1] = time.perf_counter_ns(), 0  # begun now by the frame of time 0
    with sources["ir"] as ir:
        ir.read()
    assert said == []


def test_a_paced_input_beside_a_live_one_is_on_a_line_of_its_own_and_never_waits(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(time_line, "READY_WAIT_S", 600.0)
    cfg = SourceConfig(kind="folder", path=str(_folder(tmp_path / "frames", 3)), fps=20.0, realtime=True)
    lines, said = pace_lines(process_context(), {"ir": cfg, "vis": SourceConfig(kind="synthetic")}), []
    with open_source("ir", cfg) as ir:
        ir.pace_origin, ir.warn, ir.stop_event = lines["ir"], said.append, threading.Event()
        ir.read()
    assert lines["ir"][0] and said == []


@pytest.mark.parametrize("late_s", [2.0, 6.4, 60.0])  # 6.4: the seventh restart's back-off alone
def test_a_restarted_paced_file_rejoins_the_shared_line_however_late_its_restart(tmp_path: Path, monkeypatch,
                                                                                  late_s: float) -> None:
    # A restart more than 5 s after the source's last frame (7 crashes in a row, or a stall killed and reopened) was
    # taken for a source timed on another clock: paced on its own from its next frame, said as such, and its frames
    # never paired with the other source's again
    from streamfuse.capture import sources as source_module

    clock = SleptClock()
    clock.ns = 10**12  # a time line's begin is 0 until set
    monkeypatch.setattr(source_module, "time", clock)
    sources, said = _sources(tmp_path, frames=10)
    for src in sources.values():
        src.stop_event = None  # pacing sleeps move the test's clock
    left(sources["ir"].pace_origin, "ir")  # ir's first producer ended before its first frame: vis begins the line
    sources["vis"].read()
    ir = sources["ir"]
    for _ in range(4):  # restarted, ir goes on on vis's line, frames 0-3
        ir.read()
    ir.close()
    said.clear()
    clock.ns += round(late_s * 1e9)  # the next restart comes late_s after its last frame
    restarted = open_source("ir", ir.cfg)
    restarted.pace_origin, restarted.warn = ir.pace_origin, said.append
    with restarted:
        assert restarted.skip(4) == 4  # as a producer resumes after the frames delivered
        before = clock.ns
        assert [int(restarted.read().image[0, 0]) for _ in range(3)] == [4, 5, 6]
    # frames 4-6 were due late_s ago on the shared line: they go at once, not paced afresh from frame 4
    assert said == [] and clock.ns == before


def test_a_new_pass_begins_a_line_of_its_own_afresh_and_goes_on_on_one_it_shares(tmp_path: Path) -> None:
    # a looping input played again: alone on its line, its next frame begins the line again (begun at the first
    # pass, its frames were all due at once); on the other source's line, it goes on on it (begun afresh, it would
    # run behind the other by the restart's delay)
    cfg = SourceConfig(kind="folder", path=str(_folder(tmp_path / "frames", 3)), fps=20.0, realtime=True)
    alone = pace_lines(process_context(), {"ir": cfg})["ir"]
    alone[0] = 123
    new_pass(alone, [])
    assert alone[0] == 0
    shared = pace_lines(process_context(), {"ir": cfg, "vis": cfg})
    shared["ir"][0] = 123
    new_pass(shared["ir"], [shared["vis"]])
    assert shared["ir"][0] == shared["vis"][0] == 123


def test_two_first_frames_set_the_line_one_at_a_time(tmp_path: Path, monkeypatch) -> None:
    # both sources' first frames may come at once: the second to claim the line waits until the first has set it
    monkeypatch.setattr(time_line, "_LOCK_WAIT_S", 600.0)
    cfg = SourceConfig(kind="folder", path=str(_folder(tmp_path / "frames", 3)), fps=20.0, realtime=True)
    line, entered = pace_lines(process_context(), {"ir": cfg, "vis": cfg})["ir"], threading.Event()

    def second() -> None:
        with claimed(line):
            entered.set()

    with claimed(line):
        other = threading.Thread(target=second)
        other.start()
        assert not entered.wait(0.5)
    other.join(30)
    assert entered.is_set()
