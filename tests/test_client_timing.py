"""When a waiting Subscriber looks again: each 50 ms for close() and a connection to restore, and after 1 s of silence
on shared memory for the ZeroMQ payload or descriptors again; a frame coming is no silence. On a clock that moves
only as the test says: nothing here depends on how fast the machine is."""

from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from helpers_zmq import ANY_PORT, PATIENCE_S, connect, fused_frame, held_port, wait_until

from streamfuse import client, connection_watch
from streamfuse.client import Subscriber
from streamfuse.publish import PublishConfig, Publisher


@pytest.fixture
def silent(monkeypatch: pytest.MonkeyPatch):
    """A function making a Subscriber of a port nothing listens on, and its clock (``ms``, whole milliseconds)."""
    clock = SimpleNamespace(ms=1_000_000)
    clock.monotonic = lambda: clock.ms / 1000
    monkeypatch.setattr(client, "time", clock)
    with contextlib.ExitStack() as made:
        def make(**kwargs) -> Subscriber:
            port = made.enter_context(held_port())
            return made.enter_context(Subscriber(f"tcp://127.0.0.1:{port}", shm=False, **kwargs))

        yield make, clock


class _Polls:
    """Stands in for a Subscriber's poll(): notes each wait (ms) and moves the clock on by it (1 ms at least: time
    goes on); nothing comes."""

    def __init__(self, clock: SimpleNamespace) -> None:
        self.clock, self.waits, self.lock = clock, [], threading.Lock()

    def poll(self, ms: int) -> list:
        with self.lock:
            self.waits.append(ms)
            self.clock.ms += max(ms, 1)
        return []


def test_a_long_recv_waits_50_ms_at_a_time(silent) -> None:
    # between waits it restores a dropped connection and takes the payload again: a recv of seconds must not put
    # those off until it ends
    make, clock = silent
    sub = make(timeout_s=1.0)
    sub._fds = polls = _Polls(clock)
    assert sub.recv() is None
    assert polls.waits == [50] * 20


def test_latest_modes_reader_waits_50_ms_at_a_time(silent) -> None:
    # close() waits for the reader thread: it ends within one wait
    make, clock = silent
    sub = make(latest=True)
    sub._fds = polls = _Polls(clock)
    wait_until(lambda: len(polls.waits) >= 3, "the reader's waits")
    sub.close()
    assert set(polls.waits[1:]) == {50}  # the first one may have begun before the stand-in


def test_a_subscriber_silent_on_shared_memory_takes_the_payload_again_after_1_s(silent) -> None:
    # the publisher may have restarted without shared memory: a reader waiting for pool descriptors would get nothing
    make, clock = silent
    sub = make()
    sub._subscribe_payload(False)  # as once a pool was mapped
    clock.ms = 1_000_999
    sub._wait(0)
    assert not sub._payload_on
    clock.ms = 1_001_000
    sub._wait(0)
    assert sub._payload_on


def test_a_ring_silent_for_1_s_is_left_for_the_zeromq_descriptors(silent, monkeypatch) -> None:
    # the publisher may have stopped filling the ring (restarted, or it dropped this reader): its frames may come
    # over ZeroMQ meanwhile
    make, clock = silent
    sub = make()
    sub._ring = SimpleNamespace(left="")
    monkeypatch.setattr(sub, "_ring_next", lambda timeout_s: None)
    clock.ms = 1_000_999
    assert sub._next(0) is None and sub.on_ring
    clock.ms = 1_001_000
    assert sub._next(0) is None and not sub.on_ring


@pytest.mark.parametrize("shm_slots", [0, 4], ids=["zeromq", "ring"])
def test_a_subscriber_getting_frames_keeps_its_connection_and_ring(monkeypatch, shm_slots: int) -> None:
    # each frame is news from the publisher: 6 s of frames 0.6 s apart are not 6 s of silence (a connection made
    # again, frames lost), nor a silent ring
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=shm_slots)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        if shm_slots:
            wait_until(lambda: pub.send_fused(fused_frame(np.zeros((48, 64, 3), np.uint8))) and sub.recv(0.05)
                       and sub.on_ring, "a frame through the pool's ring")
        else:
            connect(pub, sub, np.zeros((48, 64, 3), np.uint8))
        clock = SimpleNamespace(ms=round(connection_watch.time.monotonic() * 1000))
        clock.monotonic = lambda: clock.ms / 1000
        for module in (client, connection_watch):
            monkeypatch.setattr(module, "time", clock)
        reconnects = []
        monkeypatch.setattr(sub._watch, "reconnect", lambda: reconnects.append(clock.ms))
        for value in range(1, 11):  # 6 s in all
            clock.ms += 600
            pub.send_fused(fused_frame(np.full((48, 64, 3), value, np.uint8)))
            assert sub.recv()[1][0, 0, 0] == value
            assert sub.recv(0) is None  # nothing more: a look at the connection
        assert reconnects == [] and sub.on_ring == bool(shm_slots)
