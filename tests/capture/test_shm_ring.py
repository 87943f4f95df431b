"""ShmRing: hand-off across processes, latest/block policies, size change, no leaked segments, a killed run's
segments freed by name."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing as mp
import os
import subprocess
import sys
import types
import uuid
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np
import pytest
from helpers_clock import SleptClock

from streamfuse import shm_owners
from streamfuse.capture import shm_ring
from streamfuse.capture.shm_ring import SHM_PREFIX, ShmRing, named_semaphore, remove_stale_rings
from streamfuse.capture.shm_space import ShmFull
from streamfuse.frames import Frame
from streamfuse.shm_owners import SHM_DIR, process_alive, remove_stale

# how long a test waits for what must come: a spawned child's start alone took 9-13 s on a loaded 2-core machine
PATIENCE_S = 60.0


def image(seq: int, shape: tuple[int, ...] = (48, 64, 3)) -> np.ndarray:
    """Deterministic content per seq, so the reader can check every byte."""
    return np.random.default_rng(seq).integers(0, 256, shape, dtype=np.uint8)


def t_of(seq: int) -> int:
    return 1_700_000_000_000_000_000 + seq * 33_333_333


def _writer(ring: ShmRing, n: int, shape: tuple[int, ...]) -> None:
    """Child process: write n frames (blocking ring: waits whenever the reader is behind)."""
    for seq in range(n):
        assert ring.write(Frame(ring.stream, seq, t_of(seq), image(seq, shape), 5_000 + seq), timeout=PATIENCE_S)
    ring.close()


def assert_unlinked(name: str) -> None:
    if sys.platform.startswith("linux"):
        assert not (SHM_DIR / name).exists(), f"leaked shared memory segment {name}"


@pytest.mark.parametrize("shape", [(48, 64, 3), (48, 64)])
def test_frames_cross_processes_byte_exact_with_seq_and_time(shape: tuple[int, ...]) -> None:
    ctx = mp.get_context("spawn")
    ring = ShmRing("vis", slots=3, slot_bytes=int(np.prod(shape)), policy="block", ctx=ctx)
    name = ring.name
    child = ctx.Process(target=_writer, args=(ring, 40, shape))
    child.start()
    try:
        got = [ring.read(timeout=PATIENCE_S) for _ in range(40)]
    finally:
        child.join(PATIENCE_S)
        ring.close()
    assert child.exitcode == 0
    assert [f.seq for f in got] == list(range(40))  # block policy: nothing dropped, in order
    assert [f.t_capture_ns for f in got] == [t_of(i) for i in range(40)]
    assert [f.t_mono_ns for f in got] == [5_000 + i for i in range(40)]  # the acquisition time latency is taken on
    for f in got:
        assert f.stream == "vis" and f.image.shape == shape
        np.testing.assert_array_equal(f.image, image(f.seq, shape))
    assert_unlinked(name)


def test_a_ring_that_cannot_be_mapped_is_named_in_its_error(monkeypatch) -> None:
    # under ulimit -v a 4K camera's ring fails to map: the run ended on "[Errno 12] Cannot allocate memory" alone
    def refused(*args, **kwargs):
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(shared_memory, "SharedMemory", refused)
    with pytest.raises(OSError, match=r"^\[Errno 12\] cannot map the vis capture ring \(\d+ bytes\): Cannot allocate "
                                      "memory$"):
        ShmRing("vis", slots=2, slot_bytes=12)


def _no_room_beyond(limit: int):
    """``os.posix_fallocate`` of a /dev/shm with ``limit`` bytes free."""
    real = os.posix_fallocate

    def fallocate(fd: int, offset: int, size: int) -> None:
        if offset + size > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, offset, size)

    return fallocate


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="segments in /dev/shm")
def test_a_ring_that_shared_memory_has_no_room_to_grow_into_is_refused_in_one_line_and_removed(monkeypatch) -> None:
    # /dev/shm is sparse: a successor bigger than the room left was made all the same, and the writer's first copy
    # into it killed the producer with SIGBUS, at every restart
    ring = ShmRing("ir", slots=3, slot_bytes=64 * 48)
    monkeypatch.setattr(os, "posix_fallocate", _no_room_beyond(2**20))
    statvfs = os.statvfs  # the room left, as /dev/shm would tell it: 1.5 MiB
    monkeypatch.setattr(os, "statvfs", lambda p: types.SimpleNamespace(f_bavail=384, f_bfree=384, f_frsize=4096)
                        if str(p) == str(SHM_DIR) else statvfs(p))
    try:
        with pytest.raises(ShmFull, match=r"^ir: a capture ring of 3 frames of 921600 bytes needs 2\.6 MiB of "
                                          r"shared memory but /dev/shm has 1\.5 MiB free \(No space left on device\): "
                                          r"lower width/height, or give /dev/shm more room"):
            ring.write(Frame("ir", 0, t_of(0), image(0, (480, 640, 3))))
        assert not (SHM_DIR / f"{ring.name}_g1").exists()
        assert ring.write(Frame("ir", 1, t_of(1), image(1, (48, 64))))  # frames that fit go on in the ring it has
    finally:
        ring.close()
    assert not list(SHM_DIR.glob(f"{ring.name}*"))


def test_latest_policy_never_blocks_and_counts_overwritten_frames() -> None:
    with ShmRing("ir", slots=2, slot_bytes=48 * 64) as ring:
        # no reader at all, yet every write succeeds with no time at all to wait for space
        assert all(ring.write(Frame("ir", s, t_of(s), image(s, (48, 64))), timeout=0) for s in range(10))
        assert ring.stats() == {"written": 10, "unread": 2, "dropped": 8}
        assert ring.peek_time() == t_of(8)  # the oldest unread frame's capture time, still unread
        newest = [ring.read(timeout=1.0), ring.read(timeout=1.0)]
        assert [f.seq for f in newest] == [8, 9]
        np.testing.assert_array_equal(newest[1].image, image(9, (48, 64)))
        assert ring.read(timeout=0.05) is None


def test_block_policy_waits_instead_of_dropping(monkeypatch) -> None:
    with ShmRing("ir", slots=2, slot_bytes=16, policy="block") as ring:
        frame = Frame("ir", 0, 0, np.zeros((4, 4), np.uint8))
        assert ring.write(frame) and ring.write(frame)
        with monkeypatch.context() as waits:  # the reader's bell never rings; each wait on it moves the clock on
            clock = SleptClock()
            waits.setattr(shm_ring, "time", clock)
            waits.setattr(ring, "_space_bell", types.SimpleNamespace(acquire=lambda timeout: clock.sleep(timeout)))
            assert not ring.write(frame, timeout=0.2)  # full: waits, then gives up without overwriting
            assert clock.ns > 200_000_000  # its whole timeout
        assert ring.stats() == {"written": 2, "unread": 2, "dropped": 0}
        ring.read(timeout=1.0)
        assert ring.write(frame, timeout=0.2)  # a slot was freed


def _growing_writer(ring: ShmRing, small: int, grows: int) -> None:
    """Child process: ``small`` small frames, then ``grows`` ones each too big for the slots before."""
    for seq in range(small):
        ring.write(Frame("vis", seq, t_of(seq), image(seq, (10, 10, 3))))
    for seq in range(small, small + grows):
        ring.write(Frame("vis", seq, t_of(seq), image(seq, (40 * (seq - small + 1), 30, 3))))
    ring.close()


def _grown(small: int, grows: int = 1) -> tuple[ShmRing, str]:
    """A 2-slot latest ring, and the name of its first segment, after a child wrote ``small`` frames and ``grows``
    larger ones into it."""
    ctx = mp.get_context("spawn")
    ring = ShmRing("vis", slots=2, slot_bytes=10 * 10 * 3, ctx=ctx)
    first = ring.name
    child = ctx.Process(target=_growing_writer, args=(ring, small, grows))
    child.start()
    child.join(PATIENCE_S)
    assert child.exitcode == 0
    return ring, first


def test_bigger_frame_moves_to_a_larger_segment_and_all_generations_are_unlinked() -> None:
    ring, first = _grown(1)
    out = [ring.read(timeout=1.0), ring.read(timeout=1.0)]
    np.testing.assert_array_equal(out[0].image, image(0, (10, 10, 3)))  # drained from the first segment
    np.testing.assert_array_equal(out[1].image, image(1, (40, 30, 3)))
    assert ring.name != first and ring.slot_bytes >= 40 * 30 * 3
    assert_unlinked(first)  # the reader unlinked the drained generation when it followed
    second = ring.name
    ring.close()
    assert_unlinked(second)


def _grown_twice_holding(ring: ShmRing) -> None:
    """Child process: grow twice; exit 1 while a descriptor still holds the generation it grew out of."""
    for seq, rows in enumerate((10, 40, 80)):
        ring.write(Frame("vis", seq, t_of(seq), image(seq, (rows, 10, 3))))
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            links.append(os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)"))
    sys.exit(int(str(SHM_DIR / ring._name(1)) in links))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_a_writer_lets_go_of_the_generations_it_grew_out_of() -> None:
    # its lock on each segment it made (held while in use) kept the descriptor, and so the memory, of every smaller
    # generation after the reader had unlinked it, for as long as the producer ran
    ctx = mp.get_context("spawn")
    with ShmRing("vis", slots=2, slot_bytes=10 * 10 * 3, ctx=ctx) as ring:
        child = ctx.Process(target=_grown_twice_holding, args=(ring,))
        child.start()
        child.join(PATIENCE_S)
        assert child.exitcode == 0


def test_frames_dropped_before_the_ring_grew_stay_counted() -> None:
    # The drop counter lives in each segment's header: without carrying it over when the reader follows the writer to
    # a bigger segment, a camera that changed resolution made its earlier drops vanish from the run's stats (a live
    # run that lost frames reported none).
    ring, first = _grown(4)  # 4 small frames into 2 slots nobody reads yet: 2 dropped
    try:
        got = [ring.read(timeout=1.0) for _ in range(3)]
        assert [f.seq for f in got] == [2, 3, 4]  # 0 and 1 overwritten unread; 4 from the larger segment
        assert ring.name != first
        assert ring.stats() == {"written": 5, "unread": 0, "dropped": 2}  # counted across both segments
    finally:
        ring.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="segments listed in /dev/shm")
def test_a_reader_that_never_followed_the_writers_grows_unlinks_every_successor_on_close() -> None:
    ring, first = _grown(1, grows=3)  # the writer made generations 1, 2 and 3; the reader is still on 0
    ring.close()
    assert not list(SHM_DIR.glob(f"{first}*"))


def test_every_write_rings_the_data_bell_a_reader_of_several_rings_waits_on() -> None:
    bell = named_semaphore(mp.get_context("spawn"))
    with ShmRing("ir", slots=1, slot_bytes=16, data_bell=bell) as ring:
        for seq in range(2):  # the second overwrites the first, unread: a write all the same
            ring.write(Frame("ir", seq, t_of(seq), image(seq, (4, 4))))
        assert bell.acquire(block=False) and bell.acquire(block=False) and not bell.acquire(block=False)


def test_rejects_non_uint8_and_bad_policy() -> None:
    with ShmRing("ir", slots=1, slot_bytes=64) as ring:
        with pytest.raises(ValueError, match="uint8"):
            ring.write(Frame("ir", 0, 0, np.zeros((4, 4), np.float32)))
        # refused by the writer, in one line, not by the reader reshaping them
        with pytest.raises(ValueError, match=r"counts must be uint16 \(4, 4\), got uint16 \(2, 8\)"):
            ring.write(Frame("ir", 0, 0, np.zeros((4, 4), np.uint8), counts=np.zeros((2, 8), np.uint16)))
    with pytest.raises(ValueError, match="policy"):
        ShmRing("ir", slots=1, slot_bytes=64, policy="newest")
    with pytest.raises(ValueError, match="slots=0, slot_bytes=64: both must be >= 1"):
        ShmRing("ir", slots=0, slot_bytes=64)


def test_names_carry_the_creating_process() -> None:
    with ShmRing("ir", slots=1, slot_bytes=64) as ring:
        assert ring.name.startswith(f"{SHM_PREFIX}{os.getpid()}_")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists /dev/shm")
def test_remove_stale_frees_only_objects_whose_creator_is_gone() -> None:
    prefix = f"sftest{uuid.uuid4().hex[:6]}_"  # this test's own names: nobody else's objects are touched
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # exited and reaped
    names = {"dead": f"{prefix}{dead_pid}_a1", "dead_gen": f"{prefix}{dead_pid}_a1_g1",
             "dead_sem": f"sem.{prefix}{dead_pid}_b2", "alive": f"{prefix}{os.getpid()}_c3"}
    made = [shared_memory.SharedMemory(name=n, create=True, size=64) for n in names.values()]
    try:
        removed = remove_stale(prefix)
        assert sorted(removed) == sorted(names[k] for k in ("dead", "dead_gen", "dead_sem"))
        assert (SHM_DIR / names["alive"]).exists()
        assert not any((SHM_DIR / names[k]).exists() for k in ("dead", "dead_gen", "dead_sem"))
    finally:
        for shm in made:
            shm.close()
            if (SHM_DIR / shm.name.lstrip("/")).exists():
                shm.unlink()
            else:  # removed by remove_stale: else the tracker warns at exit of "leaked" objects it cannot find
                resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists a shared-memory folder")
def test_a_name_with_a_number_no_process_can_have_is_stale_not_an_error(tmp_path) -> None:
    """/dev/shm is anyone's to write in: a name whose number overflows a pid must not stop every start."""
    for name in ("streamfuse_99999999999_a1", "sem.streamfuse_4294967296_b2", "streamfuse_0_c3"):
        (tmp_path / name).write_bytes(b"")
    assert sorted(remove_stale(SHM_PREFIX, tmp_path)) == ["sem.streamfuse_4294967296_b2", "streamfuse_0_c3",
                                                        "streamfuse_99999999999_a1"]
    assert not process_alive(2**63) and not process_alive(0)


def started_an_hour_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's start, as the test of a pid used again reckons it, an hour after the objects made so far."""
    clock = shm_owners.time
    monkeypatch.setattr(shm_owners, "time", types.SimpleNamespace(
        time_ns=lambda: clock.time_ns() + 3600 * 10**9, clock_gettime_ns=clock.clock_gettime_ns,
        CLOCK_BOOTTIME=clock.CLOCK_BOOTTIME))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists a shared-memory folder")
def test_objects_named_for_a_pid_that_a_process_started_since_has_are_stale(tmp_path, monkeypatch) -> None:
    """A container started again with /dev/shm shared gives its run the pid of the run killed before it (1, say): every
    start took that run's objects, unheld, for its own, and they stayed for good. Here this process stands for the new
    run, the objects aged by an hour."""
    names = [f"streamfuse_{os.getpid()}_a1", f"sem.streamfuse_{os.getpid()}_b2"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert remove_stale(SHM_PREFIX, tmp_path) == []  # made since this process started: its own
    started_an_hour_later(monkeypatch)
    assert sorted(remove_stale(SHM_PREFIX, tmp_path)) == sorted(names)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists a shared-memory folder")
def test_another_users_stale_object_is_left_to_them(tmp_path, monkeypatch) -> None:
    """A run killed as root (or as another service user) leaves objects that /dev/shm, a sticky folder, lets only
    their owner unlink: every start of every other user stopped with "Operation not permitted" on them."""
    names = ("streamfuse_0_theirs", "streamfuse_0_ours")
    for name in names:
        (tmp_path / name).write_bytes(b"")
    unlink = Path.unlink

    def sticky(path: Path, *args, **kwargs) -> None:  # the kernel's answer to a non-owner (root here skips the check)
        if path.name == names[0]:
            raise PermissionError(1, "Operation not permitted", str(path))
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", sticky)
    assert remove_stale(SHM_PREFIX, tmp_path) == [names[1]]
    assert [p.name for p in tmp_path.iterdir()] == [names[0]]


def test_a_process_this_user_may_not_signal_is_alive(monkeypatch) -> None:
    """Another user's process (``kill(pid, 0)`` refused): its objects are not this run's to free."""
    def refused(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", refused)
    assert process_alive(os.getpid())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are told apart through /proc (Linux)")
def test_a_killed_process_not_yet_reaped_is_not_alive() -> None:
    """A parent that reads a killed run's output to its end before reaping it (``subprocess.communicate``) leaves
    it a zombie; its producers, which hold that output, must take it for gone, or both wait for each other."""
    # reads its stdin until the kill
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert process_alive(proc.pid)
        proc.kill()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # it has exited; still unreaped
        assert not process_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
    assert not process_alive(proc.pid)


def test_a_process_reaped_as_its_stat_is_read_is_not_alive(monkeypatch) -> None:
    # the read of /proc/PID/stat fails with ESRCH, not ENOENT, when the process is reaped between its open and its
    # read: it was taken for alive, and its stale segments were left for a later start
    class Reaped(type(Path())):
        def read_bytes(self) -> bytes:
            raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH))

    monkeypatch.setattr(shm_owners, "Path", Reaped)
    assert not process_alive(os.getpid())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="segments listed in /dev/shm")
def test_an_owner_that_writes_and_grows_unlinks_every_generation_on_close() -> None:
    # its grows left the earlier segments for a reader to follow: with none, they stayed until the process ended
    ring = ShmRing("ir", slots=2, slot_bytes=16)
    base = ring.name
    for seq, side in enumerate((8, 16, 32)):  # 64, 256, 1024 bytes: two successors
        ring.write(Frame("ir", seq, t_of(seq), image(seq, (side, side))))
    assert ring.name == f"{base}_g2"
    ring.close()
    assert not list(SHM_DIR.glob(f"{base}*"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists /dev/shm")
def test_a_running_rigs_objects_are_not_stale_to_a_run_in_another_pid_namespace(monkeypatch) -> None:
    """A container that shares /dev/shm sees no process of this pid (or another one): its start freed every object
    of the rig running beside it, whose consumers lost its shared memory and whose stop ended in tracebacks."""
    alive = shm_owners.process_alive
    monkeypatch.setattr(shm_owners, "process_alive", lambda pid: pid != os.getpid() and alive(pid))  # as seen there
    with ShmRing("ir", slots=1, slot_bytes=64) as ring:
        names = [ring.name, *(f"sem.{s._semlock.name.lstrip('/')}" for s in (ring._lock, ring._space_bell))]
        assert not set(names) & set(remove_stale_rings())
        assert all((SHM_DIR / name).exists() for name in names)
