"""Offline replay: one output frame per pair, pts carried over, atomic output, resume, bad inputs, MCAP parity."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers_clock import SleptClock
from helpers_video import write_sound

import streamfuse.processor
import streamfuse.video
from streamfuse.atomic_write import partial_path
from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.sources import SourceConfig, open_source
from streamfuse.capture.video_sources import AvSource
from streamfuse.capture.synthetic import SyntheticScene
from streamfuse.config import config_from_dict
from streamfuse.frames import Frame
from streamfuse.processor import FrameProcessor, build_fuser
from streamfuse.recording import RecordConfig, Recorder
from streamfuse.replay import ReplayError, find_pairs, run_replay
from streamfuse.replay.resume import save_sidecar
from streamfuse.sync import Pairer, SyncConfig
from streamfuse.video import VideoWriter, decode_frames

REPO = Path(__file__).resolve().parents[1]
PATIENCE_S = 60.0  # how long a test waits for an event that must happen (a loaded machine can be slow)


def make_cfg(**sections):
    """A replay config with the deterministic ``max`` fuser and no progress bar."""
    base = {"ir": {"kind": "file"}, "vis": {"kind": "file"}, "fuse": {"name": "max"},
            "replay": {"progress": False}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_from_dict(base)


def write_video(path: Path, n: int, fps: int, *, start_s: float = 0.0, size=(64, 48), grey: bool = False,
                codec: str = "h264") -> list[int]:
    """A small moving test pattern; returns its pts (time base 1/(512*fps), 512 ticks per frame)."""
    tb = Fraction(1, 512 * fps)
    w = VideoWriter(path, codec=codec, crf=10, time_base=tb, rate=Fraction(fps), width=size[0], height=size[1])
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    pts = [round(start_s / tb) + 512 * i for i in range(n)]
    for i, p in enumerate(pts):
        img = ((xx * 4 + yy * 2 + 9 * i) % 256).astype(np.uint8)
        w.write(img if grey else np.dstack([img, 255 - img, (img // 2 + 60).astype(np.uint8)]), p)
    w.commit()
    return pts


def decoded(path: Path) -> tuple[Fraction, list[int]]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return stream.time_base, [f.pts for f in c.decode(stream)]


def expected_pairs(cfg, ir: Path, vis: Path) -> list[tuple[int, int]]:
    """(ir seq, vis seq) of every pair, by pushing the two files' frames to a Pairer in capture-time order."""
    frames = []
    for section, path in (("ir", ir), ("vis", vis)):
        with open_source(section, SourceConfig(kind="file", path=str(path), realtime=False)) as src:
            while (f := src.read()) is not None:
                frames.append(f)
    frames.sort(key=lambda f: (f.t_capture_ns, f.stream != "ir"))
    pairer, pairs = Pairer(cfg.sync), []
    for f in frames:
        pairs += pairer.push(f)
    pairs += pairer.flush()
    return [(p.ir.seq, p.vis.seq) for p in pairs]


@pytest.fixture
def clip(tmp_path):
    """IR at 25 fps and visible at 30 fps starting 0.2 s later, 24 frames each."""
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 24, 25, grey=True)
    vis_pts = write_video(vis, 24, 30, start_s=0.2)
    return ir, vis, vis_pts


def test_one_output_frame_per_pair_with_the_visible_pts(tmp_path, clip):
    ir, vis, vis_pts = clip
    cfg = make_cfg()
    out = tmp_path / "fused.mp4"
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    pairs = expected_pairs(cfg, ir, vis)
    tb, pts = decoded(out)
    assert summary.complete and summary.pairs == summary.fused == summary.written == len(pairs) == len(pts)
    assert tb == Fraction(1, 512 * 30)
    assert pts == [vis_pts[v] for _, v in pairs]  # the visible frame's own pts, as integers
    assert summary.frames == {"ir": 24, "vis": 24}
    assert summary.unpaired["ir"] == 24 - len(pairs) and summary.unpaired["vis"] == 24 - len(pairs)
    assert summary.dropped == {"ir": 0, "vis": 0}
    assert set(summary.stages) >= {"decode", "pair", "fuse", "postprocess", "encode"}
    assert not partial_path(out).exists() and not list(tmp_path.glob(".*"))
    with av.open(str(out)) as c:  # the metadata holds the paths used, not the config's empty defaults
        used = json.loads(c.metadata["comment"])["streamfuse_config"]
    assert (used["ir"]["path"], used["vis"]["path"], used["replay"]["out"]) == (str(ir), str(vis), str(out))


def test_same_rate_pairs_all_frames_and_writes_a_frames_folder(tmp_path):
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, 12, 25, grey=True)
    write_video(vis, 12, 25)
    frames_dir = tmp_path / "frames"
    summary = run_replay(make_cfg(replay={"codec": "ffv1", "frames_dir": str(frames_dir)}), ir_path=ir,
                         vis_path=vis, out_path=tmp_path / "fused.mkv")
    assert summary.written == 12 and summary.unpaired == {"ir": 0, "vis": 0}
    assert sorted(p.name for p in frames_dir.iterdir()) == [f"{i:06d}.png" for i in range(12)]
    assert len(list(decode_frames(tmp_path / "fused.mkv"))) == 12
    # a second run into the same folder would mix its frames with these: refused, before any work
    with pytest.raises(ValueError, match="frames_dir .* already holds the frames of an earlier run"):
        run_replay(make_cfg(replay={"frames_dir": str(frames_dir)}), ir_path=ir, vis_path=vis,
                   out_path=tmp_path / "again.mkv")
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(ValueError, match="frames_dir .*afile is a file, not a folder"):
        run_replay(make_cfg(replay={"frames_dir": str(tmp_path / "afile")}), ir_path=ir, vis_path=vis,
                   out_path=tmp_path / "again.mkv")
    # a file in its way: it was "[Errno 20] Not a directory" naming no key, once the output was opened
    with pytest.raises(ValueError, match=f"^replay.frames_dir {tmp_path / 'afile' / 'f'} cannot be written: "
                                         f"{tmp_path / 'afile'} is a file$"):
        run_replay(make_cfg(replay={"frames_dir": str(tmp_path / "afile" / "f")}), ir_path=ir, vis_path=vis,
                   out_path=tmp_path / "again.mkv")
    assert not list(tmp_path.glob("*again*"))


def test_folders_of_numbered_frames(tmp_path):
    import cv2

    for name, shape in (("ir", (48, 64)), ("vis", (48, 64, 3))):
        (tmp_path / name).mkdir()
        for i in range(6):
            cv2.imwrite(str(tmp_path / name / f"f{i}.png"), np.full(shape, 30 * i, np.uint8))
    out = tmp_path / "o.mp4"
    summary = run_replay(make_cfg(vis={"fps": 20.0}, ir={"fps": 20.0}), ir_path=tmp_path / "ir",
                         vis_path=tmp_path / "vis", out_path=out)
    assert summary.written == 6
    assert [t for t, _ in decode_frames(out)] == [Fraction(i, 20) for i in range(6)]
    with av.open(str(out)) as c:
        assert c.metadata["streamfuse_t0_ns"] == "0" and "streamfuse_config" in c.metadata["comment"]


def _replay_halves(tmp_path, kept: dict[str, list[int]], level: int) -> tuple[object, list[tuple[int, int]]]:
    """Replay IR and visible folders of the frame numbers ``kept`` (frame ``i``: the IR's left half, the visible's
    right half at ``level * i``) with the max fuser; the summary and each output's two halves."""
    import cv2

    for name, numbers in kept.items():
        (tmp_path / name).mkdir()
        for i in numbers:
            image = np.zeros((48, 64), np.uint8)
            (image[:, :32] if name == "ir" else image[:, 32:])[:] = level * i
            cv2.imwrite(str(tmp_path / name / f"{i:04d}.png"), image)
    out = tmp_path / "o.mkv"
    cfg = make_cfg(replay={"progress": False, "codec": "ffv1"}, post={"encoding": "mono8"})
    summary = run_replay(cfg, ir_path=tmp_path / "ir", vis_path=tmp_path / "vis", out_path=out)
    # max fuser: the left half is the IR partner's number, the right half the visible frame's
    return summary, [(int(np.median(img[:, :32])) // level, int(np.median(img[:, 32:])) // level)
                     for _, img in decode_frames(out)]


def test_folders_with_a_missing_frame_pair_by_frame_number(tmp_path):
    # IR frame 0003 lost: visible 0003 goes unpaired, and every later visible frame keeps its own IR partner
    numbered = list(range(1, 9))  # numbered from 1, as many datasets are
    summary, halves = _replay_halves(tmp_path, {"ir": [i for i in numbered if i != 3], "vis": numbered}, 20)
    assert summary.written == 7 and summary.unpaired == {"ir": 0, "vis": 1}
    assert halves == [(i, i) for i in (1, 2, 4, 5, 6, 7, 8)]


def test_a_folder_that_lost_most_of_its_frames_still_pairs_by_frame_number(tmp_path):
    # IR kept only every other frame of 0..15 (a usual step of 2): it was timed by position, and 11 of its 12 frames
    # were fused with the wrong visible frame
    kept = {"ir": [*range(0, 17, 2), 17, 18, 19], "vis": list(range(20))}
    summary, halves = _replay_halves(tmp_path, kept, 10)
    assert summary.written == 12 and summary.unpaired == {"ir": 0, "vis": 8}
    assert halves == [(i, i) for i in kept["ir"]]


def test_folders_of_webp_frames_replay_as_any_image_folder(tmp_path):
    # the replay's own list of image suffixes lacked .webp, which the folder source reads: such folders were refused
    import cv2

    for name in ("ir", "vis"):
        (tmp_path / name).mkdir()
        for i in range(3):
            assert cv2.imwrite(str(tmp_path / name / f"{i:04d}.webp"), np.full((48, 64, 3), 40 * i, np.uint8))
    summary = run_replay(make_cfg(replay={"progress": False}), ir_path=tmp_path / "ir", vis_path=tmp_path / "vis",
                         out_path=tmp_path / "o.mkv")
    assert summary.written == 3


def test_folders_with_a_gap_of_seconds_make_a_finished_mp4(tmp_path):
    # a recording's pause over 2.1 s (a camera's restart) could never be written to MP4 at the nanosecond clock of
    # folders and recordings ("Not yet implemented in FFmpeg"): every resume failed the same way
    import cv2

    for name in ("ir", "vis"):
        (tmp_path / name).mkdir()
        for i in (0, 1, 2, 100, 101, 102):  # 3.3 s apart at 30 frames/s
            cv2.imwrite(str(tmp_path / name / f"{i:04d}.png"), np.full((48, 64), 2 * i, np.uint8))
    out = tmp_path / "o.mp4"
    summary = run_replay(make_cfg(replay={"progress": False}), ir_path=tmp_path / "ir", vis_path=tmp_path / "vis",
                         out_path=out)
    assert summary.written == 6 and out.is_file()
    times = [t for t, _ in decode_frames(out)]
    assert [round(t * 30) for t in times] == [0, 1, 2, 100, 101, 102]  # to the microsecond MP4 now keeps


def test_a_frame_of_another_size_mid_stream_stops_the_replay(tmp_path):
    """The encoder would rescale it silently: the replay stops at it, saying which input and frame, with the frames
    before it kept and no --resume (a resumed run would meet the same frame)."""
    import cv2

    for name, channels in (("ir", ()), ("vis", (3,))):
        (tmp_path / name).mkdir()
        for i in range(6):
            shape = (24, 32) if i == 3 else (48, 64)
            cv2.imwrite(str(tmp_path / name / f"f{i}.png"), np.full(shape + channels, 30 * i, np.uint8))
    out = tmp_path / "o.mp4"
    with pytest.raises(ReplayError, match=r"frame 3 is 32x24, the video's frames are 64x48 .*3 frames kept") as err:
        run_replay(make_cfg(vis={"fps": 20.0}, ir={"fps": 20.0}), ir_path=tmp_path / "ir", vis_path=tmp_path / "vis",
                   out_path=out)
    assert not out.exists() and err.value.summary.written == 3
    assert f"(the visible input {tmp_path / 'vis'} changes size at its frame 3, counted from 0)" in str(err.value)
    assert "--resume" not in str(err.value)


class _StopAt:
    """A max fuser that raises ``exc`` at its ``stop``-th call (or, given ``then``, calls it and goes on) and counts
    calls."""

    def __init__(self, stop: int | None, exc: type[BaseException] = KeyboardInterrupt, *, then=None):
        self.inner, self.stop, self.exc, self.then, self.calls = build_fuser(make_cfg().fuse), stop, exc, then, 0
        self.name, self.version = self.inner.name, self.inner.version

    def fuse(self, ir, vis_y, stream="default"):
        self.calls += 1
        if self.calls == self.stop:
            if self.then is None:
                raise self.exc()
            self.then()
        return self.inner.fuse(ir, vis_y)


def interrupted_replay(cfg, ir: Path, vis: Path, out: Path, stop: int = 8) -> ReplayError:
    """Run a replay whose fuser is interrupted (Ctrl-C) at its ``stop``-th call; returns the ReplayError."""
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ReplayError) as err:
        mp.setattr(streamfuse.processor, "config_fuser", lambda *a: _StopAt(stop))
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    return err.value


def test_interrupt_leaves_no_final_file_and_resume_finishes_without_refusing(tmp_path, clip, monkeypatch):
    ir, vis, _ = clip
    cfg, out = make_cfg(), tmp_path / "fused.mp4"
    err = interrupted_replay(cfg, ir, vis, out)
    assert re.search(r"interrupted \(Ctrl-C\); 7 frames kept in .*\.fused\.mp4\.partial", str(err))
    assert not out.exists() and partial_path(out).exists()
    assert err.summary.written == 7 and not err.summary.complete and err.interrupted
    counting = _StopAt(None)
    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: counting)
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    n_pairs = len(expected_pairs(cfg, ir, vis))
    assert summary.complete and summary.reused == 7 and counting.calls == summary.fused == n_pairs - 7
    assert len(decoded(out)[1]) == n_pairs
    assert not partial_path(out).exists() and not list(tmp_path.glob(".fused*"))


def test_an_interrupted_replay_says_how_to_continue_it(tmp_path, clip):
    """The one line a user reads ends with what to run next; ``message`` (a batch's reason) leaves that out."""
    ir, vis, _ = clip
    out = tmp_path / "fused.mp4"
    err = interrupted_replay(make_cfg(), ir, vis, out)
    assert err.message.startswith("replay stopped: interrupted (Ctrl-C); 7 frames kept in ")
    assert str(err) == f"{err.message}; run again with --resume (same --out {out}) to continue"


def test_a_ctrl_c_during_a_replay_command_ends_it_with_130_and_one_line_no_error(tmp_path, clip, monkeypatch, capsys):
    """``streamfuse replay`` stopped by Ctrl-C: the user's stop, not a failure (130, as the README says), and its one
    line says how to go on."""
    from streamfuse.cli.run import replay_main

    ir, vis, _ = clip
    out = tmp_path / "fused.mp4"
    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: _StopAt(8))
    assert replay_main(["--config", "replay", "--set", "fuse.name=max", "--set", "replay.progress=false", "--ir",
                        str(ir), "--vis", str(vis), "--out", str(out)]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("streamfuse")]
    assert len(lines) == 1 and "error" not in lines[0], lines
    assert lines[0].startswith("streamfuse replay: replay stopped: interrupted (Ctrl-C); 7 frames kept in ")
    assert lines[0].endswith(f"run again with --resume (same --out {out}) to continue")


def test_a_replay_stopped_before_it_read_a_frame_says_so_in_one_line(tmp_path, clip, monkeypatch, caplog):
    # a SIGTERM as the inputs opened printed the summary table of a replay that read nothing (zeros throughout) above
    # the one line, where the README promises that line alone
    from streamfuse.replay.loop import _Replay

    ir, vis, _ = clip

    def stopped(self, opened):
        raise KeyboardInterrupt

    monkeypatch.setattr(_Replay, "_open_readers", stopped)
    with caplog.at_level(logging.INFO), pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "fused.mp4")
    assert str(err.value) == "replay stopped: interrupted (Ctrl-C); no output written" and err.value.interrupted
    assert "read ir" not in caplog.text


class _HeldReads:
    """Video sources whose reads wait until released, noting whether one was closed while a read was in it (the read
    then touches nothing: FFmpeg must not crash the test)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.release, self.closed_under_read, self.closed = threading.Event(), False, 0
        self._reading, self._changed = 0, threading.Condition()
        self._read, self._close = AvSource.read, AvSource.close
        monkeypatch.setattr(AvSource, "read", lambda source: self._held_read(source))
        monkeypatch.setattr(AvSource, "close", lambda source: self._noted_close(source))

    def wait_reading(self, n: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self._reading >= n, 60)

    def _held_read(self, source: AvSource) -> Frame | None:
        with self._changed:
            self._reading += 1
            self._changed.notify_all()
        self.release.wait()
        try:
            return None if self.closed else self._read(source)
        finally:
            with self._changed:
                self._reading -= 1
                self._changed.notify_all()

    def _noted_close(self, source: AvSource) -> None:
        with self._changed:
            self.closed_under_read |= self._reading > 0
            self.closed += 1
        self.release.set()
        with self._changed:
            assert self._changed.wait_for(lambda: self._reading == 0, 60)
        self._close(source)


def test_a_ctrl_c_as_the_decoder_threads_start_closes_no_input_under_them(tmp_path, clip, monkeypatch, main_watch):
    """A Ctrl-C as the replay started its decoder threads (the model loaded): the inputs were closed while the threads
    read them, and FFmpeg's av_read_frame crashed the process (SIGSEGV) instead of the one line and 130."""
    ir, vis, _ = clip
    held, thread_start = _HeldReads(monkeypatch), threading.Thread.start

    def start_then_ctrl_c(thread: threading.Thread) -> None:
        thread_start(thread)
        if thread.name == "decode vis":  # the last one: both read, then the Ctrl-C
            held.wait_reading(2)
            raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start_then_ctrl_c)
    threading.Thread(target=main_watch.when_waits_in, args=("stop", held.release), daemon=True).start()
    with pytest.raises(ReplayError, match=r"^replay stopped: interrupted \(Ctrl-C\); no output written$"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "fused.mp4")
    assert not held.closed_under_read and held.closed == 2


def test_interrupt_while_the_file_is_remuxed_keeps_the_partial_and_resumes(tmp_path, clip, monkeypatch):
    """Ctrl-C after the last frame, while the final file is written: the same one line and partial file as
    mid-run, no half-written copy left behind, and --resume finishes."""
    ir, vis, _ = clip
    cfg, out = make_cfg(), tmp_path / "fused.mp4"
    real_remux = VideoWriter._remux

    def interrupted_remux(self, dst):
        dst.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(VideoWriter, "_remux", interrupted_remux)
    with pytest.raises(ReplayError, match=r"interrupted \(Ctrl-C\); \d+ frames kept in .*; run again with --resume"):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    assert not out.exists() and partial_path(out).exists()
    assert sorted(p.name for p in tmp_path.glob(".fused*")) == [".fused.mp4.partial", ".fused.mp4.partial.json"]
    monkeypatch.setattr(VideoWriter, "_remux", real_remux)
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.fused == 0 and len(decoded(out)[1]) == summary.written


def full_disk_remux(self: VideoWriter, dst: Path) -> None:
    """``VideoWriter._remux`` as a full disk stops it, the final file begun."""
    dst.write_bytes(b"half")
    raise OSError(errno.ENOSPC, "No space left on device")


def counted_encodes(monkeypatch) -> list:
    """The frames every VideoWriter encodes from now on."""
    real_encode, encoded = VideoWriter._encode, []
    monkeypatch.setattr(VideoWriter, "_encode", lambda self, item: encoded.append(item) or real_encode(self, item))
    return encoded


def test_a_resume_after_a_full_disk_cut_the_final_remux_remuxes_the_frames_already_encoded(tmp_path, clip,
                                                                                            monkeypatch):
    # every frame was decoded from the partial file and encoded again (H.264 twice over), needing more room still
    ir, vis, _ = clip
    cfg, out = make_cfg(), tmp_path / "fused.mp4"
    real_remux = VideoWriter._remux
    monkeypatch.setattr(VideoWriter, "_remux", full_disk_remux)
    with pytest.raises(ReplayError, match=r"No space left on device; (\d+) frames kept in .*; run again with --resume"):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    encoded = counted_encodes(monkeypatch)
    with pytest.raises(ReplayError, match=r"No space left on device; \d+ frames kept in .*; run again with --resume"):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)  # the disk still full: as it was
    kept = list(decode_frames(partial_path(out)))
    monkeypatch.setattr(VideoWriter, "_remux", real_remux)
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and not encoded and not list(tmp_path.glob(".fused*"))
    final = list(decode_frames(out))
    assert summary.written == len(final) == len(kept) > 0
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(kept, final))  # the very frames kept
    with av.open(str(out)) as c:
        assert json.loads(c.metadata["comment"])["streamfuse_config"]["replay"]["out"] == str(out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("when", ["after the rename", "after the partial file's removal"])
def test_a_stop_once_the_output_has_its_name_leaves_it_complete(tmp_path, clip, monkeypatch, sig, when):
    """A stop signal after the finished file took its name: it said "interrupted", called this run's complete output
    an earlier run's, and left the work files (a resume then had nothing to continue)."""
    ir, vis, _ = clip
    out = tmp_path / "fused.mp4"
    real_replace, real_unlink = streamfuse.video.durable_replace, Path.unlink

    def replace_then_stop(src, dst):
        real_replace(src, dst)
        if when == "after the rename":
            os.kill(os.getpid(), sig)

    def unlink_then_stop(path, missing_ok=False):
        real_unlink(path, missing_ok=missing_ok)
        if when != "after the rename" and path == partial_path(out):
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(streamfuse.video, "durable_replace", replace_then_stop)
    monkeypatch.setattr(Path, "unlink", unlink_then_stop)
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    assert summary.complete and not summary.stopped and len(decoded(out)[1]) == summary.written
    assert out.exists() and not list(tmp_path.glob(".fused*"))
    assert summary.late_stop == sig  # held for the caller: a batch stops after this pair


def test_interrupt_while_the_model_loads_is_one_line_and_writes_nothing(tmp_path, clip, monkeypatch):
    ir, vis, _ = clip

    def loading(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(streamfuse.processor, "config_fuser", loading)
    with pytest.raises(ReplayError, match=r"^replay stopped: interrupted \(Ctrl-C\)$") as err:
        run_replay(make_cfg(replay={"frames_dir": str(tmp_path / "new" / "frames")}), ir_path=ir, vis_path=vis,
                   out_path=tmp_path / "o.mp4")
    assert err.value.interrupted and not list(tmp_path.glob("*o.mp4*")) and not (tmp_path / "new").exists()


def test_a_failed_replay_says_that_an_existing_output_is_an_earlier_one(tmp_path, clip, monkeypatch):
    """--resume of a partial output beside a final file (an earlier run's: a replay refuses to start over one)."""
    ir, vis, _ = clip
    out = tmp_path / "o.mp4"
    out.write_bytes(b"an earlier run's video")
    partial_path(out).write_bytes(b"no sidecar: not resumable, started over")
    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: _StopAt(3, RuntimeError))
    with pytest.raises(ReplayError, match=r"2 frames kept in .*; .*o\.mp4 is an earlier run's output, left as it"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert out.read_bytes() == b"an earlier run's video"


def test_resume_with_changed_settings_is_refused_and_keeps_the_partial(tmp_path, clip):
    # it started over, writing over the interrupted run's frames (hours of them, for a --set left out by mistake)
    ir, vis, _ = clip
    out = tmp_path / "fused.mp4"
    interrupted_replay(make_cfg(), ir, vis, out, stop=5)
    kept = partial_path(out).read_bytes()
    with pytest.raises(FileExistsError, match=r"^cannot resume .*fused\.mp4: codec changed since the interrupted "
                                              r"run; run it with the settings it was started with to continue, or "
                                              r"delete .*\.fused\.mp4\.partial to start over$"):
        run_replay(make_cfg(replay={"crf": 30}), ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert partial_path(out).read_bytes() == kept and not out.exists()
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused > 0


def test_fuser_error_keeps_the_partial_and_says_so(tmp_path, clip, monkeypatch):
    ir, vis, _ = clip
    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: _StopAt(3, RuntimeError))
    with pytest.raises(ReplayError, match="2 frames kept"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()
    assert json.loads((tmp_path / ".o.mp4.partial.json").read_text())["written"] == 2


@pytest.mark.parametrize("overlap", [True, False])
def test_truncated_video_fuses_what_decodes_and_fails(tmp_path, overlap):
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mkv"
    write_video(ir, 24, 25, grey=True)
    write_video(vis, 24, 25)
    vis.write_bytes(vis.read_bytes()[: vis.stat().st_size // 2])
    out = tmp_path / "o.mp4"
    with pytest.raises(ReplayError, match=r"replay stopped: .*(truncated|stopped)") as err:
        run_replay(make_cfg(replay={"overlap": overlap}), ir_path=ir, vis_path=vis, out_path=out)
    assert "\n" not in str(err.value) and "--resume" not in str(err.value)  # running again meets it again
    assert not out.exists()
    assert 0 < err.value.summary.written < 24
    assert len(list(decode_frames(partial_path(out)))) == err.value.summary.written


def test_truncated_mp4_without_index_is_refused_before_work(tmp_path):
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 12, 25, grey=True)
    write_video(vis, 12, 25)
    vis.write_bytes(vis.read_bytes()[: vis.stat().st_size // 2])  # the moov index is at the end: lost
    with pytest.raises(ValueError, match="vis input .* is not a video PyAV can read"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert not list(tmp_path.glob("*o.mp4*"))


def test_an_input_without_a_video_stream_is_refused_before_work(tmp_path, clip):
    """A sound file given as the IR input (a camera's audio track exported by mistake): one line, no traceback."""
    sound = tmp_path / "ir.wav"
    write_sound(sound)
    with pytest.raises(ValueError, match=f"^ir input {re.escape(str(sound))} has no video stream$"):
        run_replay(make_cfg(), ir_path=sound, vis_path=clip[1], out_path=tmp_path / "o.mp4")
    assert not list(tmp_path.glob("*o.mp4*"))


def test_bad_inputs_and_outputs_give_one_line_errors(tmp_path, clip):
    ir, vis, _ = clip
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    os.mkfifo(tmp_path / "pipe.mp4")  # opening it would wait for a writer for ever
    (tmp_path / "rec.mcap").write_bytes(b"")
    (tmp_path / "other.mcap").write_bytes(b"")
    cases = [
        (dict(ir_path=tmp_path / "rec.mcap", vis_path=vis), ValueError,
         r"a recording holds both streams: give the \.mcap alone as --ir, or the same file to --ir and --vis"),
        (dict(ir_path=tmp_path / "rec.mcap", vis_path=tmp_path / "other.mcap"), ValueError,  # not IR from the second
         r"a recording holds both streams: .* \(got .*rec\.mcap and .*other\.mcap\)"),
        (dict(ir_path=tmp_path / "missing.mp4", vis_path=vis), FileNotFoundError, "ir input not found"),
        (dict(ir_path=tmp_path / "pipe.mp4", vis_path=vis), ValueError, "ir input .*pipe.mp4 is not a file or a"),
        (dict(ir_path=ir, vis_path=text), ValueError, "vis input .*notes.mp4 is not a video"),
        (dict(ir_path=ir, vis_path=vis, out_path=tmp_path / "no" / "o.mp4"), FileNotFoundError,
         "output folder does not exist"),
        (dict(ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4" / "x.mp4"), FileNotFoundError,
         "output folder does not exist"),
        (dict(ir_path=ir, vis_path=vis, out_path=tmp_path / "rec.mcap" / "x.mp4"), FileNotFoundError,
         "output folder is a file: .*rec.mcap$"),
        (dict(ir_path=ir, vis_path=vis, out_path=tmp_path / "o.webp"), ValueError, "unknown container"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match) as err:
            run_replay(make_cfg(), **{"out_path": tmp_path / "o.mp4", **kwargs})
        assert "\n" not in str(err.value)
    assert not (tmp_path / "o.mp4").exists()


def test_a_live_configs_camera_is_named_when_no_input_is_given(tmp_path, clip):
    # `replay --config rig` without --ir said "ir input not found: 1": the rig's camera index read as a file name
    ir, vis, _ = clip
    cfg = config_from_dict({"ir": {"kind": "camera", "path": "1"}, "vis": {"kind": "stream", "path": "rtsp://cam/v"}})
    with pytest.raises(ValueError, match=r"^no ir input: the config's ir is a live camera \(1\); pass --ir PATH of a "
                                         r"recorded input$"):
        run_replay(cfg, vis_path=vis, out_path=tmp_path / "o.mp4")
    with pytest.raises(ValueError, match=r"^no vis input: the config's vis is a live stream \(rtsp://cam/v\); pass "):
        run_replay(cfg, ir_path=ir, out_path=tmp_path / "o.mp4")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder(tmp_path, clip):
    ir, vis, _ = clip
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="not writable"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=ro / "o.mp4")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_folder_that_makes_no_files_says_so() -> None:
    """/proc is a folder every user may list, whose filesystem answers a new file with ENOENT: the line said "No
    such file or directory" of a folder that is there."""
    from streamfuse.replay.outputs import check_output_folder

    with pytest.raises(PermissionError) as err:
        check_output_folder(Path("/proc/fused.mp4"), "libx264")
    assert str(err.value) == "output folder is not writable: /proc (it takes no new files)"


def test_full_disk_gives_one_line_and_no_complete_file(tmp_path, clip):
    """RLIMIT_FSIZE makes writes fail with EFBIG the way a full disk fails them with ENOSPC."""
    ir, vis, _ = clip
    out = tmp_path / "o.mkv"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from streamfuse.config import config_from_dict\n"
        "from streamfuse.replay import ReplayError, run_replay\n"
        "cfg = config_from_dict({'ir': {'kind': 'file'}, 'vis': {'kind': 'file'}, 'fuse': {'name': 'max'},"
        " 'replay': {'progress': False, 'codec': 'ffv1'}})\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))\n"
        "try:\n"
        f"    run_replay(cfg, ir_path={str(ir)!r}, vis_path={str(vis)!r}, out_path={str(out)!r})\n"
        "except ReplayError as exc:\n"
        "    print(exc); sys.exit(1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    assert "File too large" in proc.stdout and len(proc.stdout.strip().splitlines()) == 1
    assert not out.exists()
    kept = int(re.search(r"; (\d+) frames kept in ", proc.stdout)[1])  # what the disk holds, not what was encoded
    assert 0 < kept == len(list(decode_frames(partial_path(out)))), proc.stdout


def test_a_sidecar_the_disk_cannot_hold_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full(path, data):
        open(path, "wb").close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(RuntimeError, match="cannot write .*No space left on device"):
        save_sidecar(tmp_path / "o.mkv", {}, "running", 0, None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("policy", ["resize", "error"])
def test_ir_size_mismatch(tmp_path, policy):
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 6, 25, size=(32, 24), grey=True)
    write_video(vis, 6, 25)
    out = tmp_path / "o.mp4"
    cfg = make_cfg(ir={"resize": policy})
    if policy == "error":
        with pytest.raises(ReplayError, match=r"IR frame 0 is 32x24 but visible frame 0 is 64x48; set resize: resize"):
            run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
        assert not out.exists() and not partial_path(out).exists()
        return
    assert run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out).written == 6
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (64, 48)


def test_an_ir_size_change_with_resize_error_suggests_no_resume(tmp_path):
    """IR frames that change size at frame 6 with ``resize: error``: the stop line said to --resume, which would
    meet the same frame again (or be refused, once ``ir.resize`` is changed)."""
    ir, vis = tmp_path / "ir", tmp_path / "vis"
    for folder in (ir, vis):
        folder.mkdir()
    for i in range(10):
        cv2.imwrite(str(ir / f"{i:04d}.png"), np.full((24, 32) if i >= 6 else (48, 64), 9 * i, np.uint8))
        cv2.imwrite(str(vis / f"{i:04d}.png"), np.full((48, 64, 3), 5 * i, np.uint8))
    out = tmp_path / "o.mp4"
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(ir={"resize": "error"}), ir_path=ir, vis_path=vis, out_path=out)
    assert str(err.value).startswith("replay stopped: IR frame 6 is 32x24 but visible frame 6 is 64x48; set resize")
    assert str(err.value).endswith(f"; 6 frames kept in {partial_path(out)}")


def _slept(monkeypatch) -> SleptClock:
    """The replay's clock made one that moves as it sleeps: realtime pacing's waits add up to the recorded span
    exactly (and no frame is overtaken)."""
    import streamfuse.replay.inputs
    import streamfuse.replay.loop

    clock = SleptClock()
    for module in (streamfuse.replay.inputs, streamfuse.replay.loop):
        monkeypatch.setattr(module, "time", clock)
    return clock


def test_realtime_pacing_takes_recorded_time_and_counts_drops(tmp_path, monkeypatch):
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 15, 30, grey=True)
    write_video(vis, 15, 30)
    cfg = make_cfg(replay={"pacing": "realtime"})
    with monkeypatch.context() as paced:
        clock = _slept(paced)
        summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "a.mp4")
    assert clock.ns == pytest.approx(14 / 30 * 1e9, abs=1e6)  # the first frame to the last, at their times
    assert summary.written == 15 and summary.dropped == {"ir": 0, "vis": 0}

    _slow(monkeypatch, _slept(monkeypatch))  # 3 frame periods: the live rule drops the frames that were overtaken
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "b.mp4")
    assert summary.dropped["vis"] > 0 and summary.written < 15


def _slow(monkeypatch, clock: SleptClock) -> None:
    """A fuser that takes 0.1 s of ``clock`` per pair, however fast or busy the machine."""
    class Slow(_StopAt):
        def fuse(self, ir, vis_y, stream="default"):
            clock.sleep(0.1)
            return super().fuse(ir, vis_y)

    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: Slow(None))


def test_realtime_pacing_counts_each_dropped_frame_on_its_own_stream(tmp_path, monkeypatch):
    """Visible frames at 30 fps are overtaken while a slow fuser works, IR frames at 6 fps are not: the drops are the
    visible input's, as the summary's ``dropped vis`` must say."""
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 5, 6, grey=True)
    write_video(vis, 20, 30)

    _slow(monkeypatch, _slept(monkeypatch))  # 3 visible frame periods, less than one IR period
    summary = run_replay(make_cfg(replay={"pacing": "realtime"}), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert summary.dropped["vis"] > 0 and summary.dropped["ir"] == 0


def test_realtime_pacing_starts_at_the_first_frame_not_before_the_inputs_open(tmp_path, monkeypatch):
    """Its clock started before the wait for a subscriber (publish.wait_subscriber_s) and the inputs' opening (slow
    on a busy machine): 2 s spent there made the first 2 s of frames late, all dropped but each input's last."""
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, 40, 25, grey=True, codec="ffv1")
    write_video(vis, 40, 25, codec="ffv1")
    clock = _slept(monkeypatch)
    monkeypatch.setattr("streamfuse.replay.loop.wait_subscriber", lambda *a: clock.sleep(2.0))
    summary = run_replay(make_cfg(replay={"pacing": "realtime", "codec": "ffv1"}), ir_path=ir, vis_path=vis,
                         out_path=tmp_path / "o.mkv")
    assert summary.dropped == {"ir": 0, "vis": 0} and summary.written == 40


def test_recording_replays_to_the_live_pairs_and_fused_frames(tmp_path):
    """A live-like loop (IR arriving late) records and pairs; replaying the recording must give the same."""
    cfg = make_cfg(ir={"kind": "mcap"}, vis={"kind": "mcap"}, replay={"codec": "ffv1"})
    scene = SyntheticScene(64, 48, seed=3)
    processor = FrameProcessor.from_config(cfg)  # the live loop's
    t0 = 1_700_000_000_000_000_000
    vis = [(t0 + i * 33_333_333 + (i % 3) * 1_000_000, "vis", i) for i in range(20)]
    ir = [(t0 + 7_000_000 + i * 40_000_000, "ir", i) for i in range(17)]
    arrivals = sorted(vis + [(t + 25_000_000, s, i) for t, s, i in ir])  # IR reaches the loop 25 ms late
    live_pairs, live_fused = [], []
    pairer = Pairer(SyncConfig(slop_ms=20.0))
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path))) as rec:
        for t_arrive, stream, seq in arrivals + [(None, "end", None)]:
            if stream == "end":  # the live run stops: flush the pairer, as the pipeline does
                done = pairer.flush()
            else:
                t = t_arrive - 25_000_000 if stream == "ir" else t_arrive
                img = scene.render_ir(t - t0) if stream == "ir" else scene.render_vis(t - t0)
                frame = Frame(stream, seq, t, img)
                rec.write(frame)
                done = pairer.push(frame)
            for p in done:
                live_pairs.append((p.ir.seq, p.ir.t_capture_ns, p.vis.seq, p.vis.t_capture_ns))
                live_fused.append((p.vis.t_capture_ns, processor(p).image))
    assert len(live_pairs) >= 10

    out = tmp_path / "fused.mkv"
    summary = run_replay(cfg, ir_path=path, out_path=out, resume=False)
    got = list(decode_frames(out))
    assert summary.pairs == summary.written == len(live_pairs) == len(got)
    for (t_out, image), (t_vis, expected) in zip(got, live_fused):
        assert abs(t_out - Fraction(t_vis - vis[0][0], 10**9)) <= Fraction(1, 1000)  # Matroska keeps ms
        np.testing.assert_array_equal(image, expected)
    # the pairs themselves: the recording pushed to the same Pairer config gives the same (seq, time) pairs
    replay_pairs = []
    pairer = Pairer(cfg.sync)
    for p in [p for frame in read_recording(path) for p in pairer.push(frame)] + pairer.flush():
        replay_pairs.append((p.ir.seq, p.ir.t_capture_ns, p.vis.seq, p.vis.t_capture_ns))
    assert replay_pairs == live_pairs
    # realtime pacing reads the two streams through the registered "mcap" source instead, at the recorded rate
    with pytest.MonkeyPatch.context() as monkeypatch:
        clock = _slept(monkeypatch)
        paced = run_replay(make_cfg(replay={"pacing": "realtime"}), ir_path=path, out_path=tmp_path / "paced.mp4")
    assert paced.complete and paced.frames == {"ir": 17, "vis": 20} and paced.written > 0
    assert clock.ns == pytest.approx(ir[-1][0] - vis[0][0], abs=1e3)  # from the first frame (visible) to the last (IR)


def test_latest_mode_fuses_a_visible_frame_held_for_two_ir_frames_into_two_output_frames(tmp_path):
    # IR at twice the visible rate: each visible frame is held for two IR frames, so two pairs share its pts; the
    # second must still be written (a pts one tick on), or the encoder refuses it and the replay stops
    ir, vis, out = tmp_path / "ir.mkv", tmp_path / "vis.mkv", tmp_path / "fused.mkv"
    write_video(ir, 20, 50, grey=True, codec="ffv1")
    write_video(vis, 10, 25, codec="ffv1")
    summary = run_replay(make_cfg(sync={"mode": "latest"}), ir_path=ir, vis_path=vis, out_path=out)
    _, pts = decoded(out)
    assert summary.complete and summary.written == summary.pairs == len(pts) > summary.frames["vis"]
    # each a visible frame's own pts (Matroska's ms, 40 a frame), or the nearest after the one before it
    assert all(b % 40 == 0 and b > a or b == a + 1 for a, b in zip(pts, pts[1:]))


def test_latest_mode_pairs_each_visible_frame_with_the_ir_frame_of_the_same_time(tmp_path):
    """Inputs on the same time stamps: the IR frame of a time is read before the visible one, as the live loop and
    ``expected_pairs`` order them; read after it, each visible frame was fused with the IR frame before."""
    ir, vis, out = tmp_path / "ir.mkv", tmp_path / "vis.mkv", tmp_path / "fused.mkv"
    write_video(ir, 10, 25, grey=True, codec="ffv1")
    write_video(vis, 10, 25, codec="ffv1")
    cfg = make_cfg(sync={"mode": "latest"}, replay={"codec": "ffv1"})
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    assert expected_pairs(cfg, ir, vis) == [(i, i) for i in range(10)]
    assert summary.pairs == summary.written == 10 and summary.unpaired == {"ir": 0, "vis": 0}


def test_find_pairs_from_a_list_file(tmp_path):
    (tmp_path / "list.txt").write_text("# ir vis\na/ir1.mp4 b/vis1.mp4\n/abs/ir2.mp4 /abs/vis2.mp4  # second\n")
    assert find_pairs(tmp_path / "list.txt") == [(tmp_path / "a/ir1.mp4", tmp_path / "b/vis1.mp4", ""),
                                                (Path("/abs/ir2.mp4"), Path("/abs/vis2.mp4"), "")]
    (tmp_path / "bad.txt").write_text("only-one-path\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 'IR_PATH VIS_PATH"):
        find_pairs(tmp_path / "bad.txt")
    # an editor's byte order mark; paths with spaces and '#' quoted or escaped, as a shell reads them
    (tmp_path / "odd.txt").write_text("\ufeffrun\\ 1/ir.mp4\t'run 1/vis.mp4'\n\"take #2/ir.mp4\" take\\ \\#2/vis.mp4\n",
                                      encoding="utf-8")
    assert find_pairs(tmp_path / "odd.txt") == [(tmp_path / "run 1/ir.mp4", tmp_path / "run 1/vis.mp4", ""),
                                               (tmp_path / "take #2/ir.mp4", tmp_path / "take #2/vis.mp4", "")]
    (tmp_path / "open.txt").write_text("a.mp4 'b.mp4\n")
    with pytest.raises(ValueError, match="open.txt:1: No closing quotation in \"a.mp4 'b.mp4\""):
        find_pairs(tmp_path / "open.txt")
    # a third word names the pair's output; only a file name, so that it stays in the output folder
    (tmp_path / "named.txt").write_text("s1/cam.mp4 s1/vis.mp4 site1_cam\ns2/cam.mp4 s2/vis.mp4\n")
    assert [p.name for p in find_pairs(tmp_path / "named.txt")] == ["site1_cam", ""]
    for name in ("../up", "sub/cam", ".hidden"):
        (tmp_path / "escape.txt").write_text(f"a.mp4 b.mp4 {name}\n")
        with pytest.raises(ValueError, match=f"escape.txt:1: output name '{re.escape(name)}' must be a file name"):
            find_pairs(tmp_path / "escape.txt")
    (tmp_path / "four.txt").write_text("a.mp4 b.mp4 c d\n")
    with pytest.raises(ValueError, match=r"four.txt:1: expected 'IR_PATH VIS_PATH \[OUTPUT_NAME\]'"):
        find_pairs(tmp_path / "four.txt")
    # a list written with find -print0: "embedded null byte" later, from the OS, naming neither the list nor the line
    (tmp_path / "nul.txt").write_bytes(b"a.mp4 b.mp4\n c.mp4 d.mp4\0\n")
    with pytest.raises(ValueError, match=r"^.*nul.txt:2: a NUL byte in 'c.mp4 d.mp4\\x00' \(a list written with "
                                         r"-print0\?\); give one pair a line"):
        find_pairs(tmp_path / "nul.txt")


def test_find_pairs_takes_a_visible_subfolder_named_vis_as_well_as_vi(tmp_path):
    # the docs and the error message promise ir/ + vis/; refused, a batch laid out that way would not start
    for sub in ("ir", "vis"):
        (tmp_path / sub).mkdir()
        for name in ("a.mp4", "b.mkv"):
            (tmp_path / sub / name).write_bytes(b"")
    assert find_pairs(tmp_path) == [(tmp_path / "ir" / n, tmp_path / "vis" / n, "") for n in ("a.mp4", "b.mkv")]


def test_find_pairs_in_a_folder_takes_recordings_and_extensions_in_capitals(tmp_path):
    """A camera's ``.MP4`` files and recordings (``.mcap``) are pairs too; a file with no video extension is not."""
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for name in ("A.MP4", "run.mcap", "notes.txt"):
            (tmp_path / sub / name).write_bytes(b"")
    assert find_pairs(tmp_path) == [(tmp_path / "ir" / n, tmp_path / "vi" / n, "") for n in ("A.MP4", "run.mcap")]


def test_find_pairs_in_a_folder_takes_the_video_containers_a_replay_reads(tmp_path):
    """A DVD's ``.vob``, an ``.asf``, a camcorder's ``.MTS`` or ``.m2ts`` and a phone's ``.3gp``, which a replay reads,
    were passed over as files without a video extension."""
    names = ("a.vob", "b.asf", "c.MTS", "d.m2ts", "e.3gp")
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for name in names:
            (tmp_path / sub / name).write_bytes(b"")
    assert find_pairs(tmp_path) == [(tmp_path / "ir" / n, tmp_path / "vi" / n, "") for n in names]


def _ts_near_its_clock_wrap(path: Path, n: int) -> None:
    """An MPEG-TS whose 33-bit pts wrap 0.4 s after its first frame (a camera's clock 26.5 h on): FFmpeg gives the
    frames before the wrap negative pts."""
    first = 2**33 // 3600 - 10  # in frames of 1/25 s, 3600 ticks of 90 kHz each
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="bgr24")
            frame.pts, frame.time_base = first + i, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_a_visible_input_whose_pts_start_below_zero_replays_with_its_times_from_zero(tmp_path):
    # the partial output (NUT) refuses a negative pts: the run stopped at its first frame, blaming the output's writing
    ir, vis, out = tmp_path / "ir.ts", tmp_path / "vis.ts", tmp_path / "o.mkv"
    for path in (ir, vis):
        _ts_near_its_clock_wrap(path, 12)
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    assert summary.complete and summary.written == 12
    time_base, pts = decoded(out)
    assert time_base == Fraction(1, 1000) and pts == [40 * i for i in range(12)]


def test_an_encoder_that_refuses_the_frame_size_says_so_before_any_frame(tmp_path):
    # FFmpeg's FFV1 encoder refuses a frame one pixel wide: that came as a failed write of the first frame, a stop line
    # saying the output's folder had been removed, and a sidecar left without its partial output
    try:
        writer = VideoWriter(tmp_path / "o.mkv", codec="ffv1", crf=0, time_base=Fraction(1, 25), rate=Fraction(25),
                             width=1, height=1000)
    except RuntimeError as exc:
        assert str(exc).startswith("cannot encode 1x1000 frames with ffv1: ") and list(tmp_path.iterdir()) == []
        return
    writer.write(np.zeros((1000, 1), np.uint8), 0)  # an FFmpeg whose FFV1 takes the size: it is written whole
    writer.commit()
    assert len(list(decode_frames(tmp_path / "o.mkv"))) == 1


def test_a_replay_started_with_its_stderr_closed_writes_its_output(tmp_path, clip):
    # 2>&- (a cron job's, a service's): sys.stderr None, on which the progress bar raised an AttributeError before the
    # first frame, a traceback nobody saw: status 1 and no output
    ir, vis, _ = clip
    out = tmp_path / "fused.mkv"
    proc = subprocess.run(["sh", "-c", 'exec "$0" "$@" 2>&-', sys.executable, "-m", "streamfuse", "replay", "--ir",
                           str(ir), "--vis", str(vis), "--out", str(out), "--set=fuse.name=max",
                           "--set=replay.codec=ffv1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert decoded(out)[1] and not partial_path(out).exists()


def test_replay_config_is_valid_and_replays(tmp_path, clip):
    from streamfuse.config import load_config

    ir, vis, _ = clip
    cfg = load_config(REPO / "streamfuse" / "configs" / "replay.yaml", ["fuse.name=max", "replay.progress=false"])
    assert cfg.ir.kind == "file" and cfg.replay.pacing == "fast"
    assert run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4").complete


@pytest.mark.parametrize("key, ends", [("crf", (0, 51)), ("codec_threads", (0, 256))])
def test_replay_settings_take_their_whole_range_and_no_more(key, ends):
    """crf 51 (the smallest file H.264 makes) and 0..256 encoder threads are the documented ends: both taken."""
    from streamfuse.replay import ReplayConfig

    for value in ends:
        assert getattr(ReplayConfig(**{key: value}), key) == value
    for value in (ends[0] - 1, ends[1] + 1):
        with pytest.raises(ValueError, match=f"^{key}={value} is out of range"):
            ReplayConfig(**{key: value})


@pytest.mark.data
def test_m3svd_clip_replays_every_frame_with_its_pts(data_dir, tmp_path):
    ir = data_dir / "videos" / "m3svd" / "ir" / "0111_1716.mp4"
    vis = data_dir / "videos" / "m3svd" / "vi" / "0111_1716.mp4"
    out = tmp_path / "0111_1716.mp4"
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    tb_in, pts_in = decoded(vis)
    tb_out, pts_out = decoded(out)
    assert summary.complete and summary.written == summary.pairs == 151
    assert (tb_out, pts_out) == (tb_in, pts_in)


def test_unreadable_partial_output_restarts_with_the_reason(tmp_path, clip, caplog):
    ir, vis, _ = clip
    out = tmp_path / "fused.mp4"
    interrupted_replay(make_cfg(), ir, vis, out)
    partial = partial_path(out)
    partial.write_bytes(b"not a video at all" * 50)
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == 0
    assert "partial file does not decode" in caplog.text and "starting over" in caplog.text


def test_a_replay_waits_for_its_first_subscriber(tmp_path):
    """publish.wait_subscriber_s: a consumer that connects with the replay gets every frame from the first (without
    the wait, ZeroMQ's slow joiner: the frames sent before its subscription arrived never reach it)."""
    from streamfuse.client import Subscriber

    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 20, 30, grey=True)
    write_video(vis, 20, 30)
    endpoint = f"ipc://{tmp_path}/fused"  # the test's own: a port picked free could be taken by a suite beside
    cfg = make_cfg(replay={"publish": True}, publish={"endpoint": endpoint, "nodrop": True, "wait_ms": 60_000,
                                                      "sndhwm": 100, "shm_slots": 0, "wait_subscriber_s": 60})
    with Subscriber(endpoint, timeout_s=PATIENCE_S, rcvhwm=100) as sub:  # connects once the replay binds
        result = {}
        worker = threading.Thread(target=lambda: result.update(s=run_replay(cfg, ir_path=ir, vis_path=vis,
                                                                            out_path=tmp_path / "o.mp4")))
        worker.start()
        headers = [sub.recv()[0] for _ in range(20)]
        worker.join(timeout=PATIENCE_S)
    assert result["s"].written == 20 and [h["seq"] for h in headers] == list(range(20))
    assert {h["t_capture_clock"] for h in headers} == {"media"}  # the files' own times, from 0
    assert (result["s"].published, result["s"].publish_refused) == (20, 0)
    assert "  published 20 | refused by the publisher 0 " in result["s"].format()


def test_publish_while_replaying(tmp_path, monkeypatch):
    """Fast pacing and lossless publishing: every frame reaches a subscriber that joined before the first one."""
    import queue

    import streamfuse.publish
    from streamfuse.client import Subscriber
    from helpers_zmq import connect

    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 20, 30, grey=True)
    write_video(vis, 20, 30)
    joined: queue.Queue = queue.Queue()

    class JoinedPublisher(streamfuse.publish.Publisher):
        """Binds a free port and has a subscriber receive from it before the replay sends its first frame."""

        def __init__(self, cfg, **kwargs):
            super().__init__(cfg, **kwargs)
            sub = Subscriber(self.endpoint, timeout_s=PATIENCE_S, rcvhwm=100)
            connect(self, sub, np.zeros((48, 64, 3), np.uint8))
            joined.put((sub, self.published))  # the queue hands the socket over to the test thread

    monkeypatch.setattr(streamfuse.publish, "Publisher", JoinedPublisher)
    cfg = make_cfg(replay={"publish": True},
                   publish={"endpoint": "tcp://127.0.0.1:*", "nodrop": True, "wait_ms": 60_000, "sndhwm": 100})
    result = {}
    worker = threading.Thread(target=lambda: result.update(s=run_replay(cfg, ir_path=ir, vis_path=vis,
                                                                        out_path=tmp_path / "o.mp4")))
    worker.start()
    sub, first = joined.get(timeout=PATIENCE_S)
    with sub:
        headers = []
        while len(headers) < 20 and (msg := sub.recv()) is not None:
            if msg[0]["seq"] >= first:  # the handshake frames come before
                headers.append(msg[0])
    worker.join(timeout=PATIENCE_S)
    assert result["s"].written == 20
    assert [h["seq"] for h in headers] == list(range(first, first + 20))
    assert all(h["width"] == 64 and h["height"] == 48 for h in headers)


def test_a_publishing_replay_names_no_stats_topic_it_never_sends_on(tmp_path, caplog):
    # a replay sends no stats: its start line said "(stats on stats/replay)", and a dashboard waited on that topic
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 3, 30, grey=True)
    write_video(vis, 3, 30)
    cfg = make_cfg(replay={"publish": True}, publish={"endpoint": "tcp://127.0.0.1:*", "stats_topic": "stats/t"})
    with caplog.at_level("INFO", logger="streamfuse.publish"):
        assert run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4").written == 3
    started = [m for m in caplog.messages if m.startswith("publishing fused/rig0 on tcp://127.0.0.1:")]
    assert len(started) == 1 and "stats" not in started[0], caplog.messages


def test_a_publishing_replay_on_a_taken_endpoint_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    # it was said only once the model had loaded (seconds on a busy machine)
    from streamfuse.processor import FrameProcessor
    from streamfuse.publish import Publisher, PublishConfig

    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 3, 30, grey=True)
    write_video(vis, 3, 30)
    monkeypatch.setattr(FrameProcessor, "from_config", lambda *args, **kwargs: pytest.fail("the model loaded"))
    with Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*")) as first:
        cfg = make_cfg(replay={"publish": True}, publish={"endpoint": first.endpoint})
        with pytest.raises(RuntimeError, match=re.escape(f"endpoint {first.endpoint} is already in use")):
            run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")


# -------------------------------------------------------------------------------- outputs that are inputs


def _links(tmp_path: Path, ir: Path) -> dict[str, Path]:
    (tmp_path / "sym.mp4").symlink_to(ir)
    os.link(ir, tmp_path / "hard.mp4")
    return {"same path": ir, "another spelling": tmp_path / "sub" / ".." / ir.name, "symlink": tmp_path / "sym.mp4",
            "hard link": tmp_path / "hard.mp4"}


@pytest.mark.parametrize("how", ["same path", "another spelling", "symlink", "hard link", "partial name"])
def test_output_that_is_an_input_is_refused_before_anything_opens(tmp_path, clip, how):
    ir, vis, _ = clip
    (tmp_path / "sub").mkdir()
    before = ir.read_bytes()
    if how == "partial name":  # the output's temporary file would be the input
        out = tmp_path / "x.mp4"
        os.replace(ir, partial_path(out))
        ir = partial_path(out)
    else:
        out = _links(tmp_path, ir)[how]
    listing = sorted(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"would overwrite the IR input .*; choose another --out") as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    assert "\n" not in str(err.value)
    assert ir.read_bytes() == before and sorted(tmp_path.iterdir()) == listing


def test_frames_folder_that_is_an_input_folder_is_refused(tmp_path):
    import cv2

    for name in ("ir", "vis"):
        (tmp_path / name).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / name / f"{i:06d}.png"), np.full((48, 64), 30 * i, np.uint8))
    cfg = make_cfg(replay={"frames_dir": str(tmp_path / "vis")})
    with pytest.raises(ValueError, match="frames_dir .* would overwrite the visible input"):
        run_replay(cfg, ir_path=tmp_path / "ir", vis_path=tmp_path / "vis", out_path=tmp_path / "o.mp4")


@pytest.mark.parametrize("stream, inside", [("ir", "o.mp4"), ("vis", "sub/o.mp4"), ("ir", "frames")])
def test_an_output_inside_a_folder_input_is_refused_before_any_work(tmp_path, stream, inside):
    # it was written among the frames, and a later --resume found that input changed
    import cv2

    for name in ("ir", "vis"):
        (tmp_path / name).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / name / f"{i:06d}.png"), np.full((48, 64), 30 * i, np.uint8))
    (tmp_path / stream / "sub").mkdir()
    listing = sorted(tmp_path.rglob("*"))
    out, cfg = tmp_path / stream / inside, make_cfg()
    if inside == "frames":  # the frames a replay writes besides its output
        out, cfg = tmp_path / "o.mp4", make_cfg(replay={"frames_dir": str(tmp_path / stream / inside)})
    what = "replay.frames_dir" if inside == "frames" else "output"
    with pytest.raises(ValueError, match=f"^{what} {re.escape(str(tmp_path / stream / inside))} is inside the input "
                                         f"folder {re.escape(str(tmp_path / stream))}; choose .* outside it$"):
        run_replay(cfg, ir_path=tmp_path / "ir", vis_path=tmp_path / "vis", out_path=out)
    assert sorted(tmp_path.rglob("*")) == listing


@pytest.mark.parametrize("taken", ["o.mp4", ".o.mp4.partial"])
def test_frames_folder_that_is_the_output_or_its_work_file_is_refused_before_any_work(tmp_path, clip, taken):
    # the whole replay ran, then stopped: the output could not take its name, said to be "an earlier run's output"
    ir, vis, _ = clip
    cfg = make_cfg(replay={"frames_dir": str(tmp_path / taken)})
    with pytest.raises(ValueError, match=f"^replay.frames_dir .*{re.escape(taken)} is the output's own file "):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert not (tmp_path / taken).exists()


def test_frames_folder_named_through_a_link_to_the_outputs_folder_is_its_work_file_too(tmp_path, clip):
    """The output's partial file spelled through a symlinked folder, before either exists, is still refused."""
    ir, vis, _ = clip
    (tmp_path / "link").symlink_to(tmp_path)
    cfg = make_cfg(replay={"frames_dir": str(tmp_path / "link" / ".o.mp4.partial")})
    with pytest.raises(ValueError, match="^replay.frames_dir .*link/.o.mp4.partial is the output's own file "):
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert not (tmp_path / ".o.mp4.partial").exists()


# -------------------------------------------------------------------------------- inputs of different lengths


def test_input_that_ends_first_leaves_the_rest_unpaired_and_says_so(tmp_path, caplog):
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, 100, 25, grey=True, size=(32, 24), codec="ffv1")
    write_video(vis, 205, 25, size=(32, 24), codec="ffv1")
    summary = run_replay(make_cfg(replay={"codec": "ffv1"}), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv")
    assert summary.complete and summary.written == 100 and summary.frames == {"ir": 100, "vis": 205}
    assert summary.unpaired == {"ir": 0, "vis": 105} and summary.dropped == {"ir": 0, "vis": 0}
    assert summary.note == "the IR input ended first (after 100 frames): 105 visible frames after its end are unpaired"
    assert summary.note in caplog.text and summary.note in summary.format()


def test_input_that_starts_later_leaves_the_earlier_frames_unpaired(tmp_path):
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 30, 25, grey=True, size=(32, 24), start_s=1.0)  # 25 visible frames before it
    write_video(vis, 55, 25, size=(32, 24))
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert summary.complete and summary.written == 30
    assert summary.unpaired == {"ir": 0, "vis": 25} and summary.dropped == {"ir": 0, "vis": 0}
    assert "the IR input starts later: 25 visible frames before its first frame are unpaired" in summary.note


def test_a_realtime_recording_whose_ir_ends_first_says_so(tmp_path):
    """Realtime pacing reads a recording's streams as two sources, so each one's span is known as it goes: the visible
    frames after the IR input's end are unpaired by the span check, and the note says which input ended first."""
    path, img = tmp_path / "rig.mcap", np.full((24, 32), 128, np.uint8)
    with Recorder(RecordConfig(path=str(path)), queue_size=100) as rec:  # none left out
        for i in range(16):
            t = 1_000_000_000 + i * 40_000_000
            if i < 10:
                rec.write(Frame("ir", i, t, img))
            rec.write(Frame("vis", i, t + 2_000_000, np.dstack([img] * 3)))
    summary = run_replay(make_cfg(replay={"pacing": "realtime", "codec": "ffv1"}), ir_path=path,
                         out_path=tmp_path / "o.mkv")
    assert summary.complete and summary.outside["vis"]["after"] == 6
    assert "the IR input ended first (after 10 frames): 6 visible frames after its end are unpaired" in summary.note


def test_input_without_frames_says_so(tmp_path):
    path = tmp_path / "ir_only.mcap"
    with Recorder(RecordConfig(path=str(path))) as rec:
        for i in range(5):
            rec.write(Frame("ir", i, 1_000_000_000 + i * 40_000_000, np.zeros((24, 32), np.uint8)))
    with pytest.raises(ReplayError, match=r"the visible input .*ir_only.mcap has no frames on /vis/image "
                                          r"\(vis.topic\); no output written"):
        run_replay(make_cfg(replay={"codec": "ffv1"}), ir_path=path, out_path=tmp_path / "o.mkv")


# -------------------------------------------------------------------------------- SIGTERM and kill -9


_KILLABLE = """
import sys, threading
import streamfuse.processor
from streamfuse.processor import config_fuser

class Stuck:
    # fuses like max, then waits forever at call {stop} (a signal interrupts the wait)
    def __init__(self, cfg):
        self.inner, self.calls = config_fuser(cfg), 0
        self.name, self.version = self.inner.name, self.inner.version

    def fuse(self, ir, vis_y, stream="default"):
        self.calls += 1
        if self.calls == {stop}:
            open({marker!r}, "w").close()  # tells the test: every earlier pair is fused, this one never will be
            threading.Event().wait()
        return self.inner.fuse(ir, vis_y)

streamfuse.processor.config_fuser = Stuck
import run_stream
sys.exit(run_stream.main(sys.argv[1:]))
"""


def _held_frames(path: Path) -> int:
    return len(list(decode_frames(path))) if path.exists() else 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=["SIGTERM", "SIGHUP", "SIGKILL"])
def test_replay_killed_mid_run_resumes_to_the_uninterrupted_frames(tmp_path, sig):
    """SIGTERM (a service manager) and SIGHUP (a terminal that hung up) stop it cleanly; SIGKILL cuts it."""
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, 40, 25, grey=True, codec="ffv1")
    write_video(vis, 40, 25, codec="ffv1")
    from streamfuse.config import load_config

    config, overrides = REPO / "streamfuse" / "configs" / "replay.yaml", ["fuse.name=max", "replay.progress=false",
                                                          "replay.codec=ffv1"]
    cfg = load_config(config, overrides)  # the same settings as the run_stream.py run, or resume is refused
    reference = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "reference.mkv")
    out = tmp_path / "o.mkv"
    log = (tmp_path / "stderr.txt").open("w")
    sets = [arg for o in overrides for arg in ("--set", o)]
    stuck = tmp_path / "stuck"
    script = _KILLABLE.replace("{stop}", "20").replace("{marker!r}", repr(str(stuck)))
    proc = subprocess.Popen([sys.executable, "-c", script, "--config", str(config),
                             *sets, "--ir", str(ir), "--vis", str(vis), "--out", str(out)], cwd=REPO, stderr=log,
                            env={**os.environ, "PYTHONPATH": str(REPO)},  # SIGHUP at its default, as from a terminal
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + PATIENCE_S
        # stuck at its 20th pair with 19 fused, and (for the kill) at least 5 of them already in the partial output
        while not stuck.exists() or _held_frames(partial_path(out)) < 5:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "the partial output never held 5 frames"
            time.sleep(0.05)
        proc.send_signal(sig)
        rc = proc.wait(timeout=PATIENCE_S)
    finally:
        proc.kill()
        log.close()
    stderr = (tmp_path / "stderr.txt").read_text()
    if sig != signal.SIGKILL:  # stopped cleanly: one line that says how to go on, every fused frame kept
        assert rc == 130  # the user's stop, not an error
        lines = [line for line in stderr.splitlines() if line.startswith("streamfuse run:")]
        assert len(lines) == 1 and f"interrupted ({sig.name}); 19 frames kept" in lines[0] and "--resume" in lines[0]
        assert "error" not in lines[0]
        assert _held_frames(partial_path(out)) == 19
    else:
        assert rc == -signal.SIGKILL
    assert not out.exists() and partial_path(out).exists()
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused >= 5 and summary.reused + summary.fused == reference.written
    assert not list(tmp_path.glob(".o.mkv*"))
    assert decoded(out) == decoded(tmp_path / "reference.mkv")  # frames out == frames in, same pts
    for (t_a, a), (t_b, b) in zip(decode_frames(out), decode_frames(tmp_path / "reference.mkv"), strict=True):
        assert t_a == t_b
        np.testing.assert_array_equal(a, b)  # lossless codec: the resumed frames are the uninterrupted ones


def test_replay_without_overlap_gives_the_same_frames(tmp_path):
    """replay.overlap false (decode and encode in the loop's thread, as a one-CPU batch worker runs) changes where
    the work runs, not what comes out: the same frames and pts as with the decode and encode threads."""
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 12, 10)
    write_video(vis, 12, 10, size=(64, 48))
    outs = {}
    for overlap in (True, False):
        out = tmp_path / f"out_{overlap}.mkv"
        cfg = make_cfg(replay={"codec": "ffv1", "overlap": overlap})
        assert run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out).complete
        outs[overlap] = list(decode_frames(out))
    assert len(outs[True]) == 12 and [p for p, _ in outs[True]] == [p for p, _ in outs[False]]
    for (_, a), (_, b) in zip(outs[True], outs[False]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("pacing", ["fast", "realtime"])
@pytest.mark.parametrize("step_s", [-10, 3600])
def test_a_recording_whose_clock_was_stepped_replays_every_pair(tmp_path, pacing, step_s):
    """NTP stepped the rig's clock back 10 s (or forward an hour) while it recorded: the replay loses no pair to it,
    its output's times go on increasing, and realtime pacing does not sleep through the step."""
    t0, period, step = 1_700_000_000_000_000_000, 33_333_333, step_s * 10**9
    path = tmp_path / "rig.mcap"
    img = np.full((48, 64), 128, np.uint8)
    with Recorder(RecordConfig(path=str(path)), queue_size=100) as rec:  # none left out
        for i in range(40):
            t = t0 + i * period + (step if i >= 20 else 0)
            rec.write(Frame("ir", i, t, img))
            rec.write(Frame("vis", i, t + 2_000_000, np.dstack([img] * 3)))
    out = tmp_path / "fused.mkv"
    summary = run_replay(make_cfg(replay={"pacing": pacing, "codec": "ffv1"}), ir_path=path, out_path=out)
    # realtime pacing drops a frame overtaken by the next, as live, when a busy machine falls behind: its partner is
    # then unpaired; a pair lost to the step would be unpaired with no drop to explain it
    dropped, unpaired = summary.dropped, summary.unpaired
    assert summary.complete and summary.written + dropped["vis"] + unpaired["vis"] == 40
    assert unpaired["vis"] <= dropped["ir"] and unpaired["ir"] <= dropped["vis"], (unpaired, dropped)
    assert pacing == "realtime" or summary.written == 40
    times = [t for t, _ in decode_frames(out)]
    assert len(times) == summary.written and all(b > a for a, b in zip(times, times[1:]))
