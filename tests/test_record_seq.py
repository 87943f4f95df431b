"""A recording's frames come back with the sequence numbers the live run gave them: frames the live loop dropped
leave their gaps, so a replay's pairs, its published messages and its errors name the frames the live run had. A
looped recording's passes follow each other one frame interval apart."""

from __future__ import annotations

import numpy as np
import pytest

from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.sources import SourceConfig, open_source
from streamfuse.frames import Frame
from streamfuse.recording import RecordConfig, Recorder

T0 = 1_700_000_000_123_456_789


def test_a_recording_keeps_the_live_sequence_numbers_and_their_gaps(tmp_path, rng):
    kept = {"vis": [0, 1, 4, 5, 9], "ir": [0, 2, 3, 7]}  # the frames the live loop did not drop
    frames = [Frame(stream, seq, T0 + seq * 33_333_333 + (stream == "ir") * 5_000_000,
                    rng.integers(0, 256, (24, 32, 3) if stream == "vis" else (24, 32), np.uint8))
              for seq in range(10) for stream in ("vis", "ir") if seq in kept[stream]]
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path))) as rec:
        for frame in frames:
            rec.write(frame)
    got = list(read_recording(path))
    assert [(f.stream, f.seq, f.t_capture_ns) for f in got] == [(f.stream, f.seq, f.t_capture_ns) for f in frames]
    with open_source("ir", SourceConfig(kind="mcap", path=str(path), realtime=False)) as src:
        assert [f.seq for f in iter(src.read, None)] == kept["ir"]


@pytest.mark.parametrize("times, expected", [
    ([0], [0, 40, 80]),
    ([0, 40, 40], [0, 40, 40, 80, 120, 120]),
], ids=["one frame", "last two at one time"])
def test_a_looped_pass_without_a_last_interval_is_one_over_fps_after_the_one_before(tmp_path, times, expected):
    # each pass came 1 ns after the one before: a realtime loop sent the frame as fast as it could be read
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path))) as rec:
        for seq, t in enumerate(times):
            rec.write(Frame("ir", seq, T0 + t * 1_000_000, np.zeros((8, 8), np.uint8)))
    with open_source("ir", SourceConfig(kind="mcap", path=str(path), realtime=False, loop=True, fps=25)) as src:
        got = [src.read() for _ in expected]
    assert [(f.t_capture_ns - T0) / 1e6 for f in got] == expected
    assert [f.seq for f in got] == list(range(len(expected)))
