"""A connection that ZeroMQ drops on a refused part is restored without losing the frames queued before that part,
and without libzmq aborting the process. Each scenario runs in a child process, so that an abort is its exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers_zmq import PATIENCE_S

REPO = Path(__file__).resolve().parents[1]

# A raw ZMTP 3.0 publisher that writes each burst (good frames, then one whose image part is over the subscriber's
# max_frame_bytes) in one go, so that the subscriber sees the drop while those frames are still queued; it serves
# each connection the subscriber makes again after the drop.
_SCENARIO = """
import json, socket, struct, sys, threading
import numpy as np
from helpers_zmq import PATIENCE_S, good_parts, wait_until, with_header
from streamfuse.client import Subscriber

ROUNDS, GOOD = 3, 3

def frame(body, flags=0):
    size = struct.pack(">Q", len(body)) if len(body) > 255 else bytes([len(body)])
    return bytes([flags | 2 * (len(body) > 255)]) + size + body

def message(parts):
    return b"".join(frame(part, int(i < len(parts) - 1)) for i, part in enumerate(parts))

def publish(listener):
    greeting = b"\\xff" + bytes(8) + b"\\x7f\\x03\\x00" + b"NULL".ljust(20, b"\\0") + b"\\x01" + bytes(31)
    ready = frame(b"\\x05READY\\x0bSocket-Type" + struct.pack(">I", 3) + b"PUB", 4)
    refused = message(good_parts(np.zeros((200, 200, 3), np.uint8)))
    held = []
    for r in range(ROUNDS):
        conn, _ = listener.accept()
        held.append(conn)
        conn.sendall(greeting + ready)
        said = b""
        while b"\\x01fused/" not in said:  # its subscription: what is sent from now on reaches it
            said += conn.recv(4096)
        conn.sendall(b"".join(message(with_header(seq=r * GOOD + i)) for i in range(GOOD)) + refused)

listener = socket.create_server(("127.0.0.1", 0))
endpoint = "tcp://127.0.0.1:%d" % listener.getsockname()[1]
with Subscriber(endpoint, timeout_s=PATIENCE_S, rcvhwm=10, max_frame_bytes=4000, shm=False) as sub:
    threading.Thread(target=publish, args=(listener,), daemon=True).start()
    got = []
    while len(got) < ROUNDS * GOOD and (got_frame := sub.recv()) is not None:
        got.append(got_frame[0]["seq"])
        if got[-1] % GOOD == 0:  # a consumer busy with a round's first frame until the drop seen is due a restore
            wait_until(lambda: sub._watch.dropped_at is None or sub._watch.restore_due(), "the restore due")
    print(json.dumps(got))
"""


def test_frames_queued_before_a_refused_part_are_all_received_and_the_connection_restored() -> None:
    # a publisher sending a few frames at once, then one over max_frame_bytes, to a consumer still busy with the
    # first when the drop is due its restore: the reconnect dropped the rest of the message whose first part the
    # socket had taken off (asking whether one was queued), and libzmq aborted ("Assertion failed: !_more")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.run([sys.executable, "-c", _SCENARIO], env=env, capture_output=True, text=True,
                          timeout=4 * PATIENCE_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == list(range(9))  # each round's, in order, none lost
