"""A capture time more than 146 years from its clock's origin is a damaged timestamp, refused in one line naming the
input: a video's pts, a recording's log time. The stages keep times as 64-bit counts, which such a time overflows."""

from __future__ import annotations

import dataclasses

import av
import numpy as np
import pytest
from mcap.writer import Writer

from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.sources import SourceConfig, SourceError, open_source
from streamfuse.frames import Frame
from streamfuse.recording import IMAGE_SCHEMA_TEXT, TOPICS, encode_image


def test_a_video_frame_with_a_pts_past_146_years_is_refused_naming_it(tmp_path):
    # a replay ended in a traceback (OverflowError: int too big to convert), its .partial.json left behind
    path = tmp_path / "damaged.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        frames = [av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="bgr24") for i in range(4)]
        packets = [p for f in frames for p in stream.encode(f.reformat(format="yuv420p"))] + stream.encode()
        for packet, pts in zip(packets, (0, 40, 2**50, 2**50 + 40)):  # in frames of 1/25 s: 1.4 million years
            packet.pts = packet.dts = pts
            out.mux(packet)
    with open_source("vis", SourceConfig(kind="file", path=str(path), realtime=False)) as source:
        assert [source.read().seq for _ in range(2)] == [0, 1]
        with pytest.raises(SourceError, match=rf"^vis: {path}: frame 2 is timed 45035996273705 s from its clock's "
                                              rf"origin, over 146 years: a damaged timestamp$"):
            source.read()


def test_a_recorded_message_logged_past_146_years_is_refused_naming_it(tmp_path):
    # an unsigned 64-bit log time, taken for a frame stamped 0, overflowed a replay's times in a traceback
    path = tmp_path / "damaged.mcap"
    frame = Frame("vis", 0, 0, np.zeros((48, 64, 3), np.uint8))
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start(profile="ros2", library="another-recorder")
        schema = writer.register_schema("sensor_msgs/msg/Image", "ros2msg", IMAGE_SCHEMA_TEXT.encode())
        channel = writer.register_channel(TOPICS["vis"], "cdr", schema)
        for seq, log_ns in enumerate((10**9, 2**64 - 1)):
            writer.add_message(channel, log_ns, encode_image(dataclasses.replace(frame, seq=seq), "optical"), 0, seq)
        writer.finish()
    frames = read_recording(path)
    assert next(frames).t_capture_ns == 10**9
    with pytest.raises(SourceError, match=rf"^recording {path}: /vis/image: after 1 frames, a message timed "
                                          rf"18446744074 s: over 146 years after 1970, not a capture time$"):
        next(frames)
