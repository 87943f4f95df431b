"""Publisher counters and what a subscription makes it do: seq across frames nobody read, a busy pool is no drop,
a catch-all subscriber gets no shared-memory copy."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import zmq
from helpers_zmq import ANY_PORT, PATIENCE_S, connect, fused_frame, recv_seq, wait_until

from streamfuse.client import Subscriber
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.shm_pool import PoolReader, shm_supported
from streamfuse.wire import shm_topic

needs_shm = pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
IMAGE = np.full((8, 16, 3), 9, np.uint8)


def _sub(pub: Publisher, topic: bytes) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(PATIENCE_S * 1000))
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(pub.endpoint)
    return sock


def _first(pub: Publisher, sock: zmq.Socket) -> list[bytes]:
    """Publish until ``sock`` gets a message (PUB/SUB slow joiner); that message."""
    deadline = time.monotonic() + PATIENCE_S
    while not sock.poll(10):
        assert time.monotonic() < deadline, "subscriber never connected"
        pub.send_fused(fused_frame(IMAGE))
    return sock.recv_multipart()


def test_seq_counts_the_frames_nobody_subscribed_to_so_a_late_subscriber_sees_the_gap() -> None:
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=0)) as pub:
        assert all(pub.send_fused(fused_frame(IMAGE)) for _ in range(5))
        assert (pub.published, pub.dropped) == (5, 0)
        sock = _sub(pub, pub.cfg.topic.encode())
        try:
            header = json.loads(_first(pub, sock)[1])
        finally:
            sock.close()
        assert header["seq"] >= 5


@needs_shm
def test_a_frame_left_out_of_a_busy_pool_is_counted_busy_not_dropped() -> None:
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=1)) as pub:
        sock, reader = _sub(pub, shm_topic(pub.cfg.topic).encode()), None
        try:  # subscribed throughout: the publisher goes on filling the pool
            _first(pub, sock)
            pub.send_fused(fused_frame(IMAGE))  # the newest frame's descriptor: its slot holds it still
            while (header := json.loads(sock.recv_multipart()[1]))["seq"] != pub.published - 1:
                pass
            reader = PoolReader(header["shm_pool"])  # it holds the pool's one slot: the next frame cannot go there
            assert reader.read(header["shm_slot"], header["shm_gen"], IMAGE.nbytes, copy=False) is not None
            published, busy = pub.published, pub.shm_busy
            assert pub.send_fused(fused_frame(IMAGE)) is True
            assert (pub.published, pub.shm_busy, pub.dropped) == (published + 1, busy + 1, 0)
        finally:
            if reader is not None:
                reader.close()
            sock.close()


@needs_shm
def test_a_catch_all_subscriber_gets_the_payload_and_no_shared_memory_copy() -> None:
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub:
        sock = _sub(pub, b"")
        try:
            assert _first(pub, sock)[0] == pub.cfg.topic.encode()
            for _ in range(3):
                pub.send_fused(fused_frame(IMAGE))
        finally:
            sock.close()
        assert pub.shm_pool == ""


@needs_shm
def test_a_frame_refused_to_one_subscriber_and_sent_to_another_is_counted_dropped_and_published() -> None:
    # nodrop: a stalled descriptor reader's full queue refuses each frame's descriptor while a payload reader that
    # keeps up gets the frame: send_fused says False and counts the drop, and seq moves on (the reader got it)
    endpoint = f"inproc://refused-to-one-{os.getpid()}-{threading.get_ident()}"  # no network buffers: a sure fill
    with Publisher(PublishConfig(endpoint=endpoint, nodrop=True, sndhwm=2, shm_slots=8)) as pub, \
            zmq.Context.instance().socket(zmq.SUB) as stalled:
        stalled.setsockopt(zmq.LINGER, 0)
        stalled.setsockopt(zmq.RCVHWM, 2)
        stalled.setsockopt(zmq.SUBSCRIBE, shm_topic(pub.cfg.topic).encode())  # never read
        stalled.connect(pub.endpoint)
        with Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as reader:
            def send() -> bool:
                sent = pub.send_fused(fused_frame(IMAGE))
                recv_seq(reader, pub.published - 1)  # the reader keeps up: it gets every frame
                return sent

            connect(pub, reader, IMAGE)
            wait_until(lambda: not send(), "the stalled reader's queue full")
            published, dropped = pub.published, pub.dropped
            results = [send() for _ in range(5)]
    assert results == [False] * 5 and (pub.published - published, pub.dropped - dropped) == (5, 5)
