"""Offline replay of inputs whose containers state the video's end in their own way: a complete FLV with B-frames or
AVI that starts late replays every frame; the same file cut at a packet is still reported truncated."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers_video import CASES, FPS, N, cut, write, write_still_times
from test_replay import make_cfg, write_video

from streamfuse.replay import ReplayError, run_replay
from streamfuse.video import VideoWriter, decode_frames

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV build has no libx264")]


def _pair(tmp_path: Path, case: str) -> tuple[Path, Path]:
    fmt = CASES[case][0]
    ir, vis = tmp_path / f"ir.{fmt}", tmp_path / f"vis.{fmt}"
    for path in (ir, vis):
        write(path, *CASES[case])
    return ir, vis


@pytest.mark.parametrize("case", CASES)
def test_a_complete_pair_replays_every_frame(tmp_path: Path, case: str) -> None:
    ir, vis = _pair(tmp_path, case)
    out = tmp_path / "o.mkv"
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    assert summary.complete and not summary.stopped
    assert summary.frames == {"ir": N, "vis": N} and summary.fused == summary.written == N
    assert len(list(decode_frames(out))) == N


@pytest.mark.parametrize("case", CASES)
def test_the_visible_input_cut_after_half_its_packets_is_reported_truncated(tmp_path: Path, case: str) -> None:
    ir, vis = _pair(tmp_path, case)
    cut(vis, N // 2)
    with pytest.raises(ReplayError, match=r"vis input ended early: .*truncated") as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.mkv")
    assert "\n" not in str(err.value) and not err.value.summary.complete
    assert err.value.summary.frames["vis"] == N // 2


def _avi_of_mp4s(tmp_path: Path) -> tuple[Path, Path]:
    """The visible MP4 input (time base 1/12800) and the FFV1 AVI replayed from it and an IR MP4."""
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    for path in (ir, vis):
        write(path, "mp4", 0, 0)
    out = tmp_path / "o.avi"
    assert run_replay(make_cfg(replay={"codec": "ffv1"}), ir_path=ir, vis_path=vis, out_path=out).complete
    return vis, out


def test_an_ffv1_avi_replay_output_replays_again_completely(tmp_path: Path) -> None:
    _, out = _avi_of_mp4s(tmp_path)
    copy = tmp_path / "copy.avi"  # one file given as both inputs is refused
    copy.write_bytes(out.read_bytes())
    again = run_replay(make_cfg(), ir_path=out, vis_path=copy, out_path=tmp_path / "again.mkv")
    assert again.complete and again.frames == {"ir": N, "vis": N} and again.written == N


def test_an_ffv1_avi_output_states_the_frame_rate_and_count_players_read(tmp_path: Path) -> None:
    # its time base was the inputs' (1/12800 from MP4, 1/1000 from Matroska), which AVI's header gives as the rate:
    # OpenCV and players read 600 or 1000 frames/s, and as many frames as slots, 18,018 for 900 frames at 29.97 fps
    vis, out = _avi_of_mp4s(tmp_path)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == FPS and stream.frames == N and 1 / stream.time_base == FPS
    assert [t for t, _ in decode_frames(out)] == [t for t, _ in decode_frames(vis)]


# ms, nominally 25 fps: two frames sharing a 40 ms slot (AVI's muxer refuses them), or each in a slot of its own but
# off it by up to 5 ms (a variable rate, whose times a slot would move)
@pytest.mark.parametrize("pts", [[0, 40, 50, 90, 130, 135, 170], [0, 40, 75, 120, 165, 200]], ids=["shared", "off"])
def test_an_ffv1_avi_output_of_a_variable_rate_keeps_its_times(tmp_path: Path, pts: list[int]) -> None:
    ir, vis = tmp_path / "ir.nut", tmp_path / "vis.nut"
    for path in (ir, vis):
        w = VideoWriter(path, codec="ffv1", crf=0, time_base=Fraction(1, 1000), rate=Fraction(FPS), width=64,
                        height=48)
        for i, p in enumerate(pts):
            w.write(np.full((48, 64, 3), 30 * i, np.uint8), p)
        w.commit()
    out = tmp_path / "o.avi"
    assert run_replay(make_cfg(replay={"codec": "ffv1"}), ir_path=ir, vis_path=vis, out_path=out).complete
    assert [t for t, _ in decode_frames(out)] == [Fraction(p, 1000) for p in pts]


def test_an_ffv1_avi_output_whose_first_pair_comes_late_starts_at_that_pairs_time(tmp_path: Path) -> None:
    # AVI's muxer fills the slots between frames with empty ones, not those before the first: the first fused frame
    # was at 0 s, the next ones at their visible frames' times
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mkv"
    write_video(ir, 12, 25, grey=True, start_s=0.2)  # the first pair is the fifth visible frame's
    write_video(vis, 12, 25)
    out = tmp_path / "o.avi"
    assert run_replay(make_cfg(replay={"codec": "ffv1"}), ir_path=ir, vis_path=vis, out_path=out).complete
    assert [t for t, _ in decode_frames(out)] == [t for t, _ in decode_frames(vis)][5:]


def _twice_as_fast_ir(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """IR at 30 fps and visible at 15 fps, 1 s: MP4 videos (time base 1/7680) or folders of frames (ns)."""
    suffix = ".mp4" if kind == "mp4" else ""
    ir, vis = tmp_path / f"ir{suffix}", tmp_path / f"vis{suffix}"
    if kind == "mp4":
        write_video(ir, 30, 30, grey=True)
        write_video(vis, 15, 15)
        return ir, vis
    for path, n in ((ir, 30), (vis, 15)):
        path.mkdir()
        for i in range(n):
            cv2.imwrite(str(path / f"{i:03d}.png"), np.full((48, 64), 8 * i, np.uint8))
    return ir, vis


@pytest.mark.parametrize("kind", ["mp4", "folder"])
def test_a_visible_frame_paired_twice_into_avi_is_written_twice_at_increasing_times(tmp_path: Path, kind: str) -> None:
    # the second pair of a visible frame was written one tick of its time base after the first, a tick finer than
    # 1 ms, which AVI's muxer holds as 1/600 s: it refused the two in one tick at the end ("Invalid argument")
    ir, vis = _twice_as_fast_ir(tmp_path, kind)
    cfg = make_cfg(sync={"mode": "latest"}, replay={"codec": "ffv1"}, ir={"fps": 30.0}, vis={"fps": 15.0})
    out = tmp_path / "o.avi"
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    assert summary.complete and summary.written == summary.pairs > 15
    times = [t for t, _ in decode_frames(out)]
    assert len(times) == summary.written and times == sorted(set(times))


def test_a_visible_video_whose_frame_times_stand_still_pairs_every_frame_at_its_declared_rate(tmp_path: Path) -> None:
    # the times were found to stand still only at its sixth frame: the five before went 1 ns apart and stayed unpaired
    ir, vis = tmp_path / "ir.mkv", tmp_path / "vis.mp4"
    write_video(ir, 20, 30, grey=True)
    write_still_times(vis, 20)
    out = tmp_path / "o.nut"
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    assert summary.complete and summary.written == 20 and summary.unpaired == {"ir": 0, "vis": 0}
    assert [t for t, _ in decode_frames(out)] == [Fraction(i, 30) for i in range(20)]  # the declared 30 fps


def test_h264_into_avi_is_refused_before_any_work(tmp_path: Path) -> None:
    ir, vis = _pair(tmp_path, "avi_late")
    with pytest.raises(ValueError, match=r"H\.264 in \.avi loses its frame times"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "o.avi")
    assert sorted(tmp_path.iterdir()) == sorted([ir, vis])  # nothing written


def test_output_pts_are_the_visible_inputs_across_a_forward_jump_of_more_than_10_s(tmp_path: Path) -> None:
    ir, vis = _pair(tmp_path, "avi_late_gap")  # its first frame decodes at 0 s, the next at 10.04 s
    out = tmp_path / "o.nut"  # NUT keeps the exact integer pts
    assert run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out).complete
    times = [t for t, _ in decode_frames(vis)]
    assert times[1] - times[0] > 10
    assert [t for t, _ in decode_frames(out)] == times
