"""A consumer started before its publisher's host name resolves waits for the name, then connects or says which name
never resolved; an IPv6 endpoint gets ZMQ_IPV6. The resolver is the stand-in of ``connection_watch._resolve``: no
real DNS here, and the waits between lookups run on a fake clock."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_zmq import (ANY_PORT, PATIENCE_S, connect, has_ipv6_loopback, held_port, plain_pub, publishing,
                         raw_connect, SilentLink, wait_until)

from streamfuse import connection_watch
from streamfuse.client import Subscriber
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.shm_pool import shm_supported
from streamfuse.subscribe import main as subscribe_main
from streamfuse.view.feed import Feed

REPO = Path(__file__).resolve().parents[1]
NOT_KNOWN = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
V4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))
V6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0))


class Resolver:
    """Stands in for the resolver: ``name`` fails ``failures`` times, then resolves to ``answer`` (None: never)."""

    def __init__(self, name: str, failures: int, answer: list[tuple] | None = None) -> None:
        self.name, self.failures, self.answer, self.calls = name, failures, answer, 0

    def __call__(self, name: str) -> list[tuple]:
        assert name == self.name, f"looked up {name}, expected {self.name}"
        self.calls += 1
        if self.answer is None or self.calls <= self.failures:
            raise NOT_KNOWN
        return self.answer


class FakeClock:
    """``connection_watch``'s ``time``: sleeping only moves the clock on, and the pauses are kept."""

    def __init__(self) -> None:
        self.now, self.pauses = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Resolver]:
    def install(name: str, failures: int, answer: list[tuple] | None = None) -> Resolver:
        fake = Resolver(name, failures, answer)
        monkeypatch.setattr(connection_watch, "_resolve", fake, raising=False)
        return fake

    return install


@pytest.fixture
def port() -> Iterator[int]:
    """A loopback port that nothing listens on, held by the test (nothing binds it meanwhile)."""
    with held_port() as held:
        yield held


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookups retried after a millisecond (real sleeps: a connecting subscriber needs the real clock)."""
    monkeypatch.setattr(connection_watch, "_RETRY_S", (0.001, 0.002), raising=False)


def test_a_name_that_never_resolves_is_looked_up_with_backoff_until_the_timeout(resolver, monkeypatch, caplog):
    fake = resolver("pub.invalid", failures=0)
    clock = FakeClock()
    monkeypatch.setattr(connection_watch, "time", clock)
    with caplog.at_level(logging.WARNING, "streamfuse.connection_watch"), \
            pytest.raises(ValueError, match=r"^cannot connect to tcp://pub\.invalid:47001: the host name pub\.invalid "
                                            r"does not resolve \(Name or service not known; waited 10 s\)$"):
        Subscriber("tcp://pub.invalid:47001", timeout_s=10.0)
    assert clock.pauses == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 0.5]  # 0.5 s doubling up to 2 s, the last up to the deadline
    assert fake.calls == len(clock.pauses) + 1  # one more lookup at the deadline
    waiting = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert waiting == ["the host name pub.invalid does not resolve (Name or service not known); waiting up to 10 s "
                       "for it"]  # said once, not at each lookup


def test_a_name_that_resolves_later_is_connected_to(resolver, quick_retries, rng: np.random.Generator) -> None:
    # a consumer started before its publisher's DNS name exists (docker-compose, a k8s service coming up)
    fake = resolver("localhost", failures=2, answer=[V4])
    with Publisher(PublishConfig(endpoint=ANY_PORT)) as pub, \
            Subscriber(pub.endpoint.replace("127.0.0.1", "localhost"), timeout_s=PATIENCE_S, shm=False) as sub:
        connect(pub, sub, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert fake.calls == 3


def test_the_subscribe_cli_waits_for_the_name_then_receives(resolver, quick_retries, capsys,
                                                            rng: np.random.Generator) -> None:
    fake = resolver("localhost", failures=3, answer=[V4])
    with publishing(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) as pub:
        assert subscribe_main([pub.endpoint.replace("127.0.0.1", "localhost"), "--count", "2", "--no-shm",
                               "--timeout", str(PATIENCE_S)]) == 0
    assert fake.calls == 4
    assert capsys.readouterr().out.splitlines()[-1].startswith("received 2 frames")


def test_the_viewer_waits_for_the_name(resolver, quick_retries, port) -> None:
    fake = resolver("localhost", failures=2, answer=[V4])
    feed = Feed(f"tcp://localhost:{port}")
    feed.stats_in.close()
    assert fake.calls == 3


def test_ipv6_is_set_for_an_ipv6_address_or_a_name_with_ipv6_addresses_only(resolver, port) -> None:
    # with ZMQ_IPV6 libzmq takes a name's IPv6 address first: a name with an IPv4 one keeps to IPv4
    for host, answer, ipv6 in (("localhost", [V6], 1), ("localhost", [V6, V4], 0), ("localhost", [V4], 0),
                               ("[::1]", [V6], 1), ("127.0.0.1", [V4], 0)):
        resolver(host.strip("[]"), failures=0, answer=answer)
        connection_watch._resolved.clear()
        sock, watch = connection_watch.connect_sub(f"tcp://{host}:{port}", [b""], rcvhwm=2, max_part_bytes=1024)
        try:
            assert sock.getsockopt(zmq.IPV6) == ipv6, (host, answer)
        finally:
            watch.close()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_an_ipv6_address_is_connected_to() -> None:
    with plain_pub("tcp://[::1]:*", ipv6=True) as sock, \
            Subscriber(sock.getsockopt_string(zmq.LAST_ENDPOINT), "fused/", timeout_s=PATIENCE_S, shm=False) as sub:
        raw_connect(sock, sub)  # without ZMQ_IPV6 the subscriber retried [::1] in silence, forever


_NEVER_RESOLVES = """
import socket, sys
def getaddrinfo(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
socket.getaddrinfo = getaddrinfo
from streamfuse.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["subscribe", "view", "foxglove"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_while_waiting_for_the_name_stops_cleanly(command: str, sig: signal.Signals) -> None:
    if command == "foxglove":
        pytest.importorskip("foxglove")
    # waits longer than the test takes to send its signal
    args = ["--timeout", "600"] if command == "subscribe" else ["--name-wait", "600", "--port", "0"]
    proc = subprocess.Popen([sys.executable, "-u", "-c", _NEVER_RESOLVES, command, "tcp://pub.invalid:47001", *args],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        said = []
        for line in proc.stderr:  # until it says that it waits for the name (or ends: base said "error" at once)
            said.append(line)
            if "the host name pub.invalid does not resolve" in line and "waiting up to" in line:
                break
        else:
            pytest.fail("never said that it waits for the name: " + "".join(said)[-2000:])
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=PATIENCE_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "error" not in err, err[-2000:]


def test_a_name_with_loopback_addresses_only_is_this_host(resolver, port) -> None:
    # a host name was taken for another machine's: tcp://localhost:PORT (or a name /etc/hosts maps to 127.0.1.1)
    # never read the publisher's shared memory
    lan = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 0))
    debian = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.1.1", 0))
    for answer, here in (([debian, V6], True), ([V4], True), ([lan, V4], False)):
        resolver("pub.test", failures=0, answer=answer)
        connection_watch._resolved.clear()
        sock, watch = connection_watch.connect_sub(f"tcp://pub.test:{port}", [b""], rcvhwm=2, max_part_bytes=1024)
        watch.close()
        assert connection_watch.on_this_host(f"tcp://pub.test:{port}") == here, answer
    resolver("pub.test", failures=0, answer=[debian])
    connection_watch._resolved.clear()
    with Subscriber(f"tcp://pub.test:{port}", timeout_s=PATIENCE_S) as sub:  # this host's once its own lookup says so
        assert sub._shm == shm_supported()
    connection_watch._resolved.clear()  # judged without a lookup: literal addresses, localhost, other transports
    assert connection_watch.on_this_host("tcp://[::1]:5555") and connection_watch.on_this_host("ipc:///tmp/s")
    assert connection_watch.on_this_host("tcp://localhost:5555")
    assert not connection_watch.on_this_host("tcp://192.0.2.1:5555")
    assert not connection_watch.on_this_host("tcp://unlooked.test:5555")  # never looked up: another host's


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_a_link_that_goes_silent_is_made_again(rng: np.random.Generator, latest: bool) -> None:
    # TCP never tells a connection whose peer vanished without a word; the consumer waited on it for ever
    with publishing(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), rate_hz=50) as pub:
        link = SilentLink(int(pub.endpoint.rpartition(":")[2]))
        try:
            with Subscriber(f"tcp://127.0.0.1:{link.port}", timeout_s=PATIENCE_S, shm=False, latest=latest) as sub:
                assert sub.recv() is not None
                link.cut()
                silenced = pub.published
                while (frame := sub.recv()) is not None and frame[0]["seq"] <= silenced:
                    pass  # what was on its way before the cut
        finally:
            link.close()
    assert frame is not None, "no frame after the link went silent"
    assert link.accepted >= 2  # through a connection made again


def test_a_consumer_sends_no_zeromq_heartbeats() -> None:
    # with them a consumer behind on its frames had its live connection dropped, and libzmq 4.3 then aborted the
    # whole process at its next read ("Assertion failed: _input_stopped", libzmq issue 3937): silence is timed here
    sock, watch = connection_watch.connect_sub("tcp://127.0.0.1:1", [b"fused/"], rcvhwm=2, max_part_bytes=1000)
    try:
        assert sock.getsockopt(zmq.HEARTBEAT_IVL) == 0
    finally:
        watch.close()


def test_load_server_key_reads_a_key_file_or_says_what_is_wrong(tmp_path: Path) -> None:
    public, _ = zmq.auth.create_certificates(tmp_path, "rig0")
    key = zmq.auth.load_certificate(public)[0].decode()
    load = connection_watch.load_server_key
    assert load(str(public)) == key and load(key) == key and load("") == ""
    assert load("short") == "short"  # not a path: the Subscriber says what a key must be
    empty = tmp_path / "empty.key"
    empty.write_text("# no key here\n")
    for value, reason in [(str(empty), f"server key file {empty} holds no public key"),
                          (str(tmp_path / "missing.key"), "does not exist"), ("keys/rig0.key", "does not exist"),
                          (str(tmp_path), "is not a regular file")]:
        with pytest.raises(ValueError, match=re.escape(reason)):
            load(value)


_PAIR_NAMES = (f"inproc://watched-{n}" for n in itertools.count())  # never one a closing monitor may still hold


class WatchedSocket:
    """Stands in for a consumer's SUB socket: its monitor is one end of a PAIR whose other end sends the events a test
    needs (:meth:`event`); its connects and disconnects are noted in ``calls``."""

    def __init__(self) -> None:
        ctx = zmq.Context.instance()
        self.monitor, self._events, self.calls = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR), []
        name = next(_PAIR_NAMES)
        self.monitor.bind(name)
        self._events.connect(name)

    def get_monitor_socket(self, events: int) -> zmq.Socket:
        return self.monitor

    def event(self, *events: int) -> None:
        for event in events:
            self._events.send_multipart([struct.pack("=hi", event, 0), b"tcp://pub.test:5555"])

    def connect(self, endpoint: str) -> None:
        self.calls.append(("connect", endpoint))

    def disconnect(self, endpoint: str) -> None:
        self.calls.append(("disconnect", endpoint))

    def disable_monitor(self) -> None:
        pass

    def close(self, linger: int | None = None) -> None:
        self._events.close(linger=0)


def test_a_watched_socket_made_as_the_last_one_closes_binds_its_pair() -> None:
    # its pair was named after id(): the next one, made at the freed address, found the name still bound until
    # libzmq's reaper thread had closed the last monitor, which on a busy machine came after the next test began
    for _ in range(100):
        sock = WatchedSocket()
        sock.close()
        sock.monitor.close(linger=0)
        del sock


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[WatchedSocket, connection_watch.ConnectionWatch,
                                                                 FakeClock]]:
    """A ConnectionWatch of a :class:`WatchedSocket` on ``tcp://pub.test:5555``, on a fake clock."""
    clock = FakeClock()
    monkeypatch.setattr(connection_watch, "time", clock)
    monkeypatch.setattr(connection_watch, "_said_silent", {}, raising=False)  # not those of earlier tests
    sock = WatchedSocket()
    watch = connection_watch.ConnectionWatch(sock, "tcp://pub.test:5555")
    yield sock, watch, clock
    watch.close()


@pytest.mark.parametrize("event, said", [
    (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, "CURVE handshake with tcp://pub.test:5555 failed"),
    (zmq.EVENT_HANDSHAKE_FAILED_AUTH, "the publisher at tcp://pub.test:5555 refused this consumer's CURVE key")])
def test_failed_handshakes_are_all_counted_and_said_once(watched, caplog, event: int, said: str) -> None:
    sock, watch, _ = watched
    with caplog.at_level(logging.WARNING, "streamfuse.connection_watch"):
        sock.event(event, zmq.EVENT_CONNECT_RETRIED, event, zmq.EVENT_CONNECT_RETRIED, event)
        watch.on_events()
    assert watch.handshake_failures == 3
    assert [r.getMessage()[:len(said)] for r in caplog.records] == [said]


def test_a_peer_that_hangs_up_at_every_attempt_is_counted_each_time_and_said_once(caplog) -> None:
    # libzmq tries again every 100 ms: without the count, each hang-up logged the same warning again
    sock = WatchedSocket()
    watch = connection_watch.ConnectionWatch(sock, "tcp://pub.test:5555", encrypted=False)
    try:
        with caplog.at_level(logging.WARNING, "streamfuse.connection_watch"):
            hang_up = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            sock.event(hang_up, zmq.EVENT_CONNECT_RETRIED, hang_up, zmq.EVENT_CONNECT_RETRIED, hang_up)
            watch.on_events()
    finally:
        watch.close()
    assert (watch.hangups, watch.handshake_failures) == (3, 0)
    assert [r.getMessage()[:27] for r in caplog.records] == ["the peer at tcp://pub.test:"]


def test_a_peer_that_hangs_up_in_the_greeting_is_said_to_be_no_publisher_not_to_encrypt(caplog) -> None:
    # an HTTP or SSH server on the port (here one that closes every connection): its hang-ups were counted as failed
    # CURVE handshakes, said as "the publisher's public key differs", and `subscribe` told a consumer that had given
    # no key that "the publisher encrypts, give its key with --server-key"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def hang_up() -> None:
            while True:
                try:
                    listener.accept()[0].close()
                except OSError:  # closed: the test is over
                    return

        threading.Thread(target=hang_up, daemon=True).start()
        with caplog.at_level(logging.WARNING, "streamfuse.connection_watch"), \
                Subscriber(f"tcp://127.0.0.1:{listener.getsockname()[1]}", timeout_s=0.05) as sub:
            wait_until(lambda: sub.recv() is None and bool(caplog.records), "the hang-up said")
            assert sub.handshake_failures == 0
    said = caplog.records[0].getMessage()
    assert "hung up during the ZeroMQ handshake: no ZeroMQ publisher listens there" in said, said


def test_a_drop_is_restored_once_it_is_old_enough_and_said_to_be_a_refused_part_or_a_failed_handshake(watched):
    sock, watch, clock = watched
    sock.event(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_DISCONNECTED)
    watch.on_events()
    clock.now += 0.3
    sock.event(zmq.EVENT_DISCONNECTED)  # a second drop report: the first one's time is kept
    watch.on_events()
    assert not watch.restore_due()
    clock.now = 1000.499
    assert not watch.restore_due()
    clock.now = 1000.5  # 0.5 s after the first drop
    assert watch.restore_due() and watch.restore() is False  # a failed handshake, not a refused part
    assert sock.calls == [("disconnect", "tcp://pub.test:5555"), ("connect", "tcp://pub.test:5555")]
    assert not watch.restore_due()
    sock.event(zmq.EVENT_DISCONNECTED)  # a drop with no failed handshake since: a part over max_part_bytes
    watch.on_events()
    clock.now += 0.5
    assert watch.restore_due() and watch.restore() is True


def test_a_glance_looks_at_the_events_at_once_then_once_each_50_ms(watched) -> None:
    # a ring reader glances at every frame: the look costs as much as the frame's transport, and a drop it finds is
    # restored half a second on anyway
    _, watch, clock = watched
    looks = []
    watch.on_events = lambda: looks.append(clock.now)
    for now in (1000.0, 1000.01, 1000.04, 1000.06, 1000.09, 1000.12):
        clock.now = now
        watch.glance()
    assert looks == [1000.0, 1000.06, 1000.12]

def test_a_new_attempt_by_libzmq_clears_a_drop_and_the_failed_handshake_before_it(watched):
    sock, watch, clock = watched
    sock.event(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_DISCONNECTED, zmq.EVENT_CONNECT_RETRIED)
    watch.on_events()
    clock.now += 10
    assert not watch.restore_due()  # libzmq retries it itself
    sock.event(zmq.EVENT_CONNECTED, zmq.EVENT_DISCONNECTED)  # that connection then took a part too large
    watch.on_events()
    clock.now += 0.5
    assert watch.restore() is True and sock.calls[-1] == ("connect", "tcp://pub.test:5555")


def test_a_connection_libzmq_has_already_forgotten_is_still_made_again(watched):
    sock, watch, clock = watched

    def forgotten(endpoint: str) -> None:
        raise zmq.ZMQError(errno.ENOENT)

    sock.disconnect = forgotten
    sock.event(zmq.EVENT_DISCONNECTED)
    watch.on_events()
    clock.now += 0.5
    assert watch.restore() is True and sock.calls == [("connect", "tcp://pub.test:5555")]


def test_a_silent_connection_is_made_again_once_a_silence_and_said_once(watched, caplog):
    sock, watch, clock = watched
    last = clock.now
    clock.now += connection_watch.SILENT_S - 0.001
    assert not watch.remake_if_silent(last)
    clock.now += 0.001
    with caplog.at_level(logging.DEBUG, "streamfuse.connection_watch"):
        assert watch.remake_if_silent(last)
        assert not watch.remake_if_silent(last)  # just made again: it gets its own SILENT_S
        clock.now += connection_watch.SILENT_S
        assert watch.remake_if_silent(last)  # still nothing: again, said only at debug level
    assert sock.calls.count(("connect", "tcp://pub.test:5555")) == 2
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.DEBUG]
    assert caplog.records[0].getMessage() == ("nothing from tcp://pub.test:5555 for 5 s: making the connection "
                                             "again")


def test_a_publisher_still_starting_is_said_once_for_all_the_sockets_on_its_endpoint(monkeypatch, caplog) -> None:
    # the Foxglove bridge started before its publisher logged "nothing from ENDPOINT yet: waiting for its publisher to
    # start sending" twice in the same words, from its frame socket and its stats socket (four times with --previews)
    clock = FakeClock()
    monkeypatch.setattr(connection_watch, "time", clock)
    monkeypatch.setattr(connection_watch, "_said_starting", set(), raising=False)  # not those of earlier tests
    endpoint = "tcp://pub.test:14001"
    watches = [connection_watch.ConnectionWatch(WatchedSocket(), endpoint) for _ in range(3)]
    other = connection_watch.ConnectionWatch(WatchedSocket(), "tcp://other.test:14002")
    start = clock.now
    clock.now += connection_watch.SILENT_S
    try:
        with caplog.at_level(logging.DEBUG, "streamfuse.connection_watch"):
            for watch in (*watches, other):
                assert watch.remake_if_silent(start, heard=False)
    finally:
        for watch in (*watches, other):
            watch.close()
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said == [(logging.INFO, f"nothing from {endpoint} yet: waiting for its publisher to start sending")] + \
        [(logging.DEBUG, f"nothing from {endpoint} yet: waiting for its publisher to start sending")] * 2 + \
        [(logging.INFO, "nothing from tcp://other.test:14002 yet: waiting for its publisher to start sending")]


def test_a_lost_publisher_is_said_once_for_all_the_sockets_on_its_endpoint(monkeypatch, caplog) -> None:
    # a consumer with several sockets on one publisher (the viewer's frame and stats sockets, a program's two
    # Subscribers) said "nothing from ENDPOINT for 5 s: making the connection again" once for each when it was lost
    clock = FakeClock()
    monkeypatch.setattr(connection_watch, "time", clock)
    monkeypatch.setattr(connection_watch, "_said_silent", {}, raising=False)  # not those of earlier tests
    endpoint = "tcp://pub.test:14003"
    watches = [connection_watch.ConnectionWatch(WatchedSocket(), endpoint) for _ in range(3)]
    other = connection_watch.ConnectionWatch(WatchedSocket(), "tcp://other.test:14004")
    heard = clock.now  # each socket's last message, as the publisher was lost
    try:
        with caplog.at_level(logging.DEBUG, "streamfuse.connection_watch"):
            for offset, watch in enumerate((*watches, other)):  # they notice one after another
                clock.now = heard + connection_watch.SILENT_S + offset
                assert watch.remake_if_silent(heard - offset / 10)
            clock.now += 1  # the publisher is back: one socket hears it, and then loses it again
            heard = clock.now
            clock.now += connection_watch.SILENT_S
            assert watches[1].remake_if_silent(heard)
            assert watches[0].remake_if_silent(heard - 2)  # still the silence said before: debug level again
    finally:
        for watch in (*watches, other):
            watch.close()
    lost = "nothing from {} for 5 s: making the connection again"
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said == [(logging.INFO, lost.format(endpoint))] + [(logging.DEBUG, lost.format(endpoint))] * 2 + \
        [(logging.INFO, lost.format("tcp://other.test:14004")), (logging.INFO, lost.format(endpoint)),
         (logging.DEBUG, lost.format(endpoint))]


def test_connect_sub_gives_its_socket_the_limits_it_is_given() -> None:
    # rcvhwm bounds what queues on this side (latest mode's freshness, a consumer's memory), max_part_bytes what one
    # part a peer sends may take; linger 0: closing never waits for a publisher that is gone
    sock, watch = connection_watch.connect_sub("tcp://127.0.0.1:1", [b"fused/"], rcvhwm=3, max_part_bytes=4096)
    try:
        assert [sock.getsockopt(opt) for opt in (zmq.RCVHWM, zmq.MAXMSGSIZE, zmq.LINGER)] == [3, 4096, 0]
    finally:
        watch.close()
    assert sock.closed


def test_a_short_name_wait_still_ends_with_a_lookup_at_its_deadline(resolver, monkeypatch) -> None:
    fake = resolver("pub.invalid", failures=0)
    clock = FakeClock()
    monkeypatch.setattr(connection_watch, "time", clock)
    with pytest.raises(ValueError, match=r"does not resolve \(Name or service not known; waited 0.2 s\)$"):
        connection_watch.connect_sub("tcp://pub.invalid:47001", [b""], rcvhwm=2, max_part_bytes=1024, name_wait_s=0.2)
    assert clock.pauses == [pytest.approx(0.2)] and fake.calls == 2


def test_an_ipv6_address_the_resolver_cannot_answer_for_now_still_gets_ipv6(monkeypatch, caplog, port) -> None:
    # "try again" comes from a resolver that cannot reach its name servers: no wait, libzmq resolves at each attempt
    def try_again(name: str) -> list[tuple]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(connection_watch, "_resolve", try_again)
    monkeypatch.setattr(connection_watch, "time", FakeClock())  # a wait for the name would never end here
    with caplog.at_level(logging.WARNING, "streamfuse.connection_watch"):
        sock, watch = connection_watch.connect_sub(f"tcp://[::1]:{port}", [b""], rcvhwm=2, max_part_bytes=1024)
    try:
        assert sock.getsockopt(zmq.IPV6) == 1
    finally:
        watch.close()
    assert "cannot look up the host name ::1 now (Temporary failure in name resolution)" in caplog.text


def test_a_server_key_with_z85_s_path_characters_is_a_key_not_a_missing_file() -> None:
    key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # Z85 has "/" and "."
    assert len(key) == 40 and connection_watch.load_server_key(key) == key


def test_a_host_name_is_looked_up_once_for_all_of_a_consumer_s_sockets(resolver, port) -> None:
    # a viewer opens a socket per page: its later ones connect without waiting for the resolver again
    fake = resolver("pub.test", failures=0, answer=[V4])
    for _ in range(3):
        sock, watch = connection_watch.connect_sub(f"tcp://pub.test:{port}", [b""], rcvhwm=2, max_part_bytes=1024)
        watch.close()
    assert fake.calls == 1


def test_the_stats_socket_waits_for_its_publisher_in_plain_words_and_a_silence_after_is_a_lost_connection(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # the viewer's and the Foxglove bridge's stats socket, started before its publisher sent anything (the model still
    # loading), logged "making the connection again" as for a connection lost
    from streamfuse.telemetry import Telemetry, TelemetryConfig
    from streamfuse.view.stats_in import StatsMessages
    from streamfuse.wire import STATS_PREFIX

    monkeypatch.setattr(TelemetryConfig, "interval_s", 0.5)  # the silence allowed before the first stats: 1 s
    stop, got = threading.Event(), []

    def read(stats: StatsMessages) -> None:
        for message in stats:
            got.append(message)

    with caplog.at_level(logging.INFO, "streamfuse.connection_watch"), \
            Publisher(PublishConfig(endpoint=ANY_PORT)) as pub:
        reader = threading.Thread(target=read, args=(StatsMessages(pub.endpoint, STATS_PREFIX, ("", ""), stop),))
        reader.start()
        try:
            wait_until(lambda: "yet" in caplog.text, "the wait for the publisher said")
            waited = list(caplog.messages)
            snapshot = Telemetry(TelemetryConfig(interval_s=1.0)).snapshot()  # its silence allowed: SILENT_S
            wait_until(lambda: pub.send_stats(snapshot) and got, "stats received")  # sent until one arrives
            wait_until(lambda: "again" in caplog.text, "the silence after stats said")
        finally:
            stop.set()
            reader.join(PATIENCE_S)
    assert waited == [f"nothing from {pub.endpoint} yet: waiting for its publisher to start sending"]
    assert caplog.messages[len(waited):] == [f"nothing from {pub.endpoint} for {connection_watch.SILENT_S:g} s: making "
                                             f"the connection again"]


def test_a_port_held_for_a_test_is_taken_by_no_other_process(port) -> None:
    # the port was read from a socket closed at once: on a busy machine (two copies of the suite at once) another
    # process could bind it before the test's own child or subscriber used it
    with socket.socket() as other, pytest.raises(OSError) as taken:
        other.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE
    with pytest.raises(zmq.ZMQError, match="Address already in use"), plain_pub(f"tcp://127.0.0.1:{port}"):
        pass
    with pytest.raises(ConnectionRefusedError):  # nothing listens on it
        socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S).close()
    with held_port(shared=True) as shared, socket.socket() as child:  # FFmpeg's listen mode binds as this child
        child.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        child.bind(("127.0.0.1", shared))
        child.listen()
