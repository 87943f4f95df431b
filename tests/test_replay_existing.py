"""A replay and what its --out already holds: a complete output, a file that is no video, an interrupted run's partial
output (refused, or continued by --resume), and the seam where a killed run's output was cut off."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers_video import write_sound
from test_output_lock import HOLD
from test_replay import _StopAt, decoded, interrupted_replay, make_cfg, write_video

import streamfuse.processor
from streamfuse.atomic_write import partial_path
from streamfuse.cli.run import replay_main
from streamfuse.replay import ReplayError, run_replay
from streamfuse.replay.outputs import check_existing_output
from streamfuse.sync import Pairer
from streamfuse.video import VideoWriter, decode_frames, pick_encoder


@pytest.fixture
def pair(tmp_path):
    """IR and visible at 25 fps, 40 frames each (40 pairs)."""
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, 40, 25, grey=True, codec="ffv1")
    write_video(vis, 40, 25, codec="ffv1")
    return ir, vis


def _no_fusing(monkeypatch) -> None:
    """Fail the test if a fuser is built: the refusals come before any work."""
    def build(*_):
        raise AssertionError("a fuser was built")

    monkeypatch.setattr(streamfuse.processor, "config_fuser", build)


def test_a_complete_output_is_refused_before_any_work_and_left_as_it_is(tmp_path, pair, monkeypatch, capsys):
    ir, vis = pair
    out = tmp_path / "fused.mp4"
    run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    before = out.read_bytes()
    _no_fusing(monkeypatch)
    with pytest.raises(FileExistsError, match=f"^output {out} is already complete; delete it or choose another --out"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    # the command: one line, a non-zero exit
    assert replay_main(["--ir", str(ir), "--vis", str(vis), "--out", str(out), "--set", "fuse.name=max"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"streamfuse replay: error: output {out} is already complete")
    assert "Traceback" not in lines
    assert run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, resume=True).complete  # nothing to resume
    assert out.read_bytes() == before and not list(tmp_path.glob(".fused*"))


def test_an_output_that_is_a_sound_file_is_refused_as_holding_no_video(tmp_path, pair, monkeypatch):
    """A file PyAV opens but that holds no video (a recording's sound saved at the output's name) says so."""
    ir, vis = pair
    out = tmp_path / "fused.mkv"
    write_sound(out)
    kept = out.read_bytes()
    _no_fusing(monkeypatch)
    with pytest.raises(FileExistsError, match=f"^output {out} exists but holds no video stream; delete it or choose"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert out.read_bytes() == kept and not list(tmp_path.glob(".fused*"))


@pytest.mark.parametrize("resume", [False, True])
def test_an_output_that_is_no_video_is_refused_and_left_as_it_is(tmp_path, pair, monkeypatch, resume):
    ir, vis = pair
    out = tmp_path / "fused.mp4"
    out.write_text("notes")
    _no_fusing(monkeypatch)
    with pytest.raises(FileExistsError, match=f"^output {out} exists but is not a video .*; delete it or choose"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, resume=resume)
    assert out.read_text() == "notes" and not list(tmp_path.glob(".fused*"))


@pytest.mark.parametrize("resume", [False, True])
def test_another_programs_video_is_refused_and_left_as_it_is(tmp_path, pair, monkeypatch, resume):
    ir, vis = pair
    out = tmp_path / "fused.mkv"
    out.write_bytes(vis.read_bytes())  # a video, but not a fused one: --resume must not call it complete
    _no_fusing(monkeypatch)
    with pytest.raises(FileExistsError, match=f"^output {out} exists but is another program's video \\(it records no "
                                              "streamfuse config\\); delete it or choose another --out$"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, resume=resume)
    assert out.read_bytes() == vis.read_bytes() and not list(tmp_path.glob(".fused*"))


def test_resume_does_not_take_an_output_of_other_inputs_for_complete(tmp_path, pair, monkeypatch):
    ir, vis = pair
    out, other = tmp_path / "fused.nut", tmp_path / "other"
    cfg = make_cfg(replay={"progress": False, "codec": "ffv1"})
    run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    other.mkdir()
    write_video(other / "ir.mkv", 10, 25, grey=True, codec="ffv1")
    write_video(other / "vis.mkv", 10, 25, codec="ffv1")
    _no_fusing(monkeypatch)
    with pytest.raises(FileExistsError, match=f"^output {out} is complete but was made from other inputs \\({ir} "
                                              f"\\+ {vis}\\); delete it or choose another --out$"):
        run_replay(cfg, ir_path=other / "ir.mkv", vis_path=other / "vis.mkv", out_path=out, resume=True)
    assert run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True).complete  # its own: nothing to do
    # the archive moved since the output was made: the paths it records are gone and prove nothing, so no refusal
    moved = tmp_path / "moved"
    moved.mkdir()
    ir, vis = ir.rename(moved / ir.name), vis.rename(moved / vis.name)
    assert run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True).complete


def test_a_partial_output_needs_resume_or_an_explicit_start_over(tmp_path, pair, monkeypatch):
    """Without --resume, an interrupted run's partial output is refused, not written over; --resume continues it; a
    caller's explicit resume=False (a batch retrying a lost worker's pair) starts over."""
    ir, vis = pair
    cfg, out = make_cfg(), tmp_path / "fused.mp4"
    interrupted_replay(cfg, ir, vis, out)
    partial = partial_path(out)
    kept = partial.read_bytes()
    with pytest.raises(FileExistsError, match=f"^{partial} holds an interrupted replay of {out}; run again with "
                                              f"--resume to continue it, or delete {partial.name} to start over$"):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    assert partial.read_bytes() == kept and not out.exists()
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 7 and summary.written == 40
    out.unlink()
    interrupted_replay(cfg, ir, vis, out)
    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: _StopAt(None))
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=False)
    assert summary.complete and summary.reused == 0 and summary.fused == 40
    made = out.stat().st_mtime_ns  # the retry of a worker lost after it finished: done, not failed, not redone
    assert run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=False).complete
    assert out.stat().st_mtime_ns == made


def test_a_callers_start_over_wins_over_a_config_that_says_resume(tmp_path, pair):
    """``resume=False`` is the caller's (a batch retrying a lost worker's pair): it starts over even where the config
    says ``replay.resume: true``, which is only what is done when the caller leaves it (None)."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"resume": True}), tmp_path / "fused.mp4"
    interrupted_replay(cfg, ir, vis, out)
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=False)
    assert summary.complete and summary.reused == 0 and summary.fused == 40


@pytest.mark.parametrize("resume", [None, False, True])
def test_an_output_another_run_is_writing_is_refused_and_left_to_it(tmp_path, pair, monkeypatch, capsys, resume):
    """Two runs given one output (a command run twice, two batches into one folder): the second is refused before
    any work, whether it would resume, start over (a batch's pair) or neither; the first run's partial file is its."""
    ir, vis = pair
    out = tmp_path / "fused.mkv"
    partial_path(out).write_bytes(b"the first run's frames")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        _no_fusing(monkeypatch)
        with pytest.raises(FileExistsError, match=f"^output {out} is being written by another run \\(.* pid "
                                               f"{holder.pid}, holding .fused.mkv.lock\\); wait for it to end"):
            run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, resume=resume)
        assert replay_main(["--ir", str(ir), "--vis", str(vis), "--out", str(out), "--set", "fuse.name=max"]) == 1
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"streamfuse replay: error: output {out} is "
                                                                           "being written by another run")
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert partial_path(out).read_bytes() == b"the first run's frames" and not out.exists()


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("planted", [".fused.mkv.partial", ".fused.mkv.partial.json", ".fused.mkv.partial.old"])
def test_a_link_at_a_work_files_name_is_refused_not_written_through(tmp_path, pair, monkeypatch, resume, planted):
    ir, vis = pair
    precious = tmp_path / "precious.mkv"
    precious.write_bytes(b"another recording")
    (tmp_path / planted).symlink_to(precious)
    _no_fusing(monkeypatch)
    with pytest.raises(ValueError, match=f"^{tmp_path / planted} is a link; a replay makes this file itself and "
                                         "never writes through one: remove it, or choose another --out$"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "fused.mkv", resume=resume)
    assert precious.read_bytes() == b"another recording"


@pytest.mark.parametrize("planted", [".fused.mkv.partial", ".fused.mkv.partial.json"])
def test_a_folder_at_a_work_files_name_is_refused_before_any_work(tmp_path, pair, monkeypatch, planted):
    """A folder there (a user's, or a copy gone wrong) was taken for an interrupted run's partial output, or at the
    sidecar's name let the run start, to fail once it had fused frames."""
    ir, vis = pair
    (tmp_path / planted).mkdir()
    (tmp_path / planted / "keep.txt").write_text("a user's file\n")
    _no_fusing(monkeypatch)
    with pytest.raises(ValueError, match=f"^{tmp_path / planted} is not a file; a replay makes this file itself"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "fused.mkv")
    assert (tmp_path / planted / "keep.txt").read_text() == "a user's file\n"


def _stop_on_first_write(monkeypatch) -> None:
    def write(self, image, pts):
        raise KeyboardInterrupt

    monkeypatch.setattr(VideoWriter, "write", write)


def _stop_while_loading(monkeypatch) -> None:
    def build(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(streamfuse.processor, "config_fuser", build)


def _stop_before_the_first_pair(monkeypatch) -> None:
    def push(self, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pairer, "push", push)


@pytest.mark.parametrize("stop", [_stop_while_loading, _stop_before_the_first_pair, _stop_on_first_write])
def test_a_resume_stopped_before_its_first_frame_keeps_the_interrupted_runs_frames(tmp_path, pair, stop):
    """Ctrl-C while the model loads, or before the resumed run's first frame is written: the interrupted run's
    partial output and sidecar stay as they were, and a later --resume still takes its frames over."""
    ir, vis = pair
    cfg, out = make_cfg(), tmp_path / "fused.mp4"
    interrupted_replay(cfg, ir, vis, out)
    partial, sidecar = partial_path(out), partial_path(out).with_name(partial_path(out).name + ".json")
    kept, vouched = partial.read_bytes(), sidecar.read_bytes()
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ReplayError) as err:
        stop(mp)
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert "run again with --resume" in str(err.value)
    assert partial.read_bytes() == kept and sidecar.read_bytes() == vouched
    assert sorted(p.name for p in tmp_path.glob(".fused*")) == [partial.name, sidecar.name]
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 7 and summary.written == 40


# -------------------------------------------------------------------------------- the seam of a killed run


def _cut_in_a_b_frame(path: Path) -> None:
    """Cut ``path`` as a kill while it is written can: in the middle of its last B-frame (a frame stored after a
    later one it is shown before), which leaves that later frame in the file and this one not."""
    with av.open(str(path)) as c:
        packets = [(p.pts, p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    shown_later = [(pos, size) for i, (pts, pos, size) in enumerate(packets)
                   if any(later < pts for later, _, _ in packets[i + 1:])]
    assert shown_later, "the encoder wrote no B-frame"
    pos, size = max(shown_later)  # the reference frame whose B-frames come after it in the file
    b_frame = next((p, s) for p, s in sorted((p, s) for _, p, s in packets) if p > pos)
    os.truncate(path, b_frame[0] + b_frame[1] // 2)


def test_resume_after_a_kill_mid_b_frame_is_no_warning(tmp_path, pair, caplog):
    """A kill cuts an H.264 partial output between a frame and the B-frames shown before it: the take-over stops at the
    first missing one, with no warning about the inputs' frame times (they are fine)."""
    if pick_encoder("h264") != "libx264":
        pytest.skip("needs libx264's B-frames")
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec_threads": 1}), tmp_path / "fused.mp4"
    interrupted_replay(cfg, ir, vis, out, stop=31)
    _cut_in_a_b_frame(partial_path(out))
    held = [t for t, _ in decode_frames(partial_path(out))]
    missing = next(i for i, t in enumerate(held) if t != Fraction(i, 25))  # the first frame the cut took
    with caplog.at_level(logging.INFO):
        summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == missing and summary.written == 40
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert f"took over {missing} frames; fusing from pts {missing * 40}, where the interrupted run's output was " \
           f"cut off" in caplog.text
    assert decoded(out)[1] == [40 * i for i in range(40)]  # Matroska's ms


def _interrupted_with_a_gap(cfg, ir: Path, vis: Path, out: Path, gap: int = 5, early: bool = False) -> None:
    """An interrupted replay's partial output of 30 frames, rewritten without its frame ``gap`` (5: 24 frames after
    the gap, far more than a kill can cut off), or with a frame 20 ms before it (``early``)."""
    interrupted_replay(cfg, ir, vis, out, stop=31)
    frames = list(decode_frames(partial_path(out)))
    writer = VideoWriter(out, codec="ffv1", crf=0, time_base=Fraction(1, 1000), rate=Fraction(25), width=64,
                         height=48)
    for i, (_, image) in enumerate(frames):
        if i == gap and early:
            writer.write(image, 40 * i - 20)
        if i != gap or early:
            writer.write(image, 40 * i)
    writer.abort()


def test_resume_still_warns_when_the_partial_output_disagrees_with_the_inputs_mid_file(tmp_path, pair, caplog):
    """A frame missing long before the partial output's end is no kill's seam: the warning names both times."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    _interrupted_with_a_gap(cfg, ir, vis, out)
    with caplog.at_level(logging.INFO):
        summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 5 and summary.written == 40
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["resume: the partial output has a frame at 0.240 s where the inputs give 0.200 s; fusing "
                        "from here"]


@pytest.mark.parametrize("gap, early, seam", [(13, False, True), (12, False, False), (25, True, False)],
                         ids=["16 frames from the next on", "17 frames from the next on", "an earlier frame"])
def test_a_frame_missing_within_a_reorder_window_of_the_partial_outputs_end_may_be_a_kills_seam(tmp_path, pair, caplog,
                                                                                               gap, early, seam):
    """A kill may cut an H.264 encoder's output up to 16 frames before its end (its reordering window): a frame
    missing where the partial output holds 16 frames from the later one on is such a seam, said as information;
    with 17, or a frame earlier than the inputs give in its place, the output disagrees with the inputs: a warning."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    _interrupted_with_a_gap(cfg, ir, vis, out, gap, early)
    with caplog.at_level(logging.INFO):
        summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == gap and summary.written == 40
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    found = 40 * gap + (-20 if early else 40)
    assert warnings == ([] if seam else [f"resume: the partial output has a frame at {found / 1000:.3f} s where the "
                                         f"inputs give {gap * 0.04:.3f} s; fusing from here"])
    assert (f"took over {gap} frames; fusing from pts {40 * gap}, where the interrupted run's output was cut off"
            in caplog.text) == seam


def test_a_resume_of_a_visible_input_timed_in_frames_takes_the_frames_over(tmp_path):
    """An AVI's time base is its frame interval (40 ms), which the partial output keeps: its frames, at the pairs'
    times, are taken over whatever the time base's size (a tolerance that shrank with it would match none)."""
    ir, vis, out = tmp_path / "ir.avi", tmp_path / "vis.avi", tmp_path / "fused.mkv"
    write_video(ir, 20, 25, grey=True, codec="ffv1")
    write_video(vis, 20, 25, codec="ffv1")
    with av.open(str(vis)) as container:
        assert container.streams.video[0].time_base == Fraction(1, 25)
    cfg = make_cfg(replay={"codec": "ffv1"})
    interrupted_replay(cfg, ir, vis, out)
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 7 and summary.written == 20


def test_a_resume_stopped_after_a_mid_file_mismatch_keeps_the_output_with_more_usable_frames(tmp_path, pair):
    """Past the mismatch the interrupted run's frames match no pair: put back for holding more frames, its 29 frames
    would again give the next resume only the 5 before the gap, and the 7 frames of the stopped resume were lost."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    _interrupted_with_a_gap(cfg, ir, vis, out)
    err = interrupted_replay(make_cfg(replay={"codec": "ffv1", "resume": True}), ir, vis, out, stop=3)
    assert err.summary.reused == 5 and err.summary.written == 7
    assert len(list(decode_frames(partial_path(out)))) == 7 and not list(tmp_path.glob("*.old"))


def test_a_partial_output_left_aside_by_a_killed_resume_is_taken_over(tmp_path, pair):
    """A resumed run killed (kill -9, power loss) after it moved the partial file aside and before its first frame
    made a new one leaves only ``.OUT.partial.old``: the next --resume takes its frames over, and no stray file is
    left behind (it was ignored, started over, and kept for good)."""
    ir, vis = pair
    cfg, out = make_cfg(), tmp_path / "fused.mp4"
    interrupted_replay(cfg, ir, vis, out)
    partial = partial_path(out)
    aside = partial.with_name(partial.name + ".old")
    partial.rename(aside)
    with pytest.raises(FileExistsError, match=f"^{aside} holds an interrupted replay of {out}; run again with "
                                              f"--resume to continue it, or delete {aside.name} to start over$"):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 7 and summary.written == 40
    assert not list(tmp_path.glob(".fused*"))


def test_a_setting_added_since_an_output_was_made_is_not_named_as_changed(tmp_path, caplog):
    # an output made by an earlier version records no value for a setting added since: every rerun of the batch
    # warned that each of its outputs was made with other settings, though none of them changed
    cfg = make_cfg()
    made = cfg.to_dict()
    del made["fuse"]["name"]  # as an earlier version would have written it, before the key existed
    out = tmp_path / "fused.mkv"
    w = VideoWriter(out, codec="ffv1", crf=0, time_base=Fraction(1, 1000), rate=Fraction(25), width=32, height=24,
                    metadata={"comment": json.dumps({"streamfuse_config": made})})
    w.write(np.zeros((24, 32, 3), np.uint8), 0)
    w.commit()
    with caplog.at_level(logging.WARNING):
        assert check_existing_output(out, cfg, resume=True)  # complete: nothing to do
    assert "other settings" not in caplog.text
    changed = make_cfg(fuse={"name": "average"}, sync={"slop_ms": 5.0})
    with caplog.at_level(logging.WARNING):
        assert check_existing_output(out, changed, resume=True)
    assert "made with other settings (sync.slop_ms)" in caplog.text  # what it records, and differs, is named


def test_a_complete_output_made_with_other_postprocessing_is_named_when_skipped(tmp_path, caplog):
    """Post-processing (the temporal denoiser) changes every frame: a skipped output made otherwise is named."""
    cfg = make_cfg()
    out = tmp_path / "fused.mkv"
    w = VideoWriter(out, codec="ffv1", crf=0, time_base=Fraction(1, 1000), rate=Fraction(25), width=32, height=24,
                    metadata={"comment": json.dumps({"streamfuse_config": cfg.to_dict()})})
    w.write(np.zeros((24, 32, 3), np.uint8), 0)
    w.commit()
    with caplog.at_level(logging.WARNING):
        assert check_existing_output(out, make_cfg(post={"denoise": 0.5}), resume=True)
    assert "made with other settings (post.denoise)" in caplog.text


@pytest.mark.parametrize("recorded", [[1, 2], "streamfuse", None])
def test_a_video_whose_comment_holds_no_config_mapping_is_another_programs(tmp_path, recorded):
    """A comment of the same key but no mapping under it records no config: taken for one, ``--resume`` failed on it
    with a traceback instead of refusing the file."""
    out = tmp_path / "fused.mkv"
    w = VideoWriter(out, codec="ffv1", crf=0, time_base=Fraction(1, 1000), rate=Fraction(25), width=32, height=24,
                    metadata={"comment": json.dumps({"streamfuse_config": recorded})})
    w.write(np.zeros((24, 32, 3), np.uint8), 0)
    w.commit()
    with pytest.raises(FileExistsError, match=r"exists but is another program's video \(it records no streamfuse"):
        check_existing_output(out, make_cfg(), resume=True)
