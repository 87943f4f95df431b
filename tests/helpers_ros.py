"""ROS image messages as independent writers encode them (mcap_ros2's CDR, mcap_ros1's genpy), for the tests of
recordings that are a robot's own bag."""

from __future__ import annotations

import io

import numpy as np
from mcap_ros1._vendor.genpy.dynamic import generate_dynamic
from mcap_ros1._vendor.genpy.rostime import Time
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
    return image_message(encoding, pixels.shape[0], pixels.shape[1], data.shape[1], data.tobytes(), big=big,
                         stamp_ns=stamp_ns)


def image_message(encoding: str, height: int, width: int, step: int, data: bytes, *, big: bool = False,
                  stamp_ns: int = STAMP_NS) -> bytes:
    """A sensor_msgs/Image with these fields as they are (a layout of planes ``raw`` does not make, say)."""
    return _ENCODE[IMAGE]({"header": _header(stamp_ns), "height": height, "width": width, "encoding": encoding,
                           "is_bigendian": int(big), "step": step, "data": data})


def compressed(form: str, data: bytes, *, stamp_ns: int = STAMP_NS) -> bytes:
    """A sensor_msgs/CompressedImage holding ``data`` in the format image_transport names ``form``."""
    return _ENCODE[COMPRESSED]({"header": _header(stamp_ns), "format": form, "data": data})


def write_bag(path, channels: dict[str, str], messages: list[tuple[str, int, bytes]], *, ros1: bool = False) -> None:
    """A ``ros2 bag`` in MCAP storage as rosbag2 writes it (or, ``ros1``, a ROS 1 bag as ``mcap convert`` turns it
    into MCAP): ``channels`` topic -> schema, ``messages`` (topic, log time, serialized message) in the order they
    were logged."""
    from mcap.writer import Writer

    profile, texts = ("ros1", ROS1_TEXT) if ros1 else ("ros2", SCHEMA_TEXT)
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start(profile=profile, library="rosbag2")
        schemas = {name: writer.register_schema(name, f"{profile}msg", text.encode()) for name, text in texts.items()}
        ids = {topic: writer.register_channel(topic, "ros1" if ros1 else "cdr", schemas[schema])
               for topic, schema in channels.items()}
        for topic, log_ns, data in messages:
            writer.add_message(ids[topic], log_time=log_ns, publish_time=log_ns, data=data)
        writer.finish()


# ROS 1: the same messages in their ROS 1 definitions (a Header with a sequence number, packed serialization)
ROS1_IMAGE, ROS1_COMPRESSED = "sensor_msgs/Image", "sensor_msgs/CompressedImage"
_ROS1_HEADER = """
================================================================================
MSG: std_msgs/Header
uint32 seq
time stamp
string frame_id
"""
ROS1_TEXT = {
    ROS1_IMAGE: "Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\n"
                "uint8[] data" + _ROS1_HEADER,
    ROS1_COMPRESSED: "Header header\nstring format\nuint8[] data" + _ROS1_HEADER,
}
_ROS1_CLASSES = {name: generate_dynamic(name, text)[name] for name, text in ROS1_TEXT.items()}


def ros1(schema: str, stamp_ns: int = STAMP_NS, **fields) -> bytes:
    """A ROS 1 message of ``schema`` (an image or a compressed image) with these fields, serialized by genpy."""
    msg = _ROS1_CLASSES[schema]()
    msg.header.seq, msg.header.frame_id = 7, "camera_optical_frame"
    msg.header.stamp = Time(stamp_ns // 10**9, stamp_ns % 10**9)
    for name, value in fields.items():
        setattr(msg, name, value)
    buf = io.BytesIO()
    msg.serialize(buf)
    return buf.getvalue()


def write_db3(path, topics: dict[str, str], messages: list[tuple[str, int, bytes]]) -> None:
    """A ROS 2 bag in rosbag2's sqlite3 storage (``.db3``, as ROS 2 Humble writes it): ``topics`` topic -> message
    type, ``messages`` (topic, receive time, CDR bytes)."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL, "
                   "serialization_format TEXT NOT NULL, offered_qos_profiles TEXT NOT NULL)")
        db.execute("CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, "
                   "timestamp INTEGER NOT NULL, data BLOB NOT NULL)")
        db.execute("CREATE INDEX timestamp_idx ON messages (timestamp ASC)")
        ids = {}
        for i, (name, kind) in enumerate(topics.items(), 1):
            db.execute("INSERT INTO topics VALUES (?, ?, ?, 'cdr', '')", (i, name, kind))
            ids[name] = i
        db.executemany("INSERT INTO messages(topic_id, timestamp, data) VALUES (?, ?, ?)",
                       [(ids[topic], log_ns, data) for topic, log_ns, data in messages])


def write_bag1(path, channels: dict[str, str], messages: list[tuple[str, int, bytes]], *, compression: str = "none",
               chunk_bytes: int = 1 << 20) -> None:
    """A ROS 1 bag as ``rosbag record`` writes it (rosbags' writer, format 2.0): ``channels`` topic -> ROS 1 type,
    ``messages`` (topic, receive time, ROS 1 bytes), chunks of about ``chunk_bytes`` compressed as ``compression``
    (``none``, ``bz2``, ``lz4``)."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    writer = Writer(path)
    if compression != "none":
        writer.set_compression(Writer.CompressionFormat[compression.upper()])
    writer.chunk_threshold = chunk_bytes
    writer.open()
    conns = {topic: writer.add_connection(topic, kind.replace("/", "/msg/"), typestore=store)
             for topic, kind in channels.items()}
    for topic, log_ns, data in messages:
        writer.write(conns[topic], log_ns, data)
    writer.close()


def write_foxglove(path, messages: list[tuple[str, int, object]]) -> None:
    """An MCAP file as the Foxglove SDK logs it (protobuf ``foxglove.RawImage`` / ``foxglove.CompressedImage``):
    ``messages`` (topic, log time, a ``foxglove.messages`` image, or a RawImage's protobuf bytes, logged as they are),
    in a logging context of its own."""
    import foxglove
    from foxglove.channels import CompressedImageChannel, RawImageChannel
    from foxglove.messages import RawImage

    context = foxglove.Context()
    with foxglove.open_mcap(path, context=context):
        channels: dict = {}
        for topic, log_ns, msg in messages:
            if topic not in channels and isinstance(msg, bytes):  # one the SDK's types cannot make (a time before 1970)
                channels[topic] = foxglove.Channel(topic, schema=RawImage.get_schema(), message_encoding="protobuf",
                                                   context=context)
            elif topic not in channels:
                kind = RawImageChannel if isinstance(msg, RawImage) else CompressedImageChannel
                channels[topic] = kind(topic, context=context)
            channels[topic].log(msg, log_time=log_ns)


def foxglove_image(pixels: np.ndarray, encoding: str, stamp_ns: int = STAMP_NS, pad: int = 3) -> object:
    """A ``foxglove.RawImage`` of ``pixels`` (little-endian), its rows ``pad`` bytes longer than the pixels need."""
    from foxglove.messages import RawImage, Timestamp

    data = np.pad(pixels.reshape(pixels.shape[0], -1).view(np.uint8), ((0, 0), (0, pad)))
    return RawImage(timestamp=Timestamp(stamp_ns // 10**9, stamp_ns % 10**9), frame_id="thermal", width=pixels.shape[1],
                    height=pixels.shape[0], encoding=encoding, step=data.shape[1], data=data.tobytes())


def foxglove_compressed(data: bytes, form: str, stamp_ns: int = STAMP_NS) -> object:
    """A ``foxglove.CompressedImage`` of ``data`` in ``form`` (``jpeg``, ``png``)."""
    from foxglove.messages import CompressedImage, Timestamp

    return CompressedImage(timestamp=Timestamp(stamp_ns // 10**9, stamp_ns % 10**9), frame_id="camera", data=data,
                           format=form)


def write_metadata(folder, files: list[str] | None, counts: dict[str, tuple[str, int]] | None = None) -> None:
    """A bag folder's ``metadata.yaml`` as rosbag2 writes it: the storage ``files`` in recorded order (None: a
    recorder killed before writing the list) and topic -> (type, messages)."""
    import yaml

    info = {"version": 5, "storage_identifier": "sqlite3", "duration": {"nanoseconds": 633_333_327},
            "starting_time": {"nanoseconds_since_epoch": 1_700_000_000_000_000_000},
            "message_count": sum(n for _, n in (counts or {}).values()),
            "topics_with_message_count": [
                {"topic_metadata": {"name": topic, "type": kind, "serialization_format": "cdr",
                                    "offered_qos_profiles": "- history: 3\n  depth: 0\n"}, "message_count": n}
                for topic, (kind, n) in (counts or {}).items()],
            "compression_format": "", "compression_mode": ""}
    if files is not None:
        info["relative_file_paths"] = files
    (folder / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}))
