"""How late one topic's messages come in a recording's recorded order, which a fast replay reads it in.

A bag logs a message when it arrives: a thermal camera's frames reach it later after capture than a visible
camera's, so in the bag each thermal frame comes after the visible frames captured up to its delay later. The
pairer's queue (``sync.queue_size``) must hold those visible frames while the thermal one is on its way; a fast
replay reads one message after the other, so a smaller queue drops them (every pair after the first few, at a
constant delay), with no back-pressure to help. :class:`OrderLag` measures the queue that would have held them.
"""

from __future__ import annotations

from collections import deque

from streamfuse.frames import STREAM_NAMES
from streamfuse.sync import OTHER

__all__ = ["OrderLag"]

_KEPT = 1 << 16  # times kept per stream: bounds the memory where one stream's frames stop coming


class OrderLag:
    """The most frames of each stream read before a frame of the other stream that one of them still had to pair
    with, or came after them: how many its queue had to hold.

    A frame is paired as it is read where a frame of the other stream after it is already in (late IR frames find
    their visible partners waiting): its partner and the frames before that one leave the other stream's queue. Where
    that partner came after it, its own stream's next frame decides: the pairer pairs two frames only where each is
    the other's nearest, so a next frame nearer that partner takes it, and the first goes unpaired. One that comes
    first waits for the other stream's next frame, which decides it (its partner may be that one).

    Args:
        slop_ns: the pairing tolerance; a frame within it of a later one's time may be its partner.
    """

    def __init__(self, slop_ns: int) -> None:
        self._slop_ns = slop_ns
        self._times: dict[str, deque[int]] = {s: deque(maxlen=_KEPT) for s in OTHER}
        # each stream's latest time: its deque is trimmed as the other stream's frames come
        self._last: dict[str, int | None] = {s: None for s in OTHER}
        self._waits: dict[str, int | None] = {s: None for s in OTHER}  # a frame not yet paired, for want of a later one
        # the nearest partner of a stream's latest frame where it came after that frame: the stream's next frame
        # may be nearer that one
        self._pending: dict[str, int | None] = {s: None for s in OTHER}
        self.needed = {s: 0 for s in OTHER}

    def read(self, stream: str, t_ns: int) -> None:
        """One frame of ``stream`` at ``t_ns`` (ns, its time line), in recorded order."""
        other = OTHER[stream]
        own, waiting, last = self._times[stream], self._times[other], self._last[stream]
        if last is not None and t_ns < last:  # a clock stepped back: the times before it tell nothing of the new ones
            own.clear()
            waiting.clear()
            last = self._waits[stream] = self._waits[other] = self._pending[stream] = self._pending[other] = None
        # the previous frame of this stream, while it waited for a partner, kept the other stream's frames from its
        # time on queued; those before it never pair
        since = t_ns if last is None else last
        while waiting and waiting[0] < since - self._slop_ns:
            waiting.popleft()
        # this stream's previous frame, if its partner came after it: a full queue pairs the two at once, so
        # neither that partner nor those before it count (this frame's own partner is no earlier, and takes them)
        pending, self._pending[stream] = self._pending[stream], None
        self.needed[other] = max(self.needed[other],
                                 len(waiting) - (sum(t <= pending for t in waiting) if pending is not None else 0))
        own.append(t_ns)
        self._last[stream] = t_ns
        if (waits := self._waits[other]) is not None and t_ns >= waits:  # the other stream's frame is decided now
            self._waits[other] = None
            if (partner := self._partner(waits, own)) is not None:
                _leave(own, partner)
        self._waits[stream] = None
        if waiting and waiting[-1] >= t_ns:
            if (partner := self._partner(t_ns, waiting)) is not None and partner > t_ns:
                self._pending[stream] = partner
            elif partner is not None:
                _leave(waiting, partner)
        else:
            self._waits[stream] = t_ns

    def _partner(self, t_ns: int, times: deque[int]) -> int | None:
        """The nearest of ``times`` to ``t_ns`` within the tolerance, if any."""
        near = [t for t in times if abs(t - t_ns) <= self._slop_ns]
        return min(near, key=lambda t: abs(t - t_ns)) if near else None

    def note(self, dropped: dict[str, int], queue_size: int) -> str:
        """Why the pairer dropped ``dropped`` frames per stream, and the ``sync.queue_size`` that pairs them; ''
        when its queue held what this recording needs."""
        notes = [f"{dropped[s]} {STREAM_NAMES[s]} frames were dropped waiting for {STREAM_NAMES[OTHER[s]]} frames "
                 f"recorded later than the pairer's queue holds them (sync.queue_size {queue_size}; a fast replay "
                 f"reads a recording in its recorded order): replay with --set sync.queue_size={self.needed[s]} to "
                 f"pair them" for s in OTHER if dropped[s] and self.needed[s] > queue_size]
        return "; ".join(notes)


def _leave(times: deque[int], partner: int) -> None:
    """``partner`` paired: it and the times before it leave ``times``."""
    while times and times[0] <= partner:
        times.popleft()
