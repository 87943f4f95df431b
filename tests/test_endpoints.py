"""The publisher's bind on an IPv6 address, and a subscriber receiving through it."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_zmq import PATIENCE_S, connect, fused_frame, has_ipv6_loopback

from streamfuse.client import Subscriber
from streamfuse.publish import PublishConfig, Publisher


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_a_publisher_bound_on_ipv6_loopback_reaches_a_subscriber(rng: np.random.Generator) -> None:
    # libzmq binds an IPv6 address only on a socket with ZMQ_IPV6: this was "cannot bind endpoint ...: No such device"
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint="tcp://[::1]:*")) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as sub:
        assert pub.endpoint.startswith("tcp://[::1]:")
        connect(pub, sub, image)
        flipped = np.ascontiguousarray(image[::-1])
        assert pub.send_fused(fused_frame(flipped))
        frame = sub.recv()
    assert frame is not None and frame[0]["seq"] == pub.published - 1
    np.testing.assert_array_equal(frame[1], flipped)
