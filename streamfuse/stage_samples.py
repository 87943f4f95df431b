"""Per-frame durations of a stage in bounded memory: a replay of a day's recording times millions of frames, which a
list of every duration would hold in hundreds of megabytes."""

from __future__ import annotations

import random
import threading
from array import array

import numpy as np

__all__ = ["StageSamples", "KEPT"]

KEPT = 100_000  # durations kept per stage: percentiles exact up to this many frames, from a uniform sample beyond


class StageSamples:
    """Durations (ns) appended one at a time, from any thread: ``len`` and ``total`` count every one, :meth:`kept` is a
    uniform sample of at most ``kept`` of them (reservoir sampling, seeded, so a summary does not vary by chance)."""

    def __init__(self, kept: int | None = None) -> None:
        self.total = 0
        self._count = 0
        self._kept = KEPT if kept is None else kept
        self._samples = array("q")
        self._rng = random.Random(0)
        self._lock = threading.Lock()  # both decoder threads of a replay time into one

    def append(self, ns: int) -> None:
        """Count one duration (ns)."""
        with self._lock:
            self._count += 1
            self.total += ns
            if len(self._samples) < self._kept:
                self._samples.append(ns)
            elif (slot := self._rng.randrange(self._count)) < self._kept:
                self._samples[slot] = ns

    def kept(self) -> np.ndarray:
        """The durations kept (ns, int64): all of them up to ``kept``, a uniform sample beyond."""
        with self._lock:
            return np.array(self._samples, np.int64)

    def __len__(self) -> int:
        return self._count
