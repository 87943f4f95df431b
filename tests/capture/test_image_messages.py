"""A recording's image messages are held as read while a bag's frames are put in stamp order, each decoded only as
its frame is released (streamfuse.capture.image_messages)."""

from __future__ import annotations

import cv2
import numpy as np
from helpers_ros import COMPRESSED, IMAGE, compressed, raw, write_bag

from streamfuse.capture import ros_images
from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.stamp_order import AHEAD

T0, PERIOD, RARE = 1_700_000_000_000_000_000, 33_333_333, 32
THERMAL, CAMERA = "/thermal/image_raw", "/camera/image_raw/compressed"


def test_a_bags_look_ahead_holds_its_messages_undecoded_until_each_frame_leaves(tmp_path, monkeypatch):
    # the look-ahead held its messages decoded: up to 64 of a 1080p camera's images beside a rarer thermal one's,
    # 400 MB; here the first frame, a thermal one, decoded the 64 messages read ahead for the thermal's next 4 frames
    path, messages = tmp_path / "robot.mcap", []
    for i in range(4 * RARE):
        t = T0 + i * PERIOD
        jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), i % 200, np.uint8))[1].tobytes()
        if i % RARE == 0:
            counts = np.full((48, 64), 20_000 + i, np.uint16)
            messages.append((THERMAL, t + 41_000_000, raw("mono16", counts, stamp_ns=t)))
        messages.append((CAMERA, t + 42_000_000, compressed("jpeg", jpeg, stamp_ns=t)))
    write_bag(path, {THERMAL: IMAGE, CAMERA: COMPRESSED}, messages)
    decode, decoded = ros_images.decode, []

    def counted(*args, **kwargs):
        decoded.append(args[0])
        return decode(*args, **kwargs)

    monkeypatch.setattr(ros_images, "decode", counted)
    frames = read_recording(path, {"ir": THERMAL, "vis": CAMERA})
    first = next(frames)
    assert (first.stream, int(first.counts[0, 0])) == ("ir", 20_000) and decoded == [IMAGE]
    rest = list(frames)
    assert len(decoded) == len(messages) and len(messages) > AHEAD
    assert [f.t_capture_ns for f in [first, *rest] if f.stream == "vis"] == [T0 + i * PERIOD for i in range(4 * RARE)]
    assert [int(f.image[0, 0, 0]) for f in rest if f.stream == "vis"][:3] == [0, 1, 2]
