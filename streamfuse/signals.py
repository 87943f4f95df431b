"""Signal handlers for the length of a block: how a run, a replay, a batch and training stop on Ctrl-C and SIGTERM
(a live run and training on a terminal's hangup too)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["handled", "HANGUP", "STOP_SIGNALS", "TERMINATE", "Terminated", "raise_terminated", "interrupted"]

# SIGHUP: the terminal (an SSH session) went away; sent to the whole foreground process group
HANGUP = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *HANGUP)
TERMINATE = (signal.SIGTERM, *HANGUP)  # a service manager's stop; a terminal's hangup (an SSH session that drops)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread is as Ctrl-C raises KeyboardInterrupt; its argument is the
    reason, ``interrupted (SIGTERM)``."""


def raise_terminated(signum: int, _: object) -> None:
    """A handler of ``TERMINATE`` that stops the run as Ctrl-C does (a replay's)."""
    for sig in TERMINATE:  # already stopping: a second one must not cut the cleanup
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(f"interrupted ({signal.Signals(signum).name})")


def interrupted(exc: KeyboardInterrupt) -> str:
    """Why a KeyboardInterrupt stopped the run: the signal of a :class:`Terminated`, else Ctrl-C."""
    return str(exc) if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"


@contextlib.contextmanager
def handled(handler: Callable[[int, Any], Any] | int, signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """``handler`` for ``signals`` (default Ctrl-C, SIGTERM and SIGHUP) inside the block, the previous handlers after
    it.

    In the main thread only, where alone Python runs handlers; elsewhere the block runs under the main thread's.

    >>> with handled(signal.SIG_IGN):
    ...     signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    True
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # a hangup ignored from the start (nohup) is the user's choice: the process outlives its terminal
    signals = tuple(sig for sig in signals if sig not in HANGUP or signal.getsignal(sig) != signal.SIG_IGN)
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
