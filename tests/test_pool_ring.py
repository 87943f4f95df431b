"""The shared-memory pool's notification ring: a same-host Subscriber takes its frames' descriptors from the pool
(woken by a futex) instead of ZeroMQ, in order, never torn, and falls back to ZeroMQ when the pool is given up or
its publisher is gone. (Named apart from tests/capture/test_shm_ring.py, the capture ring's tests.)"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import secrets
import signal
import struct
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from helpers_zmq import ANY_PORT, PATIENCE_S, VGA, fused_frame, publishing, wait_until

from streamfuse import pool_ring, ring_cursor, shm_pool
from streamfuse.shm_owners import SHM_DIR
from streamfuse.client import Subscriber
from streamfuse.pool_ring import RingError
from streamfuse.publish import PublishConfig, Publisher
from streamfuse.ring_cursor import RingCursor
from streamfuse.shm_pool import POOL_PREFIX, PoolReader, ShmPool, ring_supported
from streamfuse.wire import HeaderEncoder

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not ring_supported(), reason="the pool's ring is read on Linux x86-64 only")


def _uniform(value: int, shape: tuple[int, ...] = (48, 64, 3)) -> np.ndarray:
    return np.full(shape, value % 251, np.uint8)


def _until_ring(sub: Subscriber, pub: Publisher, value: int = 0, shape: tuple[int, ...] = (48, 64, 3)) -> None:
    """Publish frames of ``value`` until ``sub`` returns one whose descriptor came from the ring."""
    def got() -> bool:
        before = sub.via_ring
        pub.send_fused(fused_frame(_uniform(value, shape)))
        frame = sub.recv(0.05)
        return frame is not None and sub.via_ring > before and frame[1].shape == shape and frame[1][0, 0, 0] == value

    wait_until(got, "a frame through the pool's ring")


def test_frames_come_through_the_ring_in_order_and_whole(rng: np.random.Generator) -> None:
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=8)) as pub, \
            Subscriber(pub.endpoint, "fused/rig0", timeout_s=PATIENCE_S) as sub:
        _until_ring(sub, pub)
        assert sub.on_ring
        wait_until(lambda: pub.send_fused(fused_frame(_uniform(0))) and not pub._want_descriptors,
                   "the ZeroMQ descriptors unsubscribed")  # a ring reader costs the publisher no message
        while sub.recv()[0]["seq"] < pub.published - 1:  # the frames of that wait
            pass
        images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(5)]
        first, ring0, shm0 = pub.published, sub.via_ring, sub.via_shm
        for image in images:  # fewer than the slots: none is overwritten before it is read
            pub.send_fused(fused_frame(image))
        for i, image in enumerate(images):
            header, got = sub.recv()
            assert header["seq"] == first + i and header["format"] == "shm"
            np.testing.assert_array_equal(got, image)
        assert sub.via_ring - ring0 == 5 and sub.via_shm - shm0 == 5 and sub.missed == 0 and sub.malformed == 0


def test_latest_mode_jumps_to_the_newest_entry() -> None:
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=8)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, latest=True) as sub:
        _until_ring(sub, pub)
        for i in range(1, 40):
            pub.send_fused(fused_frame(_uniform(i)))
        newest = pub.published - 1
        while (frame := sub.recv()) is not None and frame[0]["seq"] < newest:
            pass
        assert frame is not None and frame[0]["seq"] == newest
        np.testing.assert_array_equal(frame[1], 39)


def test_a_bigger_pool_and_a_new_publisher_take_the_reader_back_through_zeromq() -> None:
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub:
        endpoint = pub.endpoint
        sub = Subscriber(endpoint, timeout_s=PATIENCE_S)
        _until_ring(sub, pub, 1)
        small = pub.shm_pool
        other = PoolReader(small)  # another consumer of the smaller pool
        try:
            _until_ring(sub, pub, 2, (96, 128, 3))  # bigger frames: a new pool, the old one given up
            assert other.ring.closed()  # said to its readers at once, not when the publisher closes
        finally:
            other.close()
        assert pub.shm_pool != small and sub._pools.reader.name == pub.shm_pool
    try:
        wait_until(lambda: sub.recv(0.05) is None and not sub.on_ring, "the closed pool noticed")
        with Publisher(PublishConfig(endpoint=endpoint, shm_slots=4)) as again:  # same port, new process-local pool
            _until_ring(sub, again, 3)
            assert sub.on_ring and sub._pools.reader.name == again.shm_pool
    finally:
        sub.close()


def test_a_successor_without_shared_memory_is_read_over_zeromq_by_a_reader_that_left_the_ring(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a publisher restarted with shm_slots 0 (or where no pool can be made) sends the payload only: a reader that left
    # the ring takes it again at once, not only after the silence that resubscribes anyway (put out of reach here)
    monkeypatch.setattr("streamfuse.client._RESUBSCRIBE_S", 1e6)
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub:
        endpoint = pub.endpoint
        sub = Subscriber(endpoint, timeout_s=PATIENCE_S)
        _until_ring(sub, pub, 1)
    try:
        wait_until(lambda: sub.recv(0.05) is None and not sub.on_ring, "the closed pool noticed")
        with Publisher(PublishConfig(endpoint=endpoint, shm_slots=0)) as again:

            def got() -> bool:
                again.send_fused(fused_frame(_uniform(2)))
                frame = sub.recv(0.05)
                return frame is not None and frame[0]["format"] == "raw" and frame[1][0, 0, 0] == 2

            wait_until(got, "a frame of the successor over ZeroMQ")
    finally:
        sub.close()


def test_a_killed_publisher_is_noticed_and_its_successor_read(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    script = tmp_path / "child.py"
    script.write_text(
        "import sys\n"
        "import numpy as np\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from helpers_zmq import fused_frame\n"
        "from streamfuse.publish import PublishConfig, Publisher\n"
        "pub = Publisher(PublishConfig(endpoint='tcp://127.0.0.1:*', shm_slots=4))\n"
        "print(pub.endpoint, flush=True)\n"
        "while True:\n"
        "    pub.send_fused(fused_frame(np.full((48, 64, 3), 5, np.uint8)))\n"
        "    sys.stdin.readline()  # one frame per line the test sends\n")
    child = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        endpoint = child.stdout.readline().strip()
        with caplog.at_level(logging.INFO, "streamfuse.client"), Subscriber(endpoint, timeout_s=PATIENCE_S) as sub:
            def got() -> bool:
                child.stdin.write("\n")
                child.stdin.flush()
                return sub.recv(0.05) is not None and sub.via_ring > 0

            wait_until(got, "a frame of the child through the ring")
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=PATIENCE_S)
            wait_until(lambda: sub.recv(0.05) is None and not sub.on_ring, "the killed publisher noticed")
            with Publisher(PublishConfig(endpoint=endpoint, shm_slots=4)) as successor:
                _until_ring(sub, successor, 6)
        assert "left by its publisher" in caplog.text
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=PATIENCE_S)
        child.stdin.close()
        child.stdout.close()


def _forge(pool: ShmPool, state: int | None, seq: int, lengths: tuple[int, int], body: bytes) -> None:
    """Write the pool's next ring entry by hand (``state`` None: the honest 2n + 2) and publish it."""
    ring, mm = pool._ring, pool._m.mm
    n = ring.count
    at = ring._entry(n)
    struct.pack_into("<QQII", mm, at, 2 * n + 2 if state is None else state, seq, *lengths)
    mm[at + 24:at + 24 + len(body)] = body
    ring.count = n + 1
    struct.pack_into("<Q", mm, ring._offset + pool_ring._R_COUNT, n + 1)
    struct.pack_into("<I", mm, ring._offset + pool_ring._R_FUTEX, (n + 1) & 0xFFFF_FFFF)
    ring.wake()


def test_forged_ring_entries_are_skipped_without_a_traceback() -> None:
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        _until_ring(sub, pub)
        pool, topic, seq = pub._pool, b"shm/fused/rig0", pub.published
        real = fused_frame(_uniform(0))
        other = pub._headers.encode(real, real.image, seq=seq, fmt="shm", shm_pool=f"{POOL_PREFIX}1_0123abcd",
                                    shm_slot=0, shm_gen=2)
        _forge(pool, None, seq, (len(topic), 9), topic + b"not json!")
        _forge(pool, None, seq, (len(topic), len(other)), topic + other)  # names another pool
        _forge(pool, None, seq, (2**31, 2**31), b"")  # lengths beyond the entry
        _forge(pool, 7, seq, (len(topic), 9), topic + b"half done")  # never completed: not entry n
        _forge(pool, None, seq, (11, 0), b"fused/other")  # another topic: not ours, not malformed
        pub.send_fused(fused_frame(_uniform(8)))
        header, image = sub.recv()
        assert header["seq"] == seq and sub.malformed == 3 and sub.on_ring
        np.testing.assert_array_equal(image, 8)
        struct.pack_into("<Q", pool._m.mm, pool._ring._offset + pool_ring._R_COUNT, 2**63)  # a forged count far ahead
        pool._ring.wake()

        def recovered() -> bool:  # the next honest count goes backwards: back through ZeroMQ, then the ring again
            pub.send_fused(fused_frame(_uniform(9)))
            frame = sub.recv(0.05)
            return frame is not None and frame[1][0, 0, 0] == 9 and sub.on_ring

        wait_until(recovered, "frames again after a forged count")


def test_a_ring_entry_whose_header_names_another_seq_is_malformed() -> None:
    # An entry's seq is what the cursor orders and skips by, the header's what the consumer counts gaps by; an entry
    # whose two disagree (a forged or corrupt pool) was taken as a frame: the consumer returned the pixels of a frame
    # the publisher never sent under that seq and counted frames it did send as missed.
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        _until_ring(sub, pub)
        pool, topic, seq = pub._pool, b"shm/fused/rig0", pub.published
        slot, gen = pool.write(_uniform(99))  # a whole frame in the pool, of a seq the publisher never sent
        forged = fused_frame(_uniform(99))
        header = pub._headers.encode(forged, forged.image, seq=seq + 1, fmt="shm", shm_pool=pool.name,
                                     shm_slot=slot, shm_gen=gen)
        _forge(pool, None, seq, (len(topic), len(header)), topic + header)  # the entry says seq, its header seq + 1
        malformed, missed = sub.malformed, sub.missed
        pub.send_fused(fused_frame(_uniform(8)))  # the real frame seq
        got, image = sub.recv()
        assert got["seq"] == seq and sub.on_ring
        np.testing.assert_array_equal(image, 8)
        assert (sub.malformed - malformed, sub.missed - missed) == (1, 0)
        assert "seq " + str(seq + 1) + " (entry seq " + str(seq) + ")" in sub.last_malformed


def test_a_ring_entry_refused_for_its_size_is_not_counted_as_read_from_the_ring() -> None:
    # via_ring counts the frames whose descriptor came from the ring: one refused (over max_frame_bytes) is malformed
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, max_frame_bytes=48 * 64 * 3) as sub:
        _until_ring(sub, pub)
        pool, seq, big = pub._pool, pub.published, _uniform(99, (96, 64, 3))
        header = pub._headers.encode(fused_frame(big), big, seq=seq, fmt="shm", shm_pool=pool.name, shm_slot=0,
                                     shm_gen=2)  # claims twice the size allowed: refused before its slot is read
        assert pool.notify(b"shm/fused/rig0", header, seq, wake=True)
        via_ring, malformed = sub.via_ring, sub.malformed
        pub.send_fused(fused_frame(_uniform(8)))  # seq again: the cursor passes over it (taken)
        pub.send_fused(fused_frame(_uniform(8)))
        got, image = sub.recv()
        assert got["seq"] == seq + 1 and sub.on_ring
        np.testing.assert_array_equal(image, 8)
        assert (sub.via_ring - via_ring, sub.malformed - malformed) == (1, 1), sub.last_malformed


def _announcer(pool: ShmPool, topic: bytes):
    """``announce(seq)``: a 64-byte mono8 frame written to ``pool`` and its descriptor put in the ring."""
    encoder, image = HeaderEncoder("f"), np.zeros((4, 16), np.uint8)

    def announce(seq: int) -> None:
        slot, gen = pool.write(image)
        header = encoder.encode(fused_frame(image), image, seq=seq, fmt="shm", shm_pool=pool.name, shm_slot=slot,
                                shm_gen=gen)
        assert pool.notify(topic, header, seq, wake=False)

    return announce


TOPIC = b"shm/fused/rig0"


@contextlib.contextmanager
def _ring_read(announced: int = 0) -> Iterator[tuple[Callable[[int], None], PoolReader]]:
    """A 4-slot pool whose ring holds ``announced`` entries (seq 0 on) of ``TOPIC``, its ``announce``, and a reader of
    it (closed after)."""
    with ShmPool(4, 64) as pool:
        announce = _announcer(pool, TOPIC)
        for seq in range(announced):
            announce(seq)
        reader = PoolReader(pool.name)
        try:
            yield announce, reader
        finally:
            reader.close()


def test_latest_mode_counts_as_passed_over_only_the_frames_after_the_last_one_taken() -> None:
    # The publisher sends a frame's ZeroMQ descriptor before it puts the frame in the ring, so a consumer that took
    # frames through ZeroMQ can find their entries still ahead of it in the ring. Counting every entry latest mode
    # jumped over as discarded then counted frames twice (received and discarded): received + discarded + missed came
    # to more than the publisher sent.
    with _ring_read() as (announce, reader):
        cursor = RingCursor(reader, TOPIC, latest=True)
        received, discarded, last = 5, 0, 4  # seq 0..4 taken through ZeroMQ
        for burst in (range(3, 6), range(6, 10)):  # 3 and 4 were taken already; 6, 7 and 8 are passed over
            for seq in burst:
                announce(seq)
            header, passed = cursor.next(0.0, last)
            assert header["seq"] == burst[-1]  # latest: the newest entry
            last, received, discarded = header["seq"], received + 1, discarded + passed
        assert cursor.next(0.0, last) is None
    assert (received, discarded) == (7, 3)  # seq 0..9 sent: each counted once, received or discarded


def test_a_cursor_starts_at_the_oldest_entry_still_in_the_ring() -> None:
    # The subscriber switches to the ring after frames whose ZeroMQ descriptors it has not taken yet (the publisher
    # announces each frame both ways): their entries are already in the ring, and starting at its end lost them.
    with _ring_read(3) as (_, reader):
        cursor = RingCursor(reader, TOPIC, latest=False)
        got = [cursor.next(0.0, last) for last in (None, 0, 1)]
        assert [(header["seq"], passed) for header, passed in got] == [(0, 0), (1, 0), (2, 0)]
        assert cursor.next(0.0, 2) is None


def test_a_lapped_cursor_goes_on_from_the_oldest_entry_still_in_the_ring() -> None:
    # a reader stopped while the publisher wrote more entries than the ring holds: the entries still there are read,
    # from the oldest on (the gap in seq counts the others as missed), none of them skipped
    with _ring_read(1) as (announce, reader):
        cursor = RingCursor(reader, TOPIC, latest=False)
        assert cursor.next(0.0, None)[0]["seq"] == 0
        for seq in range(1, reader.ring.entries + 3):  # entries 1 and 2 are overwritten
            announce(seq)
        header, passed = cursor.next(0.0, 0)
        assert (header["seq"], passed) == (3, 0)  # missed, not passed over as latest mode passes frames over


def test_a_ring_whose_count_goes_back_is_left() -> None:
    # only a forged pool's count goes back: the cursor gives the ring up (back to ZeroMQ), it does not wait on it
    with _ring_read(3) as (_, reader):
        cursor = RingCursor(reader, TOPIC, latest=False)
        assert [cursor.next(0.0, last)[0]["seq"] for last in (None, 0, 1)] == [0, 1, 2]
        reader.ring.count = lambda: 2  # one entry fewer than the cursor has read
        assert cursor.next(0.0, 2) is None and cursor.left == "went backwards"


def test_a_pool_given_up_is_said_once_for_all_the_cursors_of_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # three Subscribers of one publisher each said "shared-memory ring of ENDPOINT closed: taking ZeroMQ descriptors"
    # as it stopped: one line about the publisher for each of its subscribers
    monkeypatch.setattr(ring_cursor, "_left_pools", collections.deque(maxlen=64), raising=False)
    with ShmPool(4, 64) as pool, ShmPool(4, 64) as other:
        readers = [PoolReader(pool.name) for _ in range(3)] + [PoolReader(other.name)]
        try:
            cursors = [RingCursor(reader, TOPIC, latest=False) for reader in readers]
            pool.close()
            other.close()
            assert [cursor.next(0.0, None) for cursor in cursors] == [None] * 4
            assert [(cursor.left, cursor.left_level) for cursor in cursors] == \
                [("closed", logging.INFO)] + [("closed", logging.DEBUG)] * 2 + [("closed", logging.INFO)]
        finally:
            for reader in readers:
                reader.close()


def test_ring_entry_lengths_are_checked_and_a_version_1_pool_has_no_ring() -> None:
    with ShmPool(2, 64) as pool:
        reader = PoolReader(pool.name)
        ring = reader.ring
        assert ring is not None and ring.count() == 0 and ring.entry(0) is None
        assert pool.notify(b"t", b"h", 3, wake=False) and ring.entry(0) == (3, b"t", b"h")
        room = pool_ring.ENTRY_BYTES - 24 - 1  # an entry's bytes after its 24 of fields, less the topic's
        assert not pool.notify(b"t", b"x" * (room + 1), 4, wake=False)  # a byte too long: ZeroMQ only
        _forge(pool, None, 4, (5000, 0), b"")
        with pytest.raises(RingError, match="do not fit"):
            ring.entry(1)
        assert pool.notify(b"t", b"x" * room, 5, wake=False) and ring.entry(2) == (5, b"t", b"x" * room)  # just fits
        for _ in range(64):
            pool.notify(b"t", b"h", 5, wake=False)
        assert ring.entry(1) is None  # lapped
        reader.close()
    name = f"{POOL_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"  # this test's own file
    words = [shm_pool._MAGIC_V1, 1, 64, 64, 2, 64]  # header, then slot 0's generation and size; its frame at 64
    (SHM_DIR / name).write_bytes(struct.pack("<6q", *words).ljust(64, b"\0") + b"\7" * 64)
    try:
        old = PoolReader(name)
        assert old.ring is None  # a version-1 pool: ZeroMQ descriptors only
        np.testing.assert_array_equal(old.read(0, 2, 64, copy=True), 7)  # its slot table right after its 4 words
        old.close()
    finally:
        (SHM_DIR / name).unlink()


def test_the_ring_is_laid_out_as_documented() -> None:
    # the layout is the contract with readers that are not this module (another language, another version): read
    # here from the file's bytes at the documented offsets only
    assert [pool_ring.ring_size(slots)[0] for slots in (1, 32, 33, 1024)] == [64, 64, 128, 2048]
    with ShmPool(2, 64) as pool:
        for seq in range(40):  # entries 0..39 of a ring of 64
            assert pool.notify(b"t", b"h%d" % seq, seq, wake=False)
        with open(SHM_DIR / pool.name, "rb") as file:
            data = file.read()
            pool.close()  # given up: unlinked, still readable through this file
            file.seek(0)
            given_up = file.read()
    ring, entries, entry_bytes = struct.unpack_from("<3q", data, 8 * 4)
    assert (entries, entry_bytes) == (64, 2048)
    assert struct.unpack_from("<IIQ", data, ring) == (40, 0, 40)  # futex word, closed, count
    futex, closed, count = struct.unpack_from("<IIQ", given_up, ring)
    assert (closed, count) == (1, 40) and futex != 40  # the word changes when the pool is given up
    at = ring + 64 + 39 * 2048
    assert struct.unpack_from("<QQII", data, at) == (2 * 39 + 2, 39, 1, 3) and data[at + 24:at + 28] == b"th39"


def _asleep_on(thread: threading.Thread, ring: object) -> bool:
    """Whether ``thread`` is blocked in a futex wait on ``ring``'s word (the futex system call, the word's address
    its first argument)."""
    assert thread.is_alive(), "the wait returned without sleeping"
    try:
        fields = Path(f"/proc/self/task/{thread.native_id}/syscall").read_text().split()
    except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile (before the open, or after)
        return False
    return fields[0] == str(pool_ring._SYS_FUTEX) and int(fields[1], 16) == ring._futex_addr


def test_readers_waiting_on_the_ring_are_all_woken_by_the_next_entry_and_by_the_pool_given_up() -> None:
    # a reader left asleep sleeps out its whole timeout: the frame or the pool's end reaches it that much later
    with ShmPool(2, 64) as pool:
        reader = PoolReader(pool.name)
        ring = reader.ring
        try:
            for event in (lambda: pool.notify(b"t", b"h", 0, wake=True), pool.close):
                waiters = [threading.Thread(target=ring.wait, args=(ring.count(), 4 * PATIENCE_S), daemon=True)
                           for _ in range(2)]
                for waiter in waiters:
                    waiter.start()
                wait_until(lambda: all(_asleep_on(w, ring) for w in waiters), "the readers asleep on the ring")
                event()
                wait_until(lambda: not any(waiter.is_alive() for waiter in waiters), "the readers woken")
            late = threading.Thread(target=ring.wait, args=(ring.count(), 4 * PATIENCE_S), daemon=True)
            late.start()  # on a pool given up: no wait at all
            late.join(PATIENCE_S)
            assert not late.is_alive()
        finally:
            reader.close()


def test_a_wait_of_part_of_a_second_is_given_to_the_kernel_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    # a timeout cut to whole seconds made every wait of under one a poll: a ring reader with nothing to read spun
    calls = []
    monkeypatch.setattr(pool_ring, "_libc", types.SimpleNamespace(syscall=lambda *args: calls.append(args)))
    pool_ring._futex(0, pool_ring._FUTEX_WAIT, 5, 2.25)
    timeout = calls[0][4]._obj  # syscall(SYS_futex, addr, op, value, timeout, ...)
    assert (timeout.tv_sec, timeout.tv_nsec) == (2, 250_000_000)


def test_an_entry_overwritten_while_it_is_copied_is_not_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader copies an entry out while the writer may lap it: the state word it read first said "complete", but the
    # bytes it copied may be a later entry's. Without checking the state again after the copy, the reader returned
    # the old entry's seq with another frame's topic and header (or a half-written mix of both).
    with ShmPool(2, 64) as pool:
        reader = PoolReader(pool.name)
        ring = reader.ring
        assert pool.notify(b"t", b"old", 3, wake=False)
        real = pool_ring._ENTRY

        class _LappedDuringTheCopy:
            """The entry's fields read as they were; then, before the body is copied, the writer laps the entry."""
            size = real.size

            @staticmethod
            def unpack_from(buffer: object, offset: int = 0) -> tuple[int, ...]:
                fields = real.unpack_from(buffer, offset)
                for seq in range(4, 4 + ring.entries):  # entry 0's place is now entry ring.entries'
                    pool.notify(b"t", b"new", seq, wake=False)
                return fields

        monkeypatch.setattr(pool_ring, "_ENTRY", _LappedDuringTheCopy)
        assert ring.entry(0) is None  # overwritten while we copied it
        monkeypatch.undo()
        assert ring.entry(ring.entries) == (3 + ring.entries, b"t", b"new")  # what is there now reads whole
        reader.close()


def test_an_entry_the_writer_stopped_rewriting_halfway_is_not_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    # A publisher killed while it rewrites the place of entry 0 (the ring has gone round once) leaves the new fields
    # and bytes there under the old entry's state unless it marked the entry as being written first: a lapped reader
    # then took the next round's descriptor for entry 0, or a mix of both.
    with ShmPool(2, 64) as pool:
        reader = PoolReader(pool.name)
        ring = reader.ring
        for seq in range(ring.entries):
            assert pool.notify(b"t", b"old", seq, wake=False)
        real = pool_ring._COUNT

        class _Killed(Exception):
            pass

        class _KilledBeforeTheEntryIsComplete:
            """The writer's stores go through until the one that says the new entry is complete."""
            unpack_from = staticmethod(real.unpack_from)

            @staticmethod
            def pack_into(buffer: object, offset: int, value: int) -> None:
                if value == 2 * ring.entries + 2:
                    raise _Killed
                real.pack_into(buffer, offset, value)

        monkeypatch.setattr(pool_ring, "_COUNT", _KilledBeforeTheEntryIsComplete)
        with pytest.raises(_Killed):
            pool.notify(b"t", b"new", ring.entries, wake=False)
        monkeypatch.undo()
        assert ring.entry(0) is None and ring.entry(ring.entries) is None
        reader.close()


def _ring_reader(pub: Publisher, **kwargs: object) -> Subscriber:
    """A Subscriber of ``pub`` (which publishes from a thread) once its frames come through the ring."""
    sub = Subscriber(pub.endpoint, timeout_s=PATIENCE_S, **kwargs)
    wait_until(lambda: sub.recv(0.05) is not None and sub.on_ring, "a frame through the pool's ring")
    return sub


def test_a_ring_reader_gets_frames_while_other_readers_hold_every_slot() -> None:
    # two readers each holding the view of a frame (copy=False) held both slots: the publisher could put no frame in
    # the pool, and a reader on its ring got nothing at all, for as long as they held them
    with publishing(_uniform(1), rate_hz=50, shm_slots=2) as pub, _ring_reader(pub) as sub:
        holders = [Subscriber(pub.endpoint, timeout_s=PATIENCE_S, copy=False) for _ in range(2)]
        try:
            held: list[int] = []
            for holder in holders:  # the slot of another seq than the one held already: both slots then held
                wait_until(lambda h=holder: (f := h.recv(0.05)) is not None and h.via_shm and f[0]["seq"] not in held
                           and not held.append(f[0]["seq"]), "a frame held in its slot")
            wait_until(lambda: pub.shm_busy > 0, "every slot held")
            busy_from = pub.published
            wait_until(lambda: (f := sub.recv(0.05)) is not None and f[0]["seq"] > busy_from, "a frame after that")
        finally:
            for holder in holders:
                holder.close()


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_a_ring_reader_the_publisher_dropped_while_it_was_stopped_reads_on(latest: bool,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # a consumer stopped (Ctrl-Z, a debugger) past the publisher's peer timeout is dropped and reconnects once it is
    # continued; on the ring it never touched its socket, so its subscriptions never reached the publisher again
    monkeypatch.setattr("streamfuse.publish._PEER_TIMEOUT_MS", 1000)
    script = ("import sys\nfrom streamfuse.client import Subscriber\n"
              "with Subscriber(sys.argv[1], timeout_s=0.2, latest=sys.argv[2] == '1') as sub:\n"
              "    while True:\n"
              "        frame = sub.recv()\n"
              "        print(frame[0]['seq'] if frame else -1, int(sub.on_ring), flush=True)\n")
    lines: queue.Queue[tuple[int, int]] = queue.Queue()
    with publishing(_uniform(1), rate_hz=50) as pub:
        child = subprocess.Popen([sys.executable, "-c", script, pub.endpoint, str(int(latest))], text=True,
                                 stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
        reader = threading.Thread(target=lambda: [lines.put(tuple(map(int, line.split()))) for line in child.stdout],
                                  daemon=True)
        reader.start()
        try:
            wait_until(lambda: lines.get(timeout=PATIENCE_S)[1] == 1, "the consumer on the ring")
            wait_until(lambda: pub._want_ring, "its ring subscription at the publisher")
            child.send_signal(signal.SIGSTOP)
            wait_until(lambda: not pub._want_ring, "the stopped consumer dropped by the publisher")
            child.send_signal(signal.SIGCONT)
            continued = pub.published
            wait_until(lambda: lines.get(timeout=PATIENCE_S)[0] > continued, "a frame after it was continued")
        finally:
            child.kill()
            child.wait(PATIENCE_S)


def test_frames_queued_on_the_socket_while_on_the_ring_are_not_taken_after(caplog: pytest.LogCaptureFixture) -> None:
    # A subscriber slow to take its first frames took the ring at the first descriptor, with the ZeroMQ copies of the
    # others still queued (its socket, then the connection); leaving the ring later, it took one of those as a frame:
    # an old frame, its seq going back (logged as a restart) and the frames after it counted missed.
    with caplog.at_level(logging.INFO, "streamfuse.seq_count"), \
            Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=8, sndhwm=40)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        wait_until(lambda: pub.wait_for_subscriber(0) and pub._want_descriptors, "the subscriptions")
        for i in range(12):  # both ways each, payload and descriptor, all sent before the first is taken
            pub.send_fused(fused_frame(_uniform(i, VGA)))
        seqs = [sub.recv()[0]["seq"]]
        assert sub.on_ring
        for i in range(12, 30):  # on the ring: the copies queued meanwhile are stale
            pub.send_fused(fused_frame(_uniform(i, VGA)))
            while seqs[-1] < i:
                seqs.append(sub.recv()[0]["seq"])
        pub.send_fused(fused_frame(_uniform(1, (960, 640, 3))))  # a bigger pool: the ring given up, back to ZeroMQ
        wait_until(lambda: sub.recv(0.05) is None and not sub.on_ring, "the ring left")
        before = len(seqs)

        def taken() -> bool:  # through ZeroMQ, then the new pool's ring
            pub.send_fused(fused_frame(_uniform(2, VGA)))
            if (frame := sub.recv(0.05)) is not None:
                seqs.append(frame[0]["seq"])
            return len(seqs) > before + 10 and sub.on_ring

        wait_until(taken, "frames after the ring was left")
        assert seqs == sorted(set(seqs)) and "restarted" not in caplog.text and sub.malformed == 0, seqs


def test_a_reader_that_gives_the_pool_up_drops_its_ring_subscription(monkeypatch: pytest.MonkeyPatch) -> None:
    # back on ZeroMQ for good (a bigger pool it cannot map), it must not leave the publisher filling the pool's ring
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        _until_ring(sub, pub)
        wait_until(lambda: pub.send_fused(fused_frame(_uniform(0))) and pub._want_ring, "its ring subscription")

        def refused(name: str) -> PoolReader:
            raise shm_pool.PoolError(f"cannot open shared memory {name}: Permission denied")

        monkeypatch.setattr("streamfuse.pool_view.PoolReader", refused)
        big = _uniform(2, (96, 64, 3))  # a bigger pool: the ring given up, and the new pool cannot be mapped

        def on_zeromq() -> bool:
            pub.send_fused(fused_frame(big))
            frame = sub.recv(0.05)
            return frame is not None and frame[0]["format"] == "raw" and not sub.on_ring

        wait_until(on_zeromq, "the raw frames over ZeroMQ")
        wait_until(lambda: pub.send_fused(fused_frame(big)) and not pub._want_shm, "the pool left unfilled")
        assert not pub._want_ring
        count = pub._pool._ring.count
        pub.send_fused(fused_frame(big))
        assert pub._pool._ring.count == count


def test_a_connection_dropped_while_on_the_ring_is_restored_there(monkeypatch: pytest.MonkeyPatch) -> None:
    # a part ZeroMQ refuses drops the connection and libzmq does not retry: the publisher, seeing no subscription,
    # stops filling the ring; the subscriber must notice and restore it while it reads the ring, not only once a
    # silent ring sends it back to ZeroMQ (never here)
    monkeypatch.setattr("streamfuse.client._RESUBSCRIBE_S", 1e6)
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=4)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S, max_frame_bytes=48 * 64 * 3) as sub:
        _until_ring(sub, pub)
        wait_until(lambda: pub.send_fused(fused_frame(_uniform(0))) and pub._want_ring, "its ring subscription")
        pub._sock.send_multipart([b"ring/shm/fused/rig0", bytes(70_000)])  # over the 64 KiB part limit
        wait_until(lambda: pub.send_fused(fused_frame(_uniform(1))) and not pub._want_ring, "the connection dropped")

        def restored() -> bool:
            pub.send_fused(fused_frame(_uniform(3)))
            frame = sub.recv(0.05)
            return frame is not None and frame[1][0, 0, 0] == 3 and sub.malformed == 1

        wait_until(restored, "frames through the ring after the restore")
        assert sub.on_ring and "reconnected" in sub.last_malformed


def test_a_ring_reader_looks_at_its_connection_once_a_while_not_once_a_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    # the look (the monitor socket's events) cost as much as the ring's own transport of a frame; a drop is restored
    # half a second on anyway (the test above), so a look each while keeps that at no cost per frame
    monkeypatch.setattr("streamfuse.connection_watch._GLANCE_S", 1e6)
    with Publisher(PublishConfig(endpoint=ANY_PORT, shm_slots=8)) as pub, \
            Subscriber(pub.endpoint, timeout_s=PATIENCE_S) as sub:
        _until_ring(sub, pub)
        looks = []
        monkeypatch.setattr(sub._watch, "on_events", lambda: looks.append(1))
        before = sub.via_ring
        for value in range(20):
            pub.send_fused(fused_frame(_uniform(value)))
            assert sub.recv()[1][0, 0, 0] == value
        assert sub.on_ring and sub.via_ring - before == 20
        assert len(looks) <= 1
