"""Warnings a peer sets off, one per message it sends, bounded in number: a broken or hostile publisher that sends
thousands of malformed messages a second would otherwise write as many lines a second to the log (and the disk or
journal under it). The first ``lines`` of a window are said as they come; the rest are counted and said as one line
once the window is over and another comes, or at the end (:meth:`FloodLog.flush`).

>>> import logging
>>> flood = FloodLog(logging.getLogger("demo"), "malformed messages", lines=2, window_s=3600)
>>> for n in range(5):
...     flood.say(f"message {n}")
>>> flood.unsaid
3
"""

from __future__ import annotations

import logging
import time

__all__ = ["FloodLog"]


class FloodLog:
    """Says at most ``lines`` warnings of one kind (``what``: ``"malformed messages from tcp://..."``) per
    ``window_s``; past that, counts them (``unsaid``) and says how many, with the last, when the window is over or
    its owner ends (:meth:`flush`). ``level``: that of its lines (a peer's restarts are news, not warnings)."""

    def __init__(self, logger: logging.Logger, what: str, *, lines: int = 20, window_s: float = 10.0,
                 level: int = logging.WARNING) -> None:
        self._log, self.what, self.lines, self.window_s, self.level = logger, what, lines, window_s, level
        self._window_end, self._said, self.unsaid, self._last = 0.0, 0, 0, ""

    def say(self, message: str) -> None:
        """Say ``message`` while this window has lines left, else count it."""
        now = time.monotonic()
        if now >= self._window_end:
            self.flush()
            self._window_end, self._said = now + self.window_s, 0
        if self._said >= self.lines:
            self.unsaid, self._last = self.unsaid + 1, message
            return
        self._said += 1
        more = (f" ({self.lines} said in {self.window_s:g} s: further {self.what} are counted, then said as one line)"
                if self._said == self.lines else "")
        self._log.log(self.level, "%s%s", message, more)

    def flush(self) -> None:
        """Say how many were counted, if any: at its owner's end, as no later line will."""
        if self.unsaid:
            self._log.log(self.level, "%d more %s not said one by one; the last: %s", self.unsaid, self.what,
                          self._last)
            self.unsaid = 0
