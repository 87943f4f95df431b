"""A camera that serves Motion JPEG over HTTP (``multipart/x-mixed-replace``, as many IP and thermal cameras do), played
by the ``stream`` source: its frames in order, and a camera that closes the stream is one line without the URL twice."""

from __future__ import annotations

import socket
import threading
import time

import cv2
import numpy as np
import pytest

from streamfuse.capture.sources import SourceConfig, SourceError, open_source

FRAMES = 30


def _serve(server: socket.socket, frames: int = FRAMES, fps: float = 0.0, sent: list[int] | None = None) -> None:
    """One client: the HTTP answer, then ``frames`` JPEG parts of rising grey (``fps``: paced at that rate, the time
    each was sent noted in ``sent``), then the connection closed."""
    conn, _ = server.accept()
    with conn:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
        for i in range(frames):
            _, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 40 + 5 * i, np.uint8))
            if fps:
                time.sleep(1 / fps if i else 0)  # the camera's frame rate
                sent.append(time.time_ns())
            conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                         + jpeg.tobytes() + b"\r\n")


@pytest.mark.timeout(60)
def test_an_mjpeg_http_camera_is_played_in_order_and_its_end_is_one_line():
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"http://admin:secret@127.0.0.1:{server.getsockname()[1]}/video.mjpg"
        camera = threading.Thread(target=_serve, args=(server,), daemon=True)
        camera.start()
        frames = []
        with open_source("vis", SourceConfig(kind="stream", path=url)) as src, pytest.raises(SourceError) as caught:
            while (frame := src.read()) is not None:
                frames.append(frame)
        camera.join(10)
    levels = [float(f.image.mean()) for f in frames]  # each frame once, in order (JPEG and YUV rounding within 2)
    assert len(levels) == FRAMES and all(abs(level - (40 + 5 * i)) <= 2 for i, level in enumerate(levels))
    shown = url.replace("secret", "***")
    assert str(caught.value) == f"vis: {shown}: decoding stopped after frame {FRAMES} " \
        f"(t={(frames[-1].t_capture_ns - frames[0].t_capture_ns) / 1e9:.3f} s): Input/output error"


@pytest.mark.timeout(60)
def test_an_mjpeg_camera_slower_than_ffmpegs_guess_is_stamped_on_arrival_and_expected_at_its_fps():
    # Motion JPEG over HTTP has no timestamps: FFmpeg numbers its frames at a guessed 25/s, which put a 10 frames/s
    # camera's stamps seconds before their arrival (never paired) and took a 1 frame/s one for stalled
    sent: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"http://127.0.0.1:{server.getsockname()[1]}/video.mjpg"
        camera = threading.Thread(target=_serve, args=(server, 8, 10.0, sent), daemon=True)
        camera.start()
        frames = []
        with open_source("ir", SourceConfig(kind="stream", path=url, fps=10)) as src, pytest.raises(SourceError):
            while (frame := src.read()) is not None:
                frames.append(frame)
        camera.join(10)
    assert len(frames) == len(sent) == 8
    assert all(f.t_capture_ns >= t for f, t in zip(frames, sent))  # none stamped before it was even sent
    assert src.frame_interval_ns == 100_000_000  # the configured rate, not the guessed 25/s, for the stall check
