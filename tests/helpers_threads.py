"""Where a thread runs, for another thread to act at the moment it waits (a Ctrl-C sent as the main thread waits for
another thread, where a stop can cut that wait short).

The thread notes its own calls (a profile hook, run by it alone): walking its frames from another thread
(``sys._current_frames()``, ``f_back``) reads them as they change, which can crash CPython 3.11.
"""

from __future__ import annotations

import sys
import threading
import time
from types import FrameType
from typing import Any

PATIENCE_S = 60.0  # the longest a poll waits for a moment that must come (a loaded machine can be slow)


class Watch:
    """The calls of the thread that enters it, until it leaves it, asked about by any thread. A stop's handler that
    raises as the hook runs (a signal is handled at any call) ends the watch: CPython drops a profile hook that
    raises. Once a test has sent its stops, it asks the code's own state what the thread does, not the watch."""

    def __init__(self) -> None:
        self._names: list[str] = []  # the functions entered since the watch began and still running, innermost last
        self._in_threading = False
        self._previous: Any = None

    def __enter__(self) -> Watch:
        self._previous = sys.getprofile()
        sys.setprofile(self._note)
        return self

    def __exit__(self, *_: object) -> None:
        sys.setprofile(self._previous)

    def _note(self, frame: FrameType | None, event: str, _arg: object) -> None:
        if event == "call":
            self._names.append(frame.f_code.co_name)
        elif event == "return":
            if self._names:  # else one entered before the watch began
                self._names.pop()
            frame = frame.f_back
        self._in_threading = frame is not None and frame.f_code.co_filename == threading.__file__

    def runs(self, function: str) -> bool:
        """Whether the thread runs inside ``function``."""
        return function in self._names

    def waits_in(self, function: str) -> bool:
        """Whether the thread waits in ``threading`` (for a thread's end or start, an event) inside ``function``."""
        return self._in_threading and self.runs(function)

    def when_waits_in(self, function: str, then: threading.Event, patience_s: float = PATIENCE_S) -> None:
        """Poll (on the caller's thread) until the thread waits inside ``function`` or ``then`` is set, or at most
        ``patience_s`` (a moment missed: the test goes on, and its own checks fail, rather than hang); set it."""
        deadline = time.monotonic() + patience_s
        while not (self.waits_in(function) or then.is_set()) and time.monotonic() < deadline:
            time.sleep(0.005)
        then.set()
