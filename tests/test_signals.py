"""streamfuse.signals: a SIGTERM that comes during an import, or a stop during a finalizer, stops the run once it is
over; a stop ignores the next ones, a nohup'd hangup and a background job's Ctrl-C stay ignored, a deferral holds
only its signals, and why a run stopped."""

from __future__ import annotations

import os
import signal
import sys
import multiprocessing.util
import threading
import weakref
from collections.abc import Callable

import pytest

from streamfuse import signals
from streamfuse.signals import (HANGUP, STOP_SIGNALS, TERMINATE, Terminated, blocked, deferred, finished_first, handled,
                               ignore_stops, interrupted, raise_interrupt, raise_terminated, stopped_by)

PATIENCE_S = 30.0  # how long the test waits for the stop that must come (a loaded machine can be slow)


@pytest.fixture
def frames_read_here_alone(monkeypatch):
    """No thread reads another's frames: the stop held off walked the main thread's from its own thread as they
    changed (``sys._current_frames()``, ``f_back``), which can crash CPython 3.11."""
    def current_frames() -> dict:
        raise AssertionError(f"{threading.current_thread().name} read every thread's frames")

    monkeypatch.setattr(sys, "_current_frames", current_frames)


def test_a_sigterm_during_an_import_stops_the_run_once_the_import_is_over(tmp_path, monkeypatch,
                                                                          frames_read_here_alone):
    """Raised inside an import, the stop could unwind through a C++ extension's initialisation (torch's, as a run
    loads its model), which aborts the process; the import finishes and the stop comes after it, still raised."""
    name = "streamfuse_test_signalled_import"
    (tmp_path / f"{name}.py").write_text("import signal\nsignal.raise_signal(signal.SIGTERM)\nfinished = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)  # gone again after the test
    with handled(raise_terminated, (signal.SIGTERM,)), pytest.raises(Terminated, match=r"^interrupted \(SIGTERM\)$"):
        __import__(name)
        threading.Event().wait(PATIENCE_S)  # the stop ends this wait
    assert sys.modules[name].finished


def test_a_stop_held_in_an_import_is_acted_on_as_its_block_ends_when_the_thread_that_sends_it_again_comes_late(
        tmp_path, monkeypatch, frames_read_here_alone):
    # seen: bench fuse SIGTERMed as its numba kernels loaded ended 0 with all its figures, or by the signal: the
    # thread that sends a held stop again polls for the import's end, and on a loaded machine its turn came only
    # after the command had ended and its handlers were gone
    name = "streamfuse_test_signalled_import_late"
    (tmp_path / f"{name}.py").write_text("import signal\nsignal.raise_signal(signal.SIGTERM)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    turn = threading.Event()  # the thread's first look at the import comes once the block has ended
    runs = signals._runs
    monkeypatch.setattr(signals, "_runs", lambda frame: turn.wait(PATIENCE_S) and runs(frame))
    after: list[int] = []  # what the handler standing after the block meets
    with handled(lambda signum, _: after.append(signum), (signal.SIGTERM,)):
        try:
            with pytest.raises(Terminated, match=r"^interrupted \(SIGTERM\)$"):
                with handled(raise_terminated, (signal.SIGTERM,)):
                    __import__(name)
        finally:
            turn.set()
            for thread in threading.enumerate():
                if thread.name == "streamfuse-stop":
                    thread.join(PATIENCE_S)
    assert after == []  # acted on once, by the block it came in


class _Finalized:
    """Calls ``finalize`` from its ``__del__``."""

    def __init__(self, finalize: Callable[[], None]) -> None:
        self.finalize = finalize

    def __del__(self) -> None:
        self.finalize()


class _Target:
    """Something a ``weakref.finalize`` can watch."""


@pytest.mark.parametrize("handler, stop, raised", [(raise_terminated, signal.SIGTERM, Terminated),
                                                   (raise_interrupt, signal.SIGINT, KeyboardInterrupt)])
@pytest.mark.parametrize("finalizer", ["__del__", "weakref.finalize", "multiprocessing.util.Finalize"])
def test_a_stop_during_a_finalizer_stops_the_run_once_the_finalizer_is_over(handler, stop, raised, finalizer,
                                                                            frames_read_here_alone):
    """Raised inside a finalizer (pyzmq's context's, as a garbage collection frees it), the stop was reported as
    ignored and lost: a benchmark stopped by Ctrl-C ran on. The finalizer finishes and the stop comes after it."""
    done = []

    def finalize() -> None:
        signal.raise_signal(stop)
        done.append(True)

    with handled(handler, (stop,)), pytest.raises(raised):
        if finalizer == "__del__":
            _Finalized(finalize)  # unreferenced at once: finalized here
        elif finalizer == "weakref.finalize":
            weakref.finalize(_Target(), finalize)
        else:
            multiprocessing.util.Finalize(_Target(), finalize)
        threading.Event().wait(PATIENCE_S)  # the stop ends this wait
    assert done


def test_a_stop_sent_again_that_meets_another_finalizer_as_it_comes_is_held_again(frames_read_here_alone):
    # the thread that sends a held stop again holds the lock across its pthread_kill: the main thread, met by that
    # signal inside another finalizer, took the lock held for the same stop being sent, and the stop was lost
    done = []

    def finalize() -> None:
        with signals._HELD_LOCK:  # as the thread that sends the held stop again holds it, the stop taken (none held)
            signal.raise_signal(signal.SIGTERM)
        done.append(True)

    with handled(raise_terminated, (signal.SIGTERM,)), pytest.raises(Terminated):
        _Finalized(finalize)  # unreferenced at once: finalized here
        threading.Event().wait(PATIENCE_S)  # the stop ends this wait
    assert done


@pytest.mark.parametrize("stop", [signal.SIGTERM, *HANGUP])
def test_a_stop_ignores_the_stops_that_come_after_it_until_the_block_ends(stop):
    # a second SIGTERM (a service manager sends it again) raised inside the first one's cleanup and cut it short; a
    # terminal's hangup stops the run as SIGTERM does, and is named
    stops = (signal.SIGTERM, *HANGUP)
    nohup = {sig: signal.signal(sig, signal.SIG_DFL) for sig in HANGUP}  # a suite run under nohup: kept ignored there
    try:
        previous = {sig: signal.getsignal(sig) for sig in stops}
        with handled(raise_terminated, stops):
            with pytest.raises(Terminated, match=rf"^interrupted \({stop.name}\)$"):
                signal.raise_signal(stop)
                threading.Event().wait(PATIENCE_S)  # the stop ends this wait
            assert {sig: signal.getsignal(sig) for sig in stops} == {sig: signal.SIG_IGN for sig in stops}
        assert {sig: signal.getsignal(sig) for sig in stops} == previous
    finally:
        for sig, handler in nohup.items():
            signal.signal(sig, handler)


@pytest.mark.skipif(not HANGUP, reason="no SIGHUP on this platform")
def test_a_hangup_ignored_from_the_start_stays_ignored():
    # nohup: the user asked for the process to outlive its terminal; a run's handler made the hangup stop it
    with handled(signal.SIG_IGN, HANGUP):
        with handled(raise_terminated):
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is raise_terminated
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def test_a_ctrl_c_ignored_from_the_start_stays_ignored_and_a_sigterm_ignored_before_is_the_block_s():
    # a script's `cmd &`: the shell ignores Ctrl-C for it, and a live run's handler made the script's Ctrl-C stop it;
    # a SIGTERM ignored before the block (a stop's cleanup) is the block's to handle
    with handled(signal.SIG_IGN, (signal.SIGINT, signal.SIGTERM)):
        with handled(raise_terminated):
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is raise_terminated
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_finished_process_ignores_ctrl_c_as_well_as_sigterm_and_a_hangup():
    # one more Ctrl-C while it exits would end it by the signal, or print a traceback, instead of its status
    with handled(raise_terminated, STOP_SIGNALS):  # the handlers before the test come back after it
        ignore_stops()
        assert {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, *HANGUP)} == {
            sig: signal.SIG_IGN for sig in (signal.SIGINT, signal.SIGTERM, *HANGUP)}


def test_a_block_outside_the_main_thread_runs_under_the_main_threads_handlers():
    # Python sets handlers in the main thread only: signal.signal raised ValueError in a worker (a Ray actor's thread)
    before, ran = signal.getsignal(signal.SIGTERM), []

    def work() -> None:
        with handled(signal.SIG_IGN), deferred() as got, blocked((signal.SIGTERM,)):
            ran.append(got)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(PATIENCE_S)
    assert ran == [[]] and signal.getsignal(signal.SIGTERM) is before


def test_a_deferral_holds_only_the_signals_it_is_given():
    ctrl_c = signal.getsignal(signal.SIGINT)
    with deferred((signal.SIGTERM,)) as got:
        assert signal.getsignal(signal.SIGINT) is ctrl_c  # Ctrl-C still stops
        signal.raise_signal(signal.SIGTERM)  # its handler has run when it returns (it checks for signals)
        assert got == [signal.SIGTERM]
    assert got == [signal.SIGTERM]
    with deferred() as got:  # each noted as the signal it was: the status the caller exits with says which
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        assert got == [signal.SIGINT, signal.SIGTERM]


@pytest.mark.parametrize(("exc", "said"), [(Terminated("interrupted (SIGTERM)"), "interrupted (SIGTERM)"),
                                           (Terminated("interrupted (SIGHUP)"), "interrupted (SIGHUP)"),
                                           (KeyboardInterrupt(), "interrupted (Ctrl-C)")])
def test_why_a_run_stopped_names_its_signal(exc, said):
    assert interrupted(exc) == said


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks on this platform")
def test_a_signal_blocked_for_a_block_is_acted_on_as_it_ends():
    got = []
    with handled(lambda signum, _: got.append(signum), (signal.SIGTERM,)):
        with blocked((signal.SIGTERM,)):
            signal.raise_signal(signal.SIGTERM)
            assert got == [] and signal.SIGTERM in signal.sigpending()
        assert got == [signal.SIGTERM]


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks on this platform")
def test_a_block_inside_another_leaves_the_signal_blocked_for_the_outer_one():
    # the inner block's end put back the mask from before it, not one without its signals: a process started with them
    # blocked (a signal mask outlives fork and exec) keeps them blocked for its parent
    got = []
    with handled(lambda signum, _: got.append(signum), (signal.SIGTERM,)):
        with blocked((signal.SIGTERM,)):
            with blocked((signal.SIGTERM,)):
                pass
            signal.raise_signal(signal.SIGTERM)
            assert got == [] and signal.SIGTERM in signal.sigpending()
        assert got == [signal.SIGTERM]


def _stop(signum: int) -> None:
    """``signum`` sent to this process; its handler has run when this returns (a call checks for signals)."""
    os.kill(os.getpid(), signum)


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM),
                                           (signal.SIGTERM, signal.SIGINT)], ids=["SIGTERM twice", "Ctrl-C, SIGTERM",
                                                                                  "SIGTERM, Ctrl-C"])
def test_a_sigterm_after_the_second_stop_that_cut_a_finished_first_block_short_leaves_the_cleanup_whole(first, second):
    # the block gave back the handlers it replaced as the second stop unwound it, raise_terminated's included where
    # that had just ignored the next stops: a third SIGTERM cut the cleanup short (a replay's file left unclosed, its
    # sidecar unwritten); and a first SIGTERM cut short by a Ctrl-C was never acted on
    with handled(raise_interrupt, (signal.SIGINT,)), handled(raise_terminated, TERMINATE):
        with pytest.raises(KeyboardInterrupt) as stopped:
            with finished_first():
                _stop(first)  # the block goes on
                _stop(second)
                threading.Event().wait(PATIENCE_S)  # the second stop ends this wait
        assert interrupted(stopped.value) == interrupted(stopped_by(second))
        try:
            _stop(signal.SIGTERM)  # in the cleanup
        except KeyboardInterrupt as exc:
            pytest.fail(f"the cleanup was cut short: {interrupted(exc)}")
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_a_library_callers_own_handler_takes_a_finished_first_blocks_stops_and_is_given_back():
    # a program's handler that stops its own way is called for each stop, never left replaced nor ignored
    got = []

    def own(signum: int, _: object) -> None:
        got.append(signum)

    with handled(own, (signal.SIGTERM,)):
        with finished_first((signal.SIGTERM,)):
            _stop(signal.SIGTERM)
            assert got == []  # the block finishes first
        assert got == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is own
        with finished_first((signal.SIGTERM,)):
            _stop(signal.SIGTERM)
            _stop(signal.SIGTERM)
            assert got == [signal.SIGTERM] * 2 and signal.getsignal(signal.SIGTERM) is own
        assert got == [signal.SIGTERM] * 2 and signal.getsignal(signal.SIGTERM) is own


@pytest.mark.parametrize("handler, stop, raised", [(raise_terminated, signal.SIGTERM, Terminated),
                                                   (raise_interrupt, signal.SIGINT, KeyboardInterrupt)])
def test_a_finished_first_block_that_raises_after_a_stop_still_says_the_stop(handler, stop, raised):
    # the block's error (a full disk as the encoder flushed) went up alone: the run said it failed, exit status 1, and
    # never that it was stopped
    with handled(handler, (stop,)), pytest.raises(raised) as stopped:
        with finished_first((stop,)):
            _stop(stop)  # the block goes on
            raise OSError("No space left on device")
    assert isinstance(stopped.value.__context__, OSError)
