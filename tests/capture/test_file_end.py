"""The live file source's end check (``video.announced_end_s``, ``video.announced_frames``): a complete FLV with
B-frames or AVI that starts late is read to its end, not taken for truncated; the same file cut at a packet still is.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamfuse.capture.sources import SourceConfig, SourceError, open_source

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV build has no libx264")]
FPS, N = 25, 50
CASES = {  # name: (container, first pts in frames, x264 B-frames)
    "flv_bframes": ("flv", 0, 3),  # FLV's duration counts from its first dts, 2 frames before its first pts
    "flv_bframes_late": ("flv", 250, 3),
    "avi_late": ("avi", 250, 0),  # AVI's frame count takes in the 250 empty chunks before the first frame
    "avi_bframes_late": ("avi", 250, 3),
}


def write(path: Path, fmt: str, first: int, bframes: int) -> None:
    """N noisy 64x48 H.264 frames at FPS whose pts start at ``first`` frames."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=FPS, options={"bf": str(bframes), "g": "12"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(N):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), np.uint8), format="bgr24")
            frame.pts, frame.time_base = first + i, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


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


@pytest.mark.parametrize("case", [c for c in CASES if c != "flv_bframes_late"])  # its end is not known: see video.py
def test_the_file_cut_after_half_its_packets_is_still_truncated(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.{CASES[case][0]}"
    write(path, *CASES[case])
    with av.open(str(path)) as container:
        starts = [p.pos for p in container.demux(container.streams.video[0]) if p.size]
    path.write_bytes(path.read_bytes()[:starts[N // 2]])  # whole packets only: decoding stops quietly there
    with pytest.raises(SourceError, match=f"truncated or corrupt video: decoding stopped after frame {N // 2} "):
        read_all(path)
