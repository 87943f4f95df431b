"""Short videos whose containers state the video's end in their own way (FLV with B-frames, AVI that starts late),
written with PyAV, and such files cut at a packet: the capture source's and the replay's end checks run on them."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS, N = 25, 50
CASES = {  # name: (container, first pts in frames, B-frames, codec)
    "flv_bframes": ("flv", 0, 3, "libx264"),  # FLV's duration counts from its first dts, 2 frames before its first pts
    "flv_bframes_late": ("flv", 250, 3, "libx264"),
    "flv_late": ("flv", 250, 0, "libx264"),
    "avi_late": ("avi", 250, 0, "libx264"),  # AVI's frame count takes in the 250 empty chunks before the first frame
    "avi_bframes_late": ("avi", 250, 3, "libx264"),
    # A decoder without delay gets the first frame at pts 0 (x264's come out at their own pts): a 10 s gap after it.
    "avi_late_gap": ("avi", 250, 0, "mpeg4"),
}


def write(path: Path, fmt: str, first: int, bframes: int, codec: str = "libx264") -> None:
    """N noisy 64x48 frames at FPS whose pts start at ``first`` frames."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=FPS, options={"bf": str(bframes), "g": "12"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(N):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), np.uint8), format="bgr24")
            frame.pts, frame.time_base = first + i, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def cut(path: Path, packet: int) -> None:
    """Cut the file where its video packet ``packet`` starts: whole packets only, so decoding stops quietly there."""
    with av.open(str(path)) as container:
        starts = [p.pos for p in container.demux(container.streams.video[0]) if p.size]
    path.write_bytes(path.read_bytes()[:starts[packet]])


def write_grey16(path: Path, frames: list[np.ndarray]) -> None:
    """A lossless 16-bit grey video (FFV1 gray16le, 10 frames/s) of ``frames``: radiometric IR counts."""
    height, width = frames[0].shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "gray16le"
        for img in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="gray16le")))
        container.mux(stream.encode())


def write_still_times(path: Path, n: int) -> None:
    """An MPEG-4 video whose packets all carry pts = dts = 0, as some cheap recorders write them (declared 30 fps)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        frames = [av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * i, np.uint8), format="bgr24") for i in range(n)]
        for packet in [p for f in frames for p in stream.encode(f.reformat(format="yuv420p"))] + stream.encode():
            packet.pts = packet.dts = 0
            out.mux(packet)


def portrait_mov(path: Path) -> None:
    """A phone's portrait video: 64x48 frames stored sideways (bright left half) and a display matrix (its track
    header's) that turns them 90 degrees clockwise, as players show them: 48x64, bright top half."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        image = np.zeros((48, 64, 3), np.uint8)
        image[:, :32] = 255
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = bytearray(path.read_bytes())
    matrix = data.find(b"tkhd") + 44  # version 0: after version, flags, times, track id, duration, layer, volume
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(data)


def write_sound(path: Path) -> None:
    """A WAV file of 0.2 s of silence: a file PyAV opens that holds no video stream."""
    import wave

    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes(bytes(1600))
