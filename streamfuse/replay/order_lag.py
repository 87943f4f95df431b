"""How large the pairer's queue must be for a recording read in its recorded order, which a fast replay reads it in.

A bag logs a message when it arrives: a thermal camera's frames reach it later after capture than a visible
camera's, so in the bag each thermal frame comes after the visible frames captured up to its delay later. The
pairer's queue (``sync.queue_size``) must hold those visible frames while the thermal one is on its way; a fast
replay reads one message after the other, so a smaller queue drops them (every pair after the first few, at a
constant delay), with no back-pressure to help.

:class:`OrderLag` says the least queue size that drops none of them by running the pairer itself on the frames' times,
their images left out (a model of its rules was off by a frame where a frame passed over for a nearer one, or one
with no partner near, waited). A queue of q frames behaves as the largest
(:data:`~streamfuse.sync.QUEUE_SIZE_MAX`) until the largest first holds more than q at once; from then on a pairer of
that size runs on its own, from a copy of the largest one's state, while it drops no frame that could pair.

A frame that pairs at no size, with no frame of the other stream within the pairing tolerance (before the other
stream's first frame, after its last, or in its gap), is dropped by a small queue where a large one leaves it
unpaired: the replay counts it outside the other's span or unpaired, not dropped
(:mod:`~streamfuse.replay.left_frames`), and so does this, on the same time lines: the size said is the least at
which the replay drops no frame, which can be less than the least at which the pairer drops none.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort
from dataclasses import dataclass, replace

import numpy as np

from streamfuse.frames import STREAM_NAMES, Frame
from streamfuse.sync import OTHER, QUEUE_SIZE_MAX, Pairer, SyncConfig

__all__ = ["OrderLag"]

# time lines kept per stream, and dropped frames per size awaiting the other stream: bounds the memory where one
# stream's frames stop coming (its next frame, were it to come, is taken to be logged less than that far behind)
_KEPT = 1 << 16
# queue sizes run on their own at once, the least first: the larger ones past it are not run (a size that pairs them
# is still said, the least that the largest pairer's queue ever held, with "or less")
_SIZES = 32
_NO_IMAGE = np.zeros((1, 1), np.uint8)


@dataclass
class _Read(Frame):
    """A frame read, its image left out: its capture time for the pairer, its time line for the verdicts."""

    line_ns: int = 0


class _Size:
    """One queue size's pairer, and its dropped frames whose verdict waits for the other stream's frames."""

    def __init__(self, lag: OrderLag, pairer: Pairer, queue_size: int) -> None:
        self.pairer = pairer.resized(queue_size, lambda frame, outcome: lag.left(self, frame, outcome))
        self.waiting: dict[str, list[int]] = {s: [] for s in OTHER}  # dropped frames' time lines, ns
        self.dropped = False  # a frame that could pair


class OrderLag:
    """The least ``sync.queue_size`` at which a replay that reads frames in this order drops none (:attr:`needed`).

    Args:
        sync: the sync section the replay pairs with.
    """

    def __init__(self, sync: SyncConfig) -> None:
        self._tolerance_ns = sync.tolerance_ns
        self._largest = _Size(self, Pairer(replace(sync, queue_size=QUEUE_SIZE_MAX)), QUEUE_SIZE_MAX)
        self._most = 0  # the most frames the largest pairer's queue held: from this size on, each behaves as it
        self._sizes: dict[int, _Size] = {}  # the smaller ones run on their own that dropped no frame that could pair
        self._left_out = QUEUE_SIZE_MAX + 1  # the least size not run for want of room (_SIZES)
        self._lines = {s: array("q") for s in OTHER}  # each stream's time lines read, rising
        self._count = {s: 0 for s in OTHER}

    @property
    def needed(self) -> int | None:
        """The least queue size at which the replay drops no frame (None where none up to the largest does)."""
        if self._sizes:
            return min(self._sizes)
        return None if self._largest.dropped else max(self._most, 2)

    @property
    def least(self) -> bool:
        """Whether :attr:`needed` is the least such size, not only one (sizes were left out, :data:`_SIZES`)."""
        return self.needed is None or self.needed < self._left_out

    def read(self, frame: Frame, line_ns: int) -> None:
        """One frame, in recorded order, at ``line_ns`` on its stream's time line (which rises frame by frame)."""
        stream = frame.stream
        read = _Read(stream, self._count[stream], frame.t_capture_ns, _NO_IMAGE, line_ns=line_ns)
        self._count[stream] += 1
        self._seen(stream, line_ns)
        # the largest pairer as it stood: the sizes its queue outgrows now behaved as it until this frame
        before = self._largest.pairer.resized(QUEUE_SIZE_MAX) if len(self._sizes) < _SIZES else None
        for size in (self._largest, *self._sizes.values()):
            size.pairer.push(read)
        self._sizes = {q: size for q, size in self._sizes.items() if not size.dropped}
        most = self._largest.pairer.most_queued()
        for q in range(max(self._most, 2), min(most, QUEUE_SIZE_MAX)):
            if before is None or len(self._sizes) >= _SIZES:
                self._left_out = min(self._left_out, q)
                break
            size = _Size(self, before, q)
            size.pairer.push(read)
            if not size.dropped:
                self._sizes[q] = size
        self._most = max(self._most, most)

    def left(self, size: _Size, frame: _Read, outcome: str) -> None:
        """A frame ``size``'s pairer left ``unpaired`` or ``dropped`` (its ``on_left``)."""
        other = OTHER[frame.stream]
        if outcome != "dropped" or size.dropped:
            return
        lines, t = self._lines[other], frame.line_ns
        i = bisect_left(lines, t - self._tolerance_ns)
        if i < len(lines) and lines[i] <= t + self._tolerance_ns:  # a frame of the other stream near: it could pair
            size.dropped = True
        elif not lines or lines[-1] <= t + self._tolerance_ns:  # one may yet come near it
            waiting = size.waiting[frame.stream]
            insort(waiting, t)
            del waiting[:max(len(waiting) - _KEPT, 0)]

    def _seen(self, stream: str, line_ns: int) -> None:
        """A frame of ``stream`` read: the other stream's dropped frames near it could pair; those before it by more
        than the tolerance no frame of it still to come is near."""
        lines = self._lines[stream]
        lines.append(line_ns)
        if len(lines) > 2 * _KEPT:
            del lines[:_KEPT]
        lo, hi = line_ns - self._tolerance_ns, line_ns + self._tolerance_ns
        for size in (self._largest, *self._sizes.values()):
            waiting = size.waiting[OTHER[stream]]
            i = bisect_left(waiting, lo)
            size.dropped |= i < len(waiting) and waiting[i] <= hi
            del waiting[:i]

    def note(self, dropped: dict[str, int], queue_size: int) -> str:
        """Why the pairer dropped ``dropped`` frames per stream (as the replay counts them), and the
        ``sync.queue_size`` that pairs them; '' when its queue held what this recording needs."""
        needed = self.needed
        if needed is None:
            advice = f"no sync.queue_size up to {QUEUE_SIZE_MAX} holds them"
        else:
            advice = f"replay with --set sync.queue_size={needed}{'' if self.least else ' or less'} to pair them"
        notes = [f"{dropped[s]} {STREAM_NAMES[s]} frames were dropped waiting for {STREAM_NAMES[OTHER[s]]} frames "
                 f"recorded later than the pairer's queue holds them (sync.queue_size {queue_size}; a fast replay "
                 f"reads a recording in its recorded order): {advice}"
                 for s in OTHER if dropped[s] and (needed is None or needed > queue_size)]
        return "; ".join(notes)
