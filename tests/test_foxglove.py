"""Foxglove: the bridge serves fused frames and stats as Foxglove channels, and ``record``'s MCAP files carry what
Foxglove needs to show their image topics (ros2 profile, a full ``ros2msg`` schema, CDR messages, a summary)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from helpers_zmq import (ANY_PORT, PATIENCE_S, fused_frame, good_parts, has_ipv6_loopback, open_fds, wait_until,
                         with_header)

from streamfuse.frames import Frame
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.recording import TOPICS, RecordConfig, Recorder
from streamfuse.wire import decode_message

T0 = 1_700_000_000_123_456_789


def test_bridge_serves_fused_frames_and_stats_as_foxglove_channels():
    pytest.importorskip("foxglove")
    aiohttp = pytest.importorskip("aiohttp")
    from streamfuse.view.foxglove_bridge import Bridge

    async def client(port: int) -> dict[str, tuple]:
        """A Foxglove WebSocket client: subscribes to every advertised channel; per topic the schema, encoding, log
        time and payload of its first message."""
        got: dict[str, tuple] = {}
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(f"ws://127.0.0.1:{port}", protocols=("foxglove.sdk.v1",)) as ws:
            channels: dict[int, dict] = {}
            while len(got) < 2:
                msg = await asyncio.wait_for(ws.receive(), PATIENCE_S)
                if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["op"] == "advertise":
                    for ch in json.loads(msg.data)["channels"]:
                        channels[ch["id"]] = ch
                        await ws.send_str(json.dumps({"op": "subscribe", "subscriptions": [
                            {"id": ch["id"], "channelId": ch["id"]}]}))
                elif msg.type == aiohttp.WSMsgType.BINARY and msg.data[0] == 1:  # 1 = message data
                    sub_id, log_time = struct.unpack_from("<IQ", msg.data, 1)
                    ch = channels[sub_id]
                    got[ch["topic"]] = (ch["schemaName"], ch["encoding"], log_time, msg.data[13:])
        return got

    with Publisher(PublishConfig(endpoint=ANY_PORT, topic="fused/t", stats_topic="stats/t")) as pub:
        bridge = Bridge(pub.endpoint, "fused/t", "stats/t", port=0)
        bridge.start()
        stop = threading.Event()

        def publish() -> None:
            while not stop.is_set():
                pub.send_fused(fused_frame(np.full((24, 32, 3), 200, np.uint8)))
                pub.send_stats({"rate_fps": 12.5})
                time.sleep(0.01)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        try:
            got = asyncio.run(client(bridge.port))
        finally:
            stop.set()
            thread.join()
            bridge.close()
    schema, encoding, _, payload = got["/fused/image"]
    assert (schema, encoding) == ("foxglove.CompressedImage", "protobuf")
    assert b"jpeg" in payload and b"\xff\xd8\xff" in payload and b"vis_optical_frame" in payload
    _, encoding, _, payload = got["/stats"]
    assert encoding == "json" and json.loads(payload)["rate_fps"] == 12.5


def test_recording_opens_with_its_image_topics(tmp_path, rng):
    """What Foxglove reads: the ros2 profile, a ``sensor_msgs/msg/Image`` schema whose ``ros2msg`` text a ROS 2
    message parser accepts (with its dependencies), ``cdr`` channels, and a summary listing the channels."""
    pytest.importorskip("mcap_ros2")
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    path = tmp_path / "rig.mcap"
    frames = [Frame("ir", 3, T0, rng.integers(0, 256, (6, 8), np.uint8)),
              Frame("vis", 4, T0 + 5, rng.integers(0, 256, (6, 8, 3), np.uint8))]
    with Recorder(RecordConfig(path=str(path))) as rec:
        for frame in frames:
            rec.write(frame)
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        assert sorted(ch.topic for ch in summary.channels.values()) == sorted(TOPICS.values())
        assert {ch.message_encoding for ch in summary.channels.values()} == {"cdr"}
        assert {(s.name, s.encoding) for s in summary.schemas.values()} == {("sensor_msgs/msg/Image", "ros2msg")}
        assert sum(summary.statistics.channel_message_counts.values()) == 2
        decoded = list(reader.iter_decoded_messages())
    for (_, channel, message, ros), frame in zip(decoded, frames):
        assert channel.topic == TOPICS[frame.stream] and message.log_time == frame.t_capture_ns
        assert ros.header.stamp.sec * 10**9 + ros.header.stamp.nanosec == frame.t_capture_ns
        assert (ros.header.frame_id, ros.height, ros.width) == (f"{frame.stream}_optical_frame", 6, 8)
        assert ros.encoding == ("mono8" if frame.stream == "ir" else "bgr8") and ros.step == 8 * frame.image[0, 0].size
        assert bytes(ros.data) == frame.image.tobytes()


class _Frames:
    """The subscriber a relay loop reads: ``frames``, then it sets ``stop``."""

    def __init__(self, frames: list, stop: threading.Event) -> None:
        self.frames, self.stop = frames, stop

    def __enter__(self) -> _Frames:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def recv(self) -> tuple | None:
        if not self.frames:
            self.stop.set()
            return None
        return self.frames.pop(0)


class _Channel:
    """A Foxglove channel ``topic``, with a client subscribed unless ``sinks`` is False: keeps the log times and the
    messages of what it logs."""

    def __init__(self, topic: str = "/fused/image", sinks: bool = True) -> None:
        self.log_times: list[int] = []
        self.messages: list[object] = []
        self._topic, self._sinks = topic, sinks

    def has_sinks(self) -> bool:
        return self._sinks

    def topic(self) -> str:
        return self._topic

    def log(self, message: object, log_time: int | None = None) -> None:
        self.log_times.append(log_time)
        self.messages.append(message)


def test_bridge_skips_frames_foxglove_cannot_carry_and_goes_on():
    # Each raised in the relay thread, which then stopped relaying frames for good: a capture time before 1970 or
    # after 2106 (foxglove.Timestamp's seconds are a u32; the wire's times are int64 ns), a side over JPEG's 65500.
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge

    frames = [decode_message(with_header(t_capture_vis_ns=t)) for t in (-1, 2**63 - 1, T0)]
    wide = decode_message(good_parts(np.zeros((1, 65501, 3), np.uint8)))
    bridge = Bridge("tcp://127.0.0.1:1", port=0)  # never started: its relay loop runs here
    channel = _Channel()
    try:
        bridge._relay_frames(_Frames([*frames[:2], wide, frames[2]], bridge._stop), channel)
    finally:
        bridge.stats_in.close()
    assert channel.log_times == [T0] and bridge.skipped == 3


def test_skipped_frames_are_logged_once_per_kind_then_counted(caplog):
    # one warning per frame: 247 identical lines from a stream of frames Foxglove cannot carry
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge

    early = decode_message(with_header(t_capture_vis_ns=-1))
    wide = decode_message(good_parts(np.zeros((1, 65501, 3), np.uint8)))
    bridge = Bridge("tcp://127.0.0.1:1", port=0)  # never started: its relay loop runs here
    with caplog.at_level(logging.WARNING, "streamfuse.foxglove"):
        try:
            bridge._relay_frames(_Frames([early] * 50 + [wide] * 3, bridge._stop), _Channel())
        finally:
            bridge.stats_in.close()
            bridge.close()  # the summary
    lines = [r.getMessage() for r in caplog.records if r.name == "streamfuse.foxglove"]
    assert bridge.skipped == 53 and len(lines) == 4, lines
    assert "outside foxglove.Timestamp's range" in lines[0] and "JPEG cannot hold" in lines[1]
    assert lines[2:] == ["skipped 50 frames in all for their capture time (the first one logged)",
                         "skipped 3 frames in all for their size (the first one logged)"]


@pytest.mark.parametrize("shape, sent", [((1, 65500, 3), 1), ((1, 65501, 3), 0), ((65501, 1, 3), 0)])
def test_a_frame_too_wide_for_jpeg_is_skipped_in_one_line_without_opencv_errors(capfd, shape, sent):
    # JPEG holds sides up to 65500 (the height too). One over was refused after OpenCV tried it: its own error lines on
    # stderr for every such frame, beside the bridge's one.
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge

    wide = decode_message(good_parts(np.zeros(shape, np.uint8)))
    bridge = Bridge("tcp://127.0.0.1:1", port=0)  # never started: its relay loop runs here
    channel = _Channel()
    try:
        bridge._relay_frames(_Frames([wide], bridge._stop), channel)
    finally:
        bridge.stats_in.close()
    assert len(channel.log_times) == sent and bridge.skipped == 1 - sent
    assert "imencode" not in capfd.readouterr().err


def test_the_bridge_takes_clients_again_after_more_idle_connections_than_it_has_files():
    """The SDK's server kept every connection that never finished its handshake; once they held all the files the
    process may open, its accept failed and it never listened again: no Foxglove client could connect until a
    restart. The bridge's relay caps them (answered 503 beyond) and closes those that send no request in time."""
    import re
    import resource
    import socket
    import subprocess
    import sys

    pytest.importorskip("foxglove")
    aiohttp = pytest.importorskip("aiohttp")
    proc = subprocess.Popen([sys.executable, "-m", "streamfuse", "foxglove", "tcp://127.0.0.1:1", "--port", "0",
                             "--max-connections", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    port = 0

    async def server_info() -> str:
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(f"ws://127.0.0.1:{port}", protocols=("foxglove.sdk.v1",)) as ws:
            return json.loads((await asyncio.wait_for(ws.receive(), PATIENCE_S)).data)["op"]

    try:
        while "Ctrl-C stops" not in (line := proc.stderr.readline()):
            assert line, "the bridge exited"
        port = int(re.search(r"connect to ws://127\.0\.0\.1:(\d+) ", line).group(1))  # the free port it took
        held, refused = [], 0
        for _ in range(40):  # 8 connections at once, the rest answered 503 as they come
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S))
            except OSError:
                refused += 1
        busy = held[-1].recv(64)
        assert busy.startswith(b"HTTP/1.1 503 "), busy
        for sock in held:
            sock.close()
        deadline = time.monotonic() + PATIENCE_S
        while True:  # the relay frees each slot as its connection's close arrives
            try:
                assert asyncio.run(server_info()) == "serverInfo"
                break
            except aiohttp.WSServerHandshakeError:
                assert time.monotonic() < deadline, "no Foxglove client got in after the idle connections went"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "503 and closed them: 8 were open, the cap (--max-connections)" in err, err


@contextlib.contextmanager
def _relayed(answer_after_eof: bool, hold: tuple[threading.Event, threading.Event] | None = None,
             host: str = "127.0.0.1") -> Iterator[int]:
    """A relay on ``host`` in front of a server that answers each connection's bytes with ``answer``: at once, or only
    once its client has ended its sending (a half-close), and then, given ``hold`` (heard, go), only once it has set
    heard and go is set; yields the relay's port."""
    from streamfuse.view.relay import Relay

    upstream = socket.create_server(("127.0.0.1", 0))

    def answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(1024)
            if answer_after_eof:
                while conn.recv(1024):
                    pass
            if hold is not None:
                hold[0].set()
                hold[1].wait(PATIENCE_S)
            conn.sendall(b"answer")
            conn.recv(1024)  # held open until the relay closes it

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=answer, args=(upstream.accept()[0],), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    relay = Relay(host, 0, upstream.getsockname()[1], limit=4)
    try:
        yield relay.start()
    finally:
        relay.close()
        upstream.close()


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer():
    # the relay ended both ways at the client's end of sending: the answer that followed was lost (2 of 3 tries)
    with _relayed(answer_after_eof=True) as port, socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        client.shutdown(socket.SHUT_WR)
        client.settimeout(PATIENCE_S)
        assert client.recv(64) == b"answer"


def test_the_relay_on_every_address_serves_each_family_on_the_port_it_says():
    # with host '' and port 0 the IPv4 and the IPv6 listener each took a free port of their own, and start() said the
    # first one's: a client of the other family was refused
    with _relayed(answer_after_eof=False, host="") as port:
        for address in ["127.0.0.1", *["::1"] * has_ipv6_loopback()]:
            with socket.create_connection((address, port), timeout=PATIENCE_S) as client:
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
                assert client.recv(64) == b"answer", address


def test_a_half_closed_client_waiting_for_its_answer_survives_a_garbage_collection():
    # nothing but the loop's weak set held its connection's task once the client had ended its sending: a collection
    # in the wait destroyed it ("Task was destroyed but it is pending!") and the client got an empty close
    heard, go = threading.Event(), threading.Event()
    with _relayed(answer_after_eof=True, hold=(heard, go)) as port, \
            socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        client.shutdown(socket.SHUT_WR)
        assert heard.wait(PATIENCE_S)  # the relay has passed the end on: it waits for the answer now
        gc.collect()
        go.set()
        client.settimeout(PATIENCE_S)
        assert client.recv(64) == b"answer"


def test_the_relay_stops_with_clients_connected_without_tracebacks(caplog):
    # Python 3.11's stream server logged each connection's cancelled task with a traceback ("Exception in callback")
    clients = []
    with caplog.at_level("DEBUG", "asyncio"):
        with _relayed(answer_after_eof=False) as port:
            for _ in range(3):
                client = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
                assert client.recv(64) == b"answer"  # piped both ways, and left open
                clients.append(client)
        for client in clients:
            assert client.recv(64) == b""  # closed by the relay's stop
            client.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_a_relayed_client_without_its_request_in_time_is_closed_counted_and_its_place_freed(caplog):
    # a slowloris on the bridge went unsaid in the log, and each one closed at its deadline still held its place:
    # after as many as the cap, every Foxglove client was answered 503 for good
    from streamfuse.view.relay import Relay

    upstream = socket.create_server(("127.0.0.1", 0))  # listening, never serving: no client must reach it
    relay = Relay("127.0.0.1", 0, upstream.getsockname()[1], limit=4, request_s=0.2)
    try:
        with caplog.at_level("WARNING", "streamfuse.foxglove"):
            port = relay.start()
            for _ in range(5):  # more than the cap, one after the other
                with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as client:
                    client.sendall(b"GET / HTTP/1.1\r\n")  # and never the blank line that ends the head
                    assert client.recv(64) == b""  # closed at the deadline, not answered 503
            # and its task let go: each one kept stayed, with its streams, for as long as the bridge ran
            assert relay.count == 0 and not relay._connections
        upstream.setblocking(False)
        with pytest.raises(BlockingIOError):  # none of them passed on to the server
            upstream.accept()
    finally:
        relay.close()
        upstream.close()
    said = [r.getMessage() for r in caplog.records if r.name == "streamfuse.foxglove"]
    closed = [int(line.split()[1]) for line in said if "sent no complete request within 0.2 s" in line]
    assert sum(closed) == 5 and len(said) == len(closed), said


def test_capture_times_at_the_ends_of_foxglove_timestamps_range():
    """foxglove.Timestamp holds 0 (1970) up to 2**32 s less a nanosecond: both ends are logged, 2**32 s is skipped."""
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge

    times = (0, 2**32 * 10**9 - 1, 2**32 * 10**9)
    bridge = Bridge("tcp://127.0.0.1:1", port=0)  # never started: its relay loop runs here
    channel = _Channel()
    try:
        bridge._relay_frames(_Frames([decode_message(with_header(t_capture_vis_ns=t)) for t in times], bridge._stop),
                             channel)
    finally:
        bridge.stats_in.close()
    assert channel.log_times == list(times[:2]) and bridge.skipped == 1


@pytest.mark.parametrize(("topic", "stamp"), [("/ir/image", 5), ("/vis/image", 9), ("/fused/image", 9)])
def test_each_image_channel_is_stamped_with_its_own_capture_time_and_counted(topic, stamp):
    # the IR preview is the IR camera's image: its time is the IR capture time, the others' the visible one
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge

    bridge = Bridge("tcp://127.0.0.1:1", port=0)  # never started: its relay loop runs here
    channel = _Channel(topic)
    try:
        frames = [decode_message(with_header(t_capture_ir_ns=5, t_capture_vis_ns=9)) for _ in range(2)]
        bridge._relay_frames(_Frames(frames, bridge._stop), channel)
    finally:
        bridge.stats_in.close()
    assert channel.log_times == [stamp, stamp] and bridge.logged == {topic: 2}


def test_no_frame_is_encoded_while_no_foxglove_client_subscribes(monkeypatch):
    pytest.importorskip("foxglove")
    import cv2

    from streamfuse.view.foxglove_bridge import Bridge

    encoded = []
    monkeypatch.setattr(cv2, "imencode", lambda *args, real=cv2.imencode: encoded.append(1) or real(*args))
    bridge = Bridge("tcp://127.0.0.1:1", port=0)  # never started: its relay loop runs here
    channel = _Channel(sinks=False)
    try:
        bridge._relay_frames(_Frames([decode_message(with_header(t_capture_vis_ns=T0))], bridge._stop), channel)
    finally:
        bridge.stats_in.close()
    assert encoded == [] and channel.log_times == [] and bridge.logged == {}


class _Messages:
    """Stands for ``foxglove.messages``: each message is the dict of the fields it was made with."""

    @staticmethod
    def Timestamp(**fields: object) -> dict:  # noqa: N802 - the SDK's names
        return fields

    RawImage = CompressedImage = Timestamp


@pytest.mark.parametrize("raw", [False, True])
def test_a_frame_message_carries_its_capture_time_its_row_stride_and_the_jpeg_quality(raw, monkeypatch):
    """The stamp split into seconds and nanoseconds; a raw image's step in bytes (a bgr8 row: 3 bytes a pixel); the
    JPEG at the asked quality."""
    pytest.importorskip("foxglove")
    import types

    import cv2

    from streamfuse.view.foxglove_bridge import Bridge

    image = np.random.default_rng(0).integers(0, 256, (48, 32, 3), np.uint8)[::2]  # a view: rows 192 bytes apart
    bridge = Bridge("tcp://127.0.0.1:1", port=0, raw=raw, quality=20)  # never started: its messages are made here
    bridge.stats_in.close()
    bridge.fox = types.SimpleNamespace(messages=_Messages)
    header = {"frame_id": "f", "width": 32, "height": 24, "encoding": "bgr8"}
    message = bridge._message(header, image, T0)
    assert message["timestamp"] == {"sec": T0 // 10**9, "nsec": T0 % 10**9}
    if raw:
        assert (message["width"], message["height"], message["step"]) == (32, 24, 96)
        assert message["data"] == image.tobytes()
    else:
        assert message["data"] == cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 20])[1].tobytes()


def test_stats_are_logged_at_their_snapshot_time():
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge

    bridge = Bridge("tcp://127.0.0.1:1", port=0)  # never started: its stats loop runs here
    bridge.stats_in.close()
    bridge.stats_in = [{"t_ns": T0, "rate_fps": 25.0}, {"t_ns": T0 + 1}]
    channel = _Channel("/stats")
    bridge._relay_stats(channel)
    assert channel.log_times == [T0, T0 + 1] and bridge.logged == {"/stats": 2}


@pytest.mark.parametrize("previews", [False, True])
def test_previews_are_relayed_only_when_asked_for(previews):
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge

    bridge = Bridge("tcp://127.0.0.1:1", "fused/t", port=0, previews=previews)  # never started
    bridge.stats_in.close()
    assert bridge._sources == ({"/fused/image": "fused/t", "/ir/image": "preview/ir/fused/t",
                                "/vis/image": "preview/vis/fused/t"} if previews else {"/fused/image": "fused/t"})


def test_a_bridge_that_cannot_listen_names_the_address_and_leaves_nothing_open():
    """The error names host:port; the stats socket and the SDK's server started before the failed bind are
    closed."""
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        bridge = Bridge("tcp://127.0.0.1:1", port=port)
        with pytest.raises(RuntimeError, match=f"^cannot start the Foxglove server on 127.0.0.1:{port}: "):
            bridge.start()
    assert bridge.stats_in.sock.closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", bridge.server.port), timeout=PATIENCE_S).close()


def test_the_bridge_relays_with_the_connection_cap_it_was_given():
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge

    bridge = Bridge("tcp://127.0.0.1:1", port=0, max_connections=3, allow_hosts=("Proxy.example",))
    try:
        bridge.start()
        assert bridge.relay.limit == 3 and bridge.relay.per_address == 1 and "proxy.example" in bridge.relay.names
    finally:
        bridge.close()


def test_the_foxglove_cli_gives_the_bridge_its_cap_and_the_names_allowed(monkeypatch):
    import streamfuse.view.foxglove_bridge as bridge_module

    made = {}

    def bridge(*args: object, **kwargs: object) -> None:
        made.update(kwargs)
        raise ValueError("no bridge here")

    monkeypatch.setattr(bridge_module, "Bridge", bridge)
    assert bridge_module.main(["--max-connections", "3", "--allow-host", "a.example", "--allow-host", "B.example"]) == 2
    assert made["max_connections"] == 3 and made["allow_hosts"] == ("a.example", "b.example")


def test_the_sdk_listens_on_loopback_only_with_small_queues_and_the_frames_are_read_newest_only(monkeypatch):
    """Only the relay faces the network (the SDK's own listener has no cap and dies with no files left), and stops
    with the bridge; a slow Foxglove client loses frames from its small queue, and the bridge reads only the newest
    frame, never a backlog; --raw images go out on RawImage channels."""
    foxglove = pytest.importorskip("foxglove")
    import foxglove.channels

    import streamfuse.view.foxglove_bridge as bridge_module

    servers, subscriptions, raw = [], [], []
    monkeypatch.setattr(foxglove, "start_server", lambda real=foxglove.start_server, **kwargs:
                        servers.append(kwargs) or real(**kwargs))
    monkeypatch.setattr(bridge_module, "Subscriber", lambda *args, real=bridge_module.Subscriber, **kwargs:
                        subscriptions.append(kwargs) or real(*args, **kwargs))
    monkeypatch.setattr(foxglove.channels, "RawImageChannel", lambda topic, real=foxglove.channels.RawImageChannel:
                        raw.append(topic) or real(topic))
    bridge = bridge_module.Bridge("tcp://127.0.0.1:1", host="localhost", port=0, previews=True, raw=True)
    try:
        bridge.start()
    finally:
        bridge.close()
    assert [(s["host"], s["message_backlog_size"]) for s in servers] == [("127.0.0.1", bridge_module._BACKLOG)]
    assert bridge_module._BACKLOG <= 4 and [s["latest"] for s in subscriptions] == [True] * 3
    assert sorted(raw) == ["/fused/image", "/ir/image", "/vis/image"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", bridge.server.port), timeout=PATIENCE_S).close()


def test_a_request_head_over_max_head_is_not_relayed(caplog):
    from streamfuse.view.relay import MAX_HEAD

    with caplog.at_level("DEBUG", "asyncio"):
        with _relayed(answer_after_eof=False) as port, socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n")
            client.settimeout(PATIENCE_S)
            got = b""
            with contextlib.suppress(ConnectionResetError):  # closed with the head unread: a reset
                got = client.recv(64)
            assert got == b""
    # refused in silence: a peer sending such heads must not fill the log with tracebacks (said by the time the
    # relay has stopped)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_either_side_s_end_ends_the_relayed_connection_on_the_other():
    """A connection the SDK's server closed stayed open to its client (the relay still read the client), and each
    client gone with a reset left the relay's connection to the server open: either held files for as long as the
    bridge ran, the exhaustion the relay is there to stop."""
    from streamfuse.view.relay import Relay

    upstream = socket.create_server(("127.0.0.1", 0))
    upstream.settimeout(PATIENCE_S)
    relay = Relay("127.0.0.1", 0, upstream.getsockname()[1])
    try:
        port = relay.start()
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as client:
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            with upstream.accept()[0] as relayed:
                relayed.settimeout(PATIENCE_S)
                assert relayed.recv(64) == b"GET / HTTP/1.1\r\n\r\n"
                relayed.sendall(b"bye")
            assert client.recv(64) == b"bye" and client.recv(64) == b""  # the server's close, passed on
        client = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        with upstream.accept()[0] as relayed:
            relayed.settimeout(PATIENCE_S)
            assert relayed.recv(64) == b"GET / HTTP/1.1\r\n\r\n"
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset, not an end of sending that the relay passes on
            assert relayed.recv(64) == b""
    finally:
        relay.close()
        upstream.close()


def test_a_relayed_side_reads_on_only_once_its_reader_has_taken_what_it_was_sent():
    # a slow Foxglove client holds its own connection back: without the wait the relay would read everything the
    # server sends into its memory, as fast as the server sends it
    from streamfuse.view.relay import _pipe

    done: list[object] = []

    class Slow:
        def write(self, data: bytes) -> None:
            done.append(data)

        async def drain(self) -> None:
            done.append("drained")

    async def pipe() -> None:
        src = asyncio.StreamReader()
        src.feed_data(b"frame")
        src.feed_eof()
        await _pipe(src, Slow())

    asyncio.run(pipe())
    assert done == [b"frame", "drained"]


def test_a_relay_that_cannot_reach_its_server_closes_the_client_in_silence(monkeypatch, caplog):
    """Out of files (EMFILE, the flood the relay stands against) or any other OSError on the way to the SDK's
    server: the client is closed and its place freed, with no traceback in the log."""
    import errno

    from streamfuse.view.relay import Relay

    async def out_of_files(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(asyncio, "open_connection", out_of_files)
    relay = Relay("127.0.0.1", 0, 1)
    try:
        with caplog.at_level("DEBUG", "asyncio"), \
                socket.create_connection(("127.0.0.1", relay.start()), timeout=PATIENCE_S) as client:
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert client.recv(64) == b""
            wait_until(lambda: relay.count == 0, "the client's place freed")
    finally:
        relay.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_a_relay_that_cannot_bind_raises():
    # start() waited for the port of a server that never started
    import errno

    from streamfuse.view.relay import Relay

    failed: list[OSError] = []

    def start(relay: Relay) -> None:
        try:
            relay.start()
        except OSError as exc:
            failed.append(exc)

    loops = open_fds("anon_inode:[eventpoll]")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        relay = Relay("127.0.0.1", busy.getsockname()[1], 1)
        thread = threading.Thread(target=start, args=(relay,), daemon=True)
        thread.start()
        thread.join(PATIENCE_S)
    assert [exc.errno for exc in failed] == [errno.EADDRINUSE]
    assert open_fds("anon_inode:[eventpoll]") == loops  # its event loop closed, with its files
    relay.close()  # as the bridge's close after its failed start does: nothing is left to stop, and no error


def test_a_relay_closed_at_once_after_its_failed_start_raises_nothing(monkeypatch):
    # its thread said the failure, then ended: a close() in between found it alive and stopped its closed loop
    # ("Event loop is closed", seen once on 3.13); the thread is held alive past its word here to show it
    from streamfuse.view.relay import Relay

    run = Relay._run
    monkeypatch.setattr(Relay, "_run", lambda self, ready: (run(self, ready), threading.Event().wait(0.5)))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        relay = Relay("127.0.0.1", busy.getsockname()[1], 1)
        with pytest.raises(OSError):
            relay.start()
        relay.close()


def test_a_shared_memory_descriptor_topic_is_refused_before_anything_is_opened():
    # subscribing to shm/<topic> maps the pool; the bridge reads frames from the fused topic
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge
    from streamfuse.wire import shm_topic

    with pytest.raises(ValueError, match=r"^topic='shm/fused/t' carries shared-memory descriptors, not frames: give "
                                         r"the fused topic 'fused/t' \(a same-host consumer reads the publisher's "
                                         r"shared memory by itself\)$"):
        Bridge("tcp://127.0.0.1:1", shm_topic("fused/t"))


def test_a_stats_topic_that_also_takes_frames_is_refused_before_anything_is_opened():
    # "": every frame came in on the stats socket, logged as a malformed stats message (a line a frame)
    pytest.importorskip("foxglove")
    from streamfuse.view.foxglove_bridge import Bridge

    with pytest.raises(ValueError, match=r"^stats topic '' also takes frames \(of 'fused/t', the previews or the "):
        Bridge("tcp://127.0.0.1:1", "fused/t", "")


def test_a_relay_over_its_cap_answers_503_naming_the_foxglove_bridge():
    from streamfuse.view.relay import Relay

    relay = Relay("127.0.0.1", 0, 1, limit=1)  # upstream never reached: no request comes
    try:
        port = relay.start()
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S):
            wait_until(lambda: relay.count == 1, "the first client admitted")
            with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as refused:
                answer = b""
                while chunk := refused.recv(1024):
                    answer += chunk
    finally:
        relay.close()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert answer.endswith(b"\r\n\r\nthe Foxglove bridge has 1 connections open, its cap (--max-connections)\n")


def test_a_relayed_request_reaching_loopback_that_names_another_host_is_refused():
    """DNS rebinding (see the viewer's test): a web page whose site's name was pointed at 127.0.0.1 reached the SDK's
    server as the page's own site. Refused 403 before anything reaches the server; this machine's names get in."""
    from streamfuse.view.relay import Relay

    with _relayed(answer_after_eof=False) as port:
        for host, answer in ((f"evil.example:{port}", b"HTTP/1.1 403 "), (f"localhost:{port}", b"answer"),
                             (f"localhost:{port}\r\nHost: evil.example", b"HTTP/1.1 403 ")):  # and any Host after
            with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as client:
                client.sendall(f"GET / HTTP/1.1\r\nhOsT: {host}\r\n\r\n".encode())
                assert client.recv(1024).startswith(answer), host
    assert "robot.lan" in Relay("Robot.lan", 0, 1).names
    assert "proxy.example" in Relay("", 0, 1, names=["proxy.example"]).names


def test_a_sigterm_that_the_kernel_gives_another_thread_of_the_bridge_stops_it():
    # a process's signal may reach any of its threads (the Foxglove SDK's runtime, the readers): its handler then
    # waited for the main thread, asleep in an untimed wait that only a signal of its own ends, and the bridge ran on
    import ctypes
    import os
    import signal
    import subprocess
    import sys

    pytest.importorskip("foxglove")
    proc = subprocess.Popen([sys.executable, "-m", "streamfuse", "foxglove", "tcp://127.0.0.1:1", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while "Ctrl-C stops" not in (line := proc.stderr.readline()):
            assert line, "the bridge exited"
        tasks = f"/proc/{proc.pid}/task"
        # one of the SDK's runtime threads, which never run Python code and block no signal (libzmq's block all); a
        # thread takes its name as it first runs, which on a busy machine may be after the line
        def runtime() -> list[int]:
            return [int(tid) for tid in os.listdir(tasks) if open(f"{tasks}/{tid}/comm").read().startswith("tokio")]

        wait_until(lambda: bool(runtime()), "a thread of the SDK's runtime")
        other = runtime()[0]
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(234, proc.pid, other, signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())  # tgkill
        assert proc.wait(timeout=PATIENCE_S) == 0
    finally:
        proc.kill()
        proc.communicate()


_STOPPED_AT_EACH_STEP = """
import logging, signal, sys
import streamfuse.view.foxglove_bridge as bridge_module

class Made:  # no server, no readers: the bridge's wait alone
    port = 0

    def __init__(self, *args, **kwargs):
        pass

    def start(self):
        pass

    def close(self):
        pass

class StoppedAt(logging.Handler):
    # SIGTERM at the step-th call, return or C call of the main thread once the line that says Ctrl-C stops is out
    def __init__(self, step):
        super().__init__()
        self.step, self.seen, self.out = step, 0, False

    def emit(self, record):
        if "Ctrl-C stops" in record.getMessage():
            sys.setprofile(self.hook)

    def hook(self, frame, event, arg):
        if not self.out:
            self.out = event == "return" and frame.f_code is logging.Logger.info.__code__
            return
        self.seen += 1
        if self.seen == self.step:
            sys.setprofile(None)
            signal.raise_signal(signal.SIGTERM)  # its handler runs here, as at any call

bridge_module.Bridge, bridge_module.POLL_S = Made, 0.001
for step in range(1, 60):
    logging.getLogger("streamfuse.foxglove").handlers = [StoppedAt(step)]
    assert bridge_module.main(["tcp://127.0.0.1:1"]) == 0
"""


def test_a_stop_that_comes_at_any_step_of_the_bridge_s_wait_ends_it():
    # its handler set the Event that the main thread waited on, on that thread, which it interrupted: where the wait
    # held the Event's lock (between its checks) the handler waited for it forever, and the bridge ran on (seen once
    # as a SIGTERM that the kernel gave one of the SDK's threads came as the wait took its lock again)
    import subprocess
    import sys

    pytest.importorskip("foxglove")
    proc = subprocess.Popen([sys.executable, "-c", _STOPPED_AT_EACH_STEP], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=PATIENCE_S)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err


@pytest.mark.parametrize(("host", "url"), [("::1", "ws://[::1]:"), ("", "ws://localhost:")])
def test_the_bridge_names_where_to_connect_as_a_url(host, url):
    # it said ws://::1:PORT and ws://:PORT, which no Foxglove client opens (the viewer's line names a URL)
    import subprocess
    import sys

    pytest.importorskip("foxglove")
    proc = subprocess.Popen([sys.executable, "-m", "streamfuse", "foxglove", "tcp://127.0.0.1:1", "--host", host,
                             "--port", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while "Ctrl-C stops" not in (line := proc.stderr.readline()):
            assert line, "the bridge exited"
    finally:
        proc.terminate()
        proc.communicate(timeout=PATIENCE_S)
    assert f"Foxglove: connect to {url}" in line and proc.returncode == 0, line


def test_a_stop_before_the_bridge_takes_the_stops_ends_it_as_one_after_with_the_bridge_closed(monkeypatch):
    # a Ctrl-C in the moment after the bridge was made, before its handlers, left it unclosed (its threads running)
    # and ended the command with 130 where a moment earlier or later it ended with 0
    import streamfuse.view.foxglove_bridge as bridge_module

    closed = []

    class Made:
        def __init__(self, *_args: object, **_kwargs: object) -> None:
            pass

        def close(self) -> None:
            closed.append(True)

    def stopped(_signals: tuple[int, ...]) -> tuple[int, ...]:
        raise KeyboardInterrupt

    monkeypatch.setattr(bridge_module, "Bridge", Made)
    monkeypatch.setattr(bridge_module, "takeable", stopped)
    try:
        code = bridge_module.main(["tcp://127.0.0.1:1"])
    except KeyboardInterrupt:
        code = "a KeyboardInterrupt"
    assert (code, closed) == (0, [True])
