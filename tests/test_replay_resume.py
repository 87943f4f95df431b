"""A resumed replay that stops again: every frame already on disk survives for the next --resume (a Ctrl-C while it
takes the interrupted run's frames over, or a kill that leaves both files); a partial output damaged on disk; and the
summary's nonfinite count."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from test_replay import _StopAt, _slept, full_disk_remux, interrupted_replay, make_cfg, write_video

import streamfuse.processor
import streamfuse.video
from streamfuse.atomic_write import partial_path
from streamfuse.replay import ReplayError, run_replay
from streamfuse.replay.resume import sidecar_path, taken_over_path
from streamfuse.video import VideoWriter, decode_frames

N = 40  # pairs


@pytest.fixture
def pair(tmp_path):
    """IR and visible at 25 fps, N frames each (N pairs)."""
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, N, 25, grey=True, codec="ffv1")
    write_video(vis, N, 25, codec="ffv1")
    return ir, vis


def _held(path) -> int:
    return len(list(decode_frames(path)))


def _stop_at_write(monkeypatch, n: int, after: bool) -> None:
    """Ctrl-C in the ``n``-th frame written (counted from 1), before or ``after`` it is queued for encoding."""
    real, calls = VideoWriter.write, []

    def write(self, image, pts):
        calls.append(pts)
        if after or len(calls) < n:
            real(self, image, pts)
        if len(calls) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(VideoWriter, "write", write)


@pytest.mark.parametrize("codec, ext, after", [("ffv1", ".mkv", True), ("h264", ".mp4", False)])
def test_a_resume_stopped_while_taking_frames_over_keeps_them_all(tmp_path, pair, codec, ext, after):
    """Ctrl-C at the 10th of the 20 frames a resumed run takes over: it deleted the interrupted run's file and kept its
    own 9 or 10, so the next --resume fused 10 or 11 frames again; now the 20 frames and their sidecar are put back.
    Stopped past its take-over, a resumed run keeps its own output, which holds more."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": codec}), tmp_path / f"fused{ext}"
    interrupted_replay(cfg, ir, vis, out, stop=21)
    assert _held(partial_path(out)) == 20
    vouched = sidecar_path(out).read_bytes()
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ReplayError) as err:
        _stop_at_write(mp, 10, after)
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert "interrupted run's frames kept in" in str(err.value) and "run again with --resume" in str(err.value)
    assert _held(partial_path(out)) == 20 and sidecar_path(out).read_bytes() == vouched
    assert sorted(p.name for p in tmp_path.glob(f".fused{ext}*")) == [partial_path(out).name, sidecar_path(out).name]
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ReplayError, match="25 frames kept in"):
        mp.setattr(streamfuse.processor, "config_fuser", lambda *a: _StopAt(6, RuntimeError))
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert _held(partial_path(out)) == 25 and not taken_over_path(out).exists()
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 25 and summary.fused == N - 25 and summary.written == N
    assert not list(tmp_path.glob(".fused*"))


def _partial_of(cfg, ir, vis, folder, frames: int):
    """The partial output and sidecar of a run interrupted after ``frames`` frames, made in ``folder``."""
    folder.mkdir()
    out = folder / "fused.mkv"
    interrupted_replay(cfg, ir, vis, out, stop=frames + 1)
    return partial_path(out), sidecar_path(out)


def test_a_resume_killed_with_both_files_on_disk_takes_over_the_longer(tmp_path, pair):
    """kill -9 of a resumed run leaves the file it moved aside and its own partial output: the next --resume took over
    the new one only, losing the rest of the old one's frames (20 aside, 9 new); the new one may hold more, too."""
    ir, vis = pair
    cfg = make_cfg(replay={"codec": "ffv1"})
    files = {n: _partial_of(cfg, ir, vis, tmp_path / str(n), n) for n in (9, 20)}
    for aside, new in ((20, 9), (9, 20)):
        out = tmp_path / f"fused{aside}.mkv"
        shutil.copy(files[aside][0], taken_over_path(out))
        shutil.copy(files[aside][1], sidecar_path(out))
        shutil.copy(files[new][0], partial_path(out))
        summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
        assert summary.complete and summary.reused == 20 and summary.written == N
        assert not list(tmp_path.glob(f".fused{aside}*"))


def test_a_restart_deletes_a_file_a_killed_resume_left_aside(tmp_path, pair):
    """An explicit start over (a batch's retry) writes over the partial output: the file aside is not left for good."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    interrupted_replay(cfg, ir, vis, out, stop=8)
    shutil.copy(partial_path(out), taken_over_path(out))
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=False)
    assert summary.complete and summary.reused == 0 and not list(tmp_path.glob(".fused*"))


def test_a_restart_that_stops_too_leaves_no_file_aside_for_the_next_resume(tmp_path, pair):
    """The file aside goes as the restart's output takes the partial name, not only when the restart completes: left
    there, the next --resume put its 30 frames back over the restart's output as the longer one."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    interrupted_replay(cfg, ir, vis, out, stop=31)
    shutil.copy(partial_path(out), taken_over_path(out))
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ReplayError) as err:
        mp.setattr(streamfuse.processor, "config_fuser", lambda *a: _StopAt(5))
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=False)
    assert err.value.summary.written == 4 and _held(partial_path(out)) == 4
    assert not taken_over_path(out).exists()


class _NonFiniteAt:
    """The max fuser, with a NaN pixel in its output at the given calls (counted from 1)."""

    def __init__(self, calls: set[int]):
        self.inner, self.at, self.calls = _StopAt(None), calls, 0
        self.name, self.version = self.inner.name, self.inner.version

    def fuse(self, ir, vis_y, stream="default"):
        self.calls += 1
        y = np.array(self.inner.fuse(ir, vis_y), dtype=np.float32)
        if self.calls in self.at:
            y[3, 4] = np.nan
        return y


def test_the_summary_counts_fused_frames_with_a_nan_pixel(tmp_path, pair, monkeypatch):
    """The live run's stats count them (nonfinite); the replay's summary said nothing of them."""
    ir, vis = pair
    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: _NonFiniteAt({3, 17}))
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert summary.complete and summary.nonfinite == 2
    assert "  nonfinite 2 (fused frames with a NaN or infinite pixel)" in summary.format().splitlines()
    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: _NonFiniteAt(set()))
    clean = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "clean.mp4")
    assert clean.nonfinite == 0 and "nonfinite" not in clean.format()


def _flip_a_bit(path, index: int) -> None:
    """Flip one bit in the middle of video packet ``index`` (bit rot on disk: the file's size and framing stay)."""
    with av.open(str(path)) as container:
        pos, size = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size][index]
    data = bytearray(path.read_bytes())
    data[pos + size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_damaged_ffv1_frame_of_the_partial_output_is_fused_again(tmp_path, pair, caplog):
    """A bit flipped on disk in the interrupted run's 9th frame: FFmpeg conceals the slice and PyAV raises nothing, so
    the damaged frame (and the FFV1 frames after it, decoded with its context) were taken over as they were."""
    ir, vis = pair
    cfg = make_cfg(replay={"codec": "ffv1"})
    reference = tmp_path / "reference.mkv"
    run_replay(cfg, ir_path=ir, vis_path=vis, out_path=reference)
    out = tmp_path / "fused.mkv"
    interrupted_replay(cfg, ir, vis, out, stop=21)
    _flip_a_bit(partial_path(out), 8)
    with caplog.at_level(logging.INFO):
        summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 8 and summary.fused == N - 8
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["resume: frame 8 of the partial output is damaged (an FFV1 slice CRC fails); took over the 8 "
                        "frames before it, fusing from pts 320"]
    for (t_a, a), (t_b, b) in zip(decode_frames(out), decode_frames(reference), strict=True):
        assert t_a == t_b
        np.testing.assert_array_equal(a, b)


def test_a_resume_writes_again_a_frame_png_cut_short(tmp_path, pair):
    """A ``frames_dir`` PNG cut short (a kill while an earlier version wrote it in place) is no frame: a resume writes
    it again instead of keeping it, so every PNG then decodes to the uninterrupted run's frame."""
    ir, vis = pair
    run_replay(make_cfg(replay={"codec": "ffv1", "frames_dir": str(tmp_path / "ref")}), ir_path=ir, vis_path=vis,
               out_path=tmp_path / "ref.mkv")
    cfg = make_cfg(replay={"codec": "ffv1", "frames_dir": str(tmp_path / "frames")})
    interrupted_replay(cfg, ir, vis, tmp_path / "o.mkv", stop=20)
    first = tmp_path / "frames" / ".partial" / "000000.png"  # in the partial output too: the resume takes it over
    first.write_bytes(first.read_bytes()[:-100])
    assert run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv", resume=True).complete
    refs = sorted((tmp_path / "ref").iterdir())
    assert [p.name for p in refs] == sorted(p.name for p in (tmp_path / "frames").iterdir())
    for ref in refs:
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "frames" / ref.name)), cv2.imread(str(ref)))


def test_a_realtime_paced_run_is_started_over_not_resumed(tmp_path, pair, caplog, monkeypatch):
    """Realtime pacing drops frames by how fast the machine keeps up, differently on every run: the frames an
    interrupted run kept are no prefix of what the rerun fuses, so a resume starts over instead of splicing them."""
    ir, vis = pair
    _slept(monkeypatch)  # a busy machine's pauses would drop frames of the realtime run: it might end before its stop
    cfg, out = make_cfg(replay={"codec": "ffv1", "pacing": "realtime"}), tmp_path / "fused.mkv"
    err = interrupted_replay(cfg, ir, vis, out, stop=8)
    assert _held(partial_path(out)) == 7
    assert str(err).endswith(f"; run again with --resume (same --out {out}) to replay it from the start (realtime "
                             f"pacing drops frames differently on every run, so it is not continued)")  # not "continue"
    with caplog.at_level("WARNING", "streamfuse"):
        summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.reused == 0 and summary.fused == summary.written
    assert f"cannot resume {out}: realtime pacing drops frames differently on every run; starting over" in caplog.text


@pytest.mark.parametrize("cut, why, stop", [(0, "empty", 21), (37, "unreadable", 21), (None, "missing", 21),
                                           (None, "missing", 2),  # one frame on disk is kept too
                                           (b'{"fingerprint": [1]}', "unreadable", 21)])  # JSON of another shape
def test_a_resume_with_its_sidecar_cut_or_missing_keeps_the_frames_and_says_why(tmp_path, pair, cut, why, stop):
    """A crash as the sidecar was written (a rename not yet flushed) left it empty: the resume started over, deleting
    the frames on disk, with only a warning."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    interrupted_replay(cfg, ir, vis, out, stop=stop)
    kept = partial_path(out).read_bytes()
    if cut is None:
        sidecar_path(out).unlink()
    elif isinstance(cut, bytes):
        sidecar_path(out).write_bytes(cut)
    else:
        sidecar_path(out).write_bytes(sidecar_path(out).read_bytes()[:cut])
    with pytest.raises(FileExistsError, match=rf"^cannot resume {out}: its sidecar {sidecar_path(out)} is {why}\b.* "
                                              rf"the {stop - 1} frames of {partial_path(out)}; delete "
                                              rf"{partial_path(out)} to start over$"):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert partial_path(out).read_bytes() == kept
    partial_path(out).unlink()  # as the line says
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 0 and summary.written == N


def test_a_resume_with_no_frame_on_disk_and_no_sidecar_starts_over(tmp_path, pair, caplog):
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    interrupted_replay(cfg, ir, vis, out, stop=21)
    partial_path(out).write_bytes(partial_path(out).read_bytes()[:100])  # killed before its first frame was whole
    sidecar_path(out).write_bytes(b"")
    with caplog.at_level("WARNING", "streamfuse"):
        summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.written == N and "is missing or unreadable; starting over" in caplog.text


@pytest.mark.parametrize("stream", ["ir", "vis"])
def test_a_resume_after_an_input_was_rewritten_in_place_is_refused(tmp_path, pair, stream):
    """An input re-recorded under the same name and size (a raw or fixed-size capture) is another video: without its
    mtime in the fingerprint a resume spliced the interrupted run's frames of the old video onto the new one's."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    interrupted_replay(cfg, ir, vis, out, stop=8)
    kept = partial_path(out).read_bytes()
    rewritten = {"ir": ir, "vis": vis}[stream]
    st = rewritten.stat()
    os.utime(rewritten, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, rewritten a second later
    # the line says what the interrupted run read: the same file, written since
    with pytest.raises(FileExistsError, match=rf"^cannot resume .*fused\.mkv: {stream} changed since the interrupted "
                                              rf"run \(it read {stream} {rewritten}: {st.st_size} bytes, modified .* "
                                              rf"UTC\); run it with the inputs it was started with to continue"):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert partial_path(out).read_bytes() == kept


def test_a_resume_naming_the_inputs_otherwise_or_from_another_folder_goes_on(tmp_path, pair, monkeypatch):
    """The fingerprint held the input paths as given: resumed from another folder, or with ``./ir.mkv`` or the
    absolute path for ``ir.mkv``, a replay of the very same files was refused as "ir changed ... run it with the
    settings it was started with", which it had been."""
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    monkeypatch.chdir(tmp_path)
    interrupted_replay(cfg, Path("ir.mkv"), Path("vis.mkv"), Path("fused.mkv"), stop=8)
    held = _held(partial_path(out))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    summary = run_replay(cfg, ir_path=pair[0], vis_path="../vis.mkv", out_path=out, resume=True)
    assert summary.complete and summary.reused == held > 0 and summary.written == N


def test_a_resume_naming_an_input_through_a_link_to_it_goes_on(tmp_path, pair):
    """The very file named through a symbolic link (a data folder linked into the working one) is the same input: the
    fingerprint compares the files the paths name."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    interrupted_replay(cfg, ir, vis, out, stop=8)
    held = _held(partial_path(out))
    (tmp_path / "linked.mkv").symlink_to(ir)
    summary = run_replay(cfg, ir_path=tmp_path / "linked.mkv", vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == held > 0 and summary.written == N


def _interrupted_folders(tmp_path: Path, hidden: str = ""):
    """A replay of two folders of 20 frames (and a hidden file ``hidden`` in each) into ``fused.mkv``, interrupted
    after 7 frames; returns its config and output."""
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        if hidden:
            (tmp_path / sub / hidden).write_bytes(b"x")
        for i in range(20):
            cv2.imwrite(str(tmp_path / sub / f"{i:04d}.png"), np.full((48, 64), 10, np.uint8))
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    interrupted_replay(cfg, tmp_path / "ir", tmp_path / "vi", out, stop=8)
    return cfg, out


def test_a_resume_after_a_frames_folder_was_rewritten_in_place_is_refused(tmp_path):
    """Frames exported again into their folder under the same names (an extraction run again) change neither the
    folder's size nor its time: a resume spliced the interrupted run's frames of the old pictures onto the new ones."""
    cfg, out = _interrupted_folders(tmp_path)
    kept, folder = partial_path(out).read_bytes(), (tmp_path / "ir").stat()
    frame = tmp_path / "ir" / "0010.png"
    cv2.imwrite(str(frame), np.full((48, 64), 200, np.uint8))
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))  # a second later
    assert (tmp_path / "ir").stat().st_mtime_ns == folder.st_mtime_ns  # the folder itself looks unchanged
    with pytest.raises(FileExistsError, match=r"^cannot resume .*fused\.mkv: ir changed since the interrupted run"):
        run_replay(cfg, ir_path=tmp_path / "ir", vis_path=tmp_path / "vi", out_path=out, resume=True)
    assert partial_path(out).read_bytes() == kept


def test_a_resume_goes_on_when_only_a_hidden_file_changed_in_the_folder(tmp_path):
    """Hidden files are no frames: a Finder's .DS_Store rewritten beside them (the folder's own time unchanged)
    refused the resume as "ir changed", though no frame had."""
    cfg, out = _interrupted_folders(tmp_path, hidden=".DS_Store")
    meta = tmp_path / "ir" / ".DS_Store"
    meta.write_bytes(b"xy")  # rewritten in place: the folder's own time is unchanged
    os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 10**9))
    summary = run_replay(cfg, ir_path=tmp_path / "ir", vis_path=tmp_path / "vi", out_path=out, resume=True)
    assert summary.reused > 0


def test_a_frames_folder_run_interrupted_by_an_earlier_release_resumes(tmp_path):
    """Its sidecar held a folder input as [path, 0, the folder's time]: the release that counts the folder's files
    called every such input changed ("ir changed since the interrupted run"), and refused the resume. A folder whose
    time is not the one such a sidecar holds has changed since, and is refused."""
    cfg, out = _interrupted_folders(tmp_path)
    side = json.loads(sidecar_path(out).read_text())
    for key, sub in (("ir", "ir"), ("vis", "vi")):  # as the earlier release wrote it
        side["fingerprint"][key] = [str(tmp_path / sub), 0, (tmp_path / sub).stat().st_mtime_ns - 10**9]
    sidecar_path(out).write_text(json.dumps(side))
    with pytest.raises(FileExistsError, match=r"^cannot resume .*fused\.mkv: ir, vis changed since the interrupted"):
        run_replay(cfg, ir_path=tmp_path / "ir", vis_path=tmp_path / "vi", out_path=out, resume=True)
    for key, sub in (("ir", "ir"), ("vis", "vi")):
        side["fingerprint"][key][2] = (tmp_path / sub).stat().st_mtime_ns
    sidecar_path(out).write_text(json.dumps(side))
    summary = run_replay(cfg, ir_path=tmp_path / "ir", vis_path=tmp_path / "vi", out_path=out, resume=True)
    assert summary.reused > 0


def test_frames_held_leaves_out_a_last_h264_packet_cut_by_a_kill(tmp_path):
    """A kill mid-write cuts the partial file inside its last packet; counted as held, that short packet made a
    cut file look longer than the other one beside it, and the one holding more whole frames was deleted."""
    from fractions import Fraction

    from streamfuse.replay.resume import frames_held

    out = tmp_path / "fused.mp4"
    writer = VideoWriter(out, codec="h264", crf=18, time_base=Fraction(1, 25), rate=Fraction(25), width=32,
                         height=32, threaded=False)
    rng = np.random.default_rng(0)
    for i in range(12):
        writer.write(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), i)
    writer.abort()
    partial = partial_path(out)
    with av.open(str(partial)) as c:
        last = [p for p in c.demux(c.streams.video[0]) if p.size][-1]
    assert frames_held(partial) == 12
    with open(partial, "r+b") as f:
        f.truncate(last.pos + last.size - 3)  # cut 3 bytes before the last packet's end
    assert frames_held(partial) == 11


def test_a_resume_with_other_postprocess_settings_is_refused(tmp_path, pair):
    """The temporal denoiser changes every frame: the interrupted run's frames spliced with frames denoised otherwise
    would make one video of two settings."""
    ir, vis = pair
    out = tmp_path / "fused.mkv"
    interrupted_replay(make_cfg(replay={"codec": "ffv1"}), ir, vis, out, stop=8)
    kept = partial_path(out).read_bytes()
    with pytest.raises(FileExistsError, match=r"^cannot resume .*fused\.mkv: post changed since the interrupted run"):
        run_replay(make_cfg(replay={"codec": "ffv1"}, post={"denoise": 0.5}), ir_path=ir, vis_path=vis, out_path=out,
                   resume=True)
    assert partial_path(out).read_bytes() == kept


def test_frames_held_stops_at_a_damaged_ffv1_frame(tmp_path, pair):
    """A frame whose slice CRC fails is no frame to keep: counted as held, a partial file damaged early looked longer
    than the other file beside it, which held more good frames and was deleted."""
    from streamfuse.replay.resume import frames_held

    ir, vis = pair
    out = tmp_path / "fused.mkv"
    interrupted_replay(make_cfg(replay={"codec": "ffv1"}), ir, vis, out, stop=21)
    assert frames_held(partial_path(out)) == 20
    _flip_a_bit(partial_path(out), 8)
    assert frames_held(partial_path(out)) == 8


@pytest.mark.parametrize("changed, key", [({"ir": {"resize": "error"}}, "ir_resize"),
                                          ({"engine": {"precision": "fp16"}}, "engine"),
                                          ({"replay": {"codec": "ffv1", "crf": 0}}, "codec"),
                                          ({"replay": {"codec": "ffv1", "preset": "slow"}}, "codec")])
def test_a_resume_with_another_setting_its_fingerprint_holds_is_refused(tmp_path, pair, changed, key):
    """Each setting the fingerprint holds is checked: a resume under another one keeps the partial output, naming it."""
    ir, vis = pair
    out = tmp_path / "fused.mkv"
    interrupted_replay(make_cfg(replay={"codec": "ffv1"}), ir, vis, out, stop=8)
    kept = partial_path(out).read_bytes()
    with pytest.raises(FileExistsError, match=rf"^cannot resume .*fused\.mkv: {key} changed since the interrupted run"):
        run_replay(make_cfg(**{"replay": {"codec": "ffv1"}, **changed}), ir_path=ir, vis_path=vis, out_path=out,
                   resume=True)
    assert partial_path(out).read_bytes() == kept


@pytest.mark.parametrize("paced", ["fast", "realtime"])
def test_a_realtime_resume_of_another_runs_output_is_refused_not_started_over(tmp_path, pair, paced, monkeypatch):
    """A realtime resume starts over, and it did so before it compared the settings: realtime pacing given by mistake
    for a fast run, or other inputs for a realtime one, deleted the interrupted run's frames instead of keeping them."""
    ir, vis = pair
    out, other = tmp_path / "fused.mkv", tmp_path / "other.mkv"
    shutil.copy(vis, other)
    _slept(monkeypatch)  # a busy machine's pauses would drop frames of the realtime run: it might end before its stop
    interrupted_replay(make_cfg(replay={"codec": "ffv1", "pacing": paced}), ir, vis, out, stop=8)
    kept = partial_path(out).read_bytes()
    key, vis_now = ("pacing", vis) if paced == "fast" else ("vis", other)
    with pytest.raises(FileExistsError, match=rf"^cannot resume .*fused\.mkv: {key} changed since the interrupted run"):
        run_replay(make_cfg(replay={"codec": "ffv1", "pacing": "realtime"}), ir_path=ir, vis_path=vis_now,
                   out_path=out, resume=True)
    assert partial_path(out).read_bytes() == kept


def test_a_resume_on_another_number_of_cpu_threads_goes_on(tmp_path, pair):
    """A batch worker sets engine.threads to its own CPUs: a pair interrupted on one worker and resumed on a worker of
    another size (or a batch rerun with other --workers) was refused as "engine changed", and failed."""
    ir, vis = pair
    out = tmp_path / "fused.mkv"
    interrupted_replay(make_cfg(replay={"codec": "ffv1"}, engine={"threads": 2}), ir, vis, out, stop=8)
    summary = run_replay(make_cfg(replay={"codec": "ffv1"}, engine={"threads": 1}), ir_path=ir, vis_path=vis,
                         out_path=out, resume=True)
    assert summary.complete and summary.reused == 7 and summary.written == N


def test_a_sidecar_left_without_its_partial_output_does_not_block_a_resume_with_other_settings(tmp_path, pair, caplog):
    """A run killed after its sidecar was written and before its first frame reached the disk leaves the sidecar
    alone: ``--resume`` with other settings has no frame to lose, so it starts over (said), and leaves no sidecar."""
    ir, vis = pair
    out = tmp_path / "fused.mkv"
    interrupted_replay(make_cfg(replay={"codec": "ffv1"}), ir, vis, out)
    partial_path(out).unlink()  # as a kill before the encoder's first packet leaves it
    caplog.set_level(logging.WARNING)
    summary = run_replay(make_cfg(replay={"codec": "ffv1"}, sync={"slop_ms": 15.0}), ir_path=ir, vis_path=vis,
                         out_path=out, resume=True)
    assert summary.complete and summary.reused == 0 and summary.written == N
    assert f"nothing to resume for {out}" in caplog.text and not sidecar_path(out).exists()


def test_a_resume_after_a_full_disk_that_also_cut_the_partial_file_fuses_the_frames_it_lost(tmp_path, pair,
                                                                                           monkeypatch):
    """The sidecar says every frame was encoded, but the partial file lost its last ones: it is not remuxed as the
    whole output; the frames it holds are taken over and the rest fused again."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "o.mkv"
    real_remux = VideoWriter._remux
    monkeypatch.setattr(VideoWriter, "_remux", full_disk_remux)
    with pytest.raises(ReplayError, match="No space left on device"):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    whole = partial_path(out).read_bytes()
    partial_path(out).write_bytes(whole[: len(whole) // 2])
    monkeypatch.setattr(VideoWriter, "_remux", real_remux)
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and _held(out) == N
    assert 0 < summary.reused < N


def test_a_run_interrupted_by_a_release_that_kept_no_pacing_in_its_sidecar_resumes(tmp_path, pair):
    """Such a sidecar's run was paced "fast" (the only pacing that release resumed): its frames are taken over."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"
    interrupted_replay(cfg, ir, vis, out, stop=11)
    side = json.loads(sidecar_path(out).read_text())
    del side["fingerprint"]["pacing"]
    sidecar_path(out).write_text(json.dumps(side))
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 10 and _held(out) == N


def test_an_output_that_cannot_take_its_name_leaves_its_partial_file_and_no_copy(tmp_path, pair, monkeypatch):
    """The rename into the final name fails (a full disk's fsync, the folder replaced): the remuxed copy is removed,
    as it would hold the disk's room twice over; the partial file stays for the resume."""
    ir, vis = pair
    cfg, out = make_cfg(replay={"codec": "ffv1"}), tmp_path / "fused.mkv"

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(streamfuse.video, "durable_replace", full_disk)
    with pytest.raises(ReplayError, match=f"No space left on device; {N} frames kept in {partial_path(out)}"):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    assert sorted(p.name for p in tmp_path.glob(".fused*")) == [".fused.mkv.partial", ".fused.mkv.partial.json"]


@pytest.mark.parametrize("swap", ["rewrite", "rename"])
def test_an_input_rewritten_while_it_is_read_gives_no_complete_output(tmp_path, pair, swap):
    """Another video written over the IR input at the 10th pair (copied onto it, or renamed over it): the run ended
    "complete", 40 frames fused partly from each file (copied onto it) or from a file no longer there, and a batch run
    again skipped the output as done; now the run stops naming the input, no final file is made, and the next run is
    told to start over rather than continue such frames."""
    ir, vis = pair
    other = tmp_path / "other.mkv"
    write_video(other, N + 5, 25, grey=True, codec="ffv1", start_s=0.02)
    out = tmp_path / "fused.mkv"
    swapped = (lambda: shutil.copyfile(other, ir)) if swap == "rewrite" else (lambda: os.replace(other, ir))
    fuser = _StopAt(10, then=swapped)
    with pytest.raises(ReplayError, match=r"ir input \S*ir\.mkv changed while it was read") as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, fuser_factory=lambda cfg: fuser)
    assert not out.exists() and "--resume" not in str(err.value)
    with pytest.raises(FileExistsError, match="changed since the interrupted run"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, resume=True)


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two folders of 20 numbered 64x48 frames."""
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for i in range(20):
            cv2.imwrite(str(tmp_path / sub / f"{i:04d}.png"), np.full((48, 64), 10, np.uint8))
    return tmp_path / "ir", tmp_path / "vi"


def _later(path: Path) -> None:
    """``path``'s time a second later, as a change made after the run began gives it (past the clock's tick)."""
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))


@pytest.mark.parametrize("name", [".DS_Store", ".directory", "Thumbs.db", ".thumbnails"])
def test_a_file_no_replay_reads_made_in_a_frames_folder_while_it_is_read_changes_nothing(tmp_path, name):
    """A file manager's hidden file (or a thumbnail cache) written into an input folder during the replay moved the
    folder's own time, which its fingerprint held: the run ended "ir input changed while it was read", no output,
    though every frame it read was one the folder listed."""
    ir, vis = _folders(tmp_path)

    def browse() -> None:
        (ir / name).mkdir() if name == ".thumbnails" else (ir / name).write_bytes(b"x" * 100)
        _later(ir)

    out = tmp_path / "fused.mkv"
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out,
                         fuser_factory=lambda cfg: _StopAt(10, then=browse))
    assert summary.complete and summary.written == 20 and out.exists()


@pytest.mark.parametrize("change, said", [
    ("added", r"20 image files of \d+ bytes then, 21 of"), ("removed", r"20 image files of \d+ bytes then, 19 of"),
    ("same size", r"20 image files of \d+ bytes then and now, but one written since")])
def test_a_frames_folder_whose_listed_images_change_while_it_is_read_gives_no_complete_output(tmp_path, change, said):
    ir, vis = _folders(tmp_path)

    def edit() -> None:
        if change == "added":  # a frame the folder would list now
            cv2.imwrite(str(ir / "0020.png"), np.full((48, 64), 10, np.uint8))
        elif change == "removed":
            (ir / "0002.png").unlink()  # read already
        else:  # another picture of the same size in bytes
            size = (ir / "0003.png").stat().st_size
            cv2.imwrite(str(ir / "0003.png"), np.full((48, 64), 200, np.uint8))
            assert (ir / "0003.png").stat().st_size == size
            _later(ir / "0003.png")

    out = tmp_path / "fused.mkv"
    with pytest.raises(ReplayError, match=rf"ir input \S*ir changed while it was read \({said}"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, fuser_factory=lambda cfg: _StopAt(10, then=edit))
    assert not out.exists()


def test_a_frames_folder_run_interrupted_before_its_files_were_listed_resumes_or_says_why(tmp_path):
    """A sidecar of the release before held a folder input as [path, the size of its files, the newest time of
    those and the folder]: a resume goes on where its files are as they were, a hidden file written since (which moved
    the folder's time) included, and is refused in one line where one of them changed."""
    cfg, out = _interrupted_folders(tmp_path)
    side = json.loads(sidecar_path(out).read_text())
    for key, sub in (("ir", "ir"), ("vis", "vi")):  # as that release wrote it
        files = [p.stat() for p in (tmp_path / sub).iterdir()]
        side["fingerprint"][key] = [str(tmp_path / sub), sum(f.st_size for f in files),
                                    max([(tmp_path / sub).stat().st_mtime_ns, *(f.st_mtime_ns for f in files)])]
    sidecar_path(out).write_text(json.dumps(side))
    kept = partial_path(out).read_bytes()
    (tmp_path / "ir" / "0005.png").write_bytes((tmp_path / "ir" / "0005.png").read_bytes())
    _later(tmp_path / "ir" / "0005.png")
    with pytest.raises(FileExistsError, match=r"^cannot resume .*fused\.mkv: ir changed since the interrupted run "
                                              r"\(it read ir \S+ir: \d+ bytes, modified "):
        run_replay(cfg, ir_path=tmp_path / "ir", vis_path=tmp_path / "vi", out_path=out, resume=True)
    assert partial_path(out).read_bytes() == kept
    os.utime(tmp_path / "ir" / "0005.png", ns=(0, side["fingerprint"]["ir"][2]))  # as it was
    (tmp_path / "ir" / ".DS_Store").write_bytes(b"x")
    _later(tmp_path / "ir")
    summary = run_replay(cfg, ir_path=tmp_path / "ir", vis_path=tmp_path / "vi", out_path=out, resume=True)
    assert summary.reused > 0 and summary.complete
