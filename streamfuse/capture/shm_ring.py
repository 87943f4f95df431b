"""A bounded ring of fixed-size frame slots in shared memory (one writer process, one reader process).

Images never go through pickling: the writer copies a frame into a slot of a ``multiprocessing.shared_memory``
segment and the reader copies it out (one copy each way). The segment starts with a small header (head/tail
counters, drop counter, successor generation) and per-slot metadata (seq, capture time, shape), all guarded by
one process-shared lock. Two semaphores wake the reader (data) and a blocked writer (space).

Policies:

- ``latest`` (live): a full ring overwrites its oldest unread slot and counts a drop; the writer never waits for
  the reader.
- ``block`` (offline): a full ring makes the writer wait for a free slot; nothing is dropped.

A frame larger than the slots makes the writer create a successor segment with bigger slots; the reader drains
the old segment first, then follows (so writer and reader must be separate objects, i.e. processes). The creating
side (``owner``) unlinks every generation on ``close()``.
Every lock acquisition has a timeout, so a peer killed while holding the lock cannot hang the other side.

Segment and semaphore names carry the creating process's id (``streamfuse_<pid>_<random>``), so when every process
of a run was killed at once (OOM killer, ``docker kill``) and nothing could unlink them, a later start finds them
and :func:`remove_stale_rings` frees those whose creator is gone.

>>> import numpy as np
>>> from streamfuse.frames import Frame
>>> with ShmRing("vis", slots=2, slot_bytes=12) as ring:
...     ring.write(Frame("vis", 7, 123, np.arange(12, dtype=np.uint8).reshape(2, 2, 3)))
...     out = ring.read(timeout=1.0)
True
>>> out.seq, out.t_capture_ns, out.image.shape, int(out.image[1, 1, 2])
(7, 123, (2, 2, 3), 11)
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import secrets
import time
from collections.abc import Iterator
from multiprocessing import shared_memory, synchronize
from typing import Any, Literal

import numpy as np

from streamfuse.capture.shm_space import reserve
from streamfuse.frames import Frame
from streamfuse.shm_owners import hold, hold_semaphore, release, remove_stale

__all__ = ["ShmRing", "SHM_PREFIX", "named_semaphore", "remove_stale_rings"]

SHM_PREFIX = "streamfuse_"  # every segment name starts with this (/dev/shm/streamfuse_* on Linux)
_MAGIC = 0x5346_5249_4E47_0001  # "SFRING" v1
_ALIGN = 64  # cache line
# Header fields (int64).
_H_MAGIC, _H_SLOTS, _H_SLOT_BYTES, _H_HEAD, _H_TAIL, _H_DROPPED, _H_NEXT_GEN, _H_LEN = range(8)
# Per-slot metadata fields (int64).
_M_SEQ, _M_T, _M_H, _M_W, _M_C, _M_NBYTES, _M_MONO, _M_COUNTS, _M_LEN = range(9)
_LOCK_POLL_S = 0.1  # longest single wait; callers re-check stop flags and deadlines in between


def _round_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _owned_name() -> str:
    """A fresh name that records its creator: ``<SHM_PREFIX><pid>_<random>``."""
    return f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"


def _semaphore_name() -> str:
    return "/" + _owned_name()  # POSIX semaphore names start with a slash; Linux files them as sem.<name>


class _NamedLock(synchronize.Lock):
    """A multiprocessing Lock whose semaphore is named like our segments (multiprocessing's own ``mp-<random>``
    names cannot be told apart from any other program's, so a killed run's could never be cleaned up)."""

    _make_name = staticmethod(_semaphore_name)


class _NamedSemaphore(synchronize.Semaphore):
    """A multiprocessing Semaphore named like our segments (see :class:`_NamedLock`)."""

    _make_name = staticmethod(_semaphore_name)


def named_semaphore(ctx: Any, *, lock: bool = False) -> synchronize.Semaphore:
    """A process-shared semaphore of ``ctx`` at 0 (a Lock with ``lock``) whose name
    :func:`~streamfuse.shm_owners.remove_stale` can attribute to its creator, held (:func:`~streamfuse.shm_owners.hold`)
    while it lives."""
    return hold_semaphore(_NamedLock(ctx=ctx) if lock else _NamedSemaphore(0, ctx=ctx))


def remove_stale_rings() -> list[str]:
    """Unlink the segments and semaphores of runs whose process is gone (killed as a whole before they could free
    them; :func:`streamfuse.shm_owners.remove_stale`)."""
    return remove_stale(SHM_PREFIX)


class ShmRing:
    """Bounded shared-memory frame ring; pass it to a spawned ``Process`` as an argument to share it.

    Args:
        stream: name given to the frames read back (``Frame.stream``).
        slots: number of slots (>= 1).
        slot_bytes: bytes per slot: the largest ``image.nbytes`` expected (bigger frames grow the ring).
        policy: ``latest`` (overwrite the oldest unread slot when full, count a drop) or ``block`` (writer waits).
        ctx: multiprocessing context for the lock and semaphores (default: ``spawn``).
        data_bell: optional semaphore released on every write, shared by several rings so that one reader can
            wait for any of them.
    """

    def __init__(self, stream: str, slots: int, slot_bytes: int, policy: Literal["latest", "block"] = "latest", *,
                 ctx: Any = None, data_bell: Any = None) -> None:
        if policy not in ("latest", "block"):
            raise ValueError(f"policy={policy!r} is not a ring policy; allowed: latest | block")
        if slots < 1 or slot_bytes < 1:
            raise ValueError(f"slots={slots}, slot_bytes={slot_bytes}: both must be >= 1")
        ctx = ctx or mp.get_context("spawn")
        self.stream, self.slots, self.policy = stream, slots, policy
        self._lock = named_semaphore(ctx, lock=True)
        self._data_bell = data_bell if data_bell is not None else named_semaphore(ctx)
        self._space_bell = named_semaphore(ctx)
        self._base = _owned_name()
        self._owner = True
        self._gen = 0
        self._retired_written = self._retired_drops = 0  # frames written and dropped in earlier generations
        self._shm: shared_memory.SharedMemory | None = None
        self._map(self._create(0, slot_bytes))

    # -- pickling: only while spawning a Process (the lock and semaphores refuse anything else) --------------------

    def __getstate__(self) -> dict:
        return {"stream": self.stream, "slots": self.slots, "policy": self.policy, "lock": self._lock,
                "data_bell": self._data_bell, "space_bell": self._space_bell, "base": self._base, "gen": self._gen}

    def __setstate__(self, state: dict) -> None:
        self.stream, self.slots, self.policy = state["stream"], state["slots"], state["policy"]
        self._lock, self._data_bell, self._space_bell = state["lock"], state["data_bell"], state["space_bell"]
        self._base, self._gen, self._owner = state["base"], state["gen"], False
        self._retired_written = self._retired_drops = 0
        self._shm = None
        self._map(shared_memory.SharedMemory(name=self._name(self._gen)))

    # -- segment management ----------------------------------------------------------------------------------------

    def _name(self, gen: int) -> str:
        return self._base if gen == 0 else f"{self._base}_g{gen}"

    def _create(self, gen: int, slot_bytes: int) -> shared_memory.SharedMemory:
        slot_bytes = _round_up(slot_bytes)
        meta = _round_up(8 * (_H_LEN + _M_LEN * self.slots))
        size = meta + self.slots * slot_bytes
        try:
            shm = shared_memory.SharedMemory(name=self._name(gen), create=True, size=size)
        except OSError as exc:  # ENOMEM under a memory limit (ulimit -v): the bare errno named nothing
            raise OSError(exc.errno, f"cannot map the {self.stream} capture ring ({size} bytes): "
                                     f"{exc.strerror}") from None
        reserve(shm, f"{self.stream}: a capture ring of {self.slots} frames of {slot_bytes} bytes")
        hdr = np.ndarray((_H_LEN,), np.int64, shm.buf)
        hdr[:] = 0
        hdr[_H_MAGIC], hdr[_H_SLOTS], hdr[_H_SLOT_BYTES] = _MAGIC, self.slots, slot_bytes
        del hdr  # release the buffer export so the segment can be closed later
        hold(shm.name)  # in use while this process lives, also to runs in other PID namespaces (remove_stale)
        return shm

    def _map(self, shm: shared_memory.SharedMemory) -> None:
        """Make ``shm`` the current segment: numpy views of its header, slot metadata and data."""
        hdr = np.ndarray((_H_LEN,), np.int64, shm.buf)
        if hdr[_H_MAGIC] != _MAGIC or hdr[_H_SLOTS] != self.slots:
            raise RuntimeError(f"shared memory {shm.name} is not a {self.slots}-slot streamfuse ring")
        self.slot_bytes = int(hdr[_H_SLOT_BYTES])
        meta_end = _round_up(8 * (_H_LEN + _M_LEN * self.slots))
        self._shm = shm
        self._hdr = hdr
        self._meta = np.ndarray((self.slots, _M_LEN), np.int64, shm.buf, offset=8 * _H_LEN)
        self._data = np.ndarray((self.slots, self.slot_bytes), np.uint8, shm.buf, offset=meta_end)

    def _unmap(self, unlink: bool) -> None:
        self._hdr = self._meta = self._data = None  # views must go before the mapping can close
        shm, self._shm = self._shm, None
        shm.close()
        release(shm.name)  # a writer's too, moving on: its lock's descriptor kept the memory after the unlink
        if unlink:
            shm.unlink()

    def _grow(self, nbytes: int) -> None:
        """Writer, lock held: move to a successor segment whose slots hold ``nbytes``; the reader follows."""
        successor = self._create(self._gen + 1, max(nbytes, self.slot_bytes))
        self._hdr[_H_NEXT_GEN] = self._gen + 1
        self._gen += 1
        self._unmap(unlink=False)
        self._map(successor)

    def _follow(self) -> None:
        """Reader, lock held, current segment drained: switch to the successor the writer made."""
        self._retired_written += int(self._hdr[_H_HEAD])
        self._retired_drops += int(self._hdr[_H_DROPPED])
        successor = shared_memory.SharedMemory(name=self._name(int(self._hdr[_H_NEXT_GEN])))
        if self._owner:  # the owner unlinks it: held as its own (the writer that made it may restart)
            hold(successor.name)
        self._gen = int(self._hdr[_H_NEXT_GEN])
        self._unmap(unlink=self._owner)
        self._map(successor)

    # -- writer side -----------------------------------------------------------------------------------------------

    def write(self, frame: Frame, stop: Any = None, timeout: float | None = None) -> bool:
        """Copy ``frame`` into the next slot.

        Args:
            frame: ``image`` must be uint8 ``(H, W)`` or ``(H, W, C)``; ``counts``, if any, uint16 ``(H, W)``.
            stop: optional Event; ``block`` policy: give up waiting for space once it is set.
            timeout: ``block`` policy: longest wait for space, s (None = until ``stop``).

        Returns:
            True when written; False when a ``block`` ring stayed full until ``stop`` or ``timeout``.
        """
        image = frame.image
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"ring {self.stream}: image must be uint8 (H, W) or (H, W, C), got {image.dtype} "
                             f"{image.shape}")
        if frame.counts is not None and (frame.counts.dtype != np.uint16 or frame.counts.shape != image.shape[:2]):
            raise ValueError(f"ring {self.stream}: counts must be uint16 {image.shape[:2]}, got {frame.counts.dtype} "
                             f"{frame.counts.shape}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._lock.acquire(timeout=_LOCK_POLL_S):
                try:
                    if self._write_locked(frame):
                        break
                finally:
                    self._lock.release()
                self._space_bell.acquire(timeout=_LOCK_POLL_S)  # full, block policy: wait for the reader
            if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() > deadline):
                return False
        self._data_bell.release()
        return True

    def _write_locked(self, frame: Frame) -> bool:
        image, counts = frame.image, frame.counts
        extra = 0 if counts is None else counts.nbytes  # the IR's 16-bit counts follow the image in its slot
        if image.nbytes + extra > self.slot_bytes:
            self._grow(image.nbytes + extra)
        head, tail = int(self._hdr[_H_HEAD]), int(self._hdr[_H_TAIL])
        if head - tail >= self.slots:
            if self.policy == "block":
                return False
            self._hdr[_H_TAIL] = tail + 1  # latest: the oldest unread frame is overwritten
            self._hdr[_H_DROPPED] += 1
        slot = head % self.slots
        h, w = image.shape[:2]
        c = image.shape[2] if image.ndim == 3 else 0
        self._meta[slot] = (frame.seq, frame.t_capture_ns, h, w, c, image.nbytes, frame.t_mono_ns, extra)
        np.copyto(self._data[slot, :image.nbytes].reshape(image.shape), image)  # the one copy in
        if counts is not None:
            self._data[slot, image.nbytes:image.nbytes + extra] = np.ascontiguousarray(counts).view(np.uint8).ravel()
        self._hdr[_H_HEAD] = head + 1
        return True

    # -- reader side -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _unread(self) -> Iterator[bool]:
        """Hold the lock (shared by all generations) and yield whether a frame is unread, following the writer's
        successors past drained segments; yields False, lock not held, when the lock is stuck (a dead peer)."""
        if not self._lock.acquire(timeout=_LOCK_POLL_S):
            yield False
            return
        try:
            while self._hdr[_H_HEAD] == self._hdr[_H_TAIL] and self._hdr[_H_NEXT_GEN]:
                self._follow()
            yield bool(self._hdr[_H_HEAD] != self._hdr[_H_TAIL])
        finally:
            self._lock.release()

    def try_read(self) -> Frame | None:
        """The oldest unread frame (copied out of its slot), or None when there is none (or the lock is stuck)."""
        with self._unread() as ready:
            if not ready:
                return None
            tail = int(self._hdr[_H_TAIL])
            slot = tail % self.slots
            seq, t_ns, h, w, c, nbytes, mono_ns, extra = (int(v) for v in self._meta[slot])
            shape = (h, w, c) if c else (h, w)
            image = self._data[slot, :nbytes].reshape(shape).copy()  # the one copy out
            # copied before the view: the image's size may leave the counts at an odd offset
            counts = self._data[slot, nbytes:nbytes + extra].copy().view(np.uint16).reshape(h, w) if extra else None
            self._hdr[_H_TAIL] = tail + 1
        self._space_bell.release()
        return Frame(self.stream, seq, t_ns, image, mono_ns, counts)

    def peek_time(self) -> int | None:
        """Capture time (ns) of the oldest unread frame without reading it; None when empty."""
        with self._unread() as ready:
            return int(self._meta[int(self._hdr[_H_TAIL]) % self.slots, _M_T]) if ready else None

    def read(self, timeout: float | None = None) -> Frame | None:
        """Wait up to ``timeout`` s (None = forever) for the oldest unread frame; None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self.try_read()
            if frame is not None:
                return frame
            remaining = _LOCK_POLL_S if deadline is None else min(_LOCK_POLL_S, deadline - time.monotonic())
            if remaining <= 0:
                return None
            self._data_bell.acquire(timeout=remaining)  # a wake-up per write; a spare one just loops once

    def stats(self) -> dict[str, int]:
        """``written`` (frames), ``unread`` (frames waiting), ``dropped`` (overwritten unread, latest policy)."""
        if not self._lock.acquire(timeout=_LOCK_POLL_S):
            return {"written": -1, "unread": -1, "dropped": -1}
        try:
            head, tail = int(self._hdr[_H_HEAD]), int(self._hdr[_H_TAIL])
            return {"written": self._retired_written + head, "unread": head - tail,
                    "dropped": self._retired_drops + int(self._hdr[_H_DROPPED])}
        finally:
            self._lock.release()

    @property
    def name(self) -> str:
        """Name of the current shared-memory segment."""
        return self._name(self._gen)

    def close(self) -> None:
        """Unmap; the owner also unlinks every generation (idempotent; a peer's unfollowed successor included)."""
        if self._shm is None:
            return
        gen = self._gen
        self._unmap(unlink=self._owner)
        if self._owner:
            # the successors the writer created that the reader never reached (numbered on from this one, however
            # many); the earlier generations of an owner that wrote itself (its own grows leave them for a reader)
            later = gen + 1
            while self._unlink(later):
                later += 1
            for earlier in range(gen):
                self._unlink(earlier)

    def _unlink(self, gen: int) -> bool:
        """Unlink generation ``gen`` if it is there; whether it was."""
        try:
            orphan = shared_memory.SharedMemory(name=self._name(gen))
        except FileNotFoundError:
            return False
        orphan.close()
        release(orphan.name)
        orphan.unlink()
        return True

    def __enter__(self) -> ShmRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
