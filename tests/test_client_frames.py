"""Subscriber: each frame returned once and counted once (received, discarded or missed), a zero wait that does not
wait, a publisher restarted without shared memory or mid-H.264-stream, close() giving back the pool at once.
(Apart from tests/test_client.py, which is full.) No test measures time: each waits for the event it needs."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_zmq import (ANY_PORT, PATIENCE_S, fused_frame, good_parts, pool_fds, publishing, raw_connect, recv_seq,
                         wait_until, with_header)

from streamfuse import client
from streamfuse.client import Subscriber
from streamfuse.codecs import H264Encoder
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.shm_pool import POOL_PREFIX, ShmPool, ring_supported, shm_supported
from streamfuse.wire import SCHEMA_2, HeaderEncoder

NOBODY = "tcp://127.0.0.1:1"  # nothing listens there
needs_shm = pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
needs_ring = pytest.mark.skipif(not ring_supported(), reason="the pool's ring is read on Linux x86-64 only")


def _uniform(value: int) -> np.ndarray:
    return np.full((48, 64, 3), value % 251, np.uint8)


def _recv_shm(sub: Subscriber, pub: Publisher, ring: bool = False) -> None:
    """Publish until ``sub`` returns the newest frame sent, read from shared memory (``ring``: its descriptor from
    the pool's ring); nothing sent is left on its way then."""
    def got() -> bool:
        before = sub.via_ring
        pub.send_fused(fused_frame(_uniform(0)))
        frame = sub.recv(0.05)
        return (frame is not None and frame[0]["format"] == "shm" and frame[0]["seq"] == pub.published - 1
                and (sub.via_ring > before or not ring))

    wait_until(got, "a frame through shared memory")


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_a_zero_timeout_looks_once_and_never_waits_the_constructions_timeout(latest: bool,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # recv(0) taken for "no timeout given" (timeout_s or self.timeout_s) waited out the construction's timeout_s
    waits: list[float] = []
    with Subscriber(NOBODY, timeout_s=PATIENCE_S, latest=latest) as sub:
        owner, name = (sub._turn.cond, "wait_for") if latest else (sub, "_next")
        real = getattr(owner, name)

        def spy(*args: object) -> object:
            waits.append(args[-1])
            assert args[-1] == 0, f"recv(0) waits {args[-1]} s"
            return real(*args)

        monkeypatch.setattr(owner, name, spy)
        assert sub.recv(0) is None
    assert waits == [0.0]


def test_a_frame_header_longer_than_max_frame_bytes_is_still_received(raw_pub: tuple[zmq.Socket, str]) -> None:
    # the header part is limited to MAX_HEADER_BYTES, not to the image's limit: a 72-byte limit for 4x6 frames
    # refused every ~400-byte header, so not one frame came
    sock, endpoint = raw_pub
    image_bytes = len(good_parts(np.zeros((4, 6, 3), np.uint8))[2])
    assert len(with_header()[1]) > image_bytes
    with Subscriber(endpoint, timeout_s=PATIENCE_S, max_frame_bytes=image_bytes) as sub:
        raw_connect(sock, sub)
    assert sub.malformed == 0


@needs_shm
def test_close_gives_back_the_pool_at_once(rng: np.random.Generator) -> None:
    # close() left the pool mapped and its last slot held until the Subscriber was collected
    with publishing(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) as pub:
        sub = Subscriber(pub.endpoint, timeout_s=PATIENCE_S)
        wait_until(lambda: sub.recv(0.05) is not None and sub.via_shm > 0, "a frame from shared memory")
        pool = sub._pools.reader.name
        assert pool_fds(pool) == 4  # the publisher's and the subscriber's: each a descriptor and its mapping's
        sub.close()
        assert pool_fds(pool) == 2


@needs_shm
def test_frames_overwritten_in_the_pool_before_they_are_read_count_as_missed() -> None:
    # a descriptor whose slot was written over since is never returned torn; the frame was not counted anywhere
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=2, sndhwm=100)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, rcvhwm=100, ring=False) as sub:
        _recv_shm(sub, pub)
        received, missed, first = sub.received, sub.missed, pub.published
        for value in range(10):  # one slot held by the subscriber: each frame overwrites the one before
            assert pub.send_fused(fused_frame(_uniform(value)))
        header, image = recv_seq(sub, pub.published - 1)
        np.testing.assert_array_equal(image, 9)
        assert header["format"] == "shm" and pub.published - first == 10
    assert sub.missed - missed > 0
    assert (sub.received - received) + (sub.missed - missed) == 10


@needs_shm
def test_a_frame_from_the_pool_is_the_caller_s_copy_and_the_payload_is_unsubscribed() -> None:
    # The publisher sees the subscriptions (an XPUB here): once the pool is mapped, the payload topic must be
    # unsubscribed, or the publisher goes on sending every frame's pixels over ZeroMQ as well, only to be dropped. And
    # with copy left at None a pool frame is copied out (a view would change under the caller once the slot is reused).
    image = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
    xpub = zmq.Context.instance().socket(zmq.XPUB)
    try:
        xpub.bind(ANY_PORT)
        endpoint = xpub.getsockopt(zmq.LAST_ENDPOINT).decode()
        with ShmPool(4, image.size) as pool, Subscriber(endpoint, timeout_s=PATIENCE_S, ring=False) as sub:
            subscriptions: set[bytes] = set()
            wait_until(lambda: (not xpub.poll(10) or subscriptions.add(xpub.recv()))
                       and {b"\x01fused/", b"\x01shm/fused/"} <= subscriptions, "the subscriptions")
            slot, gen = pool.write(image)
            xpub.send_multipart([b"shm/fused/x", HeaderEncoder("f").encode(
                fused_frame(image), image, seq=0, fmt="shm", shm_pool=pool.name, shm_slot=slot, shm_gen=gen), b""])
            header, got = sub.recv()
            assert header["format"] == "shm" and sub.via_shm == 1
            assert got.flags.writeable and np.array_equal(got, image)  # the pool is mapped read-only
            assert xpub.poll(PATIENCE_S * 1000) and xpub.recv() == b"\x00fused/"
    finally:
        xpub.close(linger=0)


@needs_shm
def test_a_frame_that_comes_both_as_payload_and_as_descriptor_is_returned_once(raw_pub: tuple[zmq.Socket, str]) -> None:
    # while a same-host subscriber switches to shared memory, the publisher sends a frame both ways: the second copy
    # (the other route's) must be dropped, not returned again
    sock, endpoint = raw_pub
    image = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
    with ShmPool(4, image.size) as pool, \
            Subscriber(endpoint, timeout_s=PATIENCE_S, rcvhwm=100, ring=False) as sub:
        seq = raw_connect(sock, sub)
        encoder = HeaderEncoder("f")

        def descriptor(n: int) -> list[bytes]:
            slot, gen = pool.write(image)
            header = encoder.encode(fused_frame(image), image, seq=n, fmt="shm", shm_pool=pool.name, shm_slot=slot,
                                    shm_gen=gen)
            return [b"shm/fused/x", header, b""]

        sock.send_multipart(with_header(seq=seq + 1))
        sock.send_multipart(descriptor(seq + 1))
        sock.send_multipart(descriptor(seq + 2))
        received = sub.received
        got = [sub.recv()[0] for _ in range(2)]
    assert [(h["seq"] - seq, h["format"]) for h in got] == [(1, "raw"), (2, "shm")]
    assert sub.received == received + 2 and sub.missed == 0 and sub.malformed == 0


def test_an_h264_stream_restarted_without_its_keyframe_waits_for_the_next_one(raw_pub: tuple[zmq.Socket, str]) -> None:
    # a restarted publisher (seq back to 0) whose keyframe was lost: its inter frame was decoded against the old
    # stream's pictures (a broken image, or a decode error) instead of waiting for a keyframe
    sock, endpoint = raw_pub
    ramp = np.add.outer(np.arange(64), np.arange(96)).astype(np.uint8)
    frames = [np.stack([np.roll(ramp, 3 * i, axis=1)] * 3, axis=-1) for i in range(3)]

    def send(packet: tuple[bytes, bool], seq: int) -> None:
        topic, header, _ = with_header(schema=SCHEMA_2, format="h264", keyframe=int(packet[1]), seq=seq, height=64,
                                       width=96, step=96 * 3)
        sock.send_multipart([topic, header, packet[0]])

    old, new = H264Encoder(keyint=100, crf=23), H264Encoder(keyint=100, crf=23)
    old_packets = [old.encode(f) for f in frames[:2]]
    new_packets = [new.encode(f) for f in frames[:2]]
    new.request_keyframe()
    new_packets.append(new.encode(frames[2]))
    assert [k for _, k in old_packets + new_packets] == [True, False, True, False, True]
    with Subscriber(endpoint, timeout_s=PATIENCE_S, rcvhwm=100, shm=False) as sub:
        seq = raw_connect(sock, sub)
        send(old_packets[0], seq + 1)
        send(old_packets[1], seq + 2)
        send(new_packets[1], 0)  # the restarted publisher's first frame here: its keyframe (seq 0) never came
        send(new_packets[2], 1)
        got = [sub.recv()[0] for _ in range(3)]
    assert [h["seq"] for h in got] == [seq + 1, seq + 2, 1]
    assert sub.awaiting_keyframe == 1 and sub.malformed == 0


@needs_ring
def test_a_zero_wait_after_a_busy_spell_takes_a_frame_the_pool_still_holds() -> None:
    # a consumer busy while the ring lapped it: each recv(0) took one lapped entry, whose slot was overwritten, and
    # said "no frame" (63 times in a row), and `subscribe` stopped after a Ctrl-Z longer than --timeout, saying that
    # no frame had come (is the publisher running?) while the pool held frames all along
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub, Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        _recv_shm(sub, pub, ring=True)
        for value in range(2 * sub._pools.reader.ring.entries):  # not read meanwhile: the ring laps the subscriber
            pub.send_fused(fused_frame(_uniform(value)))
        frame = sub.recv(0)
        assert frame is not None and frame[0]["format"] == "shm"
        assert frame[0]["seq"] >= pub.published - pub.cfg.shm_slots  # one the pool still holds
        assert sub.on_ring and sub.malformed == 0


@needs_ring
def test_latest_mode_counts_the_ring_entries_it_passes_over_as_discarded_not_missed() -> None:
    # the frames latest mode jumped over in the ring were counted twice: discarded, and missed (a gap in seq)
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=16, sndhwm=100)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=True, rcvhwm=100) as sub:
        _recv_shm(sub, pub, ring=True)
        received, discarded, missed, first = sub.received, sub.discarded, sub.missed, pub.published
        with sub._turn.cond:  # the reader thread cannot hand a frame over: it passes over the ones that come meanwhile
            for value in range(10):
                assert pub.send_fused(fused_frame(_uniform(value)))
        header, image = recv_seq(sub, pub.published - 1)
        np.testing.assert_array_equal(image, 9)
        assert pub.published - first == 10 and sub.on_ring
    assert sub.missed == missed and sub.discarded - discarded >= 8
    assert (sub.received - received) + (sub.discarded - discarded) == 10


@needs_shm
def test_a_publisher_restarted_without_shared_memory_is_heard_again(tmp_path: Path) -> None:
    # a subscriber reading the pool has the ZeroMQ payload unsubscribed: after a restart without shared memory
    # (shm_slots: 0) only payloads come, so it must take the payload again once the descriptors stop
    endpoint = f"ipc://{tmp_path}/pub"
    with Subscriber(endpoint, timeout_s=PATIENCE_S, ring=False) as sub:
        with Publisher(PublishConfig(endpoint=endpoint)) as pub:
            _recv_shm(sub, pub)
        with publishing(_uniform(1), endpoint=endpoint, shm_slots=0):
            wait_until(lambda: (frame := sub.recv(0.05)) is not None and frame[0]["format"] == "raw",
                       "a raw frame from the restarted publisher")


def _descriptor(pool: str, slot: int, gen: int, seq: int, **changes: object) -> list[bytes]:
    """A hand-built shared-memory descriptor of a 4x6 bgr8 frame in ``pool``."""
    topic, header, _ = with_header(schema=SCHEMA_2, format="shm", shm_pool=pool, shm_slot=slot, shm_gen=gen, seq=seq,
                                   **changes)
    return [b"shm/" + topic, header, b""]


@needs_shm
def test_a_forged_descriptor_into_a_real_pool_is_counted_refused_in_one_line_and_the_stream_goes_on(
        raw_pub: tuple[zmq.Socket, str], caplog: pytest.LogCaptureFixture) -> None:
    # a descriptor naming a real pool with a slot or a size outside it was logged and dropped, but never counted
    sock, endpoint = raw_pub
    image = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
    with ShmPool(2, image.size) as pool, Subscriber(endpoint, timeout_s=PATIENCE_S, ring=False) as sub:
        seq = raw_connect(sock, sub)
        slot, gen = pool.write(image)
        sock.send_multipart(_descriptor(pool.name, 7, gen, seq + 1))  # a slot the pool lacks
        sock.send_multipart(_descriptor(pool.name, slot, gen, seq + 2, height=400))  # more bytes than a slot holds
        sock.send_multipart(_descriptor(pool.name, slot, gen, seq + 3))
        header, got = recv_seq(sub, seq + 3)
        assert header["format"] == "shm" and np.array_equal(got, image)
    refusals = [r.getMessage() for r in caplog.records if "outside pool" in r.getMessage()]
    assert sub.malformed == 2 and len(refusals) == 2 and all("\n" not in line for line in refusals)
    assert sub.last_malformed == f"slot {slot} / 7200 bytes outside pool {pool.name} (2 slots of 128 bytes)"


@needs_shm
def test_a_pool_that_cannot_be_mapped_is_given_up_once_and_the_frames_come_as_payload(
        raw_pub: tuple[zmq.Socket, str], caplog: pytest.LogCaptureFixture) -> None:
    # after falling back the descriptors stayed subscribed: each frame's tried the pool again, with a warning each
    sock, endpoint = raw_pub
    elsewhere = f"{POOL_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"  # another host's pool: no such file here
    quiet = []

    def warnings() -> int:
        return sum("shared memory of" in r.getMessage() for r in caplog.records)

    with Subscriber(endpoint, timeout_s=PATIENCE_S, ring=False) as sub:
        sent = iter(range(raw_connect(sock, sub) + 1, 1_000_000))

        def frame_without_warning() -> bool:
            before, seq = warnings(), next(sent)
            sock.send_multipart(_descriptor(elsewhere, 0, 2, seq))
            sock.send_multipart(with_header(seq=seq))
            assert recv_seq(sub, seq)[0]["format"] == "raw"
            quiet.append(warnings() == before)
            return quiet[-20:] == [True] * 20  # the descriptors sent before the fallback reached the publisher

        wait_until(frame_without_warning, "20 frames in a row as payload, not a warning each")
    assert warnings() >= 1 and sub.malformed == 0


@needs_shm
def test_a_frame_that_comes_as_payload_lets_go_of_the_slot_the_last_pool_frame_held(
        raw_pub: tuple[zmq.Socket, str]) -> None:
    # copy=False holds the slot of the frame returned until the next one is read; a next one that came over ZeroMQ
    # kept it held for good, so the publisher of a one-slot pool could write no frame again (shm_busy rising)
    sock, endpoint = raw_pub
    image = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
    with ShmPool(1, image.size) as pool, \
            Subscriber(endpoint, timeout_s=PATIENCE_S, ring=False, copy=False) as sub:
        seq = raw_connect(sock, sub)
        slot, gen = pool.write(image)
        sock.send_multipart(_descriptor(pool.name, slot, gen, seq + 1))
        assert recv_seq(sub, seq + 1)[0]["format"] == "shm"
        assert pool.write(image) is None and pool.busy == 1  # the frame returned is a view of the slot
        sent = iter(range(seq + 2, 1_000_000))  # the payload comes again after a silence on shared memory
        wait_until(lambda: sock.send_multipart(with_header(seq=next(sent))) or sub.recv(0.05) is not None,
                   "a frame over ZeroMQ")
        assert pool.write(image) is not None and pool.busy == 1


def test_the_default_limit_takes_an_8k_frame_and_refuses_one_row_more(raw_pub: tuple[zmq.Socket, str]) -> None:
    # README: by default a frame of up to 99.5 MB (8K UHD, bgr8) is taken, and a larger one refused as it arrives
    sock, endpoint = raw_pub

    def frame(rows: int, seq: int) -> list:
        topic, header, _ = with_header(height=rows, width=7680, step=7680 * 3, seq=seq)
        return [topic, header, np.zeros(rows * 7680 * 3, np.uint8)]  # pages never written: not allocated

    with Subscriber(endpoint, timeout_s=PATIENCE_S, shm=False) as sub:
        seq = raw_connect(sock, sub)
        sock.send_multipart(frame(4320, seq + 1), copy=False)
        header, image = recv_seq(sub, seq + 1)
        assert image.shape == (4320, 7680, 3) and sub.malformed == 0
        del image
        sock.send_multipart(frame(4321, seq + 2), copy=False)
        sent = iter(range(seq + 3, 1_000_000))
        wait_until(lambda: sock.send_multipart(with_header(seq=next(sent))) or sub.recv(0.05) is not None,
                   "a frame after the refused one")
    assert sub.malformed == 1 and "ZeroMQ refused it" in sub.last_malformed


def test_a_zero_wait_passes_over_frames_found_gone_to_the_next_one_there_and_then_gives_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # past its deadline, recv(0) said "no frame" at the first frame found gone (overwritten in the pool) while the next
    # was there; with no bound on its looks, a stream of frames all found gone would keep it from returning at all
    with Subscriber(NOBODY, timeout_s=PATIENCE_S) as sub:
        looks = []

        def look(timeout_s: float) -> tuple[dict, None]:
            looks.append(timeout_s)
            assert len(looks) < 10 * client._LATE_LOOKS, "recv(0) never gave up"
            return {"seq": len(looks)}, None

        monkeypatch.setattr(sub, "_next", look)
        monkeypatch.setattr(sub, "_take", lambda header, payload: (header, None) if header["seq"] == 100 else None)
        assert sub.recv(0) == ({"seq": 100}, None) and sub.received == 1
        looks.clear()
        monkeypatch.setattr(sub, "_take", lambda header, payload: None)
        assert sub.recv(0) is None and len(looks) == client._LATE_LOOKS + 1  # a ring's worth, then no frame

