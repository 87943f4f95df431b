"""A clock that moves only as far as the code under test sleeps or waits: pacing and timeouts are checked exactly,
however busy the machine, and no test measures a wall-clock duration."""

from __future__ import annotations

import time
from typing import Any


class SleptClock:
    """Stands in for a module's ``time``: ``monotonic`` and ``perf_counter`` (and their ``_ns`` forms) read the time
    slept so far, ``sleep`` moves it on; anything else is the real ``time``'s."""

    def __init__(self) -> None:
        self.ns = 0

    def perf_counter_ns(self) -> int:
        return self.ns

    monotonic_ns = perf_counter_ns

    def monotonic(self) -> float:
        return self.ns / 1e9

    perf_counter = monotonic

    def sleep(self, seconds: float) -> None:
        self.ns += max(0, round(seconds * 1e9))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)
