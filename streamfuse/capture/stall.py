"""When a producer's silence is a stall: how long it may be silent, and the clock its silence is read on (the
time its supervisor's process was running).

A whole-host stall (a VM paused, the machine's processes stopped, the supervisor descheduled) silences every
producer and its supervisor alike; on waking, a monotonic clock has moved on by the stall and every producer looked
stalled, though none was. So silence is read on a :class:`WatchClock`: a thread of its own wakes every
:data:`TICK_S` and adds its gap since the previous tick, but never more than :data:`HELD_S` (a tick that came later
than that was held up itself, and the producers' silence over that time is the host's, not theirs). The thread is
timed apart from the live loop's rounds, so a loop whose fusion takes seconds a frame still finds a hung producer
within its stall limit (a cap on the gap between rounds counted such a loop's rounds short).
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["FIRST_FRAME_S", "HELD_S", "STALL_FLOOR_S", "TICK_S", "WatchClock", "allowance"]

FIRST_FRAME_S = 30.0  # start-up allowance before a producer's first frame (stream open timeouts are 10 s + 5 s)
# the least silence taken for a stall: a busy host leaves a process off the CPU for 20 intervals of 60 frames/s
STALL_FLOOR_S = 2.0
# the longest gap between ticks that counts in full: a busy host's scheduling delays are tenths of a second, and so
# is the longest a fusion step holds the interpreter lock; a longer gap is the process's own stall
HELD_S = 0.5
TICK_S = 0.02


class WatchClock:
    """Seconds during which this process ran, ticked by a thread of its own (:meth:`start`) or by :meth:`tick`.

    Args:
        clock: stands in for ``time`` (its ``monotonic``).
    """

    def __init__(self, clock: Any = time) -> None:
        self._clock = clock
        self._at = clock.monotonic()
        self.seconds = 0.0  # read by the supervisor, written by the ticking thread alone
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """Add the gap since the previous tick, at most :data:`HELD_S`."""
        now = self._clock.monotonic()
        self.seconds += min(max(0.0, now - self._at), HELD_S)
        self._at = now

    def start(self) -> None:
        """Tick every :data:`TICK_S` on a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="streamfuse-stall-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(TICK_S):
            self.tick()

    def stop(self) -> None:
        """End the ticking thread (idempotent)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()


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
