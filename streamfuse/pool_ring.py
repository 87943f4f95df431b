"""The notification ring of a shared-memory pool (:mod:`streamfuse.shm_pool`): frame descriptors, a publish counter,
a shared futex and a closed flag, written by the publisher and read in place by same-host consumers.

After committing a slot the writer also puts the frame's descriptor (the exact topic and header bytes of the ZeroMQ
message) into the ring, bumps a counter and, while some reader has said it reads the ring, wakes the readers waiting
on that counter with one shared futex call (``FUTEX_WAKE`` on the mapped file). A same-host reader then gets each
frame without any ZeroMQ thread waking up. Entries are seqlocks: a reader copies an entry out, keeps it only if its
state word was the same complete value before and after, then validates the header like any message. The pixels
stay guarded by the pool's generations and locks, so no ring entry, forged or torn, can hand out a torn frame. The
ring is filled on x86-64 only (see the memory-order note below); elsewhere ``count`` stays 0 and consumers use the
ZeroMQ descriptors.

Layout, little-endian, at the pool header's ``ring_offset`` (64-byte aligned): ``futex`` (u32: the low 32 bits of
``count``; it changes on close too), ``closed`` (u32: 1 once the writer gave the pool up, closed or replaced by one
with bigger slots), ``count`` (u64 at +8: entries published), then at ``ring_offset + 64`` ``ring_entries`` (a power
of two >= 2 * slots, at least 64) entries of ``entry_bytes`` (2048): ``[state u64, seq u64, topic_len u32,
header_len u32, topic, header]``. Entry ``n`` (0, 1, ...) lies at index ``n % ring_entries``; its ``state`` is
``2n + 1`` while written and ``2n + 2`` once complete; ``seq`` repeats the header's. A descriptor too long for an
entry goes over ZeroMQ only.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import struct

import numpy as np

__all__ = ["RingWriter", "RingReader", "RingError", "ENTRY_BYTES", "ring_size", "cpu_supported"]

ENTRY_BYTES = 2048  # a descriptor is ~700 bytes; a longer one goes over ZeroMQ only
_ENTRY = struct.Struct("<QQII")  # state, seq, topic_len, header_len
_FIELDS = struct.Struct("<QII")  # the entry after its state
_COUNT = struct.Struct("<Q")
_WORD = struct.Struct("<I")
_R_FUTEX, _R_CLOSED, _R_COUNT, _R_ENTRIES = 0, 4, 8, 64  # offsets from ring_offset
# The ring is read without barriers: Python's stores into the mapping are plain stores, each in its own C call, so
# they leave this process in program order, and x86-64 (TSO) keeps that order for other cores and never reorders
# loads with loads. A reader that sees an entry's state 2n + 2 before and after copying it therefore has all of it.
# Other architectures would need fences Python cannot issue: their readers take the ZeroMQ descriptors instead.
_SYS_FUTEX = {"x86_64": 202, "AMD64": 202}.get(platform.machine())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # not FUTEX_PRIVATE_FLAG: the processes map the file separately


class RingError(RuntimeError):
    """A complete ring entry that cannot be one (a forged pool); the text is one line saying which."""


def cpu_supported() -> bool:
    """True where the ring may be written and read (see the memory-order note above): x86-64."""
    return _SYS_FUTEX is not None


def ring_size(slots: int) -> tuple[int, int]:
    """``(ring_entries, bytes)`` of the ring of a pool of ``slots``."""
    entries = max(64, 1 << (2 * slots - 1).bit_length())  # a power of two >= 2 * slots
    return entries, _R_ENTRIES + entries * ENTRY_BYTES


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex(addr: int, op: int, value: int, timeout_s: float | None = None) -> None:
    """``futex(addr, op, value, timeout)``; EAGAIN (the word changed), ETIMEDOUT and EINTR just return."""
    timeout = None if timeout_s is None else ctypes.byref(
        _Timespec(int(timeout_s), int(timeout_s % 1 * 1e9)))
    _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(addr), ctypes.c_int(op), ctypes.c_uint32(value), timeout, None,
                  ctypes.c_uint32(0))


class _Ring:
    """The ring at byte ``offset`` of a pool mapping, of ``entries`` entries."""

    def __init__(self, mm: mmap.mmap, offset: int, entries: int) -> None:
        self._mm, self._offset, self.entries = mm, offset, entries
        # the futex word's address (read-only mappings too)
        self._futex_addr = np.frombuffer(mm, np.uint8, 1, offset + _R_FUTEX).ctypes.data

    def _entry(self, n: int) -> int:
        """Byte offset of entry ``n`` in the mapping."""
        return self._offset + _R_ENTRIES + (n % self.entries) * ENTRY_BYTES


class RingWriter(_Ring):
    """The publisher's side: puts descriptors into the ring, wakes its readers, tells them when the pool is given up.
    Only where :func:`cpu_supported` (see the memory-order note)."""

    def __init__(self, mm: mmap.mmap, offset: int, entries: int) -> None:
        super().__init__(mm, offset, entries)
        self.count = 0  # entries published

    def put(self, topic: bytes, header: bytes, seq: int, wake: bool) -> bool:
        """Put a committed frame's descriptor (``topic``, ``header`` with ``seq``) into the ring; with ``wake``, wake
        the readers waiting for it (one syscall). False when it is too long for an entry (it goes over ZeroMQ
        only)."""
        if _ENTRY.size + len(topic) + len(header) > ENTRY_BYTES:
            return False
        mm, n = self._mm, self.count
        at = self._entry(n)
        body = at + _ENTRY.size
        _COUNT.pack_into(mm, at, 2 * n + 1)  # odd: being written (the store order is the reader's guarantee)
        _FIELDS.pack_into(mm, at + 8, seq, len(topic), len(header))
        mm[body:body + len(topic)] = topic
        mm[body + len(topic):body + len(topic) + len(header)] = header
        _COUNT.pack_into(mm, at, 2 * n + 2)
        self.count = n + 1
        _COUNT.pack_into(mm, self._offset + _R_COUNT, n + 1)
        _WORD.pack_into(mm, self._offset + _R_FUTEX, (n + 1) & 0xFFFF_FFFF)
        if wake:
            self.wake()
        return True

    def wake(self) -> None:
        """Wake every reader waiting on the ring."""
        _futex(self._futex_addr, _FUTEX_WAKE, 0x7FFF_FFFF)

    def give_up(self) -> None:
        """Mark the pool given up (closed, or replaced by one with bigger slots) and wake the readers."""
        _WORD.pack_into(self._mm, self._offset + _R_CLOSED, 1)
        _WORD.pack_into(self._mm, self._offset + _R_FUTEX, (self.count + 1) & 0xFFFF_FFFF)  # waiters see a change
        self.wake()


class RingReader(_Ring):
    """A consumer's side: waits for entries and copies them out whole; ``name`` (the pool's) is for messages."""

    def __init__(self, mm: mmap.mmap, offset: int, entries: int, name: str) -> None:
        super().__init__(mm, offset, entries)
        self.name = name

    def count(self) -> int:
        """Entries published so far (entry ``n`` is the ``n + 1``-th)."""
        return _COUNT.unpack_from(self._mm, self._offset + _R_COUNT)[0]

    def closed(self) -> bool:
        """True once the writer gave the pool up (closed it, or replaced it by a bigger one)."""
        return _WORD.unpack_from(self._mm, self._offset + _R_CLOSED)[0] != 0

    def wait(self, cursor: int, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` until entry ``cursor`` is published or the pool is given up (no wait when
        either is already so); may return early."""
        word = _WORD.unpack_from(self._mm, self._offset + _R_FUTEX)[0]  # before count: a later change wakes us
        if self.count() <= cursor and not self.closed():
            _futex(self._futex_addr, _FUTEX_WAIT, word, timeout_s)

    def entry(self, n: int) -> tuple[int, bytes, bytes] | None:
        """Entry ``n``'s ``(seq, topic, header)``, copied out whole; None when it is not (or no longer) entry
        ``n``: being written, or the ring has lapped it.

        Raises:
            RingError: a complete entry whose lengths do not fit it (a forged pool).
        """
        at = self._entry(n)
        mm, done = self._mm, 2 * n + 2
        if _COUNT.unpack_from(mm, at)[0] != done:
            return None
        state, seq, topic_len, header_len = _ENTRY.unpack_from(mm, at)
        body = mm[at + _ENTRY.size:at + ENTRY_BYTES]
        if state != done or _COUNT.unpack_from(mm, at)[0] != done:
            return None  # overwritten while we copied it
        if topic_len + header_len > len(body):
            raise RingError(f"ring entry {n} of pool {self.name}: {topic_len} + {header_len} bytes do not fit its "
                            f"{len(body)}")
        return seq, body[:topic_len], body[topic_len:topic_len + header_len]
