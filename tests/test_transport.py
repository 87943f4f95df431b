"""Same-host shared memory and compressed streams: torn-frame guard, fall back, stale pools, quality, keyframes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_zmq import (ANY_PORT, PATIENCE_S, connect, fused_frame, plain_pub, publishing, recv_seq, sync, wait_until,
                         with_header)

from streamfuse import client, shm_pool
from streamfuse.capture.synthetic import SyntheticScene
from streamfuse.client import Subscriber
from streamfuse.codecs import DecodeError, H264Decoder, H264Encoder, JpegDecoder, JpegEncoder
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.wire import SCHEMA_2, MalformedMessage, decode_header
from streamfuse.shm_pool import MAX_SLOTS, POOL_PREFIX, PoolError, PoolReader, ShmPool, ring_supported, shm_supported

REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")
needs_shm = pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")


def _uniform(value: int, shape: tuple[int, ...] = (48, 64, 3)) -> np.ndarray:
    return np.full(shape, value % 251, np.uint8)


def _recv_shm(sub: Subscriber, pub: Publisher, image: np.ndarray) -> tuple[dict, np.ndarray]:
    """Publish ``image`` until ``sub`` returns a frame read from shared memory."""
    def got() -> bool:
        pub.send_fused(fused_frame(image))
        frame = sub.recv(0.05)
        holder[:] = [frame] if frame is not None and frame[0]["format"] == "shm" else []
        return bool(holder)

    holder: list = []
    wait_until(got, "a frame through shared memory")
    return holder[0]


@needs_shm
def test_pool_generation_guard_and_held_slots() -> None:
    with ShmPool(3, 64) as pool:
        reader = PoolReader(pool.name)
        slot, gen = pool.write(_uniform(1, (64,)))
        for value in range(2, 5):  # the writer comes round to that slot again
            pool.write(_uniform(value, (64,)))
        assert reader.read(slot, gen, 64, copy=True) is None  # overwritten before it was read: gone, not torn
        slot, gen = pool.write(_uniform(9, (64,)))
        view = reader.read(slot, gen, 64, copy=False)
        assert not view.flags.writeable
        written = [pool.write(_uniform(v, (64,))) for v in range(10, 20)]
        assert slot not in [s for s, _ in written]  # a held slot is skipped, the writer never waits
        np.testing.assert_array_equal(view, 9)
        other = PoolReader(pool.name)
        s2, g2 = written[-1]
        assert other.read(s2, g2, 64, copy=False) is not None
        third = PoolReader(pool.name)
        s3 = next(s for s in range(3) if s not in (slot, s2))
        g3 = max(g for s, g in written if s == s3)
        assert third.read(s3, g3, 64, copy=False) is not None
        assert pool.write(_uniform(1, (64,))) is None and pool.busy == 1  # every slot held: skipped, counted
        with pytest.raises(PoolError, match="outside pool"):
            reader.read(3, 2, 64, copy=True)  # a forged slot index beyond this pool
        for nbytes in (0, 65):  # no frame is empty, none larger than a slot
            with pytest.raises(PoolError, match="outside pool"):
                reader.read(0, 2, nbytes, copy=True)
        for r in (reader, other, third):
            r.close()


@needs_shm
def test_shared_memory_view_stays_intact_until_next_frame(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, copy=False) as sub:
        header, view = _recv_shm(sub, pub, image)
        assert header["schema"] == SCHEMA_2 and not view.flags.writeable
        for i in range(20):
            pub.send_fused(fused_frame(_uniform(i), 0))
        np.testing.assert_array_equal(view, image)
        pool = SHM / pub.shm_pool
        assert pool.exists()
    assert not pool.exists()  # freed when the publisher exits


@needs_shm
@pytest.mark.parametrize("latest", [False, True])
def test_a_held_frame_stays_as_it_was_by_default(rng: np.random.Generator, latest: bool) -> None:
    # the default was a view of the pool: a consumer that kept frames (a queue, a tracker's history) saw their pixels
    # change under it once it had received the next few
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=latest) as sub:
        header, held = _recv_shm(sub, pub, image)
        via_shm = sub.via_shm
        for i in range(12):  # each slot of the pool written over several times, each frame received
            pub.send_fused(fused_frame(_uniform(i), 0))
            assert sub.recv() is not None
        assert sub.via_shm >= via_shm + 8
        np.testing.assert_array_equal(held, image)


@needs_shm
def test_loaned_slot_is_nobodys_frame_until_committed() -> None:
    with ShmPool(2, 64) as pool:
        reader = PoolReader(pool.name)
        slot, gen = pool.write(_uniform(1, (64,)))
        loan_slot, view = pool.loan(64)
        view[:] = 7
        assert loan_slot != slot and reader.read(loan_slot, gen + 2, 64, copy=True) is None  # still being written
        assert pool.commit(64) == (loan_slot, gen + 2)
        np.testing.assert_array_equal(reader.read(loan_slot, gen + 2, 64, copy=True), 7)
        abandoned, view = pool.loan(64)
        view[:] = 8  # the frame that was in the slot is partly written over, then the loan given up
        pool.cancel()
        assert abandoned == slot and reader.read(slot, gen, 64, copy=True) is None  # gone, not returned with 8s
        assert reader.read(abandoned, gen + 4, 64, copy=True) is None  # never committed: never a frame
        reader.close()


@needs_shm
def test_a_pool_is_made_only_of_the_slots_it_may_have_each_64_byte_aligned() -> None:
    with ShmPool(MAX_SLOTS, 1) as pool:
        assert pool.slot_bytes == 64  # a slot starts where a cache line does
    for slots, slot_bytes in ((0, 64), (MAX_SLOTS + 1, 64), (1, 0)):
        with pytest.raises(ValueError, match=f"^slots={slots} must be in 1..{MAX_SLOTS} and slot_bytes={slot_bytes}"):
            ShmPool(slots, slot_bytes)


@needs_shm
def test_a_pool_that_shared_memory_cannot_hold_is_refused_at_once_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    # /dev/shm is sparse: without reserving the pool's pages at once, a full /dev/shm killed the publisher later with
    # SIGBUS, at its first write to a page there was no room for
    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(28, "No space left on device")

    before = set(SHM.glob(f"{POOL_PREFIX}{os.getpid()}_*"))
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(PoolError, match="^cannot size shared memory .* No space left on device$"):
        ShmPool(2, 64)
    assert set(SHM.glob(f"{POOL_PREFIX}{os.getpid()}_*")) == before


@needs_shm
def test_a_refused_descriptor_gives_its_slot_back() -> None:
    with ShmPool(4, 64) as pool:
        slot, _ = pool.write(_uniform(1, (64,)))
        pool.retract(slot)  # its message was refused: no reader heard of that frame
        assert pool.write(_uniform(2, (64,)))[0] == slot  # taken again instead of an older frame's slot


@needs_shm
def test_a_publisher_writes_the_next_frame_into_the_slot_of_a_refused_descriptor() -> None:
    # With nodrop, a full queue refuses a frame's descriptor: nobody ever hears of that slot, so the next frame must
    # take it. Moving on instead wrote over the oldest frame that consumers had been told about and may be about to
    # read (they then find it gone and count it missed), while the refused slot sat unused.
    endpoint = f"inproc://refused-descriptor-{os.getpid()}-{threading.get_ident()}"  # no network buffers: a sure fill
    with Publisher(PublishConfig(endpoint=endpoint, nodrop=True, sndhwm=2, shm_slots=8)) as pub:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 2)
        sub.setsockopt(zmq.SUBSCRIBE, b"shm/fused/rig0")  # descriptors only, never read until the queue is full
        sub.connect(pub.endpoint)
        try:
            assert pub.wait_for_subscriber(PATIENCE_S)
            for value in range(100):  # until the first refusal
                if not pub.send_fused(fused_frame(_uniform(value))):
                    break
            else:
                pytest.fail("the queue never filled")
            slots = []
            while True:  # what the consumer was told of: every slot up to the one before the refused frame's
                try:
                    slots.append(json.loads(sub.recv_multipart(zmq.NOBLOCK)[1])["shm_slot"])
                except zmq.Again:
                    break
            assert slots, "no descriptor before the refusal"
            wait_until(lambda: pub.send_fused(fused_frame(_uniform(1))), "a descriptor accepted again")
            assert sub.poll(round(PATIENCE_S * 1000))
            header = json.loads(sub.recv_multipart()[1])
        finally:
            sub.close(linger=0)
    assert header["shm_slot"] == (slots[-1] + 1) % 8  # the refused frame's slot, not the one after it


@needs_shm
def test_loaned_frame_reaches_shared_memory_and_payload_consumers(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub:
        assert pub.loan(image.shape).flags.writeable and pub.shm_pool == ""  # nobody reads a pool yet: private
        with Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as local, \
                Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as remote:
            _loaned_round_trip(pub, local, remote, image)


def _loaned_round_trip(pub: Publisher, local: Subscriber, remote: Subscriber, image: np.ndarray) -> None:
    """Loaned frames of ``image`` reach ``local`` through shared memory and ``remote`` as the payload."""
    _recv_shm(local, pub, _uniform(3))

    def sent() -> bool:
        loaned = pub.loan(image.shape)
        loaned[:] = image
        pub.send_fused(fused_frame(loaned))
        assert not loaned.flags.writeable  # the slot belongs to the consumers once sent
        got = local.recv(0.05), remote.recv(0.05)
        holder[:] = got if None not in got and got[0][0]["format"] == "shm" else []
        return bool(holder) and np.array_equal(got[1][1], image)  # not a frame queued before this loop

    holder: list = []
    wait_until(sent, "a loaned frame through shared memory and the payload")
    (_, local_image), (remote_header, _) = holder
    assert remote_header["format"] == "raw" and pub.shm_busy == 0
    np.testing.assert_array_equal(local_image, image)


@needs_shm
def test_a_loaned_frame_sent_twice_goes_out_twice(rng: np.random.Generator) -> None:
    # the second send of the same array is no longer the loan (that slot is published): it goes out as a copy
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as local:
        _recv_shm(local, pub, _uniform(3))
        loaned = pub.loan(image.shape)
        loaned[:] = image
        first = pub.published
        assert pub.send_fused(fused_frame(loaned)) and pub.send_fused(fused_frame(loaned))
        got = [recv_seq(local, first), local.recv()]
    assert [(header["seq"] - first, header["format"]) for header, _ in got] == [(0, "shm"), (1, "shm")]
    for _, frame in got:
        np.testing.assert_array_equal(frame, image)


@needs_shm
def test_loaned_frames_queued_for_a_payload_consumer_survive_the_reuse_of_their_slots() -> None:
    # A loaned frame is a pool slot, written over again shm_slots frames later: sent zero-copy, the frames still queued
    # for a slow payload consumer (another host's viewer, a recorder) showed the pixels of later frames instead of
    # their own. inproc:// hands ZeroMQ's messages over without a copy, so a queued one is read from the very buffer
    # it was sent from: the payload must have been copied when it was sent.
    shape = (480, 640, 3)  # over pyzmq's copy threshold (64 kB): smaller parts are copied whatever send is told
    endpoint = f"inproc://loaned-frames-{os.getpid()}-{threading.get_ident()}"
    with Publisher(PublishConfig(endpoint=endpoint, shm_slots=2, sndhwm=50)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as local, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False, rcvhwm=50) as remote:
        _recv_shm(local, pub, _uniform(200, shape))  # loan() gives pool slots while a local consumer reads the pool

        def send_private() -> int:
            pub.send_fused(fused_frame(_uniform(200, shape)))
            return pub.published - 1

        sync(remote, send_private)  # remote is connected and nothing is queued for it
        first = pub.published
        for value in range(6):  # each pool slot written over twice while the first frames wait in remote's queue
            loaned = pub.loan(shape)
            assert not loaned.flags.owndata  # a view of a pool slot, not a private array
            loaned[:] = value
            assert pub.send_fused(fused_frame(loaned))
        assert pub.shm_pool and pub.shm_busy == 0
        got = [recv_seq(remote, first)] + [remote.recv() for _ in range(5)]
        # checked while the publisher is open: a zero-copy message would point into its pool, unmapped at close
        assert [header["seq"] - first for header, _ in got] == list(range(6))
        assert [int(image[0, 0, 0]) for _, image in got] == list(range(6)), "frames hold later frames' pixels"
        for value, (_, image) in enumerate(got):
            assert np.all(image == value), f"frame {value} holds another frame's pixels"
        del got


@needs_shm
@pytest.mark.parametrize(("copy", "loan", "ring"), [(False, False, True), (True, False, True), (False, True, True),
                                                   (False, True, False)],
                         ids=["view", "copy", "loaned", "loaned, zmq descriptors"])
def test_no_torn_frame_under_a_slow_reader(copy: bool, loan: bool, ring: bool) -> None:
    """The writer runs flat out over a 2-slot pool in bursts of four frames (copying each frame in, or making it in a
    loaned slot) while the reader is slower on purpose, so slots are overwritten under it (and, reading the pool's
    ring, the ring laps it): each frame returned is the one its header names, whole; the others are counted as
    missed. A burst begins once the reader got a frame whole: a writer never held back kept the reader's queue of
    descriptors a full queue behind on a loaded machine, every slot long overwritten, and nothing came whole."""
    stop, whole = threading.Event(), threading.Event()
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=2, sndhwm=1000)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, copy=copy, rcvhwm=1000, ring=ring) as sub:
        _recv_shm(sub, pub, _uniform(0))

        def write() -> None:
            while not stop.is_set():
                for _ in range(4):
                    image = pub.loan((48, 64, 3)) if loan else np.empty((48, 64, 3), np.uint8)
                    image[:] = pub.published % 251
                    pub.send_fused(fused_frame(image, 0))
                whole.wait(PATIENCE_S)
                whole.clear()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            checked = 0
            while checked < 50 or sub.missed == 0:
                got = sub.recv()
                assert got is not None, f"no frame came whole in {PATIENCE_S:g} s ({checked} so far)"
                header, image = got
                if header["format"] == "shm":
                    expected = header["seq"] % 251
                    assert np.all(image == expected), f"torn frame: seq {header['seq']} holds other values"
                    checked += 1
                    whole.set()
                stop.wait(0.002)  # slower than the writer, so slots are overwritten under the reader
                assert checked < 100_000, "the writer never overtook the reader"
        finally:
            stop.set()
            whole.set()
            writer.join(timeout=PATIENCE_S)
    assert sub.missed > 0 and sub.via_shm >= 50 and sub.malformed == 0
    assert (sub.via_ring >= 50) if ring and ring_supported() else sub.via_ring == 0


@needs_shm
def test_where_the_ring_is_not_filled_frames_come_through_shared_memory_with_zeromq_descriptors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # as on an ARM host (no ring: see pool_ring's memory-order note), the publisher's pool has no ring to put
    # descriptors in: each frame still goes through the pool, announced over ZeroMQ only
    for module in (shm_pool, client):
        monkeypatch.setattr(module, "ring_supported", lambda: False)
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=2)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        header, image = _recv_shm(sub, pub, _uniform(7))
        np.testing.assert_array_equal(image, 7)
        pub.send_fused(fused_frame(_uniform(8)))
        header, image = sub.recv()
        assert header["format"] == "shm" and sub.via_ring == 0 and sub.malformed == 0
        np.testing.assert_array_equal(image, 8)


@needs_shm
def test_stalled_shared_memory_reader_holds_one_slot_and_never_the_publisher() -> None:
    with publishing(_uniform(5), shm_slots=3) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as stalled, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=True) as healthy:
        wait_until(lambda: (f := stalled.recv(0.05)) is not None and f[0]["format"] == "shm", "stalled on shm")
        header, held = stalled.recv(PATIENCE_S)  # now it stops reading, holding this frame's slot
        while (frame := healthy.recv()) is None or frame[0]["seq"] < header["seq"] + 20:
            pass  # the publisher goes on (its thread never waits), the healthy reader keeps getting new frames
        assert frame[0]["format"] == "shm" and pub.shm_busy == 0
        np.testing.assert_array_equal(held, 5)


@needs_shm
def test_falls_back_to_the_payload_when_the_pool_cannot_be_mapped(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    def refuse(name: str) -> None:
        raise PoolError(f"cannot open shared memory {name}: Permission denied")

    monkeypatch.setattr("streamfuse.pool_view.PoolReader", refuse)
    image = _uniform(7)
    with caplog.at_level(logging.WARNING), publishing(image, encoding="jpeg") as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        wait_until(lambda: (frame := sub.recv(0.05)) is not None and frame[0]["format"] == "jpeg",
                   "a jpeg frame after the fall back")
        wait_until(lambda: pub.shm_pool == "" or not pub._want_shm, "the shm unsubscription")
        assert sub.via_shm == 0
    assert "unavailable (cannot open shared memory" in caplog.text and "taking the ZeroMQ stream" in caplog.text


@needs_shm
def test_a_publisher_that_cannot_make_its_pool_says_so_once_and_sends_the_payload(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # the pool is made at the first frame a same-host consumer asks for: when /dev/shm refuses it, shared memory stays
    # off (one warning), instead of a new try and a new warning at every frame
    def refuse(slots: int, slot_bytes: int) -> None:
        raise PoolError("cannot create shared memory /dev/shm/x: No space left on device")

    monkeypatch.setattr("streamfuse.publish.ShmPool", refuse)
    image = _uniform(4)
    with caplog.at_level(logging.WARNING, "streamfuse.publish"), \
            Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        connect(pub, sub, image)
        for _ in range(5):
            assert pub.send_fused(fused_frame(image))
            assert sub.recv()[0]["format"] == "raw"
        assert pub.shm_pool == "" and sub.via_shm == 0
    assert [r.getMessage() for r in caplog.records] == [
        "shared memory off: cannot create shared memory /dev/shm/x: No space left on device; same-host consumers get "
        "the raw stream"]


@needs_shm
def test_remote_endpoint_never_maps_shared_memory() -> None:
    from streamfuse.endpoints import reachable_from_other_machines

    # the Subscriber maps the pool only for endpoints this rule calls local; checked without connecting anywhere
    assert reachable_from_other_machines("tcp://192.0.2.1:5555") and reachable_from_other_machines("tcp://*:5555")
    assert not reachable_from_other_machines("tcp://127.0.0.1:5555")
    with publishing(_uniform(3)) as pub:
        with Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as sub:
            wait_until(lambda: sub.recv(0.05) is not None, "a raw frame")
            assert sub.via_shm == 0


@needs_shm
def test_stale_pool_of_a_killed_publisher_is_freed_on_the_next_start(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(
        "import sys, time\n"
        "import numpy as np\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from helpers_zmq import fused_frame, wait_until\n"
        "from streamfuse.client import Subscriber\n"
        "from streamfuse.publish import PublishConfig, Publisher\n"
        "pub = Publisher(PublishConfig(endpoint='tcp://127.0.0.1:*'))\n"
        "sub = Subscriber(pub.endpoint, timeout_s=0.05)\n"
        "def shm():\n"
        "    pub.send_fused(fused_frame(np.zeros((8, 8, 3), np.uint8)))\n"
        "    return sub.recv() is not None and sub.via_shm > 0\n"
        "wait_until(shm, 'shm')\n"
        "print(pub.shm_pool, flush=True)\n"
        "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        name = child.stdout.readline().strip()
        assert name.startswith(f"{POOL_PREFIX}{child.pid}_") and (SHM / name).exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=PATIENCE_S)
        child.stdout.close()
    assert (SHM / name).exists()  # nobody could free it
    with Publisher(PublishConfig(endpoint=ANY_PORT)):
        assert not (SHM / name).exists()


@needs_shm
def test_a_forged_pool_file_is_refused(tmp_path: Path) -> None:
    name = f"{POOL_PREFIX}{os.getpid()}_0badf00d"
    (SHM / name).write_bytes(b"\0" * 4096)
    try:
        with pytest.raises(PoolError, match="not a streamfuse pool"):
            PoolReader(name)
    finally:
        (SHM / name).unlink()
    with pytest.raises(PoolError, match="not a streamfuse publisher pool name"):
        PoolReader("../../etc/passwd")


def _shm_parts(**changes: object) -> list[bytes]:
    fields = {"schema": SCHEMA_2, "format": "shm", "shm_pool": f"{POOL_PREFIX}1_0123abcd", "shm_slot": 0, "shm_gen": 2}
    topic, header, _ = with_header(**{**fields, **changes})
    return [topic, header, b""]


@pytest.mark.parametrize(("parts", "reason"), [
    (_shm_parts(shm_pool="../../dev/mem"), "is not a publisher pool name"),
    (_shm_parts(shm_pool="streamfuse_1234_abcdef01"), "is not a publisher pool name"),  # a capture ring
    (_shm_parts(shm_gen=3), "^shm_gen 3 is odd"),  # the pool name is a good one: only the generation is named
    (_shm_parts(shm_gen=0), "header field shm_gen=0 is out of range"),
    (_shm_parts(shm_slot=1024), "header field shm_slot=1024 is out of range 0..1023"),
    (_shm_parts(shm_slot=-1), "header field shm_slot=-1 is out of range"),
    (_shm_parts(shm_slot=10**400), "header field shm_slot=1000"),
    (_shm_parts(shm_slot=None), "header field shm_slot=None is missing"),
    (_shm_parts(step=99), "equal unless raw"),
    (with_header(schema=SCHEMA_2, format="shm", shm_pool=f"{POOL_PREFIX}1_0123abcd", shm_slot=0, shm_gen=2),
     "shm message with a 72-byte payload"),
    (_shm_parts()[:2] + [b"\x00"], "shm message with a 1-byte payload"),  # not even one byte beside a descriptor
    # a compressed frame decodes to rows of width * channels: a step that says otherwise misjudges its size
    (with_header(schema=SCHEMA_2, format="jpeg", step=19), "equal unless raw"),
    (with_header(schema=SCHEMA_2, format="h264", keyframe=2), "header field keyframe=2 is out of range 0..1"),
    (with_header(schema=SCHEMA_2, format="h264"), "header field keyframe=None is missing"),
    (with_header(schema=SCHEMA_2, format="png"), "header field format='png' is missing or not one of"),
    (with_header(schema=SCHEMA_2, format="jpeg")[:2] + [b""], "empty jpeg payload"),
])
def test_new_header_fields_are_range_checked(parts: list[bytes], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason.replace("(", r"\(").replace(".", r"\.")):
        decode_header(parts)


def _demo_frames(n: int) -> list[np.ndarray]:
    """Frames like the demo's: the synthetic rig's scene, pixel-wise max of IR and visible."""
    scene = SyntheticScene(320, 240, 7)
    return [np.maximum(scene.render_vis(i * 33_333_333), scene.render_ir(i * 33_333_333)[..., None])
            for i in range(n)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_jpeg_round_trip_quality() -> None:
    frame = _demo_frames(1)[0]
    data = JpegEncoder(90).encode(frame)
    assert len(data) * 8 <= frame.nbytes
    assert _psnr(frame, JpegDecoder().decode(data, 240, 320, 3)) >= 38.0
    grey = frame[..., 1].copy()
    assert _psnr(grey, JpegDecoder().decode(JpegEncoder(90).encode(grey), 240, 320, 1)) >= 38.0


@pytest.mark.parametrize("size", [(16, 32), (32, 24)], ids=["width", "height"])
def test_a_jpeg_of_another_size_than_its_header_is_refused_undecoded(size: tuple[int, int]) -> None:
    """Either side of the JPEG's own size that differs from the header's refuses it (no bigger picture decoded)."""
    data = JpegEncoder(90).encode(np.zeros((16, 24, 3), np.uint8))
    with pytest.raises(DecodeError, match=f"^JPEG is 24x16, header says {size[1]}x{size[0]}$"):
        JpegDecoder().decode(data, *size, 3)


def test_a_jpeg_that_is_none_is_said_once_and_unquoted() -> None:
    # simplejpeg's reason was quoted (the f-string's !r took the whole expression), and the size check's own
    # DecodeError, caught as simplejpeg's ValueError, came out as "bad JPEG payload: 'JPEG is 24x16, header says ..'"
    with pytest.raises(DecodeError, match=r"^bad JPEG payload: [^'\"]"):
        JpegDecoder().decode(b"not a jpeg", 16, 24, 3)


def test_a_lower_jpeg_quality_makes_smaller_frames() -> None:
    frame = _demo_frames(1)[0]
    for image in (frame, frame[..., 1].copy()):  # BGR and grey
        low, high = JpegEncoder(20).encode(image), JpegEncoder(95).encode(image)
        assert len(low) < len(high) and _psnr(image, JpegDecoder().decode(low, 240, 320, image.ndim)) >= 25.0


@pytest.mark.parametrize("quality", [30, 90])
def test_a_grey_jpeg_keeps_the_detail_of_a_colour_one_at_the_same_quality(quality: int) -> None:
    """A mono8 stream is coded at the quality set, as the luma of a bgr8 stream of the same picture is."""
    grey = _demo_frames(1)[0][..., 1].copy()
    as_colour = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    alone = JpegDecoder().decode(JpegEncoder(quality).encode(grey), 240, 320, 1)
    np.testing.assert_array_equal(alone, JpegDecoder().decode(JpegEncoder(quality).encode(as_colour), 240, 320, 1))


def _colour_bars() -> np.ndarray:
    """Blue, green and red bars (BGR), 16 px wide, of odd sides (31 x 47)."""
    bars = np.zeros((31, 47, 3), np.uint8)
    for c in range(3):
        bars[:, 16 * c:16 * (c + 1), c] = 255
    return bars


@pytest.mark.parametrize("codec", ["jpeg", "h264"])
def test_a_compressed_frame_keeps_its_colours_in_bgr_order_up_to_its_last_row_and_column(codec: str) -> None:
    """The demo's frames are near grey (the max of IR and visible): a round trip in RGB order passed their PSNR bounds
    while every red came back blue. H.264 pads an odd side to an even one, whose 4:2:0 chroma the last row and
    column share with the padding: padded black, the red bar's edge came back dark pink."""
    bars = _colour_bars()
    if codec == "jpeg":
        image = JpegDecoder().decode(JpegEncoder(90).encode(bars), 31, 47, 3)
    else:
        image = H264Decoder().decode(*H264Encoder(keyint=5, crf=10).encode(bars), 31, 47, 3)
    error = np.abs(image.astype(int) - bars)
    assert error.mean() < 10 and error[-1].mean() < 10 and error[:, -1].mean() < 10


def test_h264_round_trip_quality_and_late_joiner_waits_for_a_keyframe() -> None:
    frames = _demo_frames(12)
    encoder = H264Encoder(keyint=5, crf=23)
    packets = [encoder.encode(f) for f in frames]
    assert [k for _, k in packets] == [i % 5 == 0 for i in range(12)]
    late = H264Decoder()
    decoded = [late.decode(p, k, 240, 320, 3) for p, k in packets[2:]]  # joins at frame 2, an inter frame
    assert decoded[:3] == [None, None, None]
    assert all(_psnr(f, d) >= 30.0 for f, d in zip(frames[5:], decoded[3:]))


@pytest.mark.parametrize("shape", [(239, 320), (240, 319), (239, 319), (239, 319, 3)], ids=str)
def test_h264_frames_of_an_odd_size_come_back_at_that_size_unscaled(shape: tuple[int, ...]) -> None:
    """4:2:0 needs even sides: the encoder pads an odd one and the decoder crops it back, nothing rescaled (at crf 0
    a grey frame comes back within a level or two, which a one-pixel rescale would not)."""
    channels = shape[2] if len(shape) == 3 else 1
    encoder, decoder = H264Encoder(keyint=5, crf=0), H264Decoder()
    for demo in _demo_frames(2):
        frame = np.ascontiguousarray(demo[: shape[0], : shape[1]] if channels == 3 else demo[: shape[0], : shape[1], 1])
        image = decoder.decode(*encoder.encode(frame), shape[0], shape[1], channels)
        assert image.shape == frame.shape and _psnr(frame, image) >= (45.0 if channels == 1 else 30.0)


def test_h264_starts_a_new_stream_with_a_keyframe_when_the_size_changes() -> None:
    big, small = _demo_frames(3), [f[:120, :160].copy() for f in _demo_frames(2)]
    encoder, decoder = H264Encoder(keyint=100, crf=23), H264Decoder()
    for frame in big:
        encoder.encode(frame)
    packets = [encoder.encode(f) for f in small]
    assert [k for _, k in packets] == [True, False]
    for frame, (data, key) in zip(small, packets):
        assert _psnr(frame, decoder.decode(data, key, 120, 160, 3)) >= 30.0


def test_a_lower_h264_crf_makes_bigger_packets() -> None:
    frames = _demo_frames(3)
    fine, coarse = H264Encoder(keyint=5, crf=10), H264Encoder(keyint=5, crf=40)
    assert sum(len(fine.encode(f)[0]) for f in frames) > 2 * sum(len(coarse.encode(f)[0]) for f in frames)


def test_after_a_refused_packet_the_decoder_waits_for_the_next_keyframe() -> None:
    """A packet refused (here: a frame of another size than its header says) may leave the decoder's references
    broken: the inter frames after it are not shown until a keyframe."""
    frames = _demo_frames(4)
    encoder, decoder = H264Encoder(keyint=3, crf=23), H264Decoder()
    packets = [encoder.encode(f) for f in frames]
    assert decoder.decode(*packets[0], 240, 320, 3) is not None
    with pytest.raises(DecodeError, match="H.264 frame is 320x240, header says 160x120"):
        decoder.decode(*packets[1], 120, 160, 3)
    assert decoder.decode(*packets[2], 240, 320, 3) is None
    assert _psnr(frames[3], decoder.decode(*packets[3], 240, 320, 3)) >= 30.0  # the keyframe: shown again


def test_subscriber_waits_for_a_keyframe_then_decodes() -> None:
    frames = _demo_frames(7)
    encoder = H264Encoder(keyint=5, crf=23)
    packets = [encoder.encode(f) for f in frames]
    seq = iter(range(1_000_000))
    with plain_pub() as sock, Subscriber(sock.getsockopt_string(zmq.LAST_ENDPOINT), "fused/", timeout_s=PATIENCE_S,
                                         shm=False) as sub:
        def send(i: int) -> None:
            topic, header, _ = with_header(schema=SCHEMA_2, format="h264", keyframe=int(packets[i][1]), seq=next(seq),
                                           height=240, width=320, step=960)
            sock.send_multipart([topic, header, packets[i][0]])

        def inter_frame_skipped() -> bool:
            send(1)
            assert sub.recv(0.01) is None
            return sub.awaiting_keyframe > 0

        wait_until(inter_frame_skipped, "an inter frame reaching the subscriber")
        send(5)
        send(6)
        header, image = sub.recv()
        assert header["keyframe"] == 1 and _psnr(frames[5], image) >= 30.0
        header, image = sub.recv()
        assert header["keyframe"] == 0 and _psnr(frames[6], image) >= 30.0


@pytest.mark.parametrize("encoding", ["jpeg", "h264"])
def test_compressed_stream_decodes_transparently(encoding: str) -> None:
    frame = _demo_frames(1)[0]
    with publishing(frame, encoding=encoding) as pub, Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as sub:
        header, image = sub.recv()
        assert header["format"] == encoding and header["schema"] == SCHEMA_2 and image.shape == frame.shape
        assert _psnr(frame, image) >= 30.0
        assert json.loads(json.dumps(header)) == header


def test_a_consumer_joining_an_h264_stream_gets_a_keyframe_at_once() -> None:
    # each new subscription asks the encoder for a keyframe (the XPUB passes on every one, a second consumer of the
    # same topic's too): without it a consumer joining waited up to h264_keyint frames (20 s at 600 and 30 fps)
    keyint, frame = 600, _demo_frames(1)[0]
    with Publisher(PublishConfig(endpoint=ANY_PORT, encoding="h264", h264_keyint=keyint)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as first:
        connect(pub, first, frame)  # the stream is under way: its first keyframe is behind it
        with Subscriber(pub.endpoint, timeout_s=PATIENCE_S, shm=False) as late:  # the same topic as the first
            sent = []

            def got() -> bool:
                pub.send_fused(fused_frame(frame))
                sent.append(1)
                return late.recv(0.05) is not None

            wait_until(got, "a frame for the consumer that joined")
    assert len(sent) < keyint  # before the periodic keyframe


def test_a_requested_keyframe_is_one_frame_and_the_stream_goes_on_with_inter_frames() -> None:
    # a request (a new consumer joining) left the encoder making keyframes for good: every frame an IDR, several
    # times the bandwidth of the link
    frames = _demo_frames(6)
    encoder = H264Encoder(keyint=100, crf=23)
    keys = [encoder.encode(f)[1] for f in frames[:2]]
    encoder.request_keyframe()
    keys += [encoder.encode(f)[1] for f in frames[2:]]
    assert keys == [True, False, True, False, False, False]
