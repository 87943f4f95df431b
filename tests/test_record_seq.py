"""A recording's frames come back with the sequence numbers the live run gave them: frames the live loop dropped
leave their gaps, so a replay's pairs, its published messages and its errors name the frames the live run had. A
looped recording's passes follow each other one frame interval apart."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers_zmq import open_fds

from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.sources import SourceConfig, SourceError, open_source
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
    ([0, 30, 60], [0, 30, 60, 90, 120, 150]),
], ids=["one frame", "last two at one time", "a last interval"])
def test_a_looped_pass_without_a_last_interval_is_one_over_fps_after_the_one_before(tmp_path, times, expected):
    # each pass came 1 ns after the one before: a realtime loop sent the frame as fast as it could be read; with a
    # last interval (30 ms here) the next pass comes that long after the last frame, not 1 / fps (40 ms)
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path))) as rec:
        for seq, t in enumerate(times):
            rec.write(Frame("ir", seq, T0 + t * 1_000_000, np.zeros((8, 8), np.uint8)))
    with open_source("ir", SourceConfig(kind="mcap", path=str(path), realtime=False, loop=True, fps=25)) as src:
        got = [src.read() for _ in expected]
    assert [(f.t_capture_ns - T0) / 1e6 for f in got] == expected
    assert [f.seq for f in got] == list(range(len(expected)))


def test_a_realtime_recording_reopened_is_paced_from_its_first_frame_afresh(tmp_path, monkeypatch):
    """A reopen replays from the first recorded time: paced against the first pass's start, every frame of the new
    pass would be late, and sent at once."""
    from streamfuse.capture.sources import BaseSource

    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path))) as rec:
        for seq in range(3):
            rec.write(Frame("ir", seq, T0 + seq * 40_000_000, np.zeros((8, 8), np.uint8)))
    asked: list[float] = []
    monkeypatch.setattr(BaseSource, "_sleep", lambda self, seconds: asked.append(seconds))
    src = open_source("ir", SourceConfig(kind="mcap", path=str(path), realtime=True))
    for _ in range(2):
        with src:
            assert [src.read().seq for _ in range(3)] == [0, 1, 2]
    assert len(asked) == 4  # the second and third frames of each pass wait for their time; the first sets the pace


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_a_looped_recording_without_frames_of_its_stream_ends_and_its_source_closes_the_file(tmp_path):
    """A loop over no frame would read the recording again for ever; the file is closed with the source, not when
    its reader is collected."""
    path = tmp_path / "rig.mcap"
    with Recorder(RecordConfig(path=str(path))) as rec:
        rec.write(Frame("vis", 0, T0, np.zeros((8, 8, 3), np.uint8)))
    with open_source("ir", SourceConfig(kind="mcap", path=str(path), realtime=False, loop=True)) as src:
        assert src.read() is None
    with open_source("vis", SourceConfig(kind="mcap", path=str(path), realtime=False, loop=True)) as src:
        assert src.read().seq == 0 and open_fds(path) == 1
    assert open_fds(path) == 0


def test_a_recording_source_refuses_a_folder_that_is_no_bag_and_a_section_that_is_no_stream(tmp_path):
    """Only a bag's folder (it holds metadata.yaml) is read as a recording: another is said at once, as a file not
    found is; a recording holds the ir and vis streams, no other."""
    with pytest.raises(SourceError, match=r"^ir: recording not found: "):
        open_source("ir", SourceConfig(kind="mcap", path=str(tmp_path))).open()
    with pytest.raises(ValueError, match=r"^mcap source section must be one of ir, vis, got 'fused'$"):
        open_source("fused", SourceConfig(kind="mcap", path=str(tmp_path)))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("name", ["rig.mcap", "rig0_0000.mcap"], ids=["a recording", "a set's first part"])
def test_a_recording_source_given_a_pipe_says_it_is_no_regular_file(tmp_path, name):
    # "recording not found", of a path that is there
    pipe = tmp_path / name
    os.mkfifo(pipe)
    if name.startswith("rig0"):  # a later part beside it
        with Recorder(RecordConfig(path=str(tmp_path / "rig0_0001.mcap"))) as rec:
            rec.write(Frame("ir", 0, T0, np.zeros((8, 8), np.uint8)))
    with pytest.raises(SourceError, match=rf"^ir: recording not a regular file \(a pipe or a device\?\): {pipe}$"):
        open_source("ir", SourceConfig(kind="mcap", path=str(pipe))).open()
