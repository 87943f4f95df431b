"""Subscriber: timeouts, latest-frame mode, malformed messages and sequence gaps, on random loopback ports.

No test here measures time: each waits for the event it needs (a frame with a given seq, a counter reaching a
value) with a generous timeout, so a loaded machine makes them slower, never red.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import re
import secrets
import signal
import socket
import threading
import time
import tracemalloc

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message
from helpers_threads import Watch
from helpers_zmq import (ANY_PORT, MALFORMED, PATIENCE_S, VGA, connect, fused_frame, good_parts, plain_pub, pool_fds,
                         publishing, raw_connect, recv_seq, sync, wait_until, with_header)

from streamfuse import connection_watch
from streamfuse.shm_owners import SHM_DIR
from streamfuse.client import Subscriber
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.shm_pool import POOL_PREFIX, shm_supported
from streamfuse.wire import SCHEMA_2

NOBODY = "tcp://127.0.0.1:1"  # nothing listens there


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_recv_times_out(latest: bool) -> None:
    with Subscriber(NOBODY, timeout_s=0.05, latest=latest) as sub:
        assert sub.recv() is None
        assert sub.recv(0.01) is None
        assert list(sub) == []
    assert sub.received == 0


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_a_zero_timeout_takes_a_frame_already_here_without_waiting(latest: bool, rng: np.random.Generator) -> None:
    # a control loop's "is there a new frame?": 0 (or any wait shorter than a poll) returned None with frames waiting
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, sndhwm=20)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=latest, rcvhwm=20, shm=False) as sub:
        connect(pub, sub, image)
        assert sub.recv(0) is None  # nothing new
        assert pub.send_fused(fused_frame(image, 0))
        wait_until(lambda: sub.recv(0) is not None, "the frame, taken without a wait")


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
@pytest.mark.parametrize("timeout", [-1.0, float("nan"), float("inf"), 1e300])
def test_a_recv_timeout_that_cannot_be_waited_for_is_refused(latest: bool, timeout: float) -> None:
    # they overflowed (inf: OverflowError from deep in threading), raised from poll() (NaN) or blocked for ever
    with Subscriber(NOBODY, timeout_s=0.05, latest=latest) as sub, \
            pytest.raises(ValueError, match=r"^recv timeout_s=.* must be in \[0, "):
        sub.recv(timeout)


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_a_closed_subscriber_says_so_and_closes_again_quietly(latest: bool) -> None:
    # plain mode: a second close() (an explicit one inside the with block) raised ZMQError ENOTSOCK, and a recv()
    # after close() did; latest mode waited out its timeout and returned None, as from a silent publisher
    with Subscriber(NOBODY, timeout_s=PATIENCE_S, latest=latest) as sub:
        reader = sub._newest._reader
        sub.close()
        # latest mode: the reader thread, the sockets' only user, has ended before they were closed under it
        assert reader is None or not reader.is_alive()
    sub.close()
    with pytest.raises(RuntimeError, match=f"^subscriber {re.escape(NOBODY)} is closed$"):
        sub.recv()


# the fork is the user's, as in a robot stack that forks workers: Python 3.12+ warns of it in a process with threads
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_a_forked_child_is_told_to_make_its_own_and_leaves_its_parents_subscriber_working(
        latest: bool, rng: np.random.Generator) -> None:
    # a child forked after subscribing (multiprocessing's fork) hung in libzmq for good on a plain recv(0), timeout
    # unheeded; in latest mode, with no reader thread there, every recv() returned None as from a silent publisher
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with publishing(image) as pub, Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=latest, shm=False) as sub:
        # not connect(): its sync sends beside the publishing thread, whose frames kept it from sending again
        wait_until(lambda: sub.recv(0.05) is not None, "a frame")
        if (pid := os.fork()) == 0:  # the child: only the subscriber's calls, then out without Python's exit
            try:
                sub.recv(0)
                code = 1
            except RuntimeError as exc:
                code = 0 if str(exc).endswith("was made in process %d: a forked child makes its own" % os.getppid()) \
                    else 2
            sub.close()  # the parent's sockets and slot locks are left alone
            os._exit(code)
        status: list[int] = []
        try:
            wait_until(lambda: _reaped(pid, status), "the forked child's end")
        finally:
            if not status:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status[0]) == 0
        assert sub.recv() is not None  # the parent's subscriber goes on


def _reaped(pid: int, status: list[int]) -> bool:
    """Whether child ``pid`` has ended (its wait status appended to ``status``)."""
    done, code = os.waitpid(pid, os.WNOHANG)
    if done:
        status.append(code)
    return bool(done)


@pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_a_subscriber_dropped_without_close_gives_back_its_thread_sockets_and_pool(latest: bool,
                                                                                     rng: np.random.Generator) -> None:
    # latest mode's reader thread held a dropped Subscriber for good (its thread, sockets and pool until the process
    # ended); in either mode the connection's monitor socket and the pool's file descriptor stayed open
    with publishing(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) as pub:
        sub = Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=latest)
        wait_until(lambda s=sub: s.recv(0.05) is not None and s.via_shm > 0, "a frame from shared memory")
        pool, reader, sockets = sub._pools.reader.name, sub._newest._reader, (sub._sock, sub._watch._monitor)
        assert pool_fds(pool) == 4  # the publisher's and the subscriber's: each a descriptor and its mapping's
        del sub
        gc.collect()
        if reader is not None:
            reader.join(PATIENCE_S)
            assert not reader.is_alive()
        assert all(sock.closed for sock in sockets)
        wait_until(lambda: pool_fds(pool) == 2, "the subscriber's pool descriptors closed")


def test_latest_returns_the_newest_frame(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, sndhwm=20)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=True, rcvhwm=20) as newest, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, rcvhwm=20) as oldest:
        connect(pub, oldest, image)
        connect(pub, newest, image)  # second: what it published has reached newest, nothing more comes
        start = pub.published
        discarded = newest.discarded
        for i in range(5):
            assert pub.send_fused(fused_frame(image, i))
        # The caller is busy until the reader thread has replaced frames 0..3 by their successors.
        wait_until(lambda: newest.discarded >= discarded + 4, "the reader thread took the five frames")
        got_newest = newest.recv()
        got_oldest = recv_seq(oldest, start)  # skips what connect(pub, newest) published
    assert got_newest is not None and got_newest[0]["seq"] == start + 4
    assert newest.discarded == discarded + 4 and oldest.discarded == 0
    assert got_oldest[0]["seq"] == start


def test_latest_stays_fresh_after_the_caller_stalls(rng: np.random.Generator) -> None:
    # A reader that only drained ZeroMQ's queue when the caller asked would get frames from before the stall (the
    # socket buffers hold old frames while the publisher drops the new ones) and would discard nothing meanwhile.
    with publishing(rng.integers(0, 256, VGA, dtype=np.uint8), rate_hz=100) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=True) as sub:
        first = sub.recv()
        assert first is not None
        discarded = sub.discarded
        # The caller stalls for 40 frames, far more than the ZeroMQ queues and TCP buffers hold (~15 VGA frames).
        wait_until(lambda: sub.discarded >= discarded + 40, "the reader thread kept taking frames")
        frame = sub.recv()
        assert pub.published > first[0]["seq"] + 40
    assert frame is not None and frame[0]["seq"] > first[0]["seq"] + 40


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_malformed_messages_are_counted_and_skipped(raw_pub: tuple[zmq.Socket, str], latest: bool,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    sock, endpoint = raw_pub
    good = good_parts(np.zeros((4, 6, 3), np.uint8))
    bad = [good[:2], [good[0], b"{oops", good[2]], [*good[:2], good[2][:-1]], with_header(encoding="rgba9")]
    bad += [parts for parts, _ in MALFORMED.values()]
    with Subscriber(endpoint, timeout_s=PATIENCE_S, latest=latest, rcvhwm=100) as sub:
        seq = raw_connect(sock, sub)
        with caplog.at_level(logging.WARNING, logger="streamfuse.client"):
            for parts in bad:
                sock.send_multipart(parts)
            sock.send_multipart(with_header(seq=seq + 1))
            recv_seq(sub, seq + 1)  # the frame after them all arrives: nothing died on the way
            sock.send_multipart(with_header(seq=seq + 2))
            recv_seq(sub, seq + 2)
    assert sub.malformed == len(bad) and sub.missed == 0
    warnings = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == len(bad) and all("\n" not in w and len(w) < 400 for w in warnings)
    for _, reason in MALFORMED.values():
        assert any(reason in w for w in warnings), reason


def test_a_flood_of_malformed_messages_is_counted_not_logged_line_by_line(raw_pub: tuple[zmq.Socket, str],
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    # a peer sending malformed messages as fast as it could wrote a warning line for each: thousands a second
    sock, endpoint = raw_pub
    flood = 500
    with caplog.at_level(logging.WARNING, logger="streamfuse.client"):
        with Subscriber(endpoint, timeout_s=PATIENCE_S, rcvhwm=2 * flood) as sub:
            seq = raw_connect(sock, sub)
            for _ in range(flood):
                sock.send_multipart([b"fused/x", b"{oops", b""])
            sock.send_multipart(with_header(seq=seq + 1))
            recv_seq(sub, seq + 1)
    assert sub.malformed == flood and sub.last_malformed.startswith("header is not UTF-8 JSON")
    assert _said_or_counted(caplog.messages, "skipped malformed message", f"malformed messages from {endpoint}",
                            flood) == flood


def _said_or_counted(messages: list[str], said: str, what: str, most: int) -> int:
    """How many events the lines starting with ``said`` and those counting ``what`` report, after checking that they
    are a window's lines (two, were the machine slow enough to end one), well under the ``most`` events sent."""
    lines = [m for m in messages if m.startswith(said) or f" more {what} not said" in m]
    assert 0 < len(lines) < most // 5, lines
    # every one said or counted, those of the last window as the subscriber closed (they were never said)
    counted = [int(m.split()[0]) for m in lines if f" more {what} not said" in m]
    assert counted, lines
    return len(lines) - len(counted) + sum(counted)


def test_a_message_of_countless_parts_is_malformed_without_their_being_held(raw_pub: tuple[zmq.Socket, str]) -> None:
    # one message of 3 million empty parts, 6 MB on the wire, took a subscriber from 99 to 649 MB and growing: every
    # part was held until the last had come
    sock, endpoint = raw_pub
    parts = 200_000
    countless = [b"fused/x", *[b""] * parts]  # made before the count starts
    with Subscriber(endpoint, timeout_s=PATIENCE_S, rcvhwm=10) as sub:
        sent = itertools.count(raw_connect(sock, sub) + 1)

        def send() -> int:
            seq = next(sent)
            sock.send_multipart(with_header(seq=seq))
            return seq

        malformed, deadline = sub.malformed, time.monotonic() + PATIENCE_S
        # sent again where it was lost: its 200 001 sends, one Python call each, can take over the subscriber's 5 s
        # silence on a loaded machine, and the connection made again in the middle of it loses it
        while sub.malformed == malformed:
            assert time.monotonic() < deadline, "the message of countless parts never refused"
            sock.send_multipart(countless)
            tracemalloc.start()  # after the sends, which it would slow down
            try:
                sync(sub, send)  # the frame sent after it: the message came before it, or was lost
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    assert sub.malformed == malformed + 1
    assert sub.last_malformed == f"expected 3 parts [topic, header, image], got {parts + 1}"
    assert peak < 2**20, f"{peak} bytes held while the parts were read"


def test_a_publisher_restarting_every_other_frame_is_counted_not_logged_line_by_line(
        raw_pub: tuple[zmq.Socket, str], caplog: pytest.LogCaptureFixture) -> None:
    # a peer whose seq went back every other frame logged "publisher ... restarted" for each: 225 lines of 450 frames
    sock, endpoint = raw_pub
    restarts = 200
    with caplog.at_level(logging.INFO, logger="streamfuse"):
        with Subscriber(endpoint, timeout_s=PATIENCE_S, rcvhwm=4 * restarts) as sub:
            seq = raw_connect(sock, sub)
            for _ in range(restarts):
                sock.send_multipart(with_header(seq=seq + 5))
                sock.send_multipart(with_header(seq=seq + 1))
            for _ in range(restarts):
                recv_seq(sub, seq + 5)
                recv_seq(sub, seq + 1)
    assert _said_or_counted(caplog.messages, f"publisher at {endpoint} restarted",
                            f"publisher restarts at {endpoint}", restarts) == restarts == sub.restarts


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_message_parts_over_max_frame_bytes_are_refused(raw_pub: tuple[zmq.Socket, str], latest: bool) -> None:
    # ZMQ_MAXMSGSIZE: libzmq drops the connection as the oversized part arrives, before buffering it, and
    # reconnects. Both frames are valid, so only the limit tells them apart.
    sock, endpoint = raw_pub
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        with Subscriber(endpoint, timeout_s=PATIENCE_S, latest=latest, max_frame_bytes=512 * 512 * 3) as sub:
            seq = raw_connect(sock, sub)
            sock.send_multipart(_numbered(good_parts(np.zeros((512, 512, 3), np.uint8)), seq + 1))
            assert recv_seq(sub, seq + 1)[1].shape == (512, 512, 3)  # at the limit: accepted
            sock.send_multipart(_numbered(good_parts(np.zeros((512, 513, 3), np.uint8)), seq + 2))
            assert monitor.poll(PATIENCE_S * 1000), "the subscriber kept the connection"
            assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
            raw_connect(sock, sub)  # it reconnects and frames flow again
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
    assert sub.malformed == 1 and sub.received >= 2


def test_a_frame_refused_for_its_size_is_malformed_not_missed_as_well(raw_pub: tuple[zmq.Socket, str]) -> None:
    # a kB of JPEG whose header claims 100x100: refused before decoding, and its seq taken (it arrived)
    sock, endpoint = raw_pub
    with Subscriber(endpoint, timeout_s=PATIENCE_S, max_frame_bytes=1000) as sub:
        seq = raw_connect(sock, sub)
        sock.send_multipart(_numbered(with_header(schema=SCHEMA_2, format="jpeg", height=100, width=100, step=300),
                                      seq + 1))
        sock.send_multipart(_numbered(good_parts(np.zeros((4, 6, 3), np.uint8)), seq + 2))
        recv_seq(sub, seq + 2)
    assert (sub.malformed, sub.missed) == (1, 0)
    assert "jpeg frame of 100x100 is 30000 bytes, more than max_frame_bytes=1000" in sub.last_malformed


@pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_a_part_over_max_frame_bytes_does_not_stop_the_shared_memory_frames(rng: np.random.Generator,
                                                                         latest: bool) -> None:
    # a same-host subscriber whose first frames are over the limit: the ZeroMQ payload is refused and libzmq drops the
    # connection; once on the pool's ring, the connection was never restored, so the publisher, seeing no
    # subscription, stopped filling the ring, and the subscriber said "is the publisher running?"
    image = rng.integers(0, 256, VGA, dtype=np.uint8)
    big = np.concatenate([image, image])  # refused by ZeroMQ and from shared memory alike

    def received(frame: np.ndarray) -> bool:
        pub.send_fused(fused_frame(frame, pub.published))
        return sub.recv(0.05) is not None

    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=latest, max_frame_bytes=image.size) as sub:
        wait_until(lambda: not received(big) and sub.malformed > 0, "a big frame refused")
        for _ in range(60):  # frames keep coming past the refusals and the restore (0.5 s later)
            wait_until(lambda: received(image), "the next frame")
        assert sub.on_ring


@pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
@pytest.mark.timeout(120)  # before the fix the subscriber blocked for good opening the FIFO
@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_a_pool_name_that_is_a_fifo_is_malformed_not_a_hang(raw_pub: tuple[zmq.Socket, str], latest: bool) -> None:
    sock, endpoint = raw_pub
    name = f"{POOL_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    os.mkfifo(SHM_DIR / name)
    try:
        with Subscriber(endpoint, timeout_s=PATIENCE_S, latest=latest) as sub:
            seq = raw_connect(sock, sub)
            topic, header, _ = with_header(schema=SCHEMA_2, format="shm", shm_pool=name, shm_slot=0, shm_gen=2,
                                           seq=seq + 1)
            sock.send_multipart([b"shm/" + topic, header, b""])
            sock.send_multipart(with_header(seq=seq + 2))
            recv_seq(sub, seq + 2)
    finally:
        os.unlink(SHM_DIR / name)
    assert sub.malformed == 1 and sub.last_malformed == f"shared memory {name} is not a streamfuse pool (not a " \
        "regular file)"


def _numbered(parts: list[bytes], seq: int) -> list[bytes]:
    """``parts`` (seq 0) with seq set to ``seq``."""
    return [parts[0], parts[1].replace(b'"seq": 0', f'"seq": {seq}'.encode()), parts[2]]


def test_latest_reader_failure_reaches_the_consumer(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(parts: object) -> None:
        raise OSError("disk on fire\nsecond line")

    monkeypatch.setattr("streamfuse.client.decode_header", broken)
    with publishing(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=True) as sub:
        with pytest.raises(RuntimeError, match=r"reader thread stopped: OSError: disk on fire$") as info:
            sub.recv()
        with pytest.raises(RuntimeError):  # and at every later read: the frames are not coming back
            sub.recv()
    assert "\n" not in str(info.value)


def test_missed_counts_gaps_in_seq(raw_pub: tuple[zmq.Socket, str]) -> None:
    sock, endpoint = raw_pub
    with Subscriber(endpoint, timeout_s=PATIENCE_S, rcvhwm=20) as sub:
        seq = raw_connect(sock, sub)
        received = sub.received
        for gap in (1, 4, 5):
            sock.send_multipart(with_header(seq=seq + gap))
        seqs = [sub.recv()[0]["seq"] - seq for _ in range(3)]
    assert seqs == [1, 4, 5] and sub.missed == 2 and sub.received == received + 3


def test_a_forged_or_repeated_seq_is_malformed_and_missed_stays_true(raw_pub: tuple[zmq.Socket, str],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    # seq 2^63-1 made the summary say "missed 64563604257983429944" and the next frame log "restarted (seq 68 after
    # 9223372036854775807)"; a repeated seq was dropped without a count or a line.
    sock, endpoint = raw_pub
    with caplog.at_level(logging.INFO, "streamfuse"), Subscriber(endpoint, timeout_s=PATIENCE_S, rcvhwm=20) as sub:
        seq = raw_connect(sock, sub)
        missed, malformed, received = sub.missed, sub.malformed, sub.received
        for sent in (seq + 1, 2**63 - 1, seq + 2, seq + 2, seq + 4, 0):  # a gap of one, then the publisher restarts
            sock.send_multipart(with_header(seq=sent))
        seqs = [sub.recv()[0]["seq"] for _ in range(4)]
    assert seqs == [seq + 1, seq + 2, seq + 4, 0] and sub.received == received + 4
    assert (sub.missed - missed, sub.malformed - malformed) == (1, 2)
    assert [m for m in caplog.messages if "restarted" in m] == [f"publisher at {endpoint} restarted (seq 0 after "
                                                                 f"{seq + 4})"]
    assert f"seq {seq + 2} repeats the last frame's" in caplog.text
    assert f"seq {2**63 - 1} after {seq + 1}: more than" in caplog.text


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="timeout_s=0"):
        Subscriber(NOBODY, timeout_s=0)
    with pytest.raises(ValueError, match=r"timeout_s=nan must be in \(0, "):
        Subscriber(NOBODY, timeout_s=float("nan"))
    with pytest.raises(ValueError, match="cannot connect to nonsense"):
        Subscriber("nonsense")
    for key in ("short", "x" * 41):  # one character too many said as plainly as too few, not as libzmq's EINVAL
        with pytest.raises(ValueError, match=f"40-character Z85 CURVE public key, got {len(key)} characters"):
            Subscriber(NOBODY, server_key=key)
    with pytest.raises(ValueError, match="max_frame_bytes=0"):
        Subscriber(NOBODY, max_frame_bytes=0)
    # past ZeroMQ's int and int64 options: OverflowError ("value too large to convert to int"), no name of the argument
    with pytest.raises(ValueError, match=r"^rcvhwm=2147483648 must be in 1\.\.2147483647$"):
        Subscriber(NOBODY, rcvhwm=2**31)
    with pytest.raises(ValueError, match=r"^max_frame_bytes=9223372036854775808 must be in 1\.\."):
        Subscriber(NOBODY, max_frame_bytes=2**63)


@pytest.mark.parametrize(("topic", "said"), [
    ("shm/fused/demo", "topic='shm/fused/demo' carries shared-memory descriptors, not frames: give the fused topic "
                       "'fused/demo'"),
    ("ring/shm/fused/", "topic='ring/shm/fused/' carries shared-memory descriptors"),
    (None, "topic=None must be a str or UTF-8 bytes"), (b"\xff", r"topic=b'\\xff' is not UTF-8"),
    ("fused/\udcff", r"topic='fused/\\udcff' is not UTF-8 text"),
    ("", "topic='' also takes the preview/ and stats/ topics"), ("s", "topic='s' also takes the stats/ topics"),
    ("preview/", "topic='preview/' also takes the preview/ topics"),
    ("stats/rig0", "topic='stats/rig0' carries the stats' JSON snapshots, not frames")])
def test_a_topic_that_names_no_frames_is_refused(topic: object, said: str) -> None:
    # shm/...: one frame, then silence (its first descriptor unsubscribed it); None: a TypeError deep in the encoding,
    # a surrogate (bytes os.fsdecode left undecoded) a UnicodeEncodeError there;
    # "": while a viewer was open, each preview came in as a frame of a restarted publisher, each stats as malformed
    # (stats/rig0: every message)
    with pytest.raises(ValueError, match=f"^{said}"):
        Subscriber(NOBODY, topic)


def test_a_bytes_topic_is_taken_as_utf8(rng: np.random.Generator) -> None:
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub, \
            Subscriber(pub.endpoint, b"fused/", timeout_s=PATIENCE_S, shm=False) as sub:
        connect(pub, sub, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
@pytest.mark.parametrize("copy", [True, None])
def test_copy_true_gives_a_raw_frame_memory_of_its_own_and_none_a_view_of_its_message(
        latest: bool, copy: bool | None, rng: np.random.Generator) -> None:
    # copy=True promises images that are the caller's own: without the copy a raw frame came back as a view of its
    # ZeroMQ message's buffer, so a consumer keeping frames (a queue for a slow writer) pinned every message's memory
    # and drew into ZeroMQ's buffer instead of an array of its own. None keeps it in that buffer: a copy of every
    # frame is a frame's bytes of memory traffic a consumer that only reads it did not ask for.
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, sndhwm=20)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=latest, rcvhwm=20, shm=False, copy=copy) as sub:
        connect(pub, sub, image)
        pub.send_fused(fused_frame(image))
        header, got = recv_seq(sub, pub.published - 1)
    assert header["format"] == "raw"
    np.testing.assert_array_equal(got, image)
    if copy:
        assert got.flags.owndata and got.base is None and got.flags.writeable
        got[0, 0] = 255 - got[0, 0]  # the caller's to change
    else:
        assert not got.flags.owndata and got.base is not None


@pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
def test_localhost_reads_the_shared_memory(rng: np.random.Generator) -> None:
    # a host name was taken for another machine's: tcp://localhost:PORT never used the pool
    with publishing(rng.integers(0, 256, VGA, dtype=np.uint8), rate_hz=50) as pub, \
            Subscriber(pub.endpoint.replace("127.0.0.1", "localhost"), timeout_s=PATIENCE_S) as sub:
        wait_until(lambda: sub.recv(0.05) is not None and sub.via_shm > 0, "a frame from shared memory")


@pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_shared_memory_frames_over_max_frame_bytes_are_refused(rng: np.random.Generator, latest: bool,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # --no-shm refused such a frame (ZeroMQ drops the part) and counted it malformed; from the pool it was returned
    small, large = (rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((16, 16, 3), (16, 32, 3)))
    shapes = []

    def sent_and_received(image: np.ndarray) -> bool:
        pub.send_fused(fused_frame(image, pub.published))
        frame = sub.recv(0.05)
        shapes.append(None if frame is None else frame[1].shape)
        return frame is not None and sub.via_shm > 0

    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=latest, max_frame_bytes=small.size) as sub:
        wait_until(lambda: sent_and_received(small), "a frame from shared memory")
        # the payload of the publisher's new, larger pool's first frames is refused first, then its descriptors: on a
        # busy machine the first refusal came alone, so the frames go on until a descriptor's refusal is logged too
        refused = "shm frame of 32x16 is 1536 bytes, more than max_frame_bytes=768"
        wait_until(lambda: sent_and_received(large) or refused in caplog.text, "a large shared-memory frame refused")
        wait_until(lambda: sent_and_received(small), "the next small frame")
    assert large.shape not in shapes


@pytest.mark.parametrize("port", ["70000", "0", "", "x"])
def test_a_tcp_port_out_of_range_is_refused(port: str) -> None:
    # libzmq takes the port modulo 65536: tcp://127.0.0.1:70000 silently subscribed to port 4464
    with pytest.raises(ValueError, match=rf"cannot connect to tcp://127.0.0.1:{port}: its TCP port must be 1..65535$"):
        Subscriber(f"tcp://127.0.0.1:{port}")


@pytest.mark.parametrize(("host", "said"), [
    ("no-such-host.invalid", r"the host name no-such-host\.invalid does not resolve \(.+\)$"),  # reserved: RFC 2606
    ("127.0.0.1;no-such-host.invalid", r"the host name no-such-host\.invalid does not resolve"),  # after a source
    ("host..invalid", r"host\.\.invalid is not a host name \(label empty( or too long)?\)$"),  # 3.13: "empty"
    ("*", r"\* \(every interface\) is for binding; name the publisher's host, e.g\. tcp://127\.0\.0\.1:47001$"),
    ("", r"no host given; name the publisher's host, e\.g\. tcp://127\.0\.0\.1:47001$"),
    # one bracket lost: the lookup stripped the other and found ::1, then libzmq retried the endpoint in silence
    ("[::1", r"\[::1 is not a host name \(unbalanced brackets; an IPv6 address goes in both: tcp://\[::1\]:47001\)$"),
    ("::1]", r"::1\] is not a host name \(unbalanced brackets"),
    ("[[::1]", r"\[\[::1\] is not a host name \(unbalanced brackets")])
def test_a_host_that_cannot_be_connected_to_is_refused(host: str, said: str) -> None:
    # libzmq takes each of these and retries in silence: the consumer only ever said "is the publisher running?"
    with pytest.raises(ValueError, match=rf"^cannot connect to tcp://{re.escape(host)}:47001: {said}"):
        Subscriber(f"tcp://{host}:47001", timeout_s=0.05)  # a name that does not resolve is looked up this long


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_host_that_resolves_is_connected_to(host: str, rng: np.random.Generator) -> None:
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub, \
            Subscriber(pub.endpoint.replace("127.0.0.1", host), timeout_s=PATIENCE_S, shm=False) as sub:
        connect(pub, sub, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))


@pytest.mark.parametrize(("resolver", "said"), [
    ("hangs", "no answer for the host name slow.invalid within 0.05 s; connecting to tcp://slow.invalid:47001 anyway"),
    ("fails for now", "cannot look up the host name slow.invalid now (Temporary failure in name resolution); "
                      "connecting to tcp://slow.invalid:47001 anyway")])
def test_a_resolver_that_cannot_answer_now_leaves_the_name_to_zeromq(resolver: str, said: str,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    # libzmq resolves the name again at each connection attempt; the consumer must not wait for the resolver
    answer = threading.Event()

    def resolve(_name: str) -> None:
        if resolver == "hangs":
            answer.wait()
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(connection_watch, "_resolve", resolve)
    monkeypatch.setattr(connection_watch, "_RESOLVE_S", 0.05)
    try:
        with caplog.at_level(logging.WARNING, "streamfuse.connection_watch"), \
                Subscriber("tcp://slow.invalid:47001", timeout_s=0.05) as sub:
            assert sub.recv() is None
    finally:
        answer.set()
    assert said in caplog.text


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_close_from_another_thread_ends_a_waiting_recv_as_closed(latest: bool) -> None:
    # a robot stack's shutdown handler closing it: in plain mode the sockets were closed under the waiting recv(),
    # which raised ZMQError ENOTSOCK; in latest mode it waited out its whole timeout and returned None, as from a
    # silent publisher
    sub = Subscriber(NOBODY, timeout_s=1e6, latest=latest)
    outcome: list[BaseException] = []

    receiving = Watch()

    def receive() -> None:
        try:
            with receiving:
                sub.recv()
        except BaseException as exc:  # noqa: BLE001 - what the waiting thread saw is the test's subject
            outcome.append(exc)

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    wait_until(lambda: receiving.runs("recv"), "the receiving thread waiting")
    sub.close()
    receiver.join(PATIENCE_S)
    assert not receiver.is_alive()
    assert [type(exc) for exc in outcome] == [RuntimeError]
    assert str(outcome[0]) == f"subscriber {NOBODY} is closed"


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_close_from_a_signal_handler_ends_the_recv_it_interrupted_as_closed(latest: bool, main_watch: Watch) -> None:
    # a stop handler closing it while the main thread waits in recv(): plain mode went on with the sockets closed
    # under it and raised ZMQError ENOTSOCK; latest mode waited out the whole timeout, as from a silent publisher
    sub = Subscriber(NOBODY, timeout_s=PATIENCE_S, latest=latest)
    main = threading.current_thread()

    def interrupt() -> None:
        wait_until(lambda: main_watch.runs("recv"), "the main thread waiting")
        signal.pthread_kill(main.ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, lambda *_: sub.close())
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(RuntimeError, match=f"^subscriber {re.escape(NOBODY)} is closed$"):
            sub.recv()
    finally:
        signal.signal(signal.SIGUSR1, previous)
        sub.close()


def test_a_publisher_not_sending_yet_is_waited_for_in_plain_words_and_a_silence_after_is_a_lost_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    # a subscriber started before its publisher (one loading its model: bound, sending nothing) logged "nothing from
    # ... for 5 s: making the connection again", as for a lost connection, at every start of a robot stack
    def said(words: str) -> bool:
        return any(words in m for m in caplog.messages)

    with caplog.at_level(logging.INFO, "streamfuse.connection_watch"), plain_pub() as sock:
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        with Subscriber(endpoint, timeout_s=PATIENCE_S, shm=False) as sub:
            wait_until(lambda: sub.recv(0.1) is None and said("yet"), "the wait for the publisher said")
            waited = list(caplog.messages)
            raw_connect(sock, sub)
            wait_until(lambda: sub.recv(0.1) is None and said("again"), "the silence after frames said")
    assert waited == [f"nothing from {endpoint} yet: waiting for its publisher to start sending"]
    assert caplog.messages[len(waited):] == [f"nothing from {endpoint} for {connection_watch.SILENT_S:g} s: making "
                                             f"the connection again"]
