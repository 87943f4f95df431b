"""The benchmarks' receivers: a function in a spawned process, with ready/done events and a result queue, whose every
wait on the other side has an end. The benchmark gives up on a receiver not ready, or without a result, after
:data:`PATIENCE_S`; a receiver whose benchmark is gone (killed: its ``done`` will never come) ends instead of
waiting for ever. Each says so in one line."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from typing import Any

from streamfuse.signals import blocked

__all__ = ["PATIENCE_S", "Receiver", "done_or_gone"]

# generous: a spawned interpreter's start, or a reader draining its backlog, takes seconds on a busy machine
PATIENCE_S = 120.0


def done_or_gone(done: Any, wait_s: float = 0.0) -> bool:
    """In a receiver: whether ``done`` is set, after waiting up to ``wait_s``; one line (SystemExit) where the
    benchmark that would set it is gone."""
    if done.wait(wait_s):
        return True
    parent = mp.parent_process()
    if parent is not None and not parent.is_alive():
        raise SystemExit(f"streamfuse bench: error: receiver {os.getpid()}: the benchmark that started it is gone")
    return False


class Receiver:
    """``target(endpoint, ready, done, results, *args)`` in a spawned process; ``prog`` starts its lines."""

    def __init__(self, target: Any, endpoint: str, *args: Any, prog: str = "streamfuse bench transport") -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.done, self.results = ctx.Event(), ctx.Event(), ctx.Queue()
        self._prog = prog
        self.proc = ctx.Process(target=target, args=(endpoint, self.ready, self.done, self.results, *args),
                                daemon=True)
        # blocked, not ignored: a Ctrl-C meanwhile is this process's to act on once it started, and the receiver keeps
        # it blocked for good (a terminal's Ctrl-C reaches it too)
        with blocked((signal.SIGINT,)):
            self.proc.start()
        self._deadline = time.monotonic() + PATIENCE_S

    def started(self) -> bool:
        """Whether the receiver is ready, after a short wait; one that ended before, or is not ready
        :data:`PATIENCE_S` after its start, is one line (SystemExit)."""
        if self.ready.wait(0.01):
            return True
        if not self.proc.is_alive():
            raise SystemExit(f"{self._prog}: error: its receiver ended before it was ready (exit status "
                             f"{self.proc.exitcode})")
        if time.monotonic() > self._deadline:
            self.proc.kill()  # not left behind, reading or holding what it took
            self.proc.join(10)
            raise SystemExit(f"{self._prog}: error: its receiver was not ready {PATIENCE_S:g} s after its start")
        return False

    def result(self) -> dict[str, float]:
        self.done.set()
        try:  # the reader drains its backlog first, slowly on a busy machine
            out = self.results.get(timeout=PATIENCE_S)
        except queue.Empty:
            raise SystemExit(f"{self._prog}: error: its receiver gave no result {PATIENCE_S:g} s after it was told "
                             f"to stop (exit status {self.proc.exitcode})") from None
        self.proc.join(timeout=10)
        return out
