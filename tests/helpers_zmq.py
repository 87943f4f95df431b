"""Plain helpers shared by test_publish.py, test_client.py and test_subscribe.py: fused frames, hand-built wire
messages and a background publisher on a random loopback port. Not fixtures, so they live here rather than in
conftest.py (which tests cannot import from)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import zmq

from streamfuse.shm_owners import SHM_DIR
from streamfuse.client import Subscriber
from streamfuse.frames import Frame, FramePair, FusedFrame
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.wire import HEADER_FIELDS, SCHEMA

ANY_PORT = "tcp://127.0.0.1:*"
VGA = (480, 640, 3)
PATIENCE_S = 30.0  # how long a test waits for an event that must happen (a loaded machine can be slow)
#: how long a test waits for a run's first frame once it publishes: its imports, its fuser's load and its
#: producers' start took over 30 s on a loaded machine
START_S = 120.0


@contextmanager
def held_port(*, shared: bool = False) -> Iterator[int]:
    """A loopback TCP port held by this test until the block ends: bound, not listening (a connection to it is
    refused), so no other process takes it meanwhile, as one could take a port read from a socket closed at once.
    ``shared``: a child of the test may bind it still, with SO_REUSEADDR (FFmpeg's listen mode, which needs its port
    given); the system hands it to no one binding port 0."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(shared))
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def published_on(proc: subprocess.Popen) -> str:
    """The endpoint of a run started with ``publish.endpoint=tcp://127.0.0.1:*`` (its stderr a text pipe), from its
    log line: a port the system picked as the run bound it, which no other process can take in between, as it could
    one chosen before the start."""
    said = []
    for line in proc.stderr:
        said.append(line)
        if found := re.search(r"publishing \S+ on (tcp://127\.0\.0\.1:\d+)", line):
            return found.group(1)
    raise AssertionError("the run never said where it publishes: " + "".join(said)[-2000:])


def read_exact(peer: socket.socket, size: int) -> bytes:
    """``size`` bytes from a hand-written ZMTP peer's socket; fails when the other end closes first."""
    data = b""
    while len(data) < size:
        more = peer.recv(size - len(data))
        assert more, "the other end closed the connection in its handshake"
        data += more
    return data


def pool_fds(name: str) -> int:
    """This process's file descriptors open on shared-memory segment ``name`` (its own and its mappings', Linux)."""
    return open_fds(SHM_DIR / name)


def open_fds(path: str | os.PathLike) -> int:
    """This process's file descriptors open on the file ``path`` (Linux)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return links.count(str(path))


@contextmanager
def plain_pub(endpoint: str = ANY_PORT, *, ipv6: bool = False) -> Iterator[zmq.Socket]:
    """A plain PUB socket bound to ``endpoint``, to send whatever bytes a test needs. Closed lingering without limit, as
    the Publisher closes: with a finite linger libzmq aborts the process when a link drops while a message is half
    sent on it (a stalled reader's)."""
    sock = zmq.Context.instance().socket(zmq.PUB)
    try:
        sock.setsockopt(zmq.IPV6, int(ipv6))
        sock.bind(endpoint)
        yield sock
    finally:
        sock.close(linger=-1)


def has_ipv6_loopback() -> bool:
    """Whether this machine can bind the IPv6 loopback address ``::1``."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def fused_frame(image: np.ndarray, seq: int = 0) -> FusedFrame:
    """A FusedFrame around ``image`` with distinct, ordered times and sequence numbers."""
    t = time.time_ns()
    ir = Frame("ir", seq + 100, t - 2_000_000, np.zeros(image.shape[:2], np.uint8))
    vis = Frame("vis", seq + 200, t - 1_000_000, image)
    return FusedFrame(FramePair(ir, vis), image, "max", "0.1", t, {"fuse": 1.25, "post": np.float32(0.5)})


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = PATIENCE_S) -> None:
    """Wait for ``condition`` to become true, checking every 10 ms; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.01)


def sync(sub: Subscriber, send: Callable[[], int], timeout_s: float = PATIENCE_S) -> int:
    """Send (``send()`` returns the seq it sent) until ``sub`` has received the newest message sent (PUB/SUB slow
    joiner); every earlier one has then arrived or was lost, so nothing stays queued. Returns that seq."""
    deadline = time.monotonic() + timeout_s
    newest = send()
    while (frame := sub.recv(0.05)) is None or frame[0]["seq"] != newest:
        assert time.monotonic() < deadline, "subscriber never connected"
        if frame is None:  # the subscription had not arrived yet when it was sent
            newest = send()
    return newest


def connect(pub: Publisher, sub: Subscriber, image: np.ndarray) -> None:
    """Publish ``image`` until ``sub`` has received the newest frame published (see :func:`sync`)."""
    def send() -> int:
        pub.send_fused(fused_frame(image))
        return pub.published - 1

    sync(sub, send)


def raw_connect(sock: zmq.Socket, sub: Subscriber) -> int:
    """:func:`sync` for a raw PUB socket sending hand-built messages with seq 0, 1, 2 ...; returns the last seq."""
    sent = iter(range(1_000_000))

    def send() -> int:
        seq = next(sent)
        sock.send_multipart(with_header(seq=seq))
        return seq

    return sync(sub, send)


def recv_seq(sub: Subscriber, seq: int) -> tuple[dict, np.ndarray]:
    """The frame ``seq`` from ``sub`` (frames sent before it are skipped), waiting up to PATIENCE_S for each."""
    while (frame := sub.recv(PATIENCE_S)) is not None and frame[0]["seq"] < seq:
        pass
    assert frame is not None, f"no frame within {PATIENCE_S:g} s"
    assert frame[0]["seq"] == seq, f"got seq {frame[0]['seq']}, expected {seq}"
    return frame


@contextmanager
def publishing(image: np.ndarray, rate_hz: float = 100.0, endpoint: str = ANY_PORT,
               **cfg: object) -> Iterator[Publisher]:
    """A Publisher on a random loopback port (of ``endpoint``) sending ``image`` at ``rate_hz`` from a thread."""
    stop = threading.Event()
    with Publisher(PublishConfig(endpoint=endpoint, **cfg)) as pub:
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


def with_raw_field(key: str, raw_json: str) -> list[bytes]:
    """A 4x6 bgr8 message whose field ``key`` is ``raw_json`` verbatim (what json.dumps refuses to write)."""
    topic, header, payload = with_header(**{key: "@"})
    return [topic, header.replace(b'"@"', raw_json.encode()), payload]


# Hand-built messages that must be skipped and counted, never crash a consumer, and the reason decode_message gives.
MALFORMED = {
    # Python 3.10 says "limit (4300) for", later ones "limit (4300 digits)"
    "int_of_5000_digits": (with_raw_field("seq", "9" * 5000), "Exceeds the limit (4300"),
    "nested_20000_deep": (with_raw_field("timings_ms", '{"a": ' + "[" * 20_000 + "]" * 20_000 + "}"),
                          "nested too deeply"),
    "header_over_64k": (with_header(frame_id="x" * 70_000), "more than 65536"),
    "seq_10e400": (with_header(seq=10**400), "header field seq=1000"),
    "seq_negative": (with_header(seq=-1), "header field seq=-1 is out of range"),
    "t_capture_vis_10e400": (with_header(t_capture_vis_ns=10**400), "header field t_capture_vis_ns=1000"),
    "t_capture_ir_minus_10e400": (with_header(t_capture_ir_ns=-(10**400)), "header field t_capture_ir_ns=-1000"),
    "t_publish_2e63": (with_header(t_publish_ns=2**63), "out of range"),
    "height_10e6": (with_header(height=10**6), "header field height=1000000 is out of range"),
    "is_bigendian_7": (with_header(is_bigendian=7), "header field is_bigendian=7 is out of range 0..1"),
    "timing_nan": (with_header(timings_ms={"fuse": float("nan")}), "timings_ms['fuse']=nan"),
    "timing_string": (with_header(timings_ms={"fuse": "1 ms"}), "timings_ms['fuse']='1 ms'"),
}


class SilentLink:
    """A TCP relay to a loopback ``port`` whose connections made so far go silent on :meth:`cut`: bytes are taken and
    dropped both ways, the sockets stay open (a link that died without closing: a power cut, a radio out of range);
    connections made later relay again."""

    def __init__(self, port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port, self._target, self.accepted = self._listener.getsockname()[1], port, 0
        self._cut: set[int] = set()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._sockets += [client, upstream]
            link, self.accepted = self.accepted, self.accepted + 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(src, dst, link), daemon=True).start()

    def _relay(self, src: socket.socket, dst: socket.socket, link: int) -> None:
        try:
            while data := src.recv(65536):
                if link not in self._cut:
                    dst.sendall(data)
        except OSError:  # closed
            pass

    def cut(self) -> None:
        self._cut.update(range(self.accepted))

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()
