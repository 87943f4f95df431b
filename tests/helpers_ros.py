"""ROS 2 image messages as an independent CDR writer (mcap_ros2) encodes them, for the tests of recordings that are
a robot's own ``ros2 bag``."""

from __future__ import annotations

import numpy as np
from mcap_ros2._dynamic import serialize_dynamic

from streamfuse.recording import IMAGE_SCHEMA_TEXT

IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
# the Image definition as our recorder writes it; CompressedImage's shares its std_msgs/Header part
SCHEMA_TEXT = {
    IMAGE: IMAGE_SCHEMA_TEXT,
    COMPRESSED: "std_msgs/Header header\nstring format\nuint8[] data\n"
                + IMAGE_SCHEMA_TEXT[IMAGE_SCHEMA_TEXT.index("==="):],
}
_ENCODE = {name: serialize_dynamic(name, text)[name] for name, text in SCHEMA_TEXT.items()}
STAMP_NS = 5_000_000_007  # the header stamp of a message unless told


def _header(stamp_ns: int) -> dict:
    return {"stamp": {"sec": stamp_ns // 10**9, "nanosec": stamp_ns % 10**9}, "frame_id": "camera_optical_frame"}


def raw(encoding: str, pixels: np.ndarray, *, big: bool = False, pad: int = 3, stamp_ns: int = STAMP_NS) -> bytes:
    """A sensor_msgs/Image of ``pixels`` (H, W[, C]) whose rows are ``pad`` bytes longer than the pixels need."""
    data = pixels.astype(pixels.dtype.newbyteorder(">" if big else "<")).reshape(pixels.shape[0], -1).view(np.uint8)
    data = np.pad(data, ((0, 0), (0, pad)))
    return _ENCODE[IMAGE]({"header": _header(stamp_ns), "height": pixels.shape[0], "width": pixels.shape[1],
                           "encoding": encoding, "is_bigendian": int(big), "step": data.shape[1],
                           "data": data.tobytes()})


def compressed(form: str, data: bytes, *, stamp_ns: int = STAMP_NS) -> bytes:
    """A sensor_msgs/CompressedImage holding ``data`` in the format image_transport names ``form``."""
    return _ENCODE[COMPRESSED]({"header": _header(stamp_ns), "format": form, "data": data})


def write_bag(path, channels: dict[str, str], messages: list[tuple[str, int, bytes]]) -> None:
    """A ``ros2 bag`` in MCAP storage as rosbag2 writes it: ``channels`` topic -> schema, ``messages`` (topic,
    log time, CDR bytes) in the order they were logged."""
    from mcap.writer import Writer

    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start(profile="ros2", library="rosbag2")
        schemas = {name: writer.register_schema(name, "ros2msg", text.encode()) for name, text in SCHEMA_TEXT.items()}
        ids = {topic: writer.register_channel(topic, "cdr", schemas[schema]) for topic, schema in channels.items()}
        for topic, log_ns, data in messages:
            writer.add_message(ids[topic], log_time=log_ns, publish_time=log_ns, data=data)
        writer.finish()
