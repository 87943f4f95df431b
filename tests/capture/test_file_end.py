"""The live file source's end check (``video.announced_end_s``, ``video.announced_frames``): a complete FLV with
B-frames or AVI that starts late is read to its end, not taken for truncated; the same file cut at a packet still is,
an AVI (whose end is exact: frame slots) even when only its last frame is missing.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers_video import CASES, FPS, N, cut, write

from streamfuse.capture.sources import SourceConfig, SourceError, open_source
from streamfuse.video import announced_end_s

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV build has no libx264")]


def read_all(path: Path) -> int:
    src = open_source("ir", SourceConfig(kind="file", path=str(path), realtime=False))
    src.warn = lambda line: None  # the late AVI's gap after its first frame is reported: not what is tested here
    n = 0
    with src:
        while src.read() is not None:
            n += 1
    return n


@pytest.mark.parametrize("case", CASES)
def test_a_complete_file_is_read_to_its_end_not_taken_for_truncated(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.{CASES[case][0]}"
    write(path, *CASES[case])
    assert read_all(path) == N


@pytest.mark.parametrize("case", ["flv_late", "avi_late", "avi_late_gap"])
def test_the_announced_end_of_a_late_video_is_after_its_last_frame(tmp_path: Path, case: str) -> None:
    """Without B-frames the container's end is exact: an AVI's frame slots, or FLV's duration from its first dts (at
    250 frames, not from 0)."""
    path = tmp_path / f"{case}.{CASES[case][0]}"
    write(path, *CASES[case])
    with av.open(str(path)) as container:
        first_dts = next(p.dts for p in container.demux(container.streams.video[0]) if p.size)
    with av.open(str(path)) as container:
        end = announced_end_s(container, container.streams.video[0], first_dts)
    assert end == pytest.approx((CASES[case][1] + N) / FPS, abs=1e-6)


@pytest.mark.parametrize("case, kept", [(c, N // 2) for c in CASES] + [(c, N - 1) for c in CASES if "avi" in c])
def test_the_file_cut_at_a_packet_is_still_truncated(tmp_path: Path, case: str, kept: int) -> None:
    path = tmp_path / f"{case}.{CASES[case][0]}"
    write(path, *CASES[case])
    cut(path, kept)
    with pytest.raises(SourceError, match=f"truncated or corrupt video: decoding stopped after frame {kept} "):
        read_all(path)


def test_a_video_whose_audio_runs_longer_is_read_to_its_end_not_taken_for_truncated(tmp_path: Path) -> None:
    # a camera recording's sound often goes on after its last frame: the container's duration is the audio's, and
    # held to it a complete file's video would look cut
    path = tmp_path / "v.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        video, audio = container.add_stream("mpeg4", rate=25), container.add_stream("aac", rate=44100, layout="mono")
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for i in range(N):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 5 * i, np.uint8), format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(video.encode(frame))
        for i in range(230):  # 230 x 1024 samples: 5.3 s of sound, the video 2 s
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 44100, i * 1024
            container.mux(audio.encode(sound))
        container.mux(video.encode(None) + audio.encode(None))
    with av.open(str(path)) as container:
        assert container.duration / 1e6 > 5  # the audio's end: what the check must not take
    assert read_all(path) == N
