"""The clock a producer's silence is read on: the time its supervisor's process ran, a held-up tick counted short."""

from __future__ import annotations

import threading
import time

from streamfuse.capture.stall import WatchClock


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_each_tick_adds_its_gap_and_a_gap_over_half_a_second_only_half_a_second() -> None:
    clock = _Clock()
    watch = WatchClock(clock)
    assert watch.seconds == 0.0
    for gap in (0.25, 0.5, 3.0):  # the last: the whole host was stopped, not the producers
        clock.now += gap
        watch.tick()
    assert watch.seconds == 1.25


def test_its_thread_ticks_until_stopped_and_does_not_keep_the_process_alive() -> None:
    WatchClock().stop()  # never started: nothing to end
    watch = WatchClock()
    watch.start()
    thread = watch._thread
    assert thread is not None and thread.daemon and thread in threading.enumerate()
    deadline = time.monotonic() + 30
    while watch.seconds == 0.0:
        assert time.monotonic() < deadline, "the watch clock never ticked"
        time.sleep(0.01)
    watch.stop()
    assert not thread.is_alive()
    seconds = watch.seconds
    watch.stop()
    assert watch.seconds == seconds
