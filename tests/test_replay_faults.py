"""Offline replay on faulty or unusual input: each fault is one line naming what and where, nothing passed off as
complete (a late-starting video, inputs whose times do not meet, PyAV errors, an output folder that goes away)."""

from __future__ import annotations

import json
import logging
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers_video import cut
from test_replay import _StopAt, make_cfg, write_video

import streamfuse.processor
import streamfuse.replay.loop
from streamfuse.atomic_write import partial_path
from streamfuse.capture.video_sources import AvSource
from streamfuse.replay import ReplayError, find_pairs, run_replay
from streamfuse.video import VideoWriter, decode_frames


def _one_line_failure(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# -------------------------------------------------------------------------------- inputs that start late


def _late_pair(tmp_path, ext):
    """IR and visible, 25 frames each at 25 fps from 10 s."""
    ir, vis = tmp_path / f"ir{ext}", tmp_path / f"vis{ext}"
    write_video(ir, 25, 25, start_s=10.0, grey=True, size=(32, 24))
    write_video(vis, 25, 25, start_s=10.0, size=(32, 24))
    return ir, vis


@pytest.mark.parametrize("ext", [".mkv", ".nut"])
def test_a_video_that_starts_10_s_late_is_not_called_truncated(tmp_path, ext):
    """Matroska and NUT state their end time (from 0) as the duration, not a span from the first frame."""
    ir, vis = _late_pair(tmp_path, ext)
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert summary.complete and summary.written == 25


def test_a_late_matroska_video_cut_short_is_still_reported_truncated(tmp_path):
    ir, vis = _late_pair(tmp_path, ".mkv")
    cut(vis, 10)  # after 10 of its 25 frames
    with pytest.raises(ReplayError, match="vis input ended early: .*truncated") as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert err.value.summary.frames["vis"] < 25 and "--resume" not in _one_line_failure(err)


@pytest.mark.parametrize("ext", [".mkv", ".nut"])
def test_a_visible_video_that_starts_late_replays_every_pair(tmp_path, ext):
    """End to end: the capture source must not take the late start for a truncation either."""
    ir, vis = tmp_path / f"ir{ext}", tmp_path / f"vis{ext}"
    write_video(ir, 30, 25, grey=True, size=(32, 24))  # 0.00 .. 1.16 s
    write_video(vis, 10, 25, start_s=0.8, size=(32, 24))  # 0.80 .. 1.16 s
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert summary.complete and summary.written == 10 and len(list(decode_frames(tmp_path / "o.mp4"))) == 10


def test_inputs_whose_times_never_meet_say_so_with_their_ranges(tmp_path):
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 10, 25, grey=True, size=(32, 24))  # 0.00 .. 0.36 s
    write_video(vis, 10, 25, start_s=10.0, size=(32, 24))  # 10.00 .. 10.36 s
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert ("no pairs formed: the IR and visible times do not overlap (IR 0.000-0.360 s, visible 10.000-10.360 s)"
            in _one_line_failure(err))
    assert not list(tmp_path.glob("*o.mp4*"))


def test_inputs_that_overlap_without_a_pair_say_so_with_the_tolerance(tmp_path):
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 10, 25, grey=True, size=(32, 24), start_s=0.02)  # halfway between the visible frames
    write_video(vis, 10, 25, size=(32, 24))
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(sync={"slop_ms": 5}), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mp4")
    assert ("the IR and visible times overlap for 0.340 s (IR 0.020-0.380 s, visible 0.000-0.360 s) but no IR and "
            "visible frames there are within sync.slop_ms = 5 ms" in _one_line_failure(err))


def test_an_input_that_gives_no_frame_is_not_said_to_start_later(tmp_path):
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, 10, 25, grey=True, size=(32, 24))
    write_video(vis, 10, 25, size=(32, 24))
    vis.write_bytes(vis.read_bytes().replace(b"V_MPEG4/ISO/AVC", b"V_UNKNOWN/CODEC"))  # a codec with no decoder
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv")
    assert f"{vis}: decoding stopped before the first frame: " in _one_line_failure(err)
    assert err.value.summary.unpaired["ir"] == 10 and "starts later" not in err.value.summary.note


def test_metadata_that_is_not_utf8_replays(tmp_path):
    # PyAV up to 18 decodes the tags as strict UTF-8 when it opens the file: the replay refused a video FFmpeg plays
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, 3, 25, grey=True, size=(32, 24))
    w = VideoWriter(vis, codec="ffv1", crf=0, time_base=Fraction(1, 25), rate=Fraction(25), width=32, height=24,
                    metadata={"title": "QQQQQQQQ"})
    for i in range(3):
        w.write(np.full((24, 32, 3), i, np.uint8), i)
    w.commit()
    vis.write_bytes(vis.read_bytes().replace(b"QQQQQQQQ", b"\xff\xfeQQQQQQ"))
    assert run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv").fused == 3


# -------------------------------------------------------------------------------- PyAV errors


@pytest.fixture
def pair(tmp_path):
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, 12, 25, grey=True, size=(32, 24))
    write_video(vis, 12, 25, size=(32, 24))
    return ir, vis


@pytest.mark.parametrize("overlap", [True, False])
def test_a_pyav_error_while_decoding_is_one_line_and_keeps_what_was_fused(tmp_path, pair, monkeypatch, overlap):
    """An FFmpeg error the source does not word itself (DecoderNotFoundError derives from LookupError only)."""
    ir, vis = pair
    read, reads = AvSource._read, {"ir": 0, "vis": 0}

    def failing(self):
        reads[self.section] += 1
        if self.section == "vis" and reads["vis"] == 5:
            raise av.DecoderNotFoundError(-1128613112, "Decoder not found")
        return read(self)

    monkeypatch.setattr(AvSource, "_read", failing)
    out = tmp_path / "o.mkv"
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(replay={"overlap": overlap}), ir_path=ir, vis_path=vis, out_path=out)
    text = _one_line_failure(err)
    assert f"vis: {vis}: decoding failed: Decoder not found; 4 frames kept in {partial_path(out)}" in text
    assert "--resume" not in text  # the input is at fault: running again meets the same error
    assert not out.exists() and len(list(decode_frames(partial_path(out)))) == 4


@pytest.mark.parametrize("when", ["open", "write"])
def test_a_pyav_error_while_encoding_is_one_line_and_keeps_the_partial(tmp_path, pair, monkeypatch, when):
    ir, vis = pair

    class FailingWriter(VideoWriter):
        def __init__(self, *args, **kwargs):
            if when == "open":
                raise av.EncoderNotFoundError(-1163346256, "Encoder not found")
            super().__init__(*args, **kwargs)

        def write(self, image, pts):
            if self.count == 3:
                raise av.ExternalError(-542398533, "Generic error in an external library", str(self.partial))
            super().write(image, pts)

    monkeypatch.setattr(streamfuse.replay.loop, "VideoWriter", FailingWriter)
    out = tmp_path / "o.mkv"
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    text = _one_line_failure(err)
    assert not out.exists()
    if when == "open":
        assert text == "replay stopped: FFmpeg: Encoder not found; no output written"
        return
    assert text.startswith(f"replay stopped: FFmpeg: Generic error in an external library ({partial_path(out)}); "
                           f"3 frames kept in {partial_path(out)}; run again with --resume")
    assert json.loads((tmp_path / ".o.mkv.partial.json").read_text())["written"] == 3


# -------------------------------------------------------------------------------- the output


@pytest.mark.parametrize("name", ["o.mkv", "out"])  # a plain folder was told its "unknown container ''"
def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path, pair, name):
    ir, vis = pair
    out = tmp_path / name
    out.mkdir()
    with pytest.raises(IsADirectoryError, match=f"output {out} is a folder; choose a file name for --out"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ir.mkv", name, "vis.mkv"])
    assert not list(out.iterdir())


def test_the_working_folder_as_output_is_refused_as_a_folder(tmp_path, pair, monkeypatch):
    # `--out .`: "PosixPath('.') has an empty name", from deep inside
    ir, vis = pair
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IsADirectoryError, match=r"^output \. is a folder; choose a file name for --out \(such as "
                                                r"fused\.mp4\)$"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=Path("."))


def test_an_output_folder_removed_mid_run_is_not_said_to_keep_frames(tmp_path, pair, monkeypatch):
    ir, vis = pair
    folder = tmp_path / "out"
    folder.mkdir()
    removes_the_folder = _StopAt(5, then=lambda: shutil.rmtree(folder))
    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: removes_the_folder)
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=folder / "o.mkv")
    text = _one_line_failure(err)
    assert f"nothing kept: {partial_path(folder / 'o.mkv')} is gone" in text
    assert "frames kept" not in text and "--resume" not in text
    assert not folder.exists()


# -------------------------------------------------------------------------------- batch pair lists


def test_find_pairs_names_ir_files_that_are_no_video(tmp_path, caplog):
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "a.mp4").write_bytes(b"")
    (tmp_path / "ir" / "c.wav").write_bytes(b"")
    (tmp_path / "ir" / "b.txt").write_text("notes")
    with caplog.at_level(logging.WARNING):
        assert find_pairs(tmp_path) == [(tmp_path / "ir" / "a.mp4", tmp_path / "vi" / "a.mp4", "")]
    assert (f"{tmp_path / 'ir'}: 2 entries hidden or without a video or recording extension (first: b.txt); not "
            f"replayed" in caplog.text)


def test_find_pairs_passes_over_hidden_files_such_as_a_macs_metadata(tmp_path, caplog):
    """A Mac copying onto a FAT or exFAT drive writes "._NAME" beside each file: taken as a pair, it failed the
    batch."""
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "a.mp4").write_bytes(b"")
        (tmp_path / sub / "._a.mp4").write_bytes(b"\0\5\x16\7")
    with caplog.at_level(logging.WARNING):
        assert find_pairs(tmp_path) == [(tmp_path / "ir" / "a.mp4", tmp_path / "vi" / "a.mp4", "")]
    assert f"{tmp_path / 'ir'}: 1 entry hidden or without a video or recording extension (first: ._a.mp4)" \
        in caplog.text
    assert "no IR video of the same name" not in caplog.text
