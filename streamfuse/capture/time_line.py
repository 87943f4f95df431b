"""The time line a realtime-paced source goes by (files, folders, recordings): where its pacing began, as the
process-shared ``[perf_counter ns, frame time ns, source, told]`` that its first frame paced sets
(``BaseSource._pace``: ``source`` which one began it, ``told`` whether a source on another clock was said). A
source's later processes (a restart) go on on it; and where both sources are paced on their own times they share
one: pairing compares their frames' times, so the frames of one time must come together, not each source's from its
own first frame on (an IR video starting 0.75 s into the visible one's times came 0.75 s early, overflowed the pairing
queue, and nothing paired) or from whenever its process got its input open. A source whose first frame is far from
the other's time (timed on another clock) is paced on its own, and said.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from streamfuse.capture.loop_spans import LoopSpans, loop_spans
from streamfuse.capture.shm_ring import named_semaphore

__all__ = ["TimeLine", "pace_lines", "new_pass", "claimed"]

_LOCK_WAIT_S = 1.0  # a process killed while it held the lock must not hold up the other source's for good


class TimeLine:
    """The four shared numbers, zeros until set, and the lock :func:`claimed` takes: named as our shared memory is,
    so that a start after a killed run frees it (multiprocessing's own ``mp-<random>`` one never was)."""

    def __init__(self, ctx: Any) -> None:
        self._values, self._lock = ctx.RawArray("q", 4), named_semaphore(ctx, lock=True)
        self.loop_spans: LoopSpans | None = None  # looped inputs' spans, shared by all sources (loop_spans)

    def __getitem__(self, i: int) -> int:
        return self._values[i]

    def __setitem__(self, i: int, value: int) -> None:
        self._values[i] = value

    def get_lock(self) -> Any:
        return self._lock


def pace_lines(ctx: Any, cfgs: dict[str, Any]) -> dict[str, TimeLine]:
    """Each source's time line (processes of ``ctx``) by its ``SourceConfig``: one for all where every source is
    paced on its own times, else one each; each carries the looped inputs' shared spans where all inputs loop."""
    if len(cfgs) > 1 and all(cfg.replayable and cfg.realtime for cfg in cfgs.values()):
        lines = dict.fromkeys(cfgs, TimeLine(ctx))
    else:
        lines = {name: TimeLine(ctx) for name in cfgs}
    spans = loop_spans(ctx, cfgs)
    for line in lines.values():
        line.loop_spans = spans
    return lines


def new_pass(line: Any, others: list[Any]) -> None:
    """A source on time line ``line`` starts a new pass (its input ended and is played again): alone on it, it is
    paced afresh from its next frame; on the other sources' time line too (``others``: theirs), it goes on on it (the
    frames of the restart's delay come at once), or it would run behind them by that delay."""
    if not any(other is line for other in others):
        line[0] = 0


@contextlib.contextmanager
def claimed(line: Any) -> Iterator[None]:
    """Hold ``line``'s lock (where it has one) while its first frame reads and sets it: two sources' first frames
    may come at once."""
    lock = line.get_lock() if hasattr(line, "get_lock") else None
    held = lock is not None and lock.acquire(timeout=_LOCK_WAIT_S)
    try:
        yield
    finally:
        if held:
            lock.release()
