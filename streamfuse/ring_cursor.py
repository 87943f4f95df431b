"""A Subscriber's place in a mapped pool's notification ring: which entry comes next, the jumps of latest mode and
of a lapped reader, and which entries are frames for it (the ring itself: :mod:`streamfuse.pool_ring`)."""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

from streamfuse.shm_pool import PoolReader
from streamfuse.wire import MalformedMessage, decode_header

__all__ = ["RingCursor"]

# the pools whose ring a cursor of this process has left, newest last: the line saying so is about the publisher, so
# its subscribers (the viewer's fused frames and previews, a program's own) say it once (a few suffice: a pool's name
# is its publisher's, new at each start)
_left_pools: collections.deque[str] = collections.deque(maxlen=64)
_left_lock = threading.Lock()


class RingCursor:
    """Reads the descriptors of ``pool``'s ring under ``shm_topic`` (``shm/<topic>``), from the oldest entry still
    there (``latest``: the newest only).

    ``left`` says why the ring is done once it is ("went backwards", "closed", "left by its publisher"); the caller
    then goes back to the ZeroMQ descriptors, and says so at ``left_level``: INFO for the process's first cursor to
    leave the pool's ring, DEBUG for the others.
    """

    def __init__(self, pool: PoolReader, shm_topic: bytes, latest: bool) -> None:
        assert pool.ring is not None, "a cursor on a pool without a ring"
        self.pool, self._ring, self._topic, self._latest = pool, pool.ring, shm_topic, latest
        self.left, self.left_level = "", logging.INFO
        # entries of frames already taken (seq up to the caller's last) are skipped as they come
        self._next = max(0, self._ring.count() - (0 if latest else self._ring.entries))

    def next(self, timeout_s: float, last_seq: int | None) -> tuple[dict[str, Any], int] | None:
        """The next entry's validated header (latest mode: the newest entry's) and how many frames after
        ``last_seq`` latest mode passed over to get there; None when none came within ``timeout_s`` (or ``left``),
        or the entry was lapped, is another topic's or a frame at or before ``last_seq``.

        Raises:
            RingError, MalformedMessage: a malformed entry.
        """
        got = self._advance(timeout_s)
        if got is None:
            return None
        n, passed = got
        entry = self._ring.entry(n)
        if entry is None or (last_seq is not None and entry[0] <= last_seq):
            return None  # overwritten meanwhile, or a frame taken before we switched to the ring
        seq, topic, raw = entry
        if not topic.startswith(self._topic):
            return None
        header = decode_header([topic, raw, b""])
        if header["format"] != "shm" or header["shm_pool"] != self.pool.name or header["seq"] != seq:
            raise MalformedMessage(f"ring entry {n} names format {header['format']}, pool "
                                   f"{header.get('shm_pool')!r:.60}, seq {header['seq']} (entry seq {seq})")
        # not the entries of frames taken before the switch
        return header, min(passed, seq - last_seq - 1) if passed and last_seq is not None else 0

    def _note_left(self) -> None:
        with _left_lock:
            if self.pool.name in _left_pools:
                self.left_level = logging.DEBUG
            else:
                _left_pools.append(self.pool.name)

    def _advance(self, timeout_s: float) -> tuple[int, int] | None:
        """Wait up to ``timeout_s`` for an entry; then take the next one to read and how many latest mode passed
        over. None when none came (``left`` set when none will)."""
        ring = self._ring
        count = ring.count()
        if self._next >= count:
            ring.wait(self._next, timeout_s)
            count = ring.count()
            if self._next > count:  # only a forged pool's count goes back
                self.left = "went backwards"
            elif self._next == count and (ring.closed() or not self.pool.writer_alive()):
                self.left = "closed" if ring.closed() else "left by its publisher"
            if self.left:
                self._note_left()
            if self._next >= count:
                return None
        # latest: jump to the newest entry (the frames passed over are discarded); lapped: to the oldest still there
        # (the gap in seq counts the others as missed)
        newest = count - (1 if self._latest else ring.entries)
        passed, self._next = max(0, newest - self._next) if self._latest else 0, max(self._next, newest)
        n, self._next = self._next, self._next + 1
        return n, passed
