"""The publisher's pool of shared-memory frame slots, for consumers on the same host (Linux).

One publisher writes each frame once into a slot of a fixed pool (``slots`` slots of ``slot_bytes``, created at
start, never growing); only its descriptor ``(pool, slot, gen, seq, ...)`` travels, over ZeroMQ or through the
pool's own notification ring. A consumer maps the pool read-only and reads the frame in place.

Guards, none of which ever makes the writer wait:

- **Generation.** Every write gives its slot a new, even generation (odd while the copy is under way); the
  message names the generation it wrote. A reader whose slot no longer has that generation (overwritten before it
  got there) counts the frame as missed, never returns it.
- **Open-file-description locks** (``F_OFD_SETLK``, byte-range locks on the pool file). A reader holds a shared
  lock on the slot of the frame it returned until it asks for the next one, so the view stays intact that long;
  the writer only takes slots it can lock exclusively *without waiting* and skips the others, so a stalled reader
  costs the writer one slot, never time. The kernel drops a dead process's locks.

The notification ring (its layout, memory order, writer and readers) is :mod:`streamfuse.pool_ring`'s.

Layout, all little-endian, every offset checked against the file's size before a reader trusts it:

- header, int64 words: ``[magic, slots, slot_bytes, data_offset, ring_offset, ring_entries, entry_bytes]``
  (``magic`` ``0x5346504F4F4C0002``; version 1 pools, ``...0001`` from older publishers, have the first four words
  only and no ring);
- per slot, int64 ``[gen, nbytes]``;
- at ``ring_offset`` (64-byte aligned): the notification ring;
- the slots at ``data_offset`` (64-byte aligned).

Consumers accept only names of publisher pools (``streamfuse_pub_<pid>_<hex>``), so a forged message cannot make
them map or read anything outside such a pool.

Names carry the creating process's id, so a start frees the pools of publishers that were killed
(:func:`remove_stale`).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import secrets
import stat
import struct
import sys
import weakref
from pathlib import Path

import numpy as np

from streamfuse.pool_ring import ENTRY_BYTES, RingReader, RingWriter, cpu_supported, ring_size
from streamfuse.shm_owners import SHM_DIR, in_use, process_alive, remove_stale

__all__ = ["ShmPool", "PoolReader", "PoolError", "NotAPool", "POOL_PREFIX", "MAX_SLOTS", "valid_pool_name",
           "remove_stale_pools", "shm_supported", "ring_supported"]

POOL_PREFIX = "streamfuse_pub_"
_NAME = re.compile(rf"{POOL_PREFIX}(\d{{1,10}})_([0-9a-f]{{8}})")
_MAGIC_V1 = 0x5346_504F_4F4C_0001  # "SFPOOL" v1: no ring
_MAGIC = 0x5346_504F_4F4C_0002  # v2: with the notification ring
_H_MAGIC, _H_SLOTS, _H_SLOT_BYTES, _H_DATA, _H_RING, _H_ENTRIES, _H_ENTRY_BYTES, _H_LEN = range(8)
_H_LEN_V1 = 4
_M_GEN, _M_NBYTES, _M_LEN = 0, 1, 2
MAX_SLOTS = 1024
_MAX_POOL_BYTES = 1 << 40  # a forged header cannot make a reader map more than this
_ALIGN = 64


class PoolError(RuntimeError):
    """The pool cannot be created or mapped (one line saying why); consumers fall back to the ZeroMQ payload."""


class NotAPool(PoolError):
    """The file a message names is no streamfuse pool (a FIFO, a device, a bad header): the message is forged."""


def shm_supported() -> bool:
    """True where pools work: Linux with ``/dev/shm`` and open-file-description locks."""
    return sys.platform.startswith("linux") and SHM_DIR.is_dir() and hasattr(fcntl, "F_OFD_SETLK")


def valid_pool_name(name: str) -> bool:
    """True for a publisher pool name, ``streamfuse_pub_<pid>_<8 hex>`` (nothing else may be mapped)."""
    return _NAME.fullmatch(name) is not None


def remove_stale_pools(directory: Path = SHM_DIR) -> list[str]:
    """Unlink the pools of publishers whose process is gone (killed before it could free them)."""
    return remove_stale(POOL_PREFIX, directory)


def ring_supported() -> bool:
    """True where the notification ring may be read (see :mod:`streamfuse.pool_ring`): Linux on x86-64."""
    return shm_supported() and cpu_supported()


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _layout(slots: int, magic: int) -> tuple[int, int, int]:
    """``(ring_offset, ring_entries, data_offset)`` of a pool of ``slots`` (version 1: no ring, zeros)."""
    if magic == _MAGIC_V1:
        return 0, 0, _align(8 * (_H_LEN_V1 + _M_LEN * slots))
    ring = _align(8 * (_H_LEN + _M_LEN * slots))
    entries, nbytes = ring_size(slots)
    return ring, entries, _align(ring + nbytes)


def _flocks(kind: int, offset: int, slot_bytes: int, slots: int) -> list[bytes]:
    """Per slot, the ``struct flock`` that sets a ``kind`` lock on it (packed once: each frame takes two)."""
    return [struct.pack("hhxxxxqqixxxx", kind, os.SEEK_SET, offset + slot * slot_bytes, slot_bytes, 0)  # l_pid 0: OFD
            for slot in range(slots)]


def _lock(fd: int, flock: bytes) -> bool:
    """Set an OFD byte-range lock (a :func:`_flocks` entry) without waiting; False when another holder's conflicts."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, flock)
    except (BlockingIOError, PermissionError):
        return False
    return True


class _Mapping:
    """An open pool file, its mapping and numpy views of header and slot table."""

    def __init__(self, fd: int, size: int, writable: bool) -> None:
        self.fd = fd
        # MAP_POPULATE: page faults now, not ~2 us per 4 KiB page on the first frame through each slot
        self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                            prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
        self._close_fd = weakref.finalize(self, os.close, fd)  # mapped: ours, closed even if dropped without close()
        self.hdr = np.ndarray((_H_LEN_V1,), "<i8", self.mm)
        self.meta: np.ndarray | None = None

    def close(self) -> None:
        self.hdr = self.meta = None
        try:
            self.mm.close()
        except BufferError:  # a consumer still holds a frame view; the mapping goes when the view does
            pass
        self._close_fd()


class ShmPool:
    """The writer side: creates the pool, writes frames into free slots, unlinks the pool on :meth:`close`.

    Args:
        slots: number of slots (1..1024); each holds one frame.
        slot_bytes: bytes per slot (the largest frame, e.g. 640 * 480 * 3).

    Raises:
        PoolError: shared memory is unavailable here, or the pool cannot be created.
    """

    def __init__(self, slots: int, slot_bytes: int) -> None:
        if not 1 <= slots <= MAX_SLOTS or slot_bytes < 1:
            raise ValueError(f"slots={slots} must be in 1..{MAX_SLOTS} and slot_bytes={slot_bytes} >= 1")
        if not shm_supported():
            raise PoolError("shared-memory pools need Linux with /dev/shm")
        self.name = f"{POOL_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        self.slots, self.slot_bytes = slots, (slot_bytes + _ALIGN - 1) // _ALIGN * _ALIGN
        self.busy = 0  # frames not written because a reader held every slot
        self._next, self._writes = 0, 0
        self._loaned: int | None = None  # slot taken by loan() and not yet committed
        ring, entries, self._offset = _layout(slots, _MAGIC)
        path = SHM_DIR / self.name
        size = self._offset + slots * self.slot_bytes
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise PoolError(f"cannot create shared memory {path}: {exc.strerror}") from None
        self._finalizer = weakref.finalize(self, _unlink, path)  # also at interpreter exit without close()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # in use, also to runs in other PID namespaces (shm_owners)
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)  # fail now, not with SIGBUS on a full /dev/shm later
            self._m = _Mapping(fd, size, writable=True)
        except OSError as exc:
            os.close(fd)
            self._finalizer()
            raise PoolError(f"cannot size shared memory {path} to {size} bytes: {exc.strerror}") from None
        self._m.hdr = np.ndarray((_H_LEN,), "<i8", self._m.mm)
        self._m.hdr[:] = (_MAGIC, slots, self.slot_bytes, self._offset, ring, entries, ENTRY_BYTES)
        # None on other CPUs: the ring stays empty there (see pool_ring's memory-order note)
        self._ring = RingWriter(self._m.mm, ring, entries) if ring_supported() else None
        self._m.meta = np.ndarray((slots, _M_LEN), "<i8", self._m.mm, offset=8 * _H_LEN)
        self._data = np.ndarray((slots, self.slot_bytes), np.uint8, self._m.mm, offset=self._offset)
        self._wrlck = _flocks(fcntl.F_WRLCK, self._offset, self.slot_bytes, slots)
        self._unlck = _flocks(fcntl.F_UNLCK, self._offset, self.slot_bytes, slots)

    def loan(self, nbytes: int) -> tuple[int, np.ndarray] | None:
        """Take a free slot for writing in place: ``(slot, writable flat uint8 view of nbytes)``, or None when every
        slot is held by a reader (counted in ``busy``). Never waits. Readers refuse the slot until :meth:`commit`;
        a new loan before that abandons this one (the slot then reads as being written, never as a frame)."""
        if nbytes > self.slot_bytes:
            raise ValueError(f"frame of {nbytes} bytes does not fit the pool's {self.slot_bytes}-byte slots")
        self.cancel()
        for k in range(self.slots):
            slot = (self._next + k) % self.slots
            if _lock(self._m.fd, self._wrlck[slot]):
                break
        else:
            self.busy += 1
            return None
        self._writes += 1
        self._m.meta[slot, _M_GEN] = 2 * self._writes - 1  # odd: being written
        self._loaned = slot
        return slot, self._data[slot, :nbytes]

    def commit(self, nbytes: int) -> tuple[int, int]:
        """Publish the loaned slot's first ``nbytes`` as a frame; returns ``(slot, gen)`` for the message."""
        slot, self._loaned = self._loaned, None
        assert slot is not None, "commit without a loan"
        meta = self._m.meta
        meta[slot, _M_NBYTES] = nbytes
        meta[slot, _M_GEN] = 2 * self._writes  # the frame's bytes are all in before the generation says so
        _lock(self._m.fd, self._unlck[slot])
        self._next = slot + 1
        return slot, 2 * self._writes

    def retract(self, slot: int) -> None:
        """The frame just committed to ``slot`` was never announced (its message was refused): write the next one
        there first, instead of overwriting an older frame that readers may still be about to read."""
        self._next = slot

    def cancel(self) -> None:
        """Give back a loaned slot without publishing it (it keeps an odd generation: no reader takes it)."""
        if self._loaned is not None:
            _lock(self._m.fd, self._unlck[self._loaned])
            self._loaned = None

    def write(self, image: np.ndarray) -> tuple[int, int] | None:
        """Copy ``image`` (C-contiguous) into a free slot; returns ``(slot, gen)``, or None when every slot is held
        by a reader (counted in ``busy``). Never waits."""
        loan = self.loan(image.nbytes)
        if loan is None:
            return None
        loan[1][:] = image.reshape(-1)  # the one copy
        return self.commit(image.nbytes)

    def notify(self, topic: bytes, header: bytes, seq: int, wake: bool) -> bool:
        """Put a committed frame's descriptor (``topic``, ``header`` with ``seq``) into the ring; with ``wake``, wake
        the readers waiting for it (one syscall). False when it is too long for an entry (it goes over ZeroMQ
        only, or the ring is not filled here)."""
        return self._ring is not None and self._ring.put(topic, header, seq, wake)

    def close(self) -> None:
        """Tell ring readers the pool is given up, then unmap and unlink it (idempotent); readers that mapped it
        keep their mapping until they let go."""
        if self._m.hdr is None:
            return
        if self._ring is not None:
            self._ring.give_up()
        self._data = None
        self._m.close()
        self._finalizer()

    def __enter__(self) -> ShmPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _map_pool(fd: int, name: str) -> _Mapping:
    """Map ``fd`` read-only after checking that its size and header describe a pool, version 1 or 2 (nothing else
    is trusted); ``fd`` is closed when it is not one."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotAPool(f"shared memory {name} is not a streamfuse pool (not a regular file)")
        if not 8 * _H_LEN <= info.st_size <= _MAX_POOL_BYTES:
            raise NotAPool(f"shared memory {name} is not a streamfuse pool (size {info.st_size})")
        mapping = _Mapping(fd, info.st_size, writable=False)
    except BaseException:
        os.close(fd)
        raise
    if int(mapping.hdr[_H_MAGIC]) == _MAGIC:
        mapping.hdr = np.ndarray((_H_LEN,), "<i8", mapping.mm)
    words = [int(v) for v in mapping.hdr]
    magic, slots, slot_bytes, offset = words[:_H_LEN_V1]
    valid = magic in (_MAGIC, _MAGIC_V1) and 1 <= slots <= MAX_SLOTS and slot_bytes >= 1
    if valid:
        ring, entries, data = _layout(slots, magic)
        valid = (offset == data and offset + slots * slot_bytes == info.st_size
                 and (magic == _MAGIC_V1 or words[_H_LEN_V1:] == [ring, entries, ENTRY_BYTES]))
    if not valid:
        mapping.close()
        raise NotAPool(f"shared memory {name} is not a streamfuse pool (bad header)")
    return mapping


class PoolReader:
    """The consumer side: maps one pool read-only and reads frames out of it, holding the returned frame's slot.

    Args:
        name: the pool name from a message; anything but a publisher pool name is refused.

    Raises:
        PoolError: the name is not a pool's, or the pool cannot be opened (other host, other user, gone).
        NotAPool: the file is not a valid pool.
    """

    def __init__(self, name: str) -> None:
        if not valid_pool_name(name):
            raise PoolError(f"{name[:60]!r} is not a streamfuse publisher pool name")
        if not shm_supported():
            raise PoolError("shared-memory pools need Linux with /dev/shm")
        self.name = name
        try:
            # O_NONBLOCK: a FIFO put there under a pool's name opens at once (and is refused below), never blocks
            fd = os.open(SHM_DIR / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise PoolError(f"cannot open shared memory {name}: {exc.strerror}") from None
        self._m = _map_pool(fd, name)
        hdr = self._m.hdr
        self.slots, self.slot_bytes, self._offset = int(hdr[_H_SLOTS]), int(hdr[_H_SLOT_BYTES]), int(hdr[_H_DATA])
        self._m.meta = np.ndarray((self.slots, _M_LEN), "<i8", self._m.mm, offset=8 * len(hdr))
        readable = len(hdr) == _H_LEN and ring_supported()
        #: the pool's notification ring where this host may read it (version 2, x86-64), else None
        self.ring = RingReader(self._m.mm, int(hdr[_H_RING]), int(hdr[_H_ENTRIES]), name) if readable else None
        self.pid = int(_NAME.fullmatch(name).group(1))  # the publisher's process
        self._rdlck = _flocks(fcntl.F_RDLCK, self._offset, self.slot_bytes, self.slots)
        self._unlck = _flocks(fcntl.F_UNLCK, self._offset, self.slot_bytes, self.slots)
        self._held: int | None = None  # slot whose shared lock we hold (the last frame returned)

    def read(self, slot: int, gen: int, nbytes: int, copy: bool) -> np.ndarray | None:
        """The ``nbytes`` of ``slot`` written as generation ``gen``, flat uint8; None when the slot has been
        overwritten since (or is being written). A view (read-only) stays intact until the next :meth:`read` or
        :meth:`release`; with ``copy`` the slot is let go at once.

        Raises:
            PoolError: ``slot`` or ``nbytes`` do not fit this pool (a forged message).
        """
        if not 0 <= slot < self.slots or not 0 < nbytes <= self.slot_bytes:
            raise PoolError(f"slot {slot} / {nbytes} bytes outside pool {self.name} ({self.slots} slots of "
                            f"{self.slot_bytes} bytes)")
        self.release()
        if not _lock(self._m.fd, self._rdlck[slot]):
            return None  # the writer is in it right now: a newer generation is coming
        meta = self._m.meta
        if int(meta[slot, _M_GEN]) != gen or int(meta[slot, _M_NBYTES]) != nbytes:
            _lock(self._m.fd, self._unlck[slot])
            return None
        view = np.frombuffer(self._m.mm, np.uint8, nbytes, self._offset + slot * self.slot_bytes)
        if copy:
            view = view.copy()
            _lock(self._m.fd, self._unlck[slot])
        else:
            self._held = slot
        return view

    def writer_alive(self) -> bool:
        """False once the publisher process that made the pool (its id is in the name) is gone: its id, or its lock
        on the pool for a reader in another PID namespace (a container), where that id means another process or none."""
        return process_alive(self.pid) or in_use(SHM_DIR / self.name)

    def release(self) -> None:
        """Let the writer have the slot of the last frame returned again."""
        if self._held is not None and self._m.hdr is not None:
            _lock(self._m.fd, self._unlck[self._held])
        self._held = None

    def close(self) -> None:
        """Release the held slot and unmap (a view still held keeps the mapping alive until it is dropped)."""
        if self._m.hdr is None:
            return
        self.release()
        self._m.close()
