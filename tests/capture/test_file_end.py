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


@pytest.mark.parametrize("case", ["avi_late", "avi_late_gap"])
def test_the_announced_end_of_a_cut_avi_is_where_its_frame_slots_end(tmp_path: Path, case: str) -> None:
    """A cut AVI's header still counts all its frame slots, where FFmpeg's duration only estimates the part left (some
    11 s of 12 here): the end compared with the frames read must be the slots' (the RIFF check sees the cut too)."""
    path = tmp_path / f"{case}.avi"
    write(path, *CASES[case])
    cut(path, N - 1)
    with av.open(str(path)) as container:
        end = announced_end_s(container, container.streams.video[0])
    assert end == pytest.approx((CASES[case][1] + N) / FPS, abs=1e-6)


def test_the_announced_end_of_an_mp4_that_starts_late_is_its_start_plus_its_duration(tmp_path: Path) -> None:
    # an MP4 stream's duration is a span from its first frame (at 10 s here), not the end of its timeline
    path = tmp_path / "late.mp4"
    write(path, "mp4", 250, 0)
    with av.open(str(path)) as container:
        assert announced_end_s(container, container.streams.video[0]) == pytest.approx((250 + N) / FPS, abs=1e-6)


@pytest.mark.parametrize("fmt, ext", [("matroska", "mkv"), ("nut", "nut")])
def test_a_matroska_or_nut_video_that_starts_late_is_read_to_its_end(tmp_path: Path, fmt: str, ext: str) -> None:
    # their container's duration is the end of their timeline, counted from 0: added to the first pts (at 10 s), it
    # would put the end of a complete file 10 s after its last frame, and the file be taken for truncated
    path = tmp_path / f"late.{ext}"
    write(path, fmt, 250, 0, "mpeg4")
    assert read_all(path) == N


def test_a_complete_flv_slower_than_its_nominal_rate_is_read_to_its_end(tmp_path: Path) -> None:
    # FLV stores no frame durations and its duration ends 200 ms after the last frame (5 frames/s, the stream's rate
    # 25): the last frame lasts its step from the frame before, not the nominal 40 ms, or the file looks truncated
    path, tb = tmp_path / "slow.flv", Fraction(1, 1000)
    with av.open(str(path), "w", format="flv") as container:
        stream = container.add_stream("libx264", rate=25, options={"bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = tb
        packets = []
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="bgr24")
            frame.pts, frame.time_base = 200 * i, tb
            packets += stream.encode(frame)
        for packet in packets + stream.encode(None):
            packet.duration = 200
            container.mux(packet)
    assert read_all(path) == 10


@pytest.mark.parametrize("case, kept", [(c, N // 2) for c in CASES] + [(c, N - 1) for c in CASES if "avi" in c])
def test_the_file_cut_at_a_packet_is_still_truncated(tmp_path: Path, case: str, kept: int) -> None:
    path = tmp_path / f"{case}.{CASES[case][0]}"
    write(path, *CASES[case])
    cut(path, kept)
    with pytest.raises(SourceError, match=f"truncated or corrupt video: decoding stopped after frame {kept} "):
        read_all(path)


def test_a_matroska_file_cut_in_its_index_after_its_frames_is_read_whole_and_says_so(tmp_path: Path) -> None:
    # the Cues a writer leaves after the clusters: a cut there is certain, but every frame is before it and read
    path = tmp_path / "v.mkv"
    write(path, "matroska", 0, 0, "mpeg4")
    data = path.read_bytes()
    size = data.rfind(b"\x1c\x53\xbb\x6b") + 8  # 8 bytes into its Cues element
    path.write_bytes(data[:size])
    src = open_source("vis", SourceConfig(kind="file", path=str(path), realtime=False))
    lines: list[str] = []
    src.warn = lines.append
    with src:
        assert sum(1 for _ in iter(src.read, None)) == N
    assert len(lines) == 1 and lines[0].endswith(f"(Cues) announces {len(data)} bytes, the file has {size}: cut in its "
                                                 f"index or metadata, after the frames: all {N} frames it announces "
                                                 f"were read")


def test_a_looped_file_cut_in_its_index_says_so_once_not_at_every_pass(tmp_path: Path) -> None:
    path = tmp_path / "v.mkv"
    write(path, "matroska", 0, 0, "mpeg4")
    data = path.read_bytes()
    path.write_bytes(data[:data.rfind(b"\x1c\x53\xbb\x6b") + 8])  # 8 bytes into its Cues element
    src = open_source("vis", SourceConfig(kind="file", path=str(path), realtime=False, loop=True))
    lines: list[str] = []
    src.warn = lines.append
    with src:
        assert [src.read().seq for _ in range(3 * N)] == list(range(3 * N))
    assert len(lines) == 1 and "cut in its index or metadata, after the frames" in lines[0]


def test_an_flv_without_its_last_tag_size_says_frames_may_be_missing_not_that_all_were_read(tmp_path: Path) -> None:
    # its last 4 bytes cut off, or left out by its writer: a cut not certain, nor in an index after the frames, so the
    # frames up to its duration all read do not make the line say the file is whole
    path = tmp_path / "v.flv"
    write(path, "flv", 0, 0)
    path.write_bytes(path.read_bytes()[:-4])
    src = open_source("vis", SourceConfig(kind="file", path=str(path), realtime=False))
    lines: list[str] = []
    src.warn = lines.append
    with src:
        assert sum(1 for _ in iter(src.read, None)) == N
    assert lines == [f"vis: {path}: its last FLV tag is not followed by its size (PreviousTagSize): frames after frame "
                     f"{N} may be missing"]


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
