"""Images the Foxglove SDK logs to MCAP (protobuf ``foxglove.RawImage`` and ``foxglove.CompressedImage``, written here
by the SDK itself) and Foxglove's ROS 2 messages (``foxglove_msgs``, CDR by mcap_ros2) replay as ROS images do; a
malformed message is one line."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest
from helpers_ros import STAMP_NS, foxglove_compressed, foxglove_image, write_foxglove
from mcap.reader import make_reader
from mcap.writer import Writer
from mcap_ros2._dynamic import serialize_dynamic
from test_replay_bags import CAMERA, MS, N, PERIOD, T0, THERMAL, _cfg, _frames

from streamfuse.capture import foxglove_images, ros_images
from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.ros_images import Unsupported
from streamfuse.capture.sources import SourceError
from streamfuse.config import config_from_dict
from streamfuse.replay import ReplayError, run_replay
from streamfuse.video import decode_frames

_TIME = "=" * 80 + "\nMSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n"
FOXGLOVE_MSGS = {  # foxglove_msgs' ROS 2 definitions
    "foxglove_msgs/msg/RawImage": "builtin_interfaces/Time timestamp\nstring frame_id\nuint32 width\nuint32 height\n"
                                  "string encoding\nuint32 step\nuint8[] data\n" + _TIME,
    "foxglove_msgs/msg/CompressedImage": "builtin_interfaces/Time timestamp\nstring frame_id\nuint8[] data\n"
                                         "string format\n" + _TIME,
}


def _logged(path) -> dict[str, tuple[str, str, bytes]]:
    """Topic -> (schema, message encoding, bytes) of the first message on each topic of an MCAP file."""
    with open(path, "rb") as f:
        return {ch.topic: (schema.name, ch.message_encoding, msg.data)
                for schema, ch, msg in make_reader(f).iter_messages()}


@pytest.mark.parametrize("encoding, channels", [("mono16", 1), ("bgr8", 3), ("rgb8", 3), ("32FC1", 1)])
def test_a_foxglove_raw_image_decodes_as_the_ros_image_of_its_pixels(tmp_path, encoding, channels):
    rng = np.random.default_rng(9)
    dtype = {"mono16": np.uint16, "32FC1": np.float32}.get(encoding, np.uint8)
    pix = (rng.uniform(-20, 60, (3, 5)) if dtype == np.float32 else
           rng.integers(0, np.iinfo(dtype).max, (3, 5, channels) if channels > 1 else (3, 5))).astype(dtype)
    write_foxglove(tmp_path / "f.mcap", [("/img", 1, foxglove_image(pix, encoding))])
    schema, message_encoding, data = _logged(tmp_path / "f.mcap")["/img"]
    assert (schema, message_encoding) == ("foxglove.RawImage", "protobuf")
    stamp, image = foxglove_images.decode(schema, data)
    assert stamp == STAMP_NS
    np.testing.assert_array_equal(image, pix[..., ::-1] if encoding == "rgb8" else pix)


def test_foxglove_msgs_in_cdr_decode_as_their_protobuf_twins(tmp_path):
    counts = np.random.default_rng(10).integers(0, 65536, (4, 6), np.uint16)
    encode = {name: serialize_dynamic(name, text)[name] for name, text in FOXGLOVE_MSGS.items()}
    stamp = {"sec": STAMP_NS // 10**9, "nanosec": STAMP_NS % 10**9}
    raw = encode["foxglove_msgs/msg/RawImage"]({"timestamp": stamp, "frame_id": "thermal", "width": 6, "height": 4,
                                                "encoding": "mono16", "step": 12, "data": counts.tobytes()})
    assert ros_images.decode("foxglove_msgs/msg/RawImage", raw)[0] == STAMP_NS
    np.testing.assert_array_equal(ros_images.decode("foxglove_msgs/msg/RawImage", raw)[1], counts)
    ok, png = cv2.imencode(".png", counts)
    packed = encode["foxglove_msgs/msg/CompressedImage"]({"timestamp": stamp, "frame_id": "thermal",
                                                          "data": png.tobytes(), "format": "png"})
    np.testing.assert_array_equal(ros_images.decode("foxglove_msgs/msg/CompressedImage", packed)[1], counts)


def test_a_recording_the_foxglove_sdk_logged_replays_every_pair_by_its_timestamps(tmp_path):
    messages = []
    for i in range(N):
        t = T0 + i * PERIOD
        counts, jpeg = _frames(i)
        messages.append((THERMAL, t + 70 * MS, foxglove_image(counts, "mono16", stamp_ns=t)))
        messages.append((CAMERA, t + 40 * MS, foxglove_compressed(jpeg, "jpeg", stamp_ns=t + 2 * MS)))
    recording = tmp_path / "sdk.mcap"
    write_foxglove(recording, sorted(messages, key=lambda m: m[1]))
    summary = run_replay(_cfg(), ir_path=recording, out_path=tmp_path / "fused.mkv")
    assert summary.complete and summary.written == N
    times = [round(float(t) * 1000) for t, _ in decode_frames(tmp_path / "fused.mkv")]
    assert times == [round(i * PERIOD / 1e6) for i in range(N)]
    cfg = config_from_dict({"fuse": {"name": "max"}, "replay": {"progress": False}})  # our recorder's topics
    with pytest.raises(ValueError, match=r"has no images on /ir/image \(ir.topic\); its image topics: "
                                         r"/camera/image_raw/compressed \(foxglove.CompressedImage, 20 messages\), "
                                         r"/thermal/image_raw \(foxglove.RawImage, 20 messages\)$"):
        run_replay(cfg, ir_path=recording, out_path=tmp_path / "other.mkv")


def test_a_malformed_or_foreign_protobuf_message_is_one_line(tmp_path):
    write_foxglove(tmp_path / "f.mcap", [("/img", 1, foxglove_image(np.zeros((2, 3), np.uint8), "mono8"))])
    schema, _, data = _logged(tmp_path / "f.mcap")["/img"]
    for cut in range(1, len(data) - 1, 3):
        with pytest.raises(ValueError, match="cut short|bytes where|needs rows of|is not|wire type"):
            foxglove_images.decode(schema, data[:cut])
    with pytest.raises(ValueError, match=r"protobuf wire type 7 \(field 1\)"):
        foxglove_images.decode(schema, b"\x0f")
    with pytest.raises(ValueError, match=r"its field 4 is not bytes"):
        foxglove_images.decode(schema, b"\x20\x05")
    # pixels one byte short of the length they state, and a varint longer than protobuf's 10 bytes: not taken as they
    # are (2 pixels of a 2x1 image, a width of 0)
    short = "1502000000" "1d01000000" "2205" + b"mono8".hex() + "2d02000000" "32030a14"
    with pytest.raises(ValueError, match=r"^a protobuf field of 3 bytes where 2 are left$"):
        foxglove_images.decode(schema, bytes.fromhex(short))
    with pytest.raises(ValueError, match=r"^a protobuf varint is cut short or too long$"):
        foxglove_images.decode(schema, b"\x10" + b"\x80" * 10 + b"\x00")
    with pytest.raises(Unsupported, match=r"protobuf messages of foxglove.PointCloud are not images; image schemas: "
                                          r"foxglove.RawImage, foxglove.CompressedImage"):
        foxglove_images.decode("foxglove.PointCloud", data)


def test_a_field_given_twice_takes_its_last_value_as_protobuf_says():
    # two serialized messages concatenated merge into one (protobuf's rule): a width of 1, then the width of 2
    image = ("1501000000" "1d01000000" "2205" + b"mono8".hex() + "2d02000000" "32020a14"
             "0a0408051007" "1502000000")
    stamp, pixels = foxglove_images.decode("foxglove.RawImage", bytes.fromhex(image))
    assert stamp == 5_000_000_007 and pixels.tolist() == [[10, 20]]


def test_a_raw_image_without_a_timestamp_and_with_a_field_unknown_here_decodes():
    """A timestamp left out is 0 (the log time stands in for it); a field of a later schema version, of any wire type
    (here field 15, a double: 8 bytes), is skipped as protobuf says."""
    image = "1502000000" "1d01000000" "2205" + b"mono8".hex() + "2d02000000" "32020a14" "79" + "00" * 8
    stamp, pixels = foxglove_images.decode("foxglove.RawImage", bytes.fromhex(image))
    assert stamp == 0 and pixels.tolist() == [[10, 20]]


def test_a_negative_protobuf_timestamp_is_read_signed_and_stops_the_replay_in_one_line(tmp_path):
    """google.protobuf.Timestamp's seconds are int64 and its nanos int32: -5 s is a 10-byte varint, which read unsigned
    put the frame 584 years ahead, paired with nothing; a time before 1970 is no capture time."""
    image = "1502000000" "1d01000000" "2205" + b"mono8".hex() + "2d02000000" "32020a14"
    for stamp, seconds, nanos in ((-4_999_999_993, "fb" + "ff" * 8 + "01", "07"), (-1, "00", "ff" * 9 + "01")):
        timestamp = "08" + seconds + "10" + nanos
        message = bytes.fromhex(f"0a{len(timestamp) // 2:02x}" + timestamp + image)
        assert foxglove_images.decode("foxglove.RawImage", message)[0] == stamp
    messages = [(THERMAL, T0 + i * PERIOD, foxglove_image(_frames(i)[0], "mono16", stamp_ns=T0 + i * PERIOD).encode())
                for i in range(3)]
    messages += [(CAMERA, T0 + i * PERIOD, foxglove_compressed(_frames(i)[1], "jpeg", stamp_ns=T0 + i * PERIOD))
                 for i in range(3)]
    topic, log_ns, data = messages[1]  # its timestamp given again, as -5 s: protobuf's last value wins
    messages[1] = topic, log_ns, data + bytes.fromhex("0a0d08fb" + "ff" * 8 + "011007")
    recording = tmp_path / "sdk.mcap"
    write_foxglove(recording, sorted(messages, key=lambda m: m[1]))
    with pytest.raises(ReplayError, match=rf"recording .*sdk.mcap: {THERMAL}: after \d+ frames, a message stamped "
                                          r"-4.999999993 s: before 1970, not a capture time"):
        run_replay(_cfg(), ir_path=recording, out_path=tmp_path / "fused.mkv")


def test_a_foxglove_image_in_json_is_said_to_be_unread_not_to_be_no_image(tmp_path):
    # it was "messages of foxglove.RawImage are not images", of a schema its image topics listed
    recording = tmp_path / "json.mcap"
    with open(recording, "wb") as f:
        writer = Writer(f)
        writer.start()
        schema = writer.register_schema("foxglove.RawImage", "jsonschema", b"{}")
        channel = writer.register_channel(THERMAL, "json", schema)
        writer.add_message(channel, log_time=T0, publish_time=T0, data=json.dumps(
            {"timestamp": {"sec": 5, "nsec": 7}, "width": 2, "height": 1, "encoding": "mono8", "step": 2,
             "data": base64.b64encode(bytes([10, 20])).decode()}).encode())
        writer.finish()
    with pytest.raises(SourceError, match=rf"^recording .*json.mcap: {THERMAL}: foxglove.RawImage encoded as 'json' is "
                                          r"not read; Foxglove's images are read in protobuf, as the Foxglove SDK logs "
                                          r"them, or as foxglove_msgs in cdr$"):
        list(read_recording(recording, {"ir": THERMAL}))
