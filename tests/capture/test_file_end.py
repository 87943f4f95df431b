"""The live file source's end check (``video.announced_end_s``, ``video.announced_frames``): a complete FLV with
B-frames or AVI that starts late is read to its end, not taken for truncated; the same file cut at a packet still is,
an AVI (whose end is exact: frame slots) even when only its last frame is missing.
"""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from helpers_video import CASES, N, cut, write

from streamfuse.capture.sources import SourceConfig, SourceError, open_source

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


@pytest.mark.parametrize("case, kept", [(c, N // 2) for c in CASES] + [(c, N - 1) for c in CASES if "avi" in c])
def test_the_file_cut_at_a_packet_is_still_truncated(tmp_path: Path, case: str, kept: int) -> None:
    path = tmp_path / f"{case}.{CASES[case][0]}"
    write(path, *CASES[case])
    cut(path, kept)
    with pytest.raises(SourceError, match=f"truncated or corrupt video: decoding stopped after frame {kept} "):
        read_all(path)
