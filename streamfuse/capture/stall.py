"""When a producer's silence is a stall: how long it may be silent, and its silence as its supervisor saw it (the
time since its last sign of progress, counting only the time the supervisor itself was running).

A whole-host stall (a VM paused, the machine's processes stopped, the supervisor descheduled) silences every
producer and its supervisor alike; on waking, the supervisor's clock has moved on by the stall and every producer
looked stalled, though none was. So each supervision round adds its gap since the previous round, but never more
than :data:`HELD_S`: a round that came later than that was held up itself, and the producers' silence over that
time is the host's, not theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FIRST_FRAME_S", "HELD_S", "STALL_FLOOR_S", "Silence", "allowance"]

FIRST_FRAME_S = 30.0  # start-up allowance before a producer's first frame (stream open timeouts are 10 s + 5 s)
# the least silence taken for a stall: a busy host leaves a process off the CPU for 20 intervals of 60 frames/s
STALL_FLOOR_S = 2.0
# the longest gap between supervision rounds that counts in full: the live loop looks every 20-50 ms, and a busy
# host's scheduling delays are tenths of a second; a longer gap is the supervisor's own stall
HELD_S = 0.5


@dataclass
class Silence:
    """How long one producer has been silent while its supervisor watched.

    Args:
        seen_at: monotonic time, s, of the last supervision round (or of the producer's start).
    """

    seen_at: float = 0.0
    counted_s: float = 0.0

    def heard(self, now: float) -> None:
        """The producer showed progress at ``now`` (monotonic s): its silence starts again."""
        self.seen_at, self.counted_s = now, 0.0

    def watched(self, now: float) -> float:
        """Count a supervision round at ``now`` (monotonic s); return the silence counted so far, s."""
        self.counted_s += min(max(0.0, now - self.seen_at), HELD_S)
        self.seen_at = now
        return self.counted_s


def allowance(interval_s: float, stall_factor: float) -> tuple[float, str]:
    """The silence, s, past which a producer is stalled, and what was expected of it (words for its line).

    Args:
        interval_s: its frame interval, s; 0 before its first frame.
        stall_factor: its source's ``stall_factor`` (not 0).
    """
    if not interval_s:
        return FIRST_FRAME_S, f"a first frame within {FIRST_FRAME_S:g} s"
    return (max(interval_s * stall_factor, STALL_FLOOR_S),
            f"one every {interval_s:.3f} s x stall_factor {stall_factor:g}, not under {STALL_FLOOR_S:g} s")
