"""Subscriber: timeouts, latest-frame mode, malformed messages and sequence gaps, on random loopback ports."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq
from helpers_zmq import ANY_PORT, VGA, connect, fused_frame, good_parts, publishing, with_header

from streamfuse.client import Subscriber
from streamfuse.publish import PublishConfig, Publisher

NOBODY = "tcp://127.0.0.1:1"  # nothing listens there


@pytest.fixture
def raw_pub() -> Iterator[tuple[zmq.Socket, str]]:
    """A plain PUB socket, to send whatever bytes a test needs."""
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(ANY_PORT)
    yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close(linger=0)


def _raw_connect(sock: zmq.Socket, sub: Subscriber) -> None:
    deadline = time.monotonic() + 5
    while sub.recv() is None:
        assert time.monotonic() < deadline, "subscriber never connected"
        sock.send_multipart(with_header(seq=0))


def test_recv_times_out() -> None:
    with Subscriber(NOBODY, timeout_s=0.2) as sub:
        t0 = time.monotonic()
        assert sub.recv() is None
        assert 0.15 < time.monotonic() - t0 < 1.5
        assert list(sub) == []


def test_latest_returns_the_newest_frame(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, sndhwm=20)) as pub, \
            Subscriber(pub.endpoint, timeout_s=0.2, latest=True, rcvhwm=20) as newest, \
            Subscriber(pub.endpoint, timeout_s=0.2, rcvhwm=20) as oldest:
        connect(pub, newest, image)
        connect(pub, oldest, image)
        first = pub.published
        for i in range(5):
            assert pub.send_fused(fused_frame(image, i))
        time.sleep(0.3)  # let all five arrive
        got_newest, got_oldest = newest.recv(), oldest.recv()
    assert got_newest is not None and got_oldest is not None
    assert got_newest[0]["seq"] == first + 4 and newest.discarded == 4
    assert got_oldest[0]["seq"] == first and oldest.discarded == 0


def test_latest_stays_fresh_after_the_caller_stalls(rng: np.random.Generator) -> None:
    # A reader that only drained ZeroMQ's queue would get frames from before the stall: the socket buffers hold
    # old frames while the publisher drops the new ones.
    with publishing(rng.integers(0, 256, VGA, dtype=np.uint8), rate_hz=100) as pub, \
            Subscriber(pub.endpoint, timeout_s=2.0, latest=True) as sub:
        assert sub.recv() is not None
        time.sleep(0.5)
        frame = sub.recv()
        lag = pub.published - 1 - frame[0]["seq"] if frame else None
    assert lag is not None and lag <= 5, f"newest frame is {lag} frames behind"
    assert sub.discarded >= 30


def test_malformed_messages_are_counted_and_skipped(raw_pub: tuple[zmq.Socket, str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    sock, endpoint = raw_pub
    with Subscriber(endpoint, timeout_s=0.5, rcvhwm=20) as sub:
        _raw_connect(sock, sub)
        good = good_parts(np.zeros((4, 6, 3), np.uint8))
        bad = [good[:2], [good[0], b"{oops", good[2]], [*good[:2], good[2][:-1]], with_header(encoding="rgba9")]
        with caplog.at_level(logging.WARNING, logger="streamfuse.client"):
            for parts in bad:
                sock.send_multipart(parts)
            sock.send_multipart(with_header(seq=1))
            frame = sub.recv()
    assert frame is not None and frame[0]["seq"] == 1
    assert sub.malformed == 4
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 4


def test_missed_counts_gaps_in_seq(raw_pub: tuple[zmq.Socket, str]) -> None:
    sock, endpoint = raw_pub
    with Subscriber(endpoint, timeout_s=0.5, rcvhwm=20) as sub:
        _raw_connect(sock, sub)
        for seq in (1, 4, 5):
            sock.send_multipart(with_header(seq=seq))
        seqs = [header["seq"] for header, _ in sub]
    assert seqs == [1, 4, 5] and sub.missed == 2 and sub.received == 4


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="timeout_s=0"):
        Subscriber(NOBODY, timeout_s=0)
    with pytest.raises(ValueError, match="cannot connect to nonsense"):
        Subscriber("nonsense")
    with pytest.raises(ValueError, match="40-character Z85"):
        Subscriber(NOBODY, server_key="short")
