"""Publisher and wire format: round trip on a random loopback port, stalled subscribers, malformed messages."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth
from helpers_zmq import (ANY_PORT, MALFORMED, PATIENCE_S, VGA, connect, fused_frame, good_parts, has_ipv6_loopback,
                         publishing, recv_seq, wait_until, with_header, SilentLink)

from streamfuse.client import Subscriber
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.wire import HEADER_FIELDS, SCHEMA, MalformedMessage, decode_message, decode_stats, preview_topic

REPO = Path(__file__).resolve().parents[1]


def _recv(sock: zmq.Socket, timeout_s: float = PATIENCE_S) -> list[zmq.Frame]:
    assert sock.poll(round(timeout_s * 1000)), "no message within the timeout"
    return sock.recv_multipart(copy=False)


@pytest.fixture
def raw_sub() -> Iterator[zmq.Socket]:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"fused/")  # not b"": that would also take the shm/ descriptors
    sock.setsockopt(zmq.SUBSCRIBE, b"stats/")
    yield sock
    sock.close(linger=0)


@pytest.mark.parametrize("image", [np.zeros((48, 64, 4), np.uint8), np.zeros((48, 64, 3), np.float32)],
                         ids=["bgra", "float"])
def test_a_fused_image_of_no_published_encoding_is_refused_not_sent(image: np.ndarray) -> None:
    # sent, every consumer would count it malformed (its header says bgr8 or mono8) and drop it
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub:
        with pytest.raises(ValueError, match=r"fused image must be \(H, W, 3\) BGR or \(H, W\) grey uint8"):
            pub.send_fused(fused_frame(image))
        assert pub.published == 0


@pytest.mark.parametrize("shape", [(48, 64, 3), (48, 64)], ids=["bgr8", "mono8"])
def test_round_trip_every_header_field(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, frame_id="cam_vis")) as pub, \
            Subscriber(pub.endpoint, "fused/rig0", timeout_s=PATIENCE_S, shm=False) as sub:
        connect(pub, sub, image)
        sent = fused_frame(image, seq=7)
        before_ns = time.time_ns()
        assert pub.send_fused(sent)
        header, got = recv_seq(sub, pub.published - 1)
    assert set(header) == set(HEADER_FIELDS)
    encoding = "bgr8" if len(shape) == 3 else "mono8"
    assert header["schema"] == SCHEMA and header["encoding"] == encoding and header["frame_id"] == "cam_vis"
    assert (header["height"], header["width"], header["step"]) == (48, 64, 64 * (3 if len(shape) == 3 else 1))
    assert header["is_bigendian"] == 0 and header["seq"] == pub.published - 1
    assert (header["seq_ir"], header["seq_vis"]) == (107, 207)
    assert header["t_capture_ir_ns"] == sent.pair.ir.t_capture_ns
    assert header["t_capture_vis_ns"] == sent.pair.vis.t_capture_ns <= header["t_fused_ns"] == sent.t_fused_ns
    assert before_ns <= header["t_publish_ns"] <= time.time_ns()
    assert (header["fuser"], header["fuser_version"]) == ("max", "0.1")
    assert header["timings_ms"] == {"fuse": 1.25, "post": 0.5}
    np.testing.assert_array_equal(got, image)


@pytest.mark.parametrize("publish_id, fused_id", [("", "cam_front"), ("base_cam", "base_cam")])
def test_fused_frames_are_in_the_visible_cameras_frame_and_each_preview_in_its_own(rng: np.random.Generator,
                                                                                    publish_id: str,
                                                                                    fused_id: str) -> None:
    # the fused frames said vis_optical_frame whatever vis.frame_id was, and the IR preview said it too
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cfg = PublishConfig(endpoint=ANY_PORT, frame_id=publish_id, preview_width=32)
    with Publisher(cfg, frame_ids={"ir": "cam_thermal", "vis": "cam_front"}) as pub, \
            Subscriber(pub.endpoint, "fused/rig0", timeout_s=PATIENCE_S, shm=False) as sub, \
            Subscriber(pub.endpoint, preview_topic("fused/rig0", "ir"), timeout_s=0.05, shm=False) as ir:
        connect(pub, sub, image)
        assert pub.send_fused(fused_frame(image))
        header = recv_seq(sub, pub.published - 1)[0]
        wait_until(pub.previews_wanted, "the preview subscription reached the publisher")
        deadline, preview = time.monotonic() + PATIENCE_S, None
        while preview is None:
            assert time.monotonic() < deadline, "no preview arrived"
            pub.send_previews(fused_frame(image))
            preview = ir.recv()
    assert header["frame_id"] == fused_id and preview[0]["frame_id"] == "cam_thermal"


def test_each_preview_sent_has_the_next_preview_seq_and_only_the_stream_asked_for_is_made(
        rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    # a viewer counts gaps and repeats by a preview's seq as by a fused frame's: previews sent under one seq would be
    # skipped as repeats after the first (sndhwm 100: sent back to back, none is dropped by libzmq's small queue);
    # and a preview nobody subscribes to costs nothing, not even its downscaling
    import streamfuse.publish

    downscaled: list[tuple[int, ...]] = []
    downscale = streamfuse.publish._downscale

    def counted(im: np.ndarray, width: int) -> np.ndarray:
        downscaled.append(im.shape)
        return downscale(im, width)

    monkeypatch.setattr(streamfuse.publish, "_downscale", counted)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, preview_width=32, sndhwm=100)) as pub, \
            zmq.Context.instance().socket(zmq.SUB) as viewer:
        viewer.setsockopt(zmq.LINGER, 0)
        viewer.setsockopt(zmq.SUBSCRIBE, preview_topic("fused/rig0", "ir").encode())
        viewer.connect(pub.endpoint)
        wait_until(pub.previews_wanted, "the preview subscription reached the publisher")
        for _ in range(3):
            pub.send_previews(fused_frame(image))
        seqs = [decode_message(_recv(viewer))[0]["seq"] for _ in range(3)]
    assert seqs == [0, 1, 2] and downscaled == [(48, 64)] * 3  # the IR image's, never the visible one's


def test_a_preview_subscriber_makes_no_previews_while_they_are_off() -> None:
    # preview_width 0 turns previews off: a viewer asking for one anyway must not make the loop downscale to 0 columns
    with Publisher(PublishConfig(endpoint=ANY_PORT, preview_width=0)) as pub, \
            zmq.Context.instance().socket(zmq.SUB) as viewer:
        viewer.setsockopt(zmq.LINGER, 0)
        viewer.setsockopt(zmq.SUBSCRIBE, preview_topic("fused/rig0", "vis").encode())
        viewer.connect(pub.endpoint)
        wait_until(lambda: (pub.previews_wanted(), pub._preview_subs)[1], "the subscription reached the publisher")
        assert not pub.previews_wanted()


def test_a_preview_of_a_very_wide_image_keeps_a_row() -> None:
    # a strip 250 times wider than high scales to less than half a row at 16 columns: rounded to 0 rows, cv2 raised
    from streamfuse.publish import _downscale

    assert _downscale(np.zeros((4, 1000, 3), np.uint8), 16).shape == (1, 16, 3)


def test_a_viewer_whose_link_went_silent_is_dropped_and_its_previews_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    # TCP never tells the publisher of a peer that vanished: the loop made and sent previews for it for ever
    import streamfuse.publish

    monkeypatch.setattr(streamfuse.publish, "_PEER_TIMEOUT_MS", 1200)  # 30 s in use
    with Publisher(PublishConfig(endpoint=ANY_PORT, preview_width=32)) as pub:
        link = SilentLink(int(pub.endpoint.rpartition(":")[2]))
        viewer = zmq.Context.instance().socket(zmq.SUB)  # a plain peer: it sends no heartbeats of its own
        try:
            viewer.setsockopt(zmq.LINGER, 0)
            viewer.setsockopt(zmq.SUBSCRIBE, preview_topic("fused/rig0", "ir").encode())
            viewer.connect(f"tcp://127.0.0.1:{link.port}")
            wait_until(pub.previews_wanted, "the preview subscription reached the publisher")
            link.cut()
            wait_until(lambda: not pub.previews_wanted(), "the silent viewer dropped")
        finally:
            viewer.close(linger=0)
            link.close()


def test_zero_copy_payload_is_the_exact_bytes(rng: np.random.Generator, raw_sub: zmq.Socket) -> None:
    big = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    image = big[::2, ::2]  # not contiguous: the publisher makes it so before the zero-copy send
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub:
        raw_sub.connect(pub.endpoint)
        wait_until(lambda: pub.send_fused(fused_frame(image)) and raw_sub.poll(50), "the subscriber connected")
        parts = _recv(raw_sub)
    assert parts[0].bytes == b"fused/rig0"
    assert parts[2].bytes == np.ascontiguousarray(image).tobytes()
    header, got = decode_message(parts)
    assert np.shares_memory(got, np.frombuffer(parts[2].buffer, np.uint8))  # a view of the message, not a copy
    np.testing.assert_array_equal(got, image)


def test_stalled_subscriber_does_not_slow_the_publisher(rng: np.random.Generator) -> None:
    # ZeroMQ's queues (shared memory: test_transport.py). Every send is non-blocking (SNDTIMEO 0), so a send that
    # waited for the stalled subscriber would raise or hang (the test's timeout): the counts below show the frames went
    # past it instead.
    image = rng.integers(0, 256, VGA, dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as stalled, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=True, shm=False) as healthy:
        connect(pub, stalled, image)
        connect(pub, healthy, image)
        first, healthy_got = pub.published, []
        for i in range(60):  # ~55 MB: far more than the stalled subscriber's queues and socket buffers hold
            assert pub.send_fused(fused_frame(image, i))  # lossy mode: never refused
            if i % 10 == 9:  # the other subscriber is unaffected: it keeps getting new frames
                healthy_got.append(healthy.recv()[0]["seq"])
        assert len(healthy_got) == 6 and healthy_got == sorted(set(healthy_got)) and healthy_got[0] >= first
        # The stalled subscriber now reads: the buffered frames, then (once there is room) new ones after a gap.
        got = 0
        while (frame := stalled.recv()) is not None and frame[0]["seq"] < first + 60:
            got += frame[0]["seq"] >= first
            pub.send_fused(fused_frame(image))
    assert frame is not None
    assert got < 60 and stalled.missed > 0  # its drops show up as gaps in seq


def test_a_subscriber_that_stops_reading_is_held_few_frames_in_the_kernel(rng: np.random.Generator) -> None:
    # the kernel grew the send buffer of each subscriber that stopped reading to megabytes (3 MB of these frames
    # here), which libzmq's one I/O thread filled at the others' expense: 200 such made a reading consumer's frames a
    # second old. A lossless publisher refuses the first frame no queue has had room for in 5 s, so the frames taken
    # before it count what the stalled subscriber holds: its own 2 and socket buffer, the publisher's 2 and the kernel's
    image = rng.integers(0, 256, (120, 160), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, nodrop=True, wait_ms=5000)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as stalled:
        connect(pub, stalled, image)
        taken = 0
        while taken < 1000 and pub.send_fused(fused_frame(image, taken)):
            taken += 1
    assert taken * image.nbytes < 1_000_000


_STALLED = """
import sys, zmq
sock = zmq.Context.instance().socket(zmq.SUB)
sock.setsockopt(zmq.RCVHWM, 1)
sock.setsockopt(zmq.RCVBUF, 4096)
sock.setsockopt(zmq.SUBSCRIBE, b"")
sock.connect(sys.argv[1])
print("connected", flush=True)
sys.stdin.read()  # never reads a frame: stalled until killed
"""


def _sessions(port: int) -> int:
    """Established TCP connections of the local ``port`` (Linux's /proc/net/tcp): its peers' sessions."""
    rows = [row.split() for row in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(row[3] == "01" and row[1].endswith(f":{port:04X}") for row in rows)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the connections in Linux's /proc/net/tcp")
def test_a_closed_publishers_session_to_a_stalled_subscriber_ends(monkeypatch: pytest.MonkeyPatch,
                                                                   rng: np.random.Generator) -> None:
    # the closed socket lingers to send its queued frames; to a subscriber stalled in the middle of one it stayed,
    # frames queued, for as long as that subscriber stayed connected: the heartbeat's ping never got past the frame
    import streamfuse.publish

    monkeypatch.setattr(streamfuse.publish, "_PEER_TIMEOUT_MS", 1200)  # 30 s in use
    image = rng.integers(0, 256, VGA, dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub:
        stalled = subprocess.Popen([sys.executable, "-c", _STALLED, pub.endpoint], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert stalled.stdout.readline() == "connected\n"
            port = int(pub.endpoint.rpartition(":")[2])
            wait_until(lambda: pub.send_fused(fused_frame(image)) and _sessions(port) == 1, "the subscriber in")
            for i in range(60):  # ~55 MB: far more than the stalled subscriber's queues and socket buffers hold
                pub.send_fused(fused_frame(image, i))
            pub.close()
            wait_until(lambda: _sessions(port) == 0, "the closed publisher's session to the stalled one ended")
        finally:
            stalled.kill()
            stalled.communicate(timeout=PATIENCE_S)


@pytest.mark.parametrize("size", [20_000, 600])
def test_a_subscription_of_kilobytes_is_refused_not_taken_into_the_loop(size: int, rng: np.random.Generator) -> None:
    # libzmq keeps a subscription in a trie of one node a byte: a peer subscribing to a topic of megabytes held the
    # publisher's loop for seconds (20 MB: 20 s without a frame for anyone), and a trie that deep can overflow the
    # stack at close (a crash); a peer sending a subscription over 500 bytes is disconnected instead (four peers
    # sending a thousand of 4 KiB each took 800 MB and held the loop 2.3 s as they left). 20 kB here: the test's own
    # SUB socket keeps its subscriptions in such a trie too.
    image = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub, zmq.Context() as ctx, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as healthy:
        hostile = ctx.socket(zmq.SUB)
        hostile.setsockopt(zmq.LINGER, 0)
        hostile.setsockopt(zmq.SUBSCRIBE, b"fused/" + b"x" * size)
        hostile.setsockopt(zmq.SUBSCRIBE, b"fused/")  # after it, on the same connection: never read
        hostile.connect(pub.endpoint)
        connect(pub, healthy, image)
        for i in range(20):  # the healthy subscriber is served; the hostile one gets nothing
            pub.send_fused(fused_frame(image, i))
            assert healthy.recv() is not None
        assert hostile.poll(200) == 0
        hostile.close()


def test_a_topic_longer_than_the_subscription_cap_is_still_served(rng: np.random.Generator) -> None:
    # the cap on a subscription's size grows with the longest topic the publisher sends (its previews', its ring's)
    topic = "fused/" + "r" * 600
    image = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, topic=topic)) as pub, \
            Subscriber(pub.endpoint, preview_topic(topic, "vis"), timeout_s=PATIENCE_S, shm=False) as vis, \
            Subscriber(pub.endpoint, topic, timeout_s=PATIENCE_S) as fused:
        connect(pub, fused, image)
        wait_until(pub.previews_wanted, "the publisher saw the preview subscription")
        pub.send_previews(fused_frame(image))
        assert vis.recv() is not None and fused.malformed == vis.malformed == 0


def test_thousands_of_subscriptions_are_read_a_few_hundred_a_turn_and_only_matching_ones_kept(
        rng: np.random.Generator) -> None:
    # a peer sending thousands of (un)subscriptions of up to 4 KiB each held the live loop while they were read, and
    # every one was kept in a set scanned at each change
    image = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub, zmq.Context() as ctx, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as healthy:
        connect(pub, healthy, image)
        kept = set(pub._subs)
        hostile = ctx.socket(zmq.SUB)
        hostile.setsockopt(zmq.LINGER, 0)
        for i in range(990):  # libzmq's SUB sends at most its SNDHWM (1000) subscriptions when it connects
            hostile.setsockopt(zmq.SUBSCRIBE, f"fused/{i:04d}".encode() + b"x" * 100)  # matches nothing sent here
        hostile.setsockopt(zmq.SUBSCRIBE, b"preview/")  # sent last (in byte order): once read, every one before was
        hostile.connect(pub.endpoint)
        polls, poll = [], pub._poll_subscriptions
        pub._poll_subscriptions = lambda: (polls.append(1), poll())[1]
        while b"preview/" not in pub._subs:
            pub.send_fused(fused_frame(image, len(polls)))
            assert healthy.recv() is not None  # served all along
        assert len(polls) >= 4 and pub._subs == kept | {b"preview/"}  # 991 read, 256 a turn at most
        hostile.close()


def test_nodrop_mode_refuses_and_counts_when_a_queue_is_full(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, VGA, dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, nodrop=True)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as stalled:
        connect(pub, stalled, image)
        start_published = pub.published
        results = [pub.send_fused(fused_frame(image, i)) for i in range(60)]
    assert results.count(False) == pub.dropped > 0
    assert pub.published - start_published == results.count(True)


def test_nodrop_with_wait_is_lossless_back_pressure(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, VGA, dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, nodrop=True, wait_ms=60_000)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        connect(pub, sub, image)
        seqs: list[int] = []
        reader = threading.Thread(target=lambda: seqs.extend(sub.recv()[0]["seq"] for _ in range(40)))
        reader.start()
        first = pub.published
        results = [pub.send_fused(fused_frame(image, i)) for i in range(40)]  # far more than the queues hold
        reader.join(timeout=PATIENCE_S)
    assert all(results) and pub.dropped == 0
    assert seqs == list(range(first, first + 40)) and sub.missed == 0


def test_port_in_use_is_one_clear_error() -> None:
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub:
        with pytest.raises(RuntimeError, match=re.escape(f"endpoint {pub.endpoint} is already in use")) as info:
            Publisher(PublishConfig(endpoint=pub.endpoint))
    assert "\n" not in str(info.value)


def test_stats_topic_round_trip(raw_sub: zmq.Socket) -> None:
    # stats_extra: fields added to every snapshot, a snapshot's own field of that name winning
    with Publisher(PublishConfig(endpoint=ANY_PORT), stats_extra={"fuser": "max", "fps": 0.0}) as pub:
        raw_sub.connect(pub.endpoint)
        wait_until(lambda: pub.send_stats({"fps": np.float64(29.5), "dropped": {"ir": np.int64(3)}})
                   and raw_sub.poll(50), "the subscriber connected")
        parts = _recv(raw_sub)
    assert parts[0].bytes == b"stats/rig0"
    stats = decode_stats(parts)
    assert stats["fps"] == 29.5 and stats["dropped"] == {"ir": 3} and isinstance(stats["t_ns"], int)
    assert stats["fuser"] == "max"


@pytest.mark.parametrize(("parts", "reason"), [
    (good_parts(np.zeros((4, 6, 3), np.uint8))[:2], "expected 3 parts"),
    (good_parts(np.zeros((4, 6, 3), np.uint8)) + [b""], "expected 3 parts"),
    ([b"fused/x", b"{not json", b"\0" * 72], "not UTF-8 JSON"),
    ([b"fused/x", b"\xff\xfe", b"\0" * 72], "not UTF-8 JSON"),
    ([b"fused/x", b"[1, 2]", b"\0" * 72], "expected an object"),
    (with_header(schema="streamfuse.fused/3"), "unsupported schema"),
    (with_header(schema="streamfuse.fused/2"), "header field format=None is missing"),
    (with_header(format="jpeg"), "format 'jpeg' under schema streamfuse.fused/1"),
    (with_header(seq=None), "header field seq"),
    (with_header(height=True), "header field height"),
    (with_header(t_publish_ns="now"), "header field t_publish_ns"),
    (with_header(encoding="yuv422"), "unknown encoding 'yuv422'"),
    (with_header(height=5), "header says 5 x 18"),
    (with_header(step=10), "bad image geometry"),
    (with_header(width=-6), "header field width=-6 is out of range 1..65535"),
    *[pytest.param(parts, reason, id=name) for name, (parts, reason) in MALFORMED.items()],
])
def test_decode_rejects_malformed_messages(parts: list[bytes], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=re.escape(reason)) as info:
        decode_message(parts)
    assert "\n" not in str(info.value)


def test_decode_honours_row_padding() -> None:
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    padded = np.zeros((4, 20), np.uint8)
    padded[:, :18] = image.reshape(4, 18)
    topic, header, _ = with_header(step=20)
    _, got = decode_message([topic, header, padded.tobytes()])
    np.testing.assert_array_equal(got, image)


@pytest.mark.parametrize(("changes", "key"), [
    ({"sndhwm": 0}, "sndhwm"), ({"endpoint": "udp://1.2.3.4:5"}, "endpoint"), ({"topic": ""}, "topic"),
    ({"stats_topic": "fused/rig0/stats"}, "stats_topic"), ({"wait_ms": 10}, "wait_ms"),
    ({"nodrop": True, "wait_ms": -1}, "wait_ms"),
])
def test_config_range_errors(changes: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}="):
        PublishConfig(**changes)


def test_curve_encryption(tmp_path: Path, rng: np.random.Generator) -> None:
    public_file, secret_file = zmq.auth.create_certificates(tmp_path, "rig0")
    server_key = zmq.auth.load_certificate(public_file)[0].decode()
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, curve_secret_file=str(secret_file))) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, server_key=server_key) as sub, \
            Subscriber(pub.endpoint, timeout_s=0.2) as plain:
        connect(pub, sub, image)
        assert pub.send_fused(fused_frame(image))
        np.testing.assert_array_equal(recv_seq(sub, pub.published - 1)[1], image)
        assert plain.recv() is None  # without the key the handshake fails: nothing arrives
        wait_until(lambda: plain.recv(0.05) is None and plain.handshake_failures > 0, "the handshake failure seen")
    assert sub.handshake_failures == 0
    with pytest.raises(FileNotFoundError, match="curve_secret_file .* not found"):
        Publisher(PublishConfig(endpoint=ANY_PORT, curve_secret_file=str(tmp_path / "missing.key_secret")))
    with pytest.raises(FileNotFoundError, match="curve_secret_file .* not a file"):  # it said "not found" of a folder
        Publisher(PublishConfig(endpoint=ANY_PORT, curve_secret_file=str(tmp_path)))


def test_curve_clients_dir_lets_in_only_the_consumers_it_holds(tmp_path: Path, rng: np.random.Generator) -> None:
    # "ironhouse": with the publisher's public key alone anyone could subscribe
    public_file, secret_file = zmq.auth.create_certificates(tmp_path, "rig0")
    server_key = zmq.auth.load_certificate(public_file)[0].decode()
    robot_public, robot_secret = zmq.auth.create_certificates(tmp_path, "robot")
    _, stranger_secret = zmq.auth.create_certificates(tmp_path, "stranger")
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "robot.key").write_bytes(Path(robot_public).read_bytes())
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    cfg = PublishConfig(endpoint=ANY_PORT, curve_secret_file=str(secret_file),
                        curve_clients_dir=str(tmp_path / "allowed"))
    with Publisher(cfg) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, server_key=server_key, client_key_file=str(robot_secret),
                       shm=False) as robot, \
            Subscriber(pub.endpoint, timeout_s=0.05, server_key=server_key, client_key_file=str(stranger_secret),
                       shm=False) as stranger, \
            Subscriber(pub.endpoint, timeout_s=0.05, server_key=server_key, shm=False) as anyone:
        connect(pub, robot, image)
        for sub in (stranger, anyone):
            wait_until(lambda sub=sub: sub.recv(0.05) is None and sub.handshake_failures > 0, "the refusal seen")
        assert pub.send_fused(fused_frame(image))
        np.testing.assert_array_equal(recv_seq(robot, pub.published - 1)[1], image)
        assert stranger.recv() is None and anyone.recv() is None and robot.handshake_failures == 0


def test_curve_clients_dir_that_lets_no_one_in_is_refused(tmp_path: Path) -> None:
    _, secret_file = zmq.auth.create_certificates(tmp_path, "rig0")
    with pytest.raises(ValueError, match="^curve_clients_dir='keys'.*with curve_secret_file set"):
        PublishConfig(curve_clients_dir="keys")  # a client key is checked only by a publisher that encrypts
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("")
    for folder, said in (("missing", "not found"), ("a_file", "not a folder"), ("empty", "holds no consumer's public")):
        cfg = PublishConfig(endpoint=ANY_PORT, curve_secret_file=str(secret_file),
                            curve_clients_dir=str(tmp_path / folder))
        with pytest.raises((FileNotFoundError, ValueError), match=f"^publish.curve_clients_dir .*{folder} {said}"):
            Publisher(cfg)


@pytest.mark.parametrize(("endpoint", "encrypted", "warns"), [
    ("tcp://0.0.0.0:*", False, True), ("tcp://*:*", False, True), ("tcp://0.0.0.0:*", True, False),
    (ANY_PORT, False, False),
])
def test_unencrypted_publishing_on_all_interfaces_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                         endpoint: str, encrypted: bool, warns: bool) -> None:
    secret = str(zmq.auth.create_certificates(tmp_path, "rig0")[1]) if encrypted else ""
    with caplog.at_level(logging.WARNING, logger="streamfuse.publish"), \
            Publisher(PublishConfig(endpoint=endpoint, curve_secret_file=secret)) as pub:
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if warns:
        assert len(warnings) == 1 and "\n" not in warnings[0]
        assert f"publishing unencrypted on {pub.endpoint}, reachable from other machines" in warnings[0]
        assert "publish.curve_secret_file" in warnings[0]
    else:
        assert warnings == []


README_MARKER = "### Reading frames without streamfuse"


def _readme_snippet(readme: Path) -> str | None:
    """The first ```python block after the marker heading of the README, or None when absent."""
    text = readme.read_text() if readme.exists() else ""
    match = re.search(re.escape(README_MARKER) + r".*?```python\n(.*?)```", text, re.S)
    return match.group(1) if match else None


@pytest.mark.parametrize("endpoint", [ANY_PORT, pytest.param("tcp://[::1]:*", marks=pytest.mark.skipif(
    not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)"))], ids=["ipv4", "ipv6"])
def test_readme_consumer_example_reads_frames(endpoint: str, rng: np.random.Generator) -> None:
    # over IPv6 the example waited 5 s and gave up: without ZMQ_IPV6 libzmq retries such an endpoint in silence
    snippet = _readme_snippet(REPO / "README.md")
    assert snippet is not None, f"README.md has no '{README_MARKER}' section with a python block"
    assert "streamfuse" not in snippet.replace('"streamfuse.fused/1"', "")  # plain pyzmq + numpy only
    with publishing(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), endpoint=endpoint) as pub:
        result = subprocess.run([sys.executable, "-c", snippet, pub.endpoint], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 20 and all(line.startswith("fused/rig0 ") and "(48, 64, 3)" in line for line in lines)


def test_a_lossless_publisher_closed_after_its_last_frame_still_sends_the_queued_ones(
        rng: np.random.Generator) -> None:
    """A replay publishes with nodrop and closes right after its last frame: those still queued must go out, not be
    discarded with the socket (a subscriber that joined first would miss the end of the replay)."""
    image = rng.integers(0, 256, VGA, dtype=np.uint8)
    pub = Publisher(PublishConfig(endpoint=ANY_PORT, nodrop=True, wait_ms=60_000, sndhwm=50))
    with Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False, rcvhwm=100) as sub:
        try:
            connect(pub, sub, image)
            first = pub.published
            assert all(pub.send_fused(fused_frame(image, i)) for i in range(30))  # queued faster than sent
        finally:
            pub.close()
        seqs: list[int] = []
        while len(seqs) < 30 and (msg := sub.recv()) is not None:
            if msg[0]["seq"] >= first:  # the handshake frames come before
                seqs.append(msg[0]["seq"])
    assert seqs == list(range(first, first + 30))


_LEAVE_AFTER_CLOSE = """
import sys
sys.path.insert(0, "tests")
import numpy as np
from helpers_zmq import PATIENCE_S, VGA, fused_frame
from streamfuse.cli.run import exit_now
from streamfuse.publish import PublishConfig, Publisher

pub = Publisher(PublishConfig(endpoint=sys.argv[1], nodrop=True, wait_ms=round(PATIENCE_S * 1000)))
assert pub.wait_for_subscriber(PATIENCE_S)
print(sum(pub.send_fused(fused_frame(np.zeros(VGA, np.uint8))) for _ in range(4)), flush=True)
pub.close()
exit_now(0)  # as the CLI leaves
"""


def test_a_lossless_publisher_that_leaves_right_after_close_has_sent_its_queue(tmp_path: Path) -> None:
    """The CLI leaves with os._exit right after a replay closes its publisher, so close must return only once the
    queue is sent (ZeroMQ sends a closed socket's queue from its I/O thread, which os._exit ends). This subscriber
    takes no frame before the publisher has queued all four, so the last ones are still in the publisher's process
    then: over ipc the socket buffers hold a few hundred kB, less than one VGA frame."""
    endpoint = f"ipc://{tmp_path}/pub"
    with Subscriber(endpoint, timeout_s=PATIENCE_S, shm=False, rcvhwm=1) as sub:
        proc = subprocess.Popen([sys.executable, "-c", _LEAVE_AFTER_CLOSE, endpoint], cwd=REPO, text=True,
                                stdout=subprocess.PIPE)
        try:
            sent = proc.stdout.readline()  # the frames are queued: it closes and leaves now
            seqs: list[int] = []
            while len(seqs) < 4 and (frame := sub.recv()) is not None:
                seqs.append(frame[0]["seq"])
            assert proc.wait(PATIENCE_S) == 0
        finally:
            proc.kill()
            proc.stdout.close()
    assert sent == "4\n" and seqs == [0, 1, 2, 3]


_CLOSE_BESIDE_STALLED = """
import sys
sys.path.insert(0, "tests")
import numpy as np
import zmq
from helpers_zmq import fused_frame
from streamfuse.publish import PublishConfig, Publisher

image = np.zeros((4, 4), np.uint8)  # frames of a few hundred bytes: most of each is topic and header
nodrop = sys.argv[2] == "nodrop"
for i in range(40):
    pub = Publisher(PublishConfig(endpoint=f"{sys.argv[1]}{i}", shm_slots=0, sndhwm=1000, nodrop=nodrop,
                                  wait_ms=int(nodrop)))
    subs = [zmq.Context.instance().socket(zmq.SUB) for _ in range(16)]
    for sub in subs:
        sub.setsockopt(zmq.RCVHWM, 1000)
        sub.setsockopt(zmq.SUBSCRIBE, b"fused/")
        sub.connect(pub.endpoint)
    while not all(sub.poll(0) for sub in subs):  # every one connected: a frame waits in each, never read
        pub.send_fused(fused_frame(image))
    for _ in range(3000):  # their links fill: the publisher's sender to each stops mid-stream
        if not pub.send_fused(fused_frame(image)) and nodrop:
            break
    for sub in subs:
        sub.close(linger=0)  # they leave as the publisher closes, as at a shutdown of the whole rig
    pub.close()
print("closed", flush=True)
"""


@pytest.mark.parametrize("mode", ["live", "nodrop"])
def test_closing_while_stalled_consumers_leave_never_aborts(tmp_path: Path, mode: str) -> None:
    """libzmq aborts a process whose closing socket loses a link while a message is half sent on it, once the socket's
    linger has run out; stalled consumers hold a sender mid-stream, and leaving together with the publisher (16 of
    them, 40 times) set that off at almost every run before the publisher's socket lingered without limit."""
    result = subprocess.run([sys.executable, "-c", _CLOSE_BESIDE_STALLED, f"ipc://{tmp_path}/pub", mode], cwd=REPO,
                            capture_output=True, text=True, timeout=PATIENCE_S * 4)
    assert result.returncode == 0 and result.stdout == "closed\n", result.stderr[-2000:]
