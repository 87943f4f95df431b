"""Plain helpers shared by test_publish.py, test_client.py and test_subscribe.py: fused frames, hand-built wire
messages and a background publisher on a random loopback port. Not fixtures, so they live here rather than in
conftest.py (which tests cannot import from)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from streamfuse.client import Subscriber
from streamfuse.frames import Frame, FramePair, FusedFrame
from streamfuse.publish import HEADER_FIELDS, SCHEMA, PublishConfig, Publisher

ANY_PORT = "tcp://127.0.0.1:*"
VGA = (480, 640, 3)


def fused_frame(image: np.ndarray, seq: int = 0) -> FusedFrame:
    """A FusedFrame around ``image`` with distinct, ordered times and sequence numbers."""
    t = time.time_ns()
    ir = Frame("ir", seq + 100, t - 2_000_000, np.zeros(image.shape[:2], np.uint8))
    vis = Frame("vis", seq + 200, t - 1_000_000, image)
    return FusedFrame(FramePair(ir, vis), image, "max", "0.1", t, {"fuse": 1.25, "post": np.float32(0.5)})


def connect(pub: Publisher, sub: Subscriber, image: np.ndarray, timeout_s: float = 5.0) -> None:
    """Publish until ``sub`` gets a frame (PUB/SUB slow joiner), then leave nothing queued."""
    deadline = time.monotonic() + timeout_s
    while sub.recv() is None:
        assert time.monotonic() < deadline, "subscriber never connected"
        pub.send_fused(fused_frame(image))
    while sub.recv() is not None:
        pass


@contextmanager
def publishing(image: np.ndarray, rate_hz: float = 100.0, **cfg: object) -> Iterator[Publisher]:
    """A Publisher on a random loopback port sending ``image`` at ``rate_hz`` from a thread."""
    stop = threading.Event()
    with Publisher(PublishConfig(endpoint=ANY_PORT, **cfg)) as pub:
        def run() -> None:
            while not stop.wait(1.0 / rate_hz):
                pub.send_fused(fused_frame(image, pub.published))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield pub
        finally:
            stop.set()
            thread.join(timeout=5)


def good_parts(image: np.ndarray) -> list[bytes]:
    """A valid ``[topic, header, image]`` message built by hand (seq 0, all times 0)."""
    header = {k: 0 for k, tp in HEADER_FIELDS.items() if tp is int}
    header.update(schema=SCHEMA, height=image.shape[0], width=image.shape[1], encoding="bgr8",
                  step=image.shape[1] * 3, frame_id="f", fuser="max", fuser_version="1", timings_ms={})
    return [b"fused/x", json.dumps(header).encode(), image.tobytes()]


def with_header(**changes: object) -> list[bytes]:
    """A 4x6 bgr8 message with header fields changed (None removes the field)."""
    topic, header, payload = good_parts(np.zeros((4, 6, 3), np.uint8))
    fields = {**json.loads(header), **changes}
    return [topic, json.dumps({k: v for k, v in fields.items() if v is not None}).encode(), payload]
