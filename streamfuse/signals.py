"""Signal handlers for the length of a block: how a command's start-up (see ``streamfuse.cli.STOPPED_BY``), a run, a
replay, a batch and training stop on Ctrl-C and SIGTERM (a live run and training on a terminal's hangup too)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.util
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["handled", "HANGUP", "STOP_SIGNALS", "TERMINATE", "Terminated", "stopped_by", "raise_terminated", "takeable",
           "raise_interrupt", "interrupted", "deferred", "finished_first", "told_if_long", "ignore_stops", "blocked",
           "unclaimed", "stopping", "said_last"]

log = logging.getLogger(__name__)

# SIGHUP: the terminal (an SSH session) went away; sent to the whole foreground process group
HANGUP = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *HANGUP)
TERMINATE = (signal.SIGTERM, *HANGUP)  # a service manager's stop; a terminal's hangup (an SSH session that drops)
_KEPT_IGNORED = (signal.SIGINT, *HANGUP)  # stops that an ignoring parent keeps from this process
_HELD: list[int] = []  # the stop that waits for the main thread's import or finalizer to end (one at a time)
_HELD_LOCK = threading.Lock()  # to take from _HELD: the stop is sent again, or acted on by the block it came in, once
# finalizers run as a collection frees their object (besides ``__del__``): a stop raised inside one is lost
_FINALIZERS = {weakref.finalize.__call__.__code__, multiprocessing.util.Finalize.__call__.__code__}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (or a Ray batch's stop, in its workers), raised where the main thread is as Ctrl-C raises
    KeyboardInterrupt; its argument is the reason, ``interrupted (SIGTERM)``."""


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """A handler of ``TERMINATE`` that stops the run as Ctrl-C does (a replay's, a command's start-up), once the main
    thread is out of any import or finalizer it is in (:func:`_held_off`)."""
    if _held_off(signum, frame):
        return
    for sig in TERMINATE:  # already stopping: a second one must not cut the cleanup
        signal.signal(sig, signal.SIG_IGN)
    raise stopped_by(signum)


def stopped_by(signum: int) -> KeyboardInterrupt:
    """What stop signal ``signum`` raises where the main thread is: a :class:`Terminated` naming it, or Ctrl-C's
    KeyboardInterrupt (for a stop held until it was safe to act on, then acted on as its handler would have)."""
    return Terminated(f"interrupted ({signal.Signals(signum).name})") if signum in TERMINATE else KeyboardInterrupt()


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """Python's own Ctrl-C handler (a KeyboardInterrupt where the main thread is), for any stop signal, once the main
    thread is out of any import or finalizer it is in (:func:`_held_off`)."""
    if not _held_off(signum, frame):
        raise KeyboardInterrupt


def _held_off(signum: int, frame: FrameType | None) -> bool:
    """Whether ``signum`` must wait, and is sent again once the main thread is out of what ``frame`` runs in.

    Raised inside an import (torch's, as the model loads), the exception can unwind through a C++ extension's
    initialisation, which then aborts the process (SIGABRT); raised inside a finalizer (``__del__``, a
    ``weakref.finalize`` or multiprocessing's ``Finalize``: pyzmq's context, a semaphore, as a collection frees
    them), Python reports it as ignored and the stop is lost.
    """
    shelter = _shelter(frame)
    if shelter is None:
        return False
    # without the lock: the thread that sends the held stop again holds it across its pthread_kill, and this may be
    # that signal, met inside another import or finalizer (a handler that found the lock held took it for the stop
    # being sent, and lost it); none but this handler, on the main thread, adds to _HELD
    if _HELD:  # one wait at a time: a second signal meanwhile is the same stop
        return True
    _HELD.append(signum)
    threading.Thread(target=_after_shelter, args=(shelter,), name="streamfuse-stop", daemon=True).start()
    return True


def _shelter(frame: FrameType | None) -> FrameType | None:
    """The outermost frame of ``frame``'s stack that runs an import (a module's own code, called by importlib) or a
    finalizer, if any: the one whose return ends them all. The main thread's frames, read by the main thread (its
    handler) alone."""
    shelter = None
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib") or code.co_name == "__del__" or code in _FINALIZERS:
            shelter = frame
        frame = frame.f_back
    return shelter


def _after_shelter(shelter: FrameType) -> None:
    """The held stop sent again to the main thread once ``shelter`` has returned (polled: neither an import nor a
    finalizer has a hook at its end), unless the block it came in has ended first and acted on it
    (:func:`_act_on_held`); a signal, not a flag, so that it also ends a wait the main thread may be in by then."""
    while _runs(shelter):
        time.sleep(0.01)
    with _HELD_LOCK:  # sent under the lock: a block that ends after this meets it pending, as its handler still stands
        if _HELD:  # taken first: the handler may run, and meet another import, before pthread_kill returns
            signal.pthread_kill(threading.main_thread().ident, _HELD.pop())


def _act_on_held(frame: FrameType | None) -> None:
    """The held stop, if the thread that waits to send it again has not yet, acted on now by its handler where that
    is a function: a block ends (the main thread's ``frame``, out of any import or finalizer). On a loaded machine the
    thread's turn came after the command had ended: the stop was lost, or met the handlers after the block's."""
    if not _HELD or _shelter(frame) is not None:
        return
    with _HELD_LOCK:
        signum = _HELD[0] if _HELD else None
        handler = signal.getsignal(signum) if signum is not None else None
        if not callable(handler):  # ignored or the default in the block: the handler after it takes the stop
            return
        _HELD.clear()
    handler(signum, frame)


def _runs(frame: FrameType) -> bool:
    """Whether ``frame`` (of another thread) still runs, asked of it alone: walking that thread's frames from here
    (``sys._current_frames()``, ``f_back``) reads them as they change, which can crash CPython 3.11. Clearing a frame
    that runs raises; one that has returned loses only its locals (importlib's or a finalizer's: read by no one)."""
    try:
        frame.clear()
    except RuntimeError:
        return True
    return False


@contextlib.contextmanager
def deferred(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[list[int]]:
    """Hold ``signals`` for the block: one that comes meanwhile is noted in the list yielded instead of acted on, for
    the caller to act on once the block's work is whole (a replay's output taking its name)."""
    got: list[int] = []
    with handled(lambda signum, _: got.append(signum), signals):
        yield got


@contextlib.contextmanager
def finished_first(signals: tuple[int, ...] = STOP_SIGNALS, until: str = "", cut: str = "at once") -> Iterator[None]:
    """A block that a first stop lets finish, acted on as it ends (or raises) by the handler it would have met, and
    that a second stop cuts short, both acted on as their handlers do: a video's last frames, flushed by its encoder,
    are the run's too. The first stop logs that the run stops once ``until`` (the block's end, in words), a wait that
    a stalled disk may make long, and that a second stops ``cut`` (when, where that too waits for a step in hand)."""
    previous = {sig: signal.getsignal(sig) for sig in signals}
    got: list[int] = []
    with contextlib.ExitStack() as taken:
        def handler(signum: int, frame: FrameType | None) -> None:
            got.append(signum)
            if len(got) == 1 and until:
                _say_stopping(until, 1, cut)
            elif len(got) == 2:
                # the block's handlers go first: what those acting set stays (raise_terminated's ignoring of the
                # next stops, which would cut the cleanup after the block short)
                taken.close()
                _act_on(got, previous, frame)

        taken.enter_context(handled(handler, signals))
        try:
            yield
        finally:  # a block that raised was stopped all the same: the caller learns it, the block's error its context
            taken.close()
            if len(got) == 1:
                _act_on(got, previous, None)


@contextlib.contextmanager
def told_if_long(until: str, after_s: float = 2.0, stops: int = 1, cut: str = "at once") -> Iterator[None]:
    """A stop's wait (the block) that, once it outlasts ``after_s`` (a stalled disk), logs that the run stops once
    ``until`` (the block's end, in words): a user is never left before a silent process, not knowing that the next
    stop ends the wait. A second SIGTERM ends it as Ctrl-C does (:func:`raise_terminated`), though a first one left
    it ignored for the cleanup after the block. ``stops``: how many came before the wait (two: a second one cut an
    earlier wait short). ``cut``: when the next stop stops the run, in words."""
    timer = threading.Timer(after_s, _say_stopping, (until, stops, cut))
    timer.daemon = True
    timer.start()
    try:
        with handled(raise_terminated, TERMINATE):
            yield
    finally:
        timer.cancel()


def _say_stopping(until: str, stops: int, cut: str) -> None:
    log.warning("stopping once %s; a %s Ctrl-C or SIGTERM stops %s", until, ("second", "third")[stops > 1], cut)


def _act_on(stops: list[int], previous: dict[int, Any], frame: FrameType | None) -> None:
    """Each of ``stops`` acted on in turn as ``previous`` (the handlers a block replaced) would have; what the last
    raises is raised, the others' its context."""
    first, *rest = dict.fromkeys(stops)
    try:
        _pass_on(previous[first], first, frame)
    finally:
        if rest:
            _act_on(rest, previous, frame)


def _pass_on(handler: Any, signum: int, frame: FrameType | None) -> None:
    """``signum`` acted on as ``handler`` (one a block replaced) would have: called, ignored, or the default's end."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


@contextlib.contextmanager
def blocked(signals: tuple[int, ...]) -> Iterator[None]:
    """``signals`` held pending in the main thread for the block and acted on as it ends. The processes started
    inside it keep them blocked for good (a signal mask outlives fork and exec): their parent's to act on."""
    if not signals or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stops() -> None:
    """Ignore the stop signals for the rest of the process: its work is over and its status said, and a Ctrl-C or
    SIGTERM sent again while it exits (flushing its log, Python's teardown of torch's or Ray's threads) would only
    end it by that signal, or print a traceback, losing the status."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def interrupted(exc: KeyboardInterrupt) -> str:
    """Why a KeyboardInterrupt stopped the run: the signal of a :class:`Terminated`, else Ctrl-C."""
    return str(exc) if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"


def takeable(signals: tuple[int, ...]) -> tuple[int, ...]:
    """``signals`` less a hangup or Ctrl-C ignored from the start (nohup; a script's `cmd &`): the user's choice, that
    the process outlive its terminal, or the Ctrl-C that stops the script's foreground command."""
    return tuple(sig for sig in signals if sig not in _KEPT_IGNORED or signal.getsignal(sig) != signal.SIG_IGN)


def stopping(stop: threading.Event, started: threading.Event) -> Callable[[int, FrameType | None], None]:
    """A stop handler that sets ``stop`` and, until ``started`` is set, also raises Ctrl-C's KeyboardInterrupt where
    the main thread is (:func:`raise_interrupt`): a start-up's long steps (a model's load) never look at ``stop``."""
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if not started.is_set():
            raise_interrupt(signum, frame)
    return handler


def unclaimed(signals: tuple[int, ...]) -> tuple[int, ...]:
    """``signals`` (those :func:`takeable`) whose handler is still Python's default, or this package's stand-in for it
    (:func:`raise_interrupt`, :func:`raise_terminated`): a program that installed its own keeps it, as under
    ``asyncio.run``, and stops what it runs its own way."""
    defaults = (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler, raise_interrupt, raise_terminated)
    return tuple(sig for sig in takeable(signals) if signal.getsignal(sig) in defaults)


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
    previous = {sig: signal.signal(sig, handler) for sig in takeable(signals)}
    try:
        yield
    finally:
        try:
            _act_on_held(sys._getframe())  # a stop held off in the block: its handlers' still
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def said_last(line: str, status: int) -> int:
    """Print a command's last line (its error, its stop) on standard error and return ``status``, the one it ends
    with. A stop that comes from here on is too late to end the command: where its handler is this package's (the
    command line's, put back as the command returns), it is ignored, so that it cuts no line in two (its handler
    ran between the text and its newline, printing its own line there) nor takes the status for its own."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) in (raise_interrupt, raise_terminated):
                signal.signal(sig, signal.SIG_IGN)
    print(line, file=sys.stderr)
    return status
