"""Pairing IR and visible frames by capture time (SyncConfig, Pairer).

Two modes, as ROS ``message_filters`` users expect:

- ``slop``: approximate-time pairing. An IR frame and a visible frame pair when each is the other's nearest
  frame in time and they are at most ``slop_ms`` apart; a frame that can no longer find such a partner is
  counted ``unpaired``. Each input has a bounded queue: when one stream stalls, the other's oldest frames are
  dropped (counted ``dropped``) instead of the queue growing, once a frame there waiting for a nearer partner than
  the one it has (which the stall keeps from coming) has paired with that one.
- ``latest``: zero-order hold. Each frame of the leading (faster) stream pairs with the newest frame of the
  other stream, if that one is at most ``hold_ms`` older or newer.

Counters are per source and always satisfy ``received == paired + unpaired + dropped + queued``.
The pairer is pure logic (no threads, no clocks except ``t_paired_ns``); it assumes each stream arrives roughly
in capture order and sorts small out-of-order arrivals back into place.

A stepped clock (NTP or an operator setting the time: live capture times are the wall clock's) moves both streams'
times at once. A step back by more than :data:`CLOCK_STEP_NS` would otherwise leave every frame older than the
frames already decided until the clock came back to where it was; it is told from one stale frame by the next frame
following it, and pairing goes on from the new time (counted ``clock_steps``; the other stream's frames still on the
old time are counted unpaired). A step forward is a gap, as a lost frame.

>>> import numpy as np
>>> from streamfuse.frames import Frame
>>> p = Pairer(SyncConfig(slop_ms=20.0))
>>> img = np.zeros((2, 2), np.uint8)
>>> p.push(Frame("ir", 0, 1_000_000_000, img)) + p.push(Frame("vis", 0, 1_005_000_000, img))  # a later IR may be nearer
[]
>>> [(pair.ir.seq, pair.vis.seq) for pair in p.flush()]
[(0, 0)]
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Literal

from streamfuse.checks import check
from streamfuse.frames import Frame, FramePair

__all__ = ["SyncConfig", "Pairer", "STREAMS", "OTHER", "CLOCK_STEP_NS", "QUEUE_SIZE_MAX"]

log = logging.getLogger(__name__)

STREAMS = ("ir", "vis")
OTHER = {"ir": "vis", "vis": "ir"}  # each stream's partner
CLOCK_STEP_NS = 100 * 10**6  # a capture time this far before its stream's newest is a stepped clock, not jitter
QUEUE_SIZE_MAX = 10_000  # the largest sync.queue_size
LEAD_MARGIN = 1.1  # latest mode, lead auto: the other stream leads once its frame interval is this much shorter


@dataclass(frozen=True)
class SyncConfig:
    """Pairing settings.

    Args:
        mode: ``slop`` (approximate-time pairing) or ``latest`` (zero-order hold of the slower stream).
        slop_ms: largest capture-time difference of a pair in ``slop`` mode, ms.
        queue_size: frames kept per input while waiting for a partner; overflow drops the oldest (counted).
        lead: ``latest`` mode: the stream whose every frame is paired (``auto``: the one with the higher rate;
            the visible one at first, the lead passing only to a clearly faster stream, :data:`LEAD_MARGIN`).
        hold_ms: ``latest`` mode: largest capture-time difference to the held frame, ms (a stale hold is unpaired).
    """

    mode: Literal["slop", "latest"] = "slop"
    slop_ms: float = 20.0
    queue_size: int = 8
    lead: Literal["auto", "ir", "vis"] = "auto"
    hold_ms: float = 500.0

    def __post_init__(self) -> None:
        check(self.mode in ("slop", "latest"), "mode", self.mode, "slop | latest")
        check(0.0 < self.slop_ms <= 10_000.0, "slop_ms", self.slop_ms, "0 < slop_ms <= 10000")
        check(2 <= self.queue_size <= QUEUE_SIZE_MAX, "queue_size", self.queue_size,
              f"2 <= queue_size <= {QUEUE_SIZE_MAX}")
        check(self.lead in ("auto", "ir", "vis"), "lead", self.lead, "auto | ir | vis")
        check(0.0 < self.hold_ms <= 60_000.0, "hold_ms", self.hold_ms, "0 < hold_ms <= 60000")

    @property
    def tolerance_ns(self) -> int:
        """The largest capture-time difference of a pair in this mode, ns."""
        return round((self.hold_ms if self.mode == "latest" else self.slop_ms) * 1e6)


class _Input:
    """One input's queue (sorted by capture time), counters and rate estimate."""

    def __init__(self, maxlen: int, on_left: Callable[[Frame, str], None] | None = None) -> None:
        self.queue: deque[Frame] = deque()
        self.on_left = on_left  # told of each frame that leaves the queue unpaired or dropped
        self.maxlen = maxlen
        self.most = 0  # the most frames the queue held before its bound was applied: a larger bound changes nothing
        self.newest_ns: int | None = None  # largest capture time received
        self.horizon_ns: int | None = None  # capture time of the last frame that left the queue
        self.intervals: deque[int] = deque(maxlen=8)  # recent positive capture-time gaps, ns
        self.suspect: Frame | None = None  # a frame far before newest_ns: a clock step if the next one follows it
        self.stepping = False  # the other stream's clock stepped back; this one's frames may still be on the old time
        self.received = self.paired = self.unpaired = self.dropped = self.clock_steps = 0

    def period_ns(self) -> int:
        """Smallest recent frame interval (0 while unknown): a conservative bound on when the next frame comes; from
        two intervals on, as one may span a lost frame (taken for the period, the next frame seemed due a period late,
        and a farther partner was taken meanwhile)."""
        return min(self.intervals) if len(self.intervals) >= 2 else 0

    def typical_period_ns(self) -> int:
        """Median recent frame interval (0 while unknown): the stream's rate, unmoved by one frame delivered twice,
        one lost or a short burst; from three intervals on (one lost in the first two read as half the rate, and
        passed latest mode's lead to the other stream for good)."""
        return sorted(self.intervals)[len(self.intervals) // 2] if len(self.intervals) >= 3 else 0

    def note(self, t_ns: int) -> None:
        if self.newest_ns is not None and t_ns > self.newest_ns:
            self.intervals.append(t_ns - self.newest_ns)
        self.newest_ns = t_ns if self.newest_ns is None else max(self.newest_ns, t_ns)

    def pop(self, outcome: str) -> Frame:
        frame = self.queue.popleft()
        self.horizon_ns = frame.t_capture_ns
        setattr(self, outcome, getattr(self, outcome) + 1)
        if self.on_left is not None and outcome != "paired":
            self.on_left(frame, outcome)
        return frame

    def restart(self) -> None:
        """A new time line (the clock stepped): the queued frames can no longer pair, newer ones come from scratch."""
        while self.queue:
            self.pop("unpaired")
        self.newest_ns = self.horizon_ns = None

    def counters(self) -> dict[str, int]:
        return {"received": self.received, "paired": self.paired, "unpaired": self.unpaired,
                "dropped": self.dropped, "queued": len(self.queue) + (self.suspect is not None),
                "clock_steps": self.clock_steps}


class Pairer:
    """Pairs IR and visible frames by capture time; see the module docstring for the rules.

    Args:
        cfg: the sync section.
        on_left: called with each frame that leaves its queue and its outcome (``unpaired`` or ``dropped``): a replay
            that learns its inputs' time spans only at their end tells those outside the other's span by them.
    """

    def __init__(self, cfg: SyncConfig, *, on_left: Callable[[Frame, str], None] | None = None) -> None:
        self.cfg = cfg
        self._in = {s: _Input(cfg.queue_size, on_left) for s in STREAMS}
        self._slop_ns = round(cfg.slop_ms * 1e6)
        self._hold_ns = round(cfg.hold_ms * 1e6)
        self._held: dict[str, Frame | None] = {s: None for s in STREAMS}  # latest mode: newest frame per stream
        self._held_used = {s: False for s in STREAMS}
        self._auto_lead = "vis"  # latest mode, lead auto: the stream leading now
        self._pairs = 0
        self._skew_sum_ns = 0
        self._skew_max_ns = 0

    def push(self, frame: Frame) -> list[FramePair]:
        """Add one frame (``frame.stream`` is ``"ir"`` or ``"vis"``); returns the pairs it completed, oldest first."""
        if frame.stream not in self._in:
            raise ValueError(f"frame.stream={frame.stream!r} is not a pairable stream; allowed: {', '.join(STREAMS)}")
        self._in[frame.stream].received += 1
        pairs, ready = self._timeline(frame)
        for f in ready:
            self._in[f.stream].note(f.t_capture_ns)
            pairs += self._push_latest(f) if self.cfg.mode == "latest" else self._push_slop(f)
        return pairs

    def flush(self) -> list[FramePair]:
        """End of stream: pair what still can be paired; every other queued frame is counted unpaired."""
        for inp in self._in.values():
            inp.unpaired += inp.suspect is not None
            inp.suspect = None
        if self.cfg.mode == "latest":
            for s in STREAMS:
                self._release_held(s)
            return []
        pairs = self._match(ended=True)
        for inp in self._in.values():
            while inp.queue:
                inp.pop("unpaired")
        return pairs

    def held(self, stream: str) -> set[int]:
        """The capture times of ``stream``'s frames still held: queued, waiting to tell a clock step, or (latest mode)
        the newest one."""
        inp, newest = self._in[stream], self._held[stream]
        return {f.t_capture_ns for f in (*inp.queue, inp.suspect, newest) if f is not None}

    def most_queued(self) -> int:
        """The most frames either queue held before its bound was applied: with any ``queue_size`` from this one on,
        this pairer would have paired, left and dropped the same frames."""
        return max(inp.most for inp in self._in.values())

    def resized(self, queue_size: int, on_left: Callable[[Frame, str], None] | None = None) -> Pairer:
        """A copy of this pairer as it stands, the frames it holds shared, whose queues hold ``queue_size`` frames from
        here on and that tells ``on_left`` of the frames leaving them."""
        twin = object.__new__(Pairer)  # copied by hand: copy.copy took most of a replay's OrderLag time
        twin.__dict__.update(self.__dict__)
        if queue_size != self.cfg.queue_size:
            twin.cfg = replace(self.cfg, queue_size=queue_size)
        twin._held, twin._held_used = dict(self._held), dict(self._held_used)
        twin._in = {}
        for s, inp in self._in.items():
            twin._in[s] = same = object.__new__(_Input)
            same.__dict__.update(inp.__dict__)
            same.queue, same.intervals = deque(inp.queue), deque(inp.intervals, maxlen=8)
            same.maxlen, same.on_left = queue_size, on_left
        return twin

    def stats(self) -> dict:
        """Per-source counters ``{"ir": {...}, "vis": {...}}`` (received, paired, unpaired, dropped, queued,
        clock_steps), plus ``pairs`` and the pairs' capture-time skew ``skew_ms_mean`` / ``skew_ms_max`` (ms)."""
        out: dict = {s: self._in[s].counters() for s in STREAMS}
        for s in STREAMS:
            out[s]["queued"] += self._held[s] is not None  # latest mode keeps one frame per stream
        out["pairs"] = self._pairs
        out["skew_ms_mean"] = self._skew_sum_ns / self._pairs / 1e6 if self._pairs else 0.0
        out["skew_ms_max"] = self._skew_max_ns / 1e6
        return out

    def _emit(self, ir: Frame, vis: Frame) -> FramePair:
        skew = abs(ir.t_capture_ns - vis.t_capture_ns)
        self._pairs += 1
        self._skew_sum_ns += skew
        self._skew_max_ns = max(self._skew_max_ns, skew)
        return FramePair(ir=ir, vis=vis, t_paired_ns=time.perf_counter_ns())

    # -- clock steps -----------------------------------------------------------------------------------------------

    def _timeline(self, frame: Frame) -> tuple[list[FramePair], list[Frame]]:
        """Where ``frame`` stands against a stepped clock: the pairs of the old time line that a step completes, and
        the frames to pair now (none while a frame far back waits for the next one to tell a step from a stale
        frame, that one and ``frame`` when it was a step)."""
        s, t = frame.stream, frame.t_capture_ns
        inp, other = self._in[s], self._in[OTHER[s]]
        if inp.stepping:  # until this stream's first frame on the other's new time line, its frames cannot pair
            if other.newest_ns is not None and t > other.newest_ns + CLOCK_STEP_NS:
                inp.unpaired += 1
                return [], []
            inp.stepping, inp.clock_steps = False, inp.clock_steps + 1
            return [], [frame]
        suspect, inp.suspect = inp.suspect, None
        if suspect is not None and 0 < t - suspect.t_capture_ns <= CLOCK_STEP_NS and t <= inp.newest_ns:
            log.warning("%s: capture times went back %.3f s (the clock was stepped?): pairing goes on from the new "
                        "time", s, (inp.newest_ns - suspect.t_capture_ns) / 1e9)
            pairs, ready = self._step(s)
            return pairs, ready + [suspect, frame]
        inp.unpaired += suspect is not None  # a lone stale frame, not a step
        if inp.newest_ns is not None and t < inp.newest_ns - CLOCK_STEP_NS:
            inp.suspect = frame  # the next frame tells a step from a stale frame
            return [], []
        return [], [frame]

    def _step(self, s: str) -> tuple[list[FramePair], list[Frame]]:
        """Stream ``s`` has a new time line: pair what the old one still can, then start both streams afresh (the
        other one's frames of the old time line are counted unpaired as they come); returns those pairs and the
        other stream's frame already on the new time line, if any."""
        inp, other = self._in[s], self._in[OTHER[s]]
        if self.cfg.mode == "latest":
            pairs: list[FramePair] = []
            for name in STREAMS:
                self._release_held(name)
        else:
            pairs = self._match(ended=True)
        inp.clock_steps += 1
        inp.restart()
        other.restart()
        if other.suspect is None:
            other.stepping = True
            return pairs, []
        other.clock_steps += 1  # it stepped too, and its next frame has not come yet
        ready, other.suspect = [other.suspect], None
        return pairs, ready

    # -- slop mode -------------------------------------------------------------------------------------------------

    def _push_slop(self, frame: Frame) -> list[FramePair]:
        inp = self._in[frame.stream]
        if inp.horizon_ns is not None and frame.t_capture_ns <= inp.horizon_ns:
            inp.unpaired += 1  # arrived after a newer frame of its stream was already decided
            return []
        # Insert in capture order; arrivals are nearly sorted, so scan from the right.
        i = len(inp.queue)
        while i > 0 and inp.queue[i - 1].t_capture_ns > frame.t_capture_ns:
            i -= 1
        inp.queue.insert(i, frame)
        pairs = self._match(ended=False)
        inp.most = max(inp.most, len(inp.queue))
        if len(inp.queue) > inp.maxlen:  # the other stream is stalled or far behind: bound the queue
            # a frame waiting for a partner nearer than the one it has pairs with that one now: the later frame it
            # waits for has not come (an IR camera pausing for its shutter), and dropping the frame lost the pair
            pairs += self._match(ended=True)
            if len(inp.queue) > inp.maxlen:
                inp.pop("dropped")
                pairs += self._match(ended=False)
        return pairs

    def _future_cannot_beat(self, inp: _Input, t_ns: int, gap_ns: int) -> bool:
        """True when no frame still to come on ``inp`` can be closer than ``gap_ns`` to time ``t_ns``.

        Frames come in capture order and at least one (smallest recent) period apart, so the next one is no
        earlier than ``newest + period / 2`` (half a period of margin for jitter).
        """
        period = inp.period_ns()
        return period > 0 and inp.newest_ns + period // 2 - t_ns >= gap_ns

    def _match(self, ended: bool) -> list[FramePair]:
        ir_in, vis_in = self._in["ir"], self._in["vis"]
        slop = self._slop_ns
        pairs: list[FramePair] = []
        while True:
            # With the other queue empty, a frame older than the other stream's newest frame minus slop can never
            # pair (frames to come are newer still): count it now rather than when the next partner arrives.
            for inp, other in ((ir_in, vis_in), (vis_in, ir_in)):
                while inp.queue and not other.queue and other.newest_ns is not None \
                        and inp.queue[0].t_capture_ns < other.newest_ns - slop:
                    inp.pop("unpaired")
            if not ir_in.queue or not vis_in.queue:
                return pairs
            ir, vis = ir_in.queue[0], vis_in.queue[0]
            if vis.t_capture_ns < ir.t_capture_ns - slop:
                vis_in.pop("unpaired")
                continue
            if ir.t_capture_ns < vis.t_capture_ns - slop:
                ir_in.pop("unpaired")
                continue
            gap = abs(ir.t_capture_ns - vis.t_capture_ns)
            # A later visible frame may be nearer to ir (only if vis is before ir), and a later IR frame nearer
            # to vis (only if ir is before vis): pair only when each is the other's nearest.
            if len(vis_in.queue) > 1 and abs(vis_in.queue[1].t_capture_ns - ir.t_capture_ns) < gap:
                vis_in.pop("unpaired")
                continue
            if len(ir_in.queue) > 1 and abs(ir_in.queue[1].t_capture_ns - vis.t_capture_ns) < gap:
                ir_in.pop("unpaired")
                continue
            if not ended:
                if vis.t_capture_ns < ir.t_capture_ns and len(vis_in.queue) == 1 \
                        and not self._future_cannot_beat(vis_in, ir.t_capture_ns, gap):
                    return pairs
                if ir.t_capture_ns < vis.t_capture_ns and len(ir_in.queue) == 1 \
                        and not self._future_cannot_beat(ir_in, vis.t_capture_ns, gap):
                    return pairs
            pairs.append(self._emit(ir_in.pop("paired"), vis_in.pop("paired")))

    # -- latest mode -----------------------------------------------------------------------------------------------

    def _lead(self) -> str:
        if self.cfg.lead != "auto":
            return self.cfg.lead
        # The faster stream leads: smaller typical frame interval; visible while unknown (usually the faster camera).
        # The lead passes only to a clearly faster stream (LEAD_MARGIN): two cameras at one rate would otherwise swap
        # it on their stamps' jitter, each swap fusing one frame twice (a repeated output frame) and skipping others.
        lead, other = self._auto_lead, OTHER[self._auto_lead]
        p_lead, p_other = self._in[lead].typical_period_ns(), self._in[other].typical_period_ns()
        if p_lead and p_other and p_other * LEAD_MARGIN < p_lead:
            self._auto_lead = other
        return self._auto_lead

    def _release_held(self, stream: str) -> None:
        """The held frame of ``stream`` leaves: counted paired if any pair used it, else unpaired."""
        if self._held[stream] is not None:
            inp = self._in[stream]
            if self._held_used[stream]:
                inp.paired += 1
            else:
                inp.unpaired += 1
            self._held[stream] = None

    def _push_latest(self, frame: Frame) -> list[FramePair]:
        s = frame.stream
        other = OTHER[s]
        held = self._held[s]
        if held is not None and frame.t_capture_ns <= held.t_capture_ns:
            self._in[s].unpaired += 1  # out of order, or the held frame again: the hold keeps the newest frame
            return []
        self._release_held(s)
        self._held[s], self._held_used[s] = frame, False
        partner = self._held[other]
        if s != self._lead() or partner is None or abs(frame.t_capture_ns - partner.t_capture_ns) > self._hold_ns:
            return []
        self._held_used[s] = self._held_used[other] = True
        return [self._emit(*((frame, partner) if s == "ir" else (partner, frame)))]
