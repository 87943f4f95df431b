"""An RTSP stream read by the ``stream`` source over TCP, end to end through FFmpeg's RTSP code: the source listens
(``rtsp_flags=listen``, an FFmpeg option passed through ``vis.ffmpeg``) and a PyAV publisher in a process of its own
pushes MPEG-4 frames to it over RTSP's interleaved TCP, as a camera's RTSP server sends them to a player."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers_zmq import free_port

from streamfuse.capture.sources import SourceConfig, open_source

# 64x48 frames of rising grey at 25 frames/s, from when the listener takes the connection (refused until it listens)
PUBLISHER = """
import sys, time
import av, numpy as np
deadline = time.monotonic() + 60
while True:
    try:
        out = av.open(sys.argv[1], "w", format="rtsp", options={"rtsp_transport": "tcp"})
        break
    except ConnectionRefusedError:
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.05)
stream = out.add_stream("mpeg4", rate=25)
stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
for i in range(1500):
    frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 + i % 150, np.uint8), format="rgb24")
    for packet in stream.encode(frame):
        out.mux(packet)
    time.sleep(0.04)
"""


@pytest.mark.timeout(90)
def test_an_rtsp_stream_is_read_over_tcp_as_a_live_source():
    url = f"rtsp://127.0.0.1:{free_port()}/live"
    cfg = SourceConfig(kind="stream", path=url, ffmpeg=("rtsp_flags=listen", "listen_timeout=60"))
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, url])
    try:
        with open_source("vis", cfg) as src:  # opening waits for the publisher, as a player waits for its camera
            frames = [src.read() for _ in range(10)]
    finally:
        publisher.kill()
        publisher.wait(30)
    assert all(f is not None and f.image.shape == (48, 64, 3) for f in frames)
    times = [f.t_capture_ns for f in frames]
    assert times == sorted(times) and all(f.t_mono_ns > 0 for f in frames)  # a live source's stamps
    assert frames[-1].image.mean() > frames[0].image.mean()  # the grey rises frame by frame: these are its frames
