"""A subscriber's view of its publisher's shared-memory pool: the pool the descriptors name, mapped by the thread that
receives them and read by the one that consumes them (latest mode: two threads, hence the lock)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from streamfuse.shm_pool import PoolReader
from streamfuse.wire import ENCODINGS

__all__ = ["PoolView"]


class PoolView:
    """At most one mapped :class:`PoolReader` (``reader``), replaced when the descriptors name another pool."""

    def __init__(self) -> None:
        self.reader: PoolReader | None = None
        self._lock = threading.Lock()

    def map(self, name: str) -> None:
        """Have pool ``name`` mapped, closing the one before it.

        Raises:
            NotAPool: ``name`` is not a pool (a forged message).
            PoolError: the pool cannot be mapped here (another host or user, gone).
        """
        if self.reader is None or self.reader.name != name:
            pool = PoolReader(name)
            with self._lock:
                old, self.reader = self.reader, pool
            if old is not None:
                old.close()

    def frame(self, header: dict[str, Any], copy: bool) -> np.ndarray | None:
        """The image a shared-memory descriptor's ``header`` names, ``(H, W, 3)`` or ``(H, W)`` uint8 (a read-only view
        of the pool unless ``copy``, intact until the next read); None when its pool is not the one mapped or its slot
        was overwritten since (never torn).

        Raises:
            PoolError: slot or size outside the pool (a forged message).
        """
        with self._lock:
            if self.reader is None or self.reader.name != header["shm_pool"]:
                return None
            flat = self.reader.read(header["shm_slot"], header["shm_gen"], header["height"] * header["step"], copy)
        if flat is None:
            return None
        channels = ENCODINGS[header["encoding"]]  # shared-memory rows have no padding (step == width * channels)
        return flat.reshape((header["height"], header["width"], channels)[: 2 if channels == 1 else 3])

    def release(self) -> None:
        """Let the writer have the slot of the last frame read again."""
        with self._lock:
            if self.reader is not None:
                self.reader.release()

    def close(self) -> None:
        """Release the held slot and unmap."""
        with self._lock:
            if self.reader is not None:
                self.reader.close()
