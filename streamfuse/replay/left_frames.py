"""The frames a replay's pairer left unpaired or dropped, told apart as they leave: outside the other stream's span,
or dropped without a frame of the other stream within the pairing tolerance (so never pairable).

Each stream's time line rises strictly frame by frame (:class:`~streamfuse.capture.timestamps.FileClock`), so its
first frame read starts its span for good, its newest one bounds the span's end from below, and the frames still to
come are all later. A leftover is decided as soon as those make its verdict final, else kept until they do or the
replay ends: what is kept follows the pairing window (the frames ahead of the other stream), not the replay's length.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left

from streamfuse.sync import OTHER

__all__ = ["LeftFrames"]

# leftovers kept undecided and spans kept per stream: past it, the oldest leftovers after the other stream's newest
# frame are counted instead (one verdict for all) and the oldest spans let go, so a stream that stops for good holds
# no memory a frame of the other (its next frame, were it to come, is taken to be logged less than that far behind)
_KEPT = 1 << 16


class LeftFrames:
    """The verdicts on the leftovers, per stream: ``before`` and ``after`` the other stream's span (taken out of their
    outcome), and ``lone`` (dropped with no frame of the other stream within the tolerance: counted unpaired).

    Args:
        tolerance_ns: the pairing tolerance (``SyncConfig.tolerance_ns``).
    """

    def __init__(self, tolerance_ns: int) -> None:
        self.tolerance_ns = tolerance_ns
        self.first: dict[str, int | None] = {s: None for s in OTHER}  # time line of each stream's first frame read
        self.newest: dict[str, int | None] = {s: None for s in OTHER}
        self.verdicts = {s: {"before": {"unpaired": 0, "dropped": 0}, "after": {"unpaired": 0, "dropped": 0},
                             "lone": 0} for s in OTHER}
        # the times within the tolerance of a frame read, as merged [lo, hi] spans (one for a steady stream)
        self._lo = {s: array("q") for s in OTHER}
        self._hi = {s: array("q") for s in OTHER}
        self._pending = {s: _Pending() for s in OTHER}
        # leftovers counted, not kept, past the other stream's newest frame at the time (dropped, unpaired; that time)
        self._beyond: dict[str, tuple[int, int, int | None]] = {s: (0, 0, None) for s in OTHER}
        # those counted, not kept, before the other stream's first frame (dropped, unpaired): before its span
        self._early: dict[str, tuple[int, int]] = {s: (0, 0) for s in OTHER}

    def read(self, stream: str, t_ns: int) -> None:
        """A frame of ``stream`` read, at ``t_ns`` on its time line."""
        tol, lo, hi = self.tolerance_ns, self._lo[stream], self._hi[stream]
        self.first[stream] = t_ns if self.first[stream] is None else self.first[stream]
        self.newest[stream] = t_ns
        if hi and t_ns - tol <= hi[-1]:
            hi[-1] = t_ns + tol
        else:
            lo.append(t_ns - tol)
            hi.append(t_ns + tol)
        self._settle(OTHER[stream], end=False)

    def left(self, stream: str, outcome: str, t_ns: int) -> None:
        """A frame of ``stream`` the pairer left ``unpaired`` or ``dropped``, at ``t_ns`` on its time line."""
        self._pending[stream].append(outcome == "dropped", t_ns)
        self._settle(stream, end=False)
        self._fold(stream)

    def forget(self, held_ns: dict[str, list[int]]) -> None:
        """Let go of the spans that no dropped frame can still need: those ending before the other stream's pending
        dropped frames, its frames held by the pairer (``held_ns``: time lines per stream) and its frames to come, and
        all but the newest :data:`_KEPT` (the other stream's next frame, where it stopped, is not that far behind)."""
        for stream, other in OTHER.items():
            if self.newest[other] is None:  # its first frame may come at any time, not that far behind
                if (cut := len(self._hi[stream]) - _KEPT) > 0:
                    del self._lo[stream][:cut], self._hi[stream][:cut]
                continue
            pending = self._pending[other].floor()
            floor = min([self.newest[other] + 1, *held_ns[other], *([] if pending is None else [pending])])
            cut = max(bisect_left(self._hi[stream], floor), len(self._hi[stream]) - _KEPT)
            if cut:
                del self._lo[stream][:cut], self._hi[stream][:cut]

    def end(self) -> None:
        """Every frame read: decide what is still pending."""
        for stream in OTHER:
            self._settle(stream, end=True)

    def spans(self) -> int:
        """How many spans of read times are kept, both streams."""
        return sum(len(lo) for lo in self._lo.values())

    def held(self) -> int:
        """How many times are kept (pending leftovers and spans)."""
        return self.spans() + sum(len(pending) for pending in self._pending.values())

    def _fold(self, stream: str) -> None:
        """Count, rather than keep, the oldest of ``stream``'s pending leftovers past :data:`_KEPT` that lie after the
        other stream's newest frame: its next frame, which comes that many of them later, comes after them too, and
        makes the dropped ones lone; none makes them all after its span. Where the other stream has no frame yet, its
        first one comes after them too: they are before its span (or outside none, where it never comes)."""
        pending, newest = self._pending[stream], self.newest[OTHER[stream]]
        while len(pending) > _KEPT and (newest is None or pending.first()[1] > newest + self.tolerance_ns):
            dropped = pending.first()[0] == "dropped"
            if newest is None:
                early = self._early[stream]
                self._early[stream] = early[0] + dropped, early[1] + (not dropped)
            else:
                counted = self._beyond[stream]
                self._beyond[stream] = counted[0] + dropped, counted[1] + (not dropped), newest
            pending.pop()

    def _settle(self, stream: str, end: bool) -> None:
        """Decide ``stream``'s pending leftovers in order, up to the first whose verdict the other stream's frames
        still to come could change (``end``: none are)."""
        self._settle_counted(stream, end)  # older than those kept
        pending = self._pending[stream]
        while len(pending) and self._decide(stream, *pending.first(), end):
            pending.pop()

    def _settle_counted(self, stream: str, end: bool) -> None:
        """Decide ``stream``'s leftovers counted by :meth:`_fold`: lone where dropped once the other stream has a
        newer frame, else after its span at the ``end``; those counted before its first frame, before its span."""
        if self.first[OTHER[stream]] is not None and any(self._early[stream]):
            before = self.verdicts[stream]["before"]
            before["dropped"] += self._early[stream][0]
            before["unpaired"] += self._early[stream][1]
            self._early[stream] = 0, 0
        dropped, unpaired, newest = self._beyond[stream]
        if newest is None or not end and self.newest[OTHER[stream]] == newest:
            return
        verdicts = self.verdicts[stream]
        if self.newest[OTHER[stream]] != newest:
            verdicts["lone"] += dropped
        else:
            verdicts["after"]["dropped"] += dropped
            verdicts["after"]["unpaired"] += unpaired
        self._beyond[stream] = 0, 0, None

    def _decide(self, stream: str, outcome: str, t_ns: int, end: bool) -> bool:
        other, tol = OTHER[stream], self.tolerance_ns
        first, newest = self.first[other], self.newest[other]
        if first is None:
            return end  # no span to be outside of
        verdicts = self.verdicts[stream]
        if t_ns < first - tol:
            verdicts["before"][outcome] += 1
            return True
        if t_ns > newest + tol:
            if end:
                verdicts["after"][outcome] += 1
            return end
        if outcome != "dropped" or self._near(other, t_ns):
            return True
        if end or newest >= t_ns + tol:  # the other stream's frames to come are all farther
            verdicts["lone"] += 1
            return True
        return False

    def _near(self, stream: str, t_ns: int) -> bool:
        """Whether a frame of ``stream`` read so far is within the tolerance of ``t_ns``."""
        i = bisect_left(self._hi[stream], t_ns)
        return i < len(self._hi[stream]) and self._lo[stream][i] <= t_ns


class _Pending:
    """One stream's undecided leftovers in the order they left (9 bytes each): whether dropped, and the time line."""

    def __init__(self) -> None:
        self._dropped, self._t = bytearray(), array("q")
        self._head = 0  # entries before it are decided; cut off once they are the larger part
        self._sorted = True  # the times rise since the queue was last empty: the first is the smallest
        self._min: int | None = None

    def __len__(self) -> int:
        return len(self._t) - self._head

    def append(self, dropped: bool, t_ns: int) -> None:
        self._sorted = self._sorted and (not len(self) or t_ns >= self._t[-1])
        self._min = t_ns if self._min is None else min(self._min, t_ns)
        self._dropped.append(dropped)
        self._t.append(t_ns)

    def first(self) -> tuple[str, int]:
        return "dropped" if self._dropped[self._head] else "unpaired", self._t[self._head]

    def pop(self) -> None:
        self._head += 1
        if not len(self):
            self._head, self._sorted, self._min = 0, True, None
            del self._dropped[:], self._t[:]
        elif self._head > len(self):
            del self._dropped[:self._head], self._t[:self._head]
            self._head = 0

    def floor(self) -> int | None:
        """At most the time of every entry (None when there is none)."""
        if not len(self):
            return None
        return self._t[self._head] if self._sorted else self._min
