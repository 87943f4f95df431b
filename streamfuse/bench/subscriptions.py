"""What long subscriptions cost a publisher: ``--peers`` peers (hand-written ZMTP 3.0 SUBs, which keep no
subscriptions of their own to tear down) each send ``--count`` subscriptions of ``--bytes`` bytes to a plain libzmq
XPUB socket in this process, then one such peer to streamfuse's ``Publisher``. Prints, for each, the memory the
process gained once the subscriptions arrived (libzmq keeps them as a trie of one node a byte until the peer leaves),
per byte, and the longest the publisher's socket was held by a single call while the peers left (the trie's teardown
runs in the socket's own thread).

Example: ``python -m streamfuse bench subscriptions --bytes 1000000``; a SUB that subscribes to 1000 topics of 4 KiB
as it connects, four times over: ``--peers 4 --count 1000 --bytes 4096``.

``--flood N`` measures a flood instead: while streamfuse's ``Publisher`` sends small frames at 30 frames/s, ``--peers``
peers each send it N distinct subscriptions of 100 bytes (which it takes in: under its 512 bytes) as fast as it reads
them. Prints the memory the process gained (libzmq keeps each distinct one until its peer leaves), the frames it sent
a second while the flood lasted (at least a second), its longest wait between two frames, and the peers it cut.
``--ipc`` floods an ``ipc://`` publisher instead, whose peers are told apart by process: there ``--peers`` are one
process's connections.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np
import zmq

from streamfuse.cli.args import DefaultsFormatter, Parser, int_at_least
from streamfuse.frames import Frame, FramePair, FusedFrame
from streamfuse.publish import PublishConfig, Publisher

WAIT_S = 60.0  # for the subscription to arrive or the peer's leaving to be taken: a busy machine takes seconds
QUIET_S = 1.0  # after the peer left: calls timed until none was slow for this long
FLOOD_BYTES = 100  # a flooding subscription's length: one the publisher takes in (it cuts a message over 512 bytes)
FLOOD_FPS = 30.0  # the publisher's frames while it is flooded, a second (small ones: its own work is the flood's)
FLOOD_MIN_S = 1.0  # frames counted for at least this long from the flood's start: a cut flood lasts milliseconds
FLOOD_CHUNK = 1000  # subscriptions a peer writes in one go


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _frame(body: bytes, flags: int = 0) -> bytes:
    long = len(body) > 255
    return bytes([flags | 2 * long]) + (struct.pack(">Q", len(body)) if long else bytes([len(body)])) + body


def _read(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        if not (more := peer.recv(size - len(data))):
            raise ConnectionResetError("the publisher closed the connection in its handshake")
        data += more
    return data


def connect_plain(endpoint: str) -> socket.socket:
    """A plain socket connected to a ``tcp://HOST:PORT`` or ``ipc://PATH`` endpoint."""
    if endpoint.startswith("ipc://"):
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.settimeout(WAIT_S)
        peer.connect(endpoint.removeprefix("ipc://"))
        return peer
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=WAIT_S)


def _subscribe(endpoint: str, topics: list[bytes]) -> socket.socket:
    """A ZMTP 3.0 SUB peer (NULL mechanism) connected to ``endpoint`` that has sent its subscriptions to ``topics``, or
    as much of them as the publisher took before it closed the connection."""
    peer = connect_plain(endpoint)
    try:
        peer.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + b"\x00" + bytes(31))
        peer.sendall(_frame(b"\x05READY\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB", 4))
        # the publisher's greeting and READY first: bytes sent with the handshake's may wait there for more to come
        _, ready_bytes = _read(peer, 64 + 2)[-2:]
        _read(peer, ready_bytes)
        peer.sendall(b"".join(_frame(b"\x01" + topic) for topic in topics))
    except (BrokenPipeError, ConnectionResetError):
        pass  # dropped: the caller's next read says so
    return peer


def _held_s(call: Callable[[], object]) -> float:
    """The longest single ``call`` while calls go on until none took long for ``QUIET_S``."""
    longest, quiet_since = 0.0, time.perf_counter()
    while time.perf_counter() - quiet_since < QUIET_S:
        t0 = time.perf_counter()
        call()
        took = time.perf_counter() - t0
        longest = max(longest, took)
        if took > 0.01:
            quiet_since = time.perf_counter()
        time.sleep(0.001)
    return longest


def _plain_xpub(topics: list[list[bytes]]) -> tuple[int, float]:
    """Memory gained (bytes) once a plain XPUB took every peer's subscriptions (``topics``: a list per peer), and the
    longest call while they left."""
    ctx = zmq.Context.instance()
    xpub = ctx.socket(zmq.XPUB)
    try:
        xpub.bind("tcp://127.0.0.1:*")
        before = _rss_bytes()
        conns = [_subscribe(xpub.getsockopt_string(zmq.LAST_ENDPOINT), own) for own in topics]
        for _ in range(sum(map(len, topics))):
            if not xpub.poll(WAIT_S * 1000):
                raise RuntimeError(f"the subscriptions did not arrive in {WAIT_S:g} s")
            xpub.recv()
        gained = _rss_bytes() - before
        for peer in conns:
            peer.close()
        return gained, _held_s(lambda: xpub.poll(0))
    finally:
        xpub.close(linger=0)


def _publisher(topics: list[bytes]) -> tuple[int, bool]:
    """Memory gained (bytes) as streamfuse's Publisher took a peer's subscriptions, and whether it dropped the peer."""
    with Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*", shm_slots=0)) as pub:
        before = _rss_bytes()
        peer = _subscribe(pub.endpoint, topics)
        peer.settimeout(WAIT_S)
        try:
            while peer.recv(65536):  # the publisher's greeting, then nothing until it closes the connection
                pass
            dropped = True
        except (TimeoutError, ConnectionResetError) as exc:
            dropped = isinstance(exc, ConnectionResetError)
        finally:
            peer.close()
        return _rss_bytes() - before, dropped


def _flood(endpoint: str, chunks: list[bytes], peers: list[socket.socket], done: threading.Event) -> None:
    """A peer, added to ``peers``, sending ``chunks`` of subscriptions to ``endpoint`` as fast as it takes them, until
    all are sent or it is cut; ``done`` is set then (it stays connected, its subscriptions with it, until closed)."""
    try:
        peers.append(peer := _subscribe(endpoint, []))
        for chunk in chunks:
            peer.sendall(chunk)  # without the GIL: the publisher's thread goes on as if the peer were another process
    except OSError:  # cut (reset, broken pipe)
        pass
    finally:
        done.set()


def _flooded(floods: list[list[bytes]], endpoint: str) -> tuple[int, int, float, float, int]:
    """Memory gained (bytes) and its peak, frames a second and the longest wait between two, and the peers cut while
    streamfuse's Publisher, bound to ``endpoint`` and sending small frames, took each peer's flood (its subscriptions,
    ``FLOOD_CHUNK`` a chunk)."""
    image = np.zeros((120, 160, 3), np.uint8)
    with Publisher(PublishConfig(endpoint=endpoint, shm_slots=0)) as pub:
        before = peak = _rss_bytes()
        ends, peers = [threading.Event() for _ in floods], []
        for own, end in zip(floods, ends):
            threading.Thread(target=_flood, args=(pub.endpoint, own, peers, end), daemon=True).start()
        start = last = time.perf_counter()
        sent, longest = 0, 0.0
        while not all(end.is_set() for end in ends) or last - start < FLOOD_MIN_S:
            t = time.time_ns()
            pub.send_fused(FusedFrame(FramePair(Frame("ir", sent, t, image[..., 0]), Frame("vis", sent, t, image)),
                                      image, "max", "0", t))
            now = time.perf_counter()
            sent, longest, last = sent + 1, max(longest, now - last), now
            peak = max(peak, _rss_bytes())
            time.sleep(max(start + sent / FLOOD_FPS - time.perf_counter(), 0.0))
        gained = _rss_bytes() - before
        for peer in peers:
            peer.close()
        return gained, peak - before, sent / (last - start), longest, pub.peers_cut


def _print_flood(peers: int, count: int, ipc: bool) -> int:
    # each its own from the first bytes, as in main; written out before the measure, which they would slow down
    floods = [[b"".join(_frame(b"\x01" + f"{p:03d}.{i:07d}".encode().ljust(FLOOD_BYTES, b"t"))
                        for i in range(at, min(at + FLOOD_CHUNK, count)))
               for at in range(0, count, FLOOD_CHUNK)] for p in range(peers)]
    with tempfile.TemporaryDirectory(prefix="streamfuse-bench-") as folder:
        endpoint = f"ipc://{folder}/flood" if ipc else "tcp://127.0.0.1:*"
        gained, peak, fps, longest, cut = _flooded(floods, endpoint)
    print(f"{peers} {endpoint.partition(':')[0]} peer(s) flooding streamfuse's Publisher with {count} subscription(s) "
          f"of {FLOOD_BYTES} bytes each, "
          f"load average {os.getloadavg()[0]:.2f}:")
    print(f"  {gained / 2**20:+.1f} MiB of memory ({peak / 2**20:+.1f} MiB at most), {fps:.1f} frames/s while it "
          f"lasted ({FLOOD_FPS:g} asked), {longest:.3f} s at most between two frames; {cut} peer(s) cut")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m streamfuse bench subscriptions", description=__doc__,
                    formatter_class=DefaultsFormatter)
    parser.add_argument("--bytes", type=int_at_least(1000, 10**8), default=1_000_000, help="each subscription's length")
    parser.add_argument("--count", type=int_at_least(1, 10**5), default=1, help="subscriptions a peer sends")
    parser.add_argument("--peers", type=int_at_least(1, 100), default=1,
                        help="peers subscribing to the plain XPUB, or flooding")
    parser.add_argument("--flood", type=int_at_least(0, 10**6), default=0,
                        help=f"distinct subscriptions of {FLOOD_BYTES} bytes each peer floods streamfuse's Publisher "
                             "with while it sends frames (--bytes and --count unused); 0: no flood")
    parser.add_argument("--ipc", action="store_true", help="flood over ipc:// (a folder of its own) instead of tcp://")
    args = parser.parse_args(argv)
    if args.flood:
        return _print_flood(args.peers, args.flood, args.ipc)
    # each topic its own from the first bytes, a peer's and its number: no two share a node of the trie, and the
    # socket tells each as it arrives (it tells a topic once, however many peers subscribe to it)
    topics = [[f"{p:03d}.{i:05d}".encode().ljust(args.bytes, b"t") for i in range(args.count)]
              for p in range(args.peers)]
    total = args.peers * args.count * args.bytes
    gained, held = _plain_xpub(topics)
    print(f"{args.peers} peer(s) x {args.count} subscription(s) of {args.bytes} bytes, load average "
          f"{os.getloadavg()[0]:.2f}:")
    print(f"  plain libzmq XPUB {zmq.zmq_version()}: {gained / 2**20:.1f} MiB more memory "
          f"({gained / total:.0f} bytes a byte); the peers' leaving held the socket {held:.3f} s")
    gained, dropped = _publisher(topics[0])
    print(f"  streamfuse Publisher: {gained / 2**20:+.1f} MiB of memory; the peer "
          f"{'was disconnected' if dropped else 'stayed connected'}")
    return 0
