"""The publisher's bind on an IPv6 address, and a subscriber receiving through it; its consumers' key folder."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth
from helpers_zmq import ANY_PORT, PATIENCE_S, connect, fused_frame, has_ipv6_loopback, held_port

from streamfuse.client import Subscriber
from streamfuse import endpoints
from streamfuse.endpoints import bind, url_host
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


def _keys(tmp_path: Path) -> tuple[str, Path]:
    """The publisher's secret key file and a folder holding one consumer's public key."""
    _, secret = zmq.auth.create_certificates(tmp_path, "rig0")
    robot_public, _ = zmq.auth.create_certificates(tmp_path, "robot")
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "robot.key").write_bytes(Path(robot_public).read_bytes())
    return str(secret), tmp_path / "allowed"


def test_a_consumers_key_file_without_a_public_key_is_named_with_its_folder(tmp_path: Path) -> None:
    # zmq's own ValueError ("No public key found in ...") went out without saying which setting it came from
    secret, allowed = _keys(tmp_path)
    (allowed / "broken.key").write_text("metadata\n")
    ctx = zmq.Context()
    try:
        with ctx.socket(zmq.PUB) as sock, \
                pytest.raises(ValueError, match=f"^publish.curve_clients_dir {allowed}: No public key found in "):
            bind(sock, ANY_PORT, secret, str(allowed))
    finally:
        ctx.destroy(linger=0)


def test_a_public_key_file_given_as_the_secret_key_is_named_in_one_line(tmp_path: Path) -> None:
    # the .key file beside the .key_secret one is an easy mistake: zmq was handed no key at all
    public, _ = zmq.auth.create_certificates(tmp_path, "rig0")
    said = rf"^publish.curve_secret_file {public} holds no secret key \(use the .key_secret file\)$"
    with zmq.Context.instance().socket(zmq.XPUB) as sock, pytest.raises(ValueError, match=said):
        bind(sock, ANY_PORT, public)


def test_a_bind_that_fails_stops_the_consumers_key_check(tmp_path: Path) -> None:
    # the ZAP handler started for curve_clients_dir went on running (a thread and a socket) after the bind failed
    secret, allowed = _keys(tmp_path)
    ctx = zmq.Context()
    try:
        taken = ctx.socket(zmq.PUB)
        taken.bind(ANY_PORT)
        before = set(threading.enumerate())
        with ctx.socket(zmq.PUB) as sock, pytest.raises(zmq.ZMQError):
            bind(sock, taken.getsockopt_string(zmq.LAST_ENDPOINT), secret, str(allowed))
        assert [t.name for t in threading.enumerate() if t not in before] == []
    finally:
        ctx.destroy(linger=0)


def test_an_ipc_path_that_holds_a_file_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    # libzmq deletes what is at an ipc:// path before it binds there: publish.endpoint=ipc://notes.txt lost the file
    kept = tmp_path / "notes.txt"
    kept.write_text("the rig's calibration")
    with zmq.Context.instance().socket(zmq.XPUB) as sock, pytest.raises(FileExistsError, match="is not a socket"):
        bind(sock, f"ipc://{kept}")
    assert kept.read_text() == "the rig's calibration"
    link = tmp_path / "link"  # a link, even one whose target is gone, is the user's too: not followed, not deleted
    link.symlink_to(tmp_path / "gone")
    with zmq.Context.instance().socket(zmq.XPUB) as sock, pytest.raises(FileExistsError, match="is not a socket"):
        bind(sock, f"ipc://{link}")
    assert link.is_symlink()


def test_ipc_endpoints_that_name_no_path_here_are_bound_whatever_the_working_folder_holds(tmp_path: Path,
                                                                                         monkeypatch) -> None:
    """ipc://* (a path libzmq picks) and ipc://@NAME (Linux's abstract names) are no files of the working folder: a
    file there named like them is no reason to refuse them. A path that cannot be looked at (a file taken for a
    folder) is left to libzmq's bind to refuse, in its own words."""
    monkeypatch.chdir(tmp_path)
    for name in ("*", f"@streamfuse-test-{os.getpid()}-fused"):
        (tmp_path / name).write_text("a file of the user's")
        with zmq.Context.instance().socket(zmq.XPUB) as sock:
            bind(sock, f"ipc://{name}")
    (tmp_path / "notes.txt").write_text("not a folder")
    with zmq.Context.instance().socket(zmq.XPUB) as sock, pytest.raises(zmq.ZMQError):
        bind(sock, f"ipc://{tmp_path}/notes.txt/fused")


def test_a_second_publisher_on_a_running_ones_ipc_path_is_refused_as_on_tcp(tmp_path: Path) -> None:
    # it took the path over in silence, and the first run's consumers that connected again reached the second
    endpoint = f"ipc://{tmp_path}/fused"
    with Publisher(PublishConfig(endpoint=endpoint)), pytest.raises(RuntimeError, match="is already in use"):
        Publisher(PublishConfig(endpoint=endpoint))
    stale = tmp_path / "stale"
    with socket.socket(socket.AF_UNIX) as left:  # the socket file of a run that was killed: no one listens there
        left.bind(str(stale))
    with Publisher(PublishConfig(endpoint=f"ipc://{stale}")) as pub:  # taken over, as before
        assert pub.endpoint == f"ipc://{stale}"


@pytest.mark.parametrize("transport, nodrop", [("tcp", False), ("tcp", True), ("ipc", False)])
def test_a_publisher_closed_leaves_its_endpoint_to_the_next_at_once(tmp_path: Path, transport: str,
                                                                      nodrop: bool) -> None:
    # libzmq closes a closed socket's listener on its I/O thread a moment after the close: a publisher made again at
    # once on the same endpoint (a stack restarting its publishing part) was refused as "already in use", 7 times in
    # 30 on tcp:// (nodrop: the publisher's own context); on ipc:// the bind waited for the path, up to a second
    with held_port(shared=True) as port:  # libzmq's listener binds it with SO_REUSEADDR too; no one else takes it
        endpoint = f"tcp://127.0.0.1:{port}" if transport == "tcp" else f"ipc://{tmp_path}/fused"
        for _ in range(30):
            with Publisher(PublishConfig(endpoint=endpoint, nodrop=nodrop)) as pub:
                assert pub.endpoint == endpoint


def test_a_running_publishers_ipc_path_is_refused_at_first_sight(tmp_path: Path, monkeypatch) -> None:
    # a publisher of this process closed a moment ago is gone once its close returns: a socket still listened on is
    # another publisher's, whose path the bind looked at again for a second before refusing it
    looks, look = [], endpoints._listened_on
    monkeypatch.setattr(endpoints, "_listened_on", lambda path: looks.append(path) or look(path))
    path = tmp_path / "fused"
    with socket.socket(socket.AF_UNIX) as running:  # the other publisher's listener
        running.bind(str(path))
        running.listen()
        with pytest.raises(RuntimeError, match="is already in use"):
            Publisher(PublishConfig(endpoint=f"ipc://{path}"))
    assert looks == [str(path)]


def test_the_page_url_names_the_host_as_a_url_does():
    assert [url_host(h) for h in ("127.0.0.1", "::1", "", "viewer.example")] == \
        ["127.0.0.1", "[::1]", "localhost", "viewer.example"]
