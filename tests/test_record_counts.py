"""A thermal camera's 16-bit counts: carried beside the 8-bit frame through the capture ring and kept by a recording."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfuse.capture.mcap_source import read_messages, read_recording
from streamfuse.capture.shm_ring import ShmRing
from streamfuse.capture.sources import SourceConfig, open_source
from streamfuse.frames import Frame
from streamfuse.recording import COUNTS_TOPIC, RecordConfig, Recorder
from streamfuse.recover import recover

REPO = Path(__file__).resolve().parents[1]


def _counts(i: int, shape=(24, 32)) -> np.ndarray:
    """Counts as a 14-bit thermal core gives them: a few thousand around 7,000, a warm body moving right."""
    rng = np.random.default_rng(i)
    frame = 7000 + rng.integers(0, 40, shape).astype(np.uint16)
    frame[8:16, 4 + i:12 + i] += 900
    return frame


def test_counts_cross_the_ring_beside_their_frame_at_any_size():
    odd = _counts(0, (5, 7))  # 35 bytes of image: the counts start at an odd offset in the slot
    with ShmRing("ir", slots=2, slot_bytes=16) as ring:  # too small: the ring grows for image and counts
        ring.write(Frame("ir", 3, 100, (odd >> 6).astype(np.uint8), counts=odd))
        ring.write(Frame("ir", 4, 200, np.zeros((5, 7), np.uint8)))
        with_counts, without = ring.read(timeout=5.0), ring.read(timeout=5.0)
    np.testing.assert_array_equal(with_counts.counts, odd)
    assert with_counts.counts.dtype == np.uint16 and without.counts is None


def test_a_16_bit_ir_source_keeps_its_counts_and_an_8_bit_one_has_none(tmp_path):
    for name, image in (("deep", _counts(0)), ("flat", (_counts(0) >> 6).astype(np.uint8))):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "000.png"), image)
        with open_source("ir", SourceConfig(kind="folder", path=str(tmp_path / name), realtime=False)) as src:
            frame = src.read()
        assert frame.image.dtype == np.uint8
        if name == "deep":
            np.testing.assert_array_equal(frame.counts, image)
        else:
            assert frame.counts is None


def test_a_recording_keeps_the_counts_and_replays_from_them_when_asked(tmp_path):
    path = tmp_path / "rig.mcap"
    frames = [Frame("ir", i, 10**9 + i * 10**8, (_counts(i) >> 6).astype(np.uint8), counts=_counts(i))
              for i in range(4)]
    with Recorder(RecordConfig(path=str(path))) as rec:
        for frame in frames:
            rec.write(frame)
            rec.write(Frame("vis", frame.seq, frame.t_capture_ns, np.zeros((24, 32, 3), np.uint8)))
    default = [f for f in read_recording(path) if f.stream == "ir"]  # the frames the live run fused, as before
    assert [f.image.tobytes() for f in default] == [f.image.tobytes() for f in frames]
    from_counts = list(read_recording(path, {"ir": COUNTS_TOPIC}))
    assert [f.seq for f in from_counts] == [0, 1, 2, 3]
    for got, frame in zip(from_counts, frames, strict=True):
        np.testing.assert_array_equal(got.counts, frame.counts)
        assert got.t_capture_ns == frame.t_capture_ns
    # a recording its run left cut short keeps the counts through recover: cut where its summary starts (the
    # footer's first field, 28 bytes from the end), every message before it
    data = path.read_bytes()
    cut, recovered = tmp_path / ".cut.mcap.partial", tmp_path / "again.mcap"
    cut.write_bytes(data[:struct.unpack_from("<Q", data, len(data) - 28)[0]])
    assert "recovered 4 IR and 4 visible frames" in recover(cut, recovered)
    assert sum(1 for _ in read_messages(recovered, (COUNTS_TOPIC,))) == 4


def test_the_counts_messages_carry_their_frames_capture_time_and_sequence(tmp_path):
    # Foxglove and `ros2 bag play` order and time messages by log_time: counts logged at another time than their
    # frame would play apart from it, and a replay by log time would pair them with other frames
    from mcap.reader import make_reader

    path = tmp_path / "rig.mcap"
    frames = [Frame("ir", 5 + i, 1_700_000_000_123_456_789 + i * 10**8, (_counts(i) >> 6).astype(np.uint8),
                    counts=_counts(i)) for i in range(3)]
    with Recorder(RecordConfig(path=str(path))) as rec:
        for frame in frames:
            rec.write(frame)
    with open(path, "rb") as f:
        reader = make_reader(f)
        messages = list(reader.iter_messages())
        topics = sorted(channel.topic for channel in reader.get_summary().channels.values())
    records = {(channel.topic, msg.sequence): (msg.log_time, msg.publish_time) for _, channel, msg in messages}
    for frame in frames:
        t = frame.t_capture_ns
        assert records[(COUNTS_TOPIC, frame.seq)] == records[("/ir/image", frame.seq)] == (t, t)
    assert topics == [COUNTS_TOPIC, "/ir/image", "/vis/image"]  # one counts channel, not one per frame
    # the counts are the IR camera's: its optical frame, as its images
    assert {msg.data[16:33] for _, channel, msg in messages if channel.topic == COUNTS_TOPIC} == {b"ir_optical_frame\0"}


@pytest.mark.timeout(120)
def test_a_live_run_records_a_thermal_cameras_counts_exactly(tmp_path):
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    counts = [_counts(i, (48, 64)) for i in range(6)]
    for i, frame in enumerate(counts):
        cv2.imwrite(str(tmp_path / "ir" / f"{i:03d}.png"), frame)
        cv2.imwrite(str(tmp_path / "vi" / f"{i:03d}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    path = tmp_path / "rig.mcap"
    sources = [f"--set={s}.{k}={v}" for s, folder in (("ir", "ir"), ("vis", "vi"))
               for k, v in (("kind", "folder"), ("path", tmp_path / folder), ("fps", 10), ("restart", "false"))]
    run = subprocess.run([sys.executable, str(REPO / "run_stream.py"), "--config", "demo", *sources,
                          "--set=publish.endpoint=tcp://127.0.0.1:*", "--set=fuse.name=max",
                          f"--set=record.path={path}", "--set=ir.width=64", "--set=ir.height=48",
                          "--set=vis.width=64", "--set=vis.height=48"],
                         cwd=REPO, capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stdout + run.stderr
    recorded = {f.seq: f.counts for f in read_recording(path, {"ir": COUNTS_TOPIC})}
    assert recorded and len(recorded) == len([f for f in read_recording(path) if f.stream == "ir"])
    for seq, got in recorded.items():
        np.testing.assert_array_equal(got, counts[seq])
