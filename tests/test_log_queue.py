"""The log queue of live runs: a full queue drops and counts lines instead of waiting, and says so when it can."""

from __future__ import annotations

import logging
import queue

from streamfuse.log_queue import _DroppingHandler


def test_a_full_queue_drops_and_counts_lines_and_the_next_line_says_how_many() -> None:
    lines: queue.Queue = queue.Queue(maxsize=2)
    log = logging.getLogger("test_log_queue")
    log.propagate, log.level = False, logging.INFO
    handler = _DroppingHandler(lines)
    log.addHandler(handler)
    try:
        for i in range(5):
            log.info("line %d", i)  # returns at once though nobody takes the lines
        assert [lines.get_nowait() for _ in range(2)] == ["line 0", "line 1"]
        log.info("line 5")
        assert [lines.get_nowait() for _ in range(2)] == [
            "3 log lines dropped: nothing was reading this output", "line 5"]
    finally:
        log.removeHandler(handler)
