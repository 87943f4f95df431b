"""A recording's image messages are held as read while a bag's frames are put in stamp order, each decoded only as
its frame is released (streamfuse.capture.image_messages)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers_ros import COMPRESSED, IMAGE, compressed, image_message, raw, write_bag

from streamfuse.capture import ros_images
from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.sources import SourceError
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


def _recording(tmp_path, ir: tuple[str, np.ndarray], vis: tuple[str, np.ndarray], n: int = 3) -> list:
    """A bag of ``n`` IR and ``n`` visible raw images, each given as (encoding, pixels)."""
    path, messages = tmp_path / "robot.mcap", []
    for i in range(n):
        t = T0 + i * PERIOD
        messages += [(THERMAL, t, raw(*ir, stamp_ns=t)), ("/camera/image_raw", t + 1, raw(*vis, stamp_ns=t + 1))]
    write_bag(path, {THERMAL: IMAGE, "/camera/image_raw": IMAGE}, messages)
    return path


@pytest.mark.parametrize("ir, vis, kept", [
    (("mono16", np.full((4, 6), 20_000, np.uint16)), ("mono16", np.full((4, 6), 30_000, np.uint16)), "ir"),
    (("mono8", np.full((4, 6), 20, np.uint8)), ("mono8", np.full((4, 6), 30, np.uint8)), ""),
    (("rgb16", np.full((4, 6, 3), 20_000, np.uint16)), ("rgb8", np.full((4, 6, 3), 30, np.uint8)), ""),
], ids=["16-bit", "8-bit", "16-bit colour"])
def test_a_thermal_cameras_counts_are_kept_of_16_bit_grey_ir_images_only(tmp_path, ir, vis, kept):
    path = _recording(tmp_path, ir, vis)
    frames = list(read_recording(path, {"ir": THERMAL, "vis": "/camera/image_raw"}, warn=lambda line: None))
    assert len(frames) == 6
    for frame in frames:
        assert (frame.counts is not None) == (frame.stream == kept)
        if frame.counts is not None:
            assert frame.counts.shape == (4, 6) and int(frame.counts[0, 0]) == 20_000


def test_a_false_colour_thermal_stream_is_said_once_not_for_each_frame(tmp_path):
    colour = np.zeros((4, 6, 3), np.uint8)
    colour[..., 2] = 200  # red: no grey
    path = _recording(tmp_path, ("rgb8", colour), ("mono8", np.full((4, 6), 30, np.uint8)))
    said: list[str] = []
    assert len(list(read_recording(path, {"ir": THERMAL, "vis": "/camera/image_raw"}, warn=said.append))) == 6
    assert len(said) == 1 and "colour frames (a false-colour palette?)" in said[0]


def test_an_image_message_of_no_pixels_is_damaged(tmp_path):
    path = tmp_path / "robot.mcap"
    write_bag(path, {THERMAL: IMAGE}, [(THERMAL, T0, image_message("mono8", 0, 6, 6, b"", stamp_ns=T0))])
    with pytest.raises(SourceError, match=r"is truncated or corrupt after 0 frames \(.*an image of 6x0 pixels on "
                                          f"{THERMAL}"):
        list(read_recording(path, {"ir": THERMAL}))


def test_an_image_of_an_encoding_not_read_is_said_so_not_called_damaged(tmp_path):
    path = tmp_path / "robot.mcap"
    write_bag(path, {THERMAL: IMAGE}, [(THERMAL, T0, image_message("16SC2", 4, 6, 24, bytes(96), stamp_ns=T0))])
    with pytest.raises(SourceError, match=f"^recording {path}: {THERMAL}: image encoding '16SC2' is not supported; "):
        list(read_recording(path, {"ir": THERMAL}))


def test_a_palette_named_for_16_bit_thermal_images_is_refused_in_one_line(tmp_path):
    path = _recording(tmp_path, ("mono16", np.full((4, 6), 20_000, np.uint16)),
                      ("mono8", np.full((4, 6), 30, np.uint8)))
    with pytest.raises(SourceError, match=f"^recording {path}: {THERMAL} \\(ir.topic\\): uint16 frames are counts or "
                                          "temperatures, .*: remove ir.palette \\(inferno\\)$"):
        list(read_recording(path, {"ir": THERMAL, "vis": "/camera/image_raw"}, palette="inferno"))
