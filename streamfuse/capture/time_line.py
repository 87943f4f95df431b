"""The time line a realtime-paced source goes by (files, folders, recordings): where its pacing began, as the
process-shared ``[perf_counter ns, frame time ns, source, told]`` that its first frame paced sets
(``BaseSource._pace``: ``source`` which one began it, ``told`` whether a source on another clock was said). A
source's later processes (a restart) go on on it; and where both sources are paced on their own times they share
one: pairing compares their frames' times, so the frames of one time must come together, not each source's from its
own first frame on (an IR video starting 0.75 s into the visible one's times came 0.75 s early, overflowed the pairing
queue, and nothing paired) or from whenever its process got its input open. A source whose first frame is far from
the other's time (timed on another clock) is paced on its own, and said; one whose earlier process went on the
shared line (:func:`joined`) is not judged again: a restart that came late (seven failures in a row, 6.4 s of back-off,
or a stall killed and reopened) took more than those 5 s and was paced on its own, never pairing again.

A shared line starts only once every source on it has read its first frame (:func:`held`): begun by the first one,
the frames of another whose process started seconds later (9-13 s on a loaded machine) were all due long before
and came at once, after the frames of their time had been paired or dropped. One that is not ready within
:data:`READY_WAIT_S`, or whose producer ended first, is left behind, said in one line; when it is ready, it joins the
line where the line is, its frames of the time already gone passed over (said in one line), not sent at once: paced
from its own first frame instead, it would run behind the other by its delay for good, and nothing would pair.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from streamfuse.capture.loop_spans import LoopSpans, loop_spans
from streamfuse.capture.shm_ring import named_semaphore

__all__ = ["TimeLine", "pace_lines", "new_pass", "claimed", "held", "left", "join", "joined", "anchored",
           "READY_WAIT_S"]

_LOCK_WAIT_S = 1.0  # a process killed while it held the lock must not hold up the other source's for good
READY_WAIT_S = 10.0  # the longest a source's first frame waits for the other sources on its line to be ready
_READY_POLL_S = 0.05
_READY, _GONE = 1, 2  # a source on a shared line: its first frame read; its producer ended
_FAR_S = 5.0  # a paced source whose first frame is this far (s) from the other source's on their time line goes alone


class TimeLine:
    """The four shared numbers, zeros until set, and the lock :func:`claimed` takes: named as our shared memory is,
    so that a start after a killed run frees it (multiprocessing's own ``mp-<random>`` one never was); where
    ``sections`` share it, whether each is ready (:func:`held`)."""

    def __init__(self, ctx: Any, sections: list[str] | None = None) -> None:
        self._values, self._lock = ctx.RawArray("q", 4), named_semaphore(ctx, lock=True)
        self.loop_spans: LoopSpans | None = None  # looped inputs' spans, shared by all sources (loop_spans)
        self._sections = sorted(sections or [])
        self._ready = ctx.RawArray("b", max(1, len(self._sections)))  # 0, _READY or _GONE, by section
        self._joined = ctx.RawArray("b", max(1, len(self._sections)))  # 1: its source went on this line (join)

    def post(self, section: str, state: int) -> None:
        """Say ``section`` is ready (``_READY``) or gone (``_GONE``); nothing for a section not on this line."""
        if section in self._sections:
            self._ready[self._sections.index(section)] = state

    def join(self, section: str) -> None:
        """Say ``section``'s source went on this line; nothing for a section not on it."""
        if section in self._sections:
            self._joined[self._sections.index(section)] = 1

    def joined(self, section: str) -> bool:
        """Whether ``section``'s source went on this line (:meth:`join`), in this process or an earlier one."""
        return section in self._sections and bool(self._joined[self._sections.index(section)])

    def left_behind(self, section: str) -> bool:
        """Whether ``section``'s source was not ready as this line began (never on it, its first frame not read before
        the wait ended, or its producer ended first)."""
        return section in self._sections and not self.joined(section) and self._ready[
            self._sections.index(section)] in (0, _GONE)

    def others(self, section: str, state: int) -> list[str]:
        """The sections on this line other than ``section`` whose state is ``state``."""
        return [s for s, st in zip(self._sections, self._ready) if s != section and st == state]

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
        lines = dict.fromkeys(cfgs, TimeLine(ctx, list(cfgs)))
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


def held(line: Any, section: str, stop: Any, warn: Callable[[str], None]) -> None:
    """``section``'s first frame is read: say so on its time line ``line`` and, where the line is shared and not begun
    (a restart goes on on it), wait until every other source on it is ready too, or its producer ended (:func:`left`),
    at most :data:`READY_WAIT_S` (one left behind is said to ``warn``); a set ``stop`` (Event-like) ends the wait."""
    if not isinstance(line, TimeLine) or line[0]:
        return
    line.post(section, _READY)
    deadline = time.monotonic() + READY_WAIT_S
    while (waited := line.others(section, 0)) and not line[0]:
        if time.monotonic() >= deadline:
            warn(f"{section}: its time line starts without {', '.join(waited)}, not ready {READY_WAIT_S:g} s after "
                 f"{section}'s first frame (its frames of the time it is late will be passed over)")
            return
        if stop.wait(_READY_POLL_S) if stop is not None else time.sleep(_READY_POLL_S):
            return
    if (gone := line.others(section, _GONE)) and not line[0]:
        warn(f"{section}: its time line starts without {', '.join(gone)}, whose producer ended before the line began")


def anchored(origin: Any, section: str, first: int, shift_ns: int, now: int,
             warn: Callable[[str], None]) -> tuple[int, int, bool, bool]:
    """Where pacing ``section``'s frame at ``first`` (its time, on its time line's clock) begins, on the time line
    ``origin`` (``shift_ns``: what its producer adds to its times) at ``now`` (perf_counter ns): (perf_counter ns,
    time then due), whether this frame begins the line (due now), and whether the source joins it late (left behind as
    the line began: its frames of the time gone are to be passed over). A restarted producer's frames go on on the
    line (:func:`joined`); one timed on another clock (first frame over :data:`_FAR_S` from the line's) is paced on its
    own, said to ``warn``."""
    owner = zlib.crc32(section.encode()) | 1
    if origin is not None and origin[0]:
        # started anew, a restarted producer's frames came later than the other source's of the same time (by the
        # restart's delay and the frames skipped), and never paired
        due_s = (origin[0] + first - origin[1] + shift_ns - now) / 1e9
        late = isinstance(origin, TimeLine) and origin.left_behind(section)  # its lateness is no other clock
        apart_s = (first + shift_ns - origin[1]) / 1e9 if late else due_s
        if origin[2] == owner or joined(origin, section) or abs(apart_s) <= _FAR_S:
            join(origin, section)
            return origin[0], origin[1] - shift_ns, False, late and due_s < 0
        if not origin[3]:  # timed on another clock: it would wait in silence (as if its camera were dead) or race
            origin[3] = 1
            warn(f"its first frame's time is {abs(apart_s):.1f} s {'after' if apart_s > 0 else 'before'} the other "
                 "source's, so it is paced on its own (frames pair by their times: these may never pair); are the two "
                 "inputs timed on one clock?")
    if origin is not None and not origin[0]:  # on the frames' time line (the producer adds shift_ns to each)
        origin[1], origin[2], origin[0] = first + shift_ns, owner, now
        join(origin, section)
    return now, first, True, False


def left(line: Any, section: str, *, for_good: bool = False) -> None:
    """``section``'s producer ended: the others on its time line ``line`` wait for it no longer (a restart that reads
    a first frame before the line begins is ready again); ``for_good`` (no restart follows): nor for its loop's span
    (:mod:`~.loop_spans`)."""
    if isinstance(line, TimeLine):
        line.post(section, _GONE)
        if for_good and line.loop_spans is not None:
            line.loop_spans.ended(section)


def join(line: Any, section: str) -> None:
    """``section``'s source goes on its time line ``line`` (began it or took it up): its restarts go on on it."""
    if isinstance(line, TimeLine):
        line.join(section)


def joined(line: Any, section: str) -> bool:
    """Whether an earlier process of ``section`` went on its shared time line ``line`` (:func:`join`): a restart goes
    on on it however late it comes, not taken for a source timed on another clock."""
    return isinstance(line, TimeLine) and line.joined(section)
