"""Logging that never blocks the live path: log records go through a bounded queue to one thread that writes them.

A launcher that does not read the process's stderr (a pipe nobody drains, a terminal paused with Ctrl-S) blocks
every write once the pipe is full; a line logged from the live loop would then stop capture, fusion and publishing
(measured: no fused frame after the pipe filled). Here the loop only queues the line; the writer thread is the one
that waits. Lines beyond the queue are dropped and counted, and the next line written says how many.

Both set-ups also hold other libraries' lines to a few per logger every few seconds (``_Throttle``): a server library
that logs each bad message a peer sends (the Foxglove SDK: 13,000 lines a second from one client) would otherwise
let any peer fill the disk, or block the process on a stderr nobody drains.
"""

from __future__ import annotations

import functools
import logging
import numbers
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable

from streamfuse.errors import printable

__all__ = ["install", "install_direct", "flush", "BLOCK"]

BLOCK = {"block": True}  # extra= of a record that is a multi-line block by design

_QUEUE_LINES = 1000
_BURST, _WINDOW_S = 20, 10.0  # another library's lines let through per logger and window
_OWN = ("streamfuse", "train", "__main__")  # the project's loggers: the package's, training's, a tool's own
_MAX_OTHER_LINE = 2000  # characters of another library's line: the Foxglove SDK's quote a peer's message whole
_queue: queue.Queue | None = None
_pending: threading.Event | None = None  # the last flush's mark in the queue


class _DroppingHandler(logging.Handler):
    """Queues formatted records without waiting; counts what a full queue turns away."""

    def __init__(self, lines: queue.Queue) -> None:
        super().__init__()
        self._lines = lines
        self.dropped = 0  # guarded by the handler's lock, which logging holds around emit()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if self.dropped:  # said before the next line, once there is room for both
                self._lines.put_nowait(f"{self.dropped} log lines dropped: nothing was reading this output")
                self.dropped = 0
            self._lines.put_nowait(line)
        except queue.Full:
            self.dropped += 1


class _Throttle(logging.Filter):
    """At most ``_BURST`` lines of each other library's logger every ``_WINDOW_S`` seconds; the last one let through
    says that more are held back, and the first one after them how many were, or, where none comes, a line of their
    own once the window has ended. The project's own lines pass: each is one event, and those that can repeat are
    counted where they happen."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 later: Callable[[float, Callable[[], None]], None] | None = None) -> None:
        super().__init__()
        self._clock, self._later, self._lock = clock, later or _later, threading.Lock()
        self._windows: dict[str, list] = {}  # logger name: [window's start, let through, held back, their top level]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.partition(".")[0] in _OWN or getattr(record, "unsaid", 0):
            return True
        now = self._clock()
        with self._lock:
            window = self._windows.setdefault(record.name, [now, 0, 0, logging.NOTSET])
            if now - window[0] >= _WINDOW_S:
                window[:2] = [now, 0]
            if window[1] >= _BURST:
                window[2] += 1
                window[3] = max(window[3], record.levelno)
                if window[2] == 1:  # said when the window ends, unless a line let through after it says it first
                    say = functools.partial(self._say_unsaid, record.name, window[0])
                    self._later(window[0] + _WINDOW_S - now, say)
                return False
            window[1] += 1
            record.held_back, window[2:] = window[2], [0, logging.NOTSET]
            record.burst_full = window[1] == _BURST
        return True

    def _say_unsaid(self, name: str, start: float) -> None:
        """Once a window has ended: how many of its lines were held back, where no later line has said it."""
        with self._lock:
            window = self._windows[name]
            if window[0] != start or not window[2]:
                return
            held, level, window[2:] = window[2], window[3], [0, logging.NOTSET]
        logging.getLogger(name).log(level, "%d lines of %s held back in the last %g s, not shown", held, name,
                                    _WINDOW_S, extra={"unsaid": held})


def _later(delay_s: float, call: Callable[[], None]) -> None:
    timer = threading.Timer(delay_s, call)
    timer.daemon = True
    timer.start()


class _OneLine(logging.Formatter):
    """Each record's values (paths, names read from files, other programs' errors) with their control characters
    as escapes: a name holding a newline cannot forge a log line of its own. A record logged with ``extra=BLOCK`` is
    one multi-line block by design (a replay's summary) and is left as it is. Says where ``_Throttle`` holds lines
    back, and how many it held back before this one. Another library's line is escaped whole and clipped: its message
    may quote what a peer sent (the Foxglove SDK's do), as it was and however long."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.args, tuple) and not getattr(record, "block", False):
            record = logging.makeLogRecord({**record.__dict__, "args": tuple(map(_escaped, record.args))})
        text = super().format(record)
        if record.name.partition(".")[0] not in _OWN and not getattr(record, "block", False):
            text = printable(text)
            if len(text) > _MAX_OTHER_LINE:
                text = f"{text[:_MAX_OTHER_LINE]}... ({len(text) - _MAX_OTHER_LINE} characters more)"
        if held := getattr(record, "held_back", 0):
            text += f" ({held} lines of {record.name} before this one not shown)"
        if getattr(record, "burst_full", False):
            text += f" (further lines of {record.name} for up to {_WINDOW_S:g} s are held back and counted)"
        return text


def _escaped(value: object) -> object:
    """``value``, or its text with escapes where that holds control characters (a number stays one, for ``%d``)."""
    if isinstance(value, numbers.Number):
        return value
    text = str(value)
    shown = printable(text)
    return value if shown == text else shown


def _write(lines: queue.Queue) -> None:
    while True:
        item = lines.get()
        if isinstance(item, threading.Event):
            item.set()
            continue
        try:
            sys.stderr.write(item + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed (a reader that went away): the line is lost, as print's would be
            pass


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None,
                  line: str | None = None) -> None:
    """A Python warning (align's Sinkhorn that did not converge, numpy's overflow in a library) as one log line
    through the set-up's handler: written straight to stderr it was two lines, one of them the package's source, and
    on the live path a write that a full pipe would block (the queue's writer thread waits instead)."""
    logging.getLogger("py.warnings").warning("%s:%d: %s: %s", filename, lineno, category.__name__, message)


def install(level: int, fmt: str, datefmt: str | None = None) -> None:
    """Send log records to stderr through the queue and its writer thread, as ``logging.basicConfig`` would send
    them directly: only where the root logger has no handler yet (a test's log capture keeps its own)."""
    global _queue
    root = logging.getLogger()
    if root.handlers:
        return
    _queue = queue.Queue(maxsize=_QUEUE_LINES)
    handler = _DroppingHandler(_queue)
    handler.setFormatter(_OneLine(fmt, datefmt))
    handler.addFilter(_Throttle())
    root.addHandler(handler)
    root.setLevel(level)
    warnings.showwarning = _warning_line
    threading.Thread(target=_write, args=(_queue,), name="log writer", daemon=True).start()


def install_direct(level: int, fmt: str = logging.BASIC_FORMAT, datefmt: str | None = None) -> None:
    """``logging.basicConfig`` with this module's escapes, for commands off the live path (a consumer, a tool),
    whose lines are written directly: only where the root logger has no handler yet."""
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLine(fmt, datefmt))
    handler.addFilter(_Throttle())
    logging.basicConfig(level=level, handlers=[handler])
    if handler in logging.getLogger().handlers:
        warnings.showwarning = _warning_line


def flush(timeout_s: float = 1.0) -> None:
    """Wait until the lines queued so far are written, at most ``timeout_s`` (stderr may never be read): before a
    line printed directly, which must come after them, and before the process exits. Once a wait has run out, later
    ones return at once while that one's lines are still not written."""
    global _pending
    if _queue is None or (_pending is not None and not _pending.is_set()):
        return
    mark = threading.Event()
    try:
        _queue.put(mark, timeout=timeout_s)
    except queue.Full:  # no mark queued: none to wait for later, so the next flush tries again
        return
    _pending = mark
    mark.wait(timeout_s)
