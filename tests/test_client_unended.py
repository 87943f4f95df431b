"""A publisher sending a message that never ends (parts with the more flag for ever), which libzmq holds whole and
unseen until its last part, is cut once more of it has come than a frame's message (or a stats message) can be."""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time

import pytest
from helpers_zmq import PATIENCE_S, read_exact

from streamfuse.client import Subscriber
from streamfuse.view.stats_in import StatsMessages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's count of bytes (TCP_INFO)")

MAX_FRAME_BYTES = 100_000
MOST_SENT = 64 * 2**20  # the peer stops there: without the cut the subscriber holds it all, but no more
RATE = 32 * 2**20  # bytes a second the peer sends: the cut's looks at the count, a few ms apart, may come late


def _frame(body: bytes, flags: int = 0) -> bytes:
    long = len(body) > 255
    return bytes([flags | 2 * long]) + (struct.pack(">Q", len(body)) if long else bytes([len(body)])) + body


class _EndlessMessage(threading.Thread):
    """A ZMTP 3.0 PUB peer that, on the first connection, sends one message of parts of 64 KiB, each with the more
    flag, until ``MOST_SENT`` or until the subscriber cuts it (``cut``)."""

    def __init__(self, listener: socket.socket) -> None:
        super().__init__(daemon=True)
        self.listener, self.sent, self.cut = listener, 0, False

    def run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + b"\x00" + bytes(31))
            conn.sendall(_frame(b"\x05READY\x0bSocket-Type" + struct.pack(">I", 3) + b"PUB", 4))
            read_exact(conn, read_exact(conn, 64 + 2)[-1])  # its greeting and READY: a part sent before them fails
            part = _frame(bytes(65536), 1)
            try:
                conn.sendall(_frame(b"fused/rig0", 1))
                start = time.monotonic()
                while self.sent < MOST_SENT:
                    conn.sendall(part)
                    self.sent += len(part)
                    time.sleep(max(start + self.sent / RATE - time.monotonic(), 0))  # paced: not the cut's timing
            except OSError:  # reset, or a broken pipe: the subscriber ended the connection
                self.cut = True


def test_a_message_that_never_ends_is_cut_before_the_subscriber_holds_much_of_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = _EndlessMessage(listener)
        peer.start()
        with Subscriber(f"tcp://127.0.0.1:{listener.getsockname()[1]}", timeout_s=0.1, shm=False,
                        max_frame_bytes=MAX_FRAME_BYTES) as sub:
            while peer.is_alive() and sub.malformed == 0:
                assert sub.recv() is None
            peer.join(PATIENCE_S)
    assert peer.cut, f"the subscriber took all {peer.sent / 2**20:.0f} MiB of a message that never ended"
    # on top of the cut's 0.2 MB: what the kernels' buffers hold on both sides (a few MB) and what came between two
    # looks at the count (5 ms apart, later on a loaded machine)
    assert peer.sent < 32 * 2**20, peer.sent
    assert sub.malformed == 1 and "of a message not ended yet" in sub.last_malformed, sub.last_malformed


def test_the_viewers_stats_input_cuts_a_message_that_never_ends() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer, stop = _EndlessMessage(listener), threading.Event()
        peer.start()
        stats = StatsMessages(f"tcp://127.0.0.1:{listener.getsockname()[1]}", "stats/", ("", ""), stop)
        reader = threading.Thread(target=lambda: [None for _ in stats], daemon=True)
        reader.start()
        peer.join(PATIENCE_S)
        stop.set()
        reader.join(PATIENCE_S)
    assert peer.cut, f"the stats input took all {peer.sent / 2**20:.0f} MiB of a message that never ended"
    assert peer.sent < 32 * 2**20 and stats.malformed == 1, (peer.sent, stats.malformed)
