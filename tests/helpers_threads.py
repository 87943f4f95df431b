"""A Ctrl-C sent at the moment the main thread waits for another thread, where a stop can cut that wait short."""

from __future__ import annotations

import sys
import threading
import time


def main_runs(function: str) -> bool:
    """Whether the main thread runs inside ``function``."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None and frame.f_code.co_name != function:
        frame = frame.f_back
    return frame is not None


def main_waits_in(function: str) -> bool:
    """Whether the main thread waits in ``threading`` (for a thread's end or start, an event) inside ``function``."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    return frame is not None and frame.f_code.co_filename == threading.__file__ and main_runs(function)


def when_main_waits_in(function: str, then: threading.Event) -> None:
    """Poll (on the caller's thread) until the main thread waits inside ``function`` or ``then`` is set; set it."""
    while not (main_waits_in(function) or then.is_set()):
        time.sleep(0.005)
    then.set()
