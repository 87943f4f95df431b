"""A robot's own ``ros2 bag`` (MCAP storage) replays: its cameras' topics named in the config, raw 16-bit thermal
and JPEG-compressed visible images, paired by their header stamps rather than by when the bag logged them."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest
from helpers_ros import COMPRESSED, IMAGE, compressed, raw, write_bag

from streamfuse.config import config_from_dict
from streamfuse.replay import run_replay
from streamfuse.video import decode_frames

T0, PERIOD, N = 1_700_000_000_000_000_000, 33_333_333, 20
THERMAL, CAMERA = "/thermal/image_raw", "/camera/image_raw/compressed"


@pytest.fixture
def bag(tmp_path):
    """N frames of each camera: header stamps at capture, logged 40-75 ms later (the thermal camera's later still),
    so the bag's log order interleaves the two streams unlike their capture times."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:48, 0:64]
    messages = []
    for i in range(N):
        t = T0 + i * PERIOD
        counts = (20_000 + 40 * xx + 30 * yy + 100 * i).astype(np.uint16)  # a radiometric camera's counts
        messages.append((THERMAL, t + 75_000_000 + int(rng.integers(0, 5_000_000)), raw("mono16", counts, stamp_ns=t)))
        vis = np.dstack([xx * 4, yy * 5, 255 - xx * 4]).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", vis)
        messages.append((CAMERA, t + 40_000_000 + int(rng.integers(0, 5_000_000)),
                         compressed("bgr8; jpeg compressed bgr8", jpeg.tobytes(), stamp_ns=t + 2_000_000)))
    path = tmp_path / "robot.mcap"
    write_bag(path, {THERMAL: IMAGE, CAMERA: COMPRESSED, "/imu": IMAGE}, sorted(messages, key=lambda m: m[1]))
    return path


def _cfg(**replay):
    return config_from_dict({"ir": {"kind": "mcap", "topic": THERMAL}, "vis": {"kind": "mcap", "topic": CAMERA},
                             "fuse": {"name": "max"}, "replay": {"progress": False, "codec": "ffv1", **replay}})


@pytest.mark.parametrize("pacing", ["fast", "realtime"])
def test_a_ros2_bag_replays_every_pair_by_its_header_stamps(tmp_path, bag, pacing):
    out = tmp_path / "fused.mkv"
    summary = run_replay(_cfg(pacing=pacing), ir_path=bag, out_path=out)
    assert summary.complete and summary.frames == {"ir": N, "vis": N} and summary.pairs == summary.written == N
    times = [t for t, _ in decode_frames(out)]
    assert times == [Fraction(round(i * PERIOD / 1e6), 1000) for i in range(N)]  # the visible stamps, from the first


def test_a_bag_without_the_topic_asked_for_names_the_topics_it_has(tmp_path, bag):
    cfg = config_from_dict({"fuse": {"name": "max"}, "replay": {"progress": False}})  # our recorder's topics
    with pytest.raises(ValueError, match=r"ir input .*robot.mcap has no images on /ir/image \(ir.topic\); its image "
                                         r"topics: /camera/image_raw/compressed \(sensor_msgs/msg/CompressedImage, 20 "
                                         r"messages\), /imu \(sensor_msgs/msg/Image, 0 messages\), /thermal"):
        run_replay(cfg, ir_path=bag, out_path=tmp_path / "fused.mkv")
    assert not (tmp_path / "fused.mkv").exists()
