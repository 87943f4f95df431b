"""A worker thread whose end its owner waits for on an event the thread sets as it ends, not on ``Thread.join``.

Once a Ctrl-C cut a ``Thread.join()`` short, Python before 3.13 takes the thread for ended (``is_alive()`` False, a
second ``join()`` returns at once) while it still runs: an owner that then closed the file or codec the thread works
on would close it under the thread. An owner that must stop waiting (a second stop) leaves the close to the thread,
which runs it as it ends (:meth:`EndedThread.when_ended`).
"""

from __future__ import annotations

import threading
from typing import Callable

__all__ = ["EndedThread"]


class EndedThread:
    """Runs ``target()`` on a daemon thread named ``name``, started at once."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._ended = threading.Event()
        self._lock = threading.Lock()  # the end and the calls left for it, seen by both threads alike
        self._then: list[Callable[[], None]] = []
        # ``target`` held by the thread alone, which lets it go as it ends: held here, its owner (a writer thread's
        # own, holding this) would be freed only by the cyclic collector, whose finalizers (FFmpeg's) run in
        # whichever thread it happens to run
        threading.Thread(target=self._run, args=(target,), name=name, daemon=True).start()

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        finally:
            while True:  # ended only once the calls left for its end are done, those left meanwhile too
                with self._lock:
                    calls, self._then = self._then, []
                    if not calls:
                        self._ended.set()
                        break
                for call in calls:
                    call()

    def running(self) -> bool:
        """Whether ``target``, or a call left for its end, still runs."""
        return not self._ended.is_set()

    def wait(self) -> None:
        """Wait for the end; a Ctrl-C cuts this short and leaves the thread running (wait again, or
        :meth:`when_ended`)."""
        self._ended.wait()

    def when_ended(self, call: Callable[[], None]) -> None:
        """``call()`` now if the thread has ended, else on the thread as it ends."""
        with self._lock:
            if not self._ended.is_set():
                self._then.append(call)
                return
        call()
