"""Whose a consumer's sockets are while it receives: the thread in ``recv()`` holds them until it leaves, and a
``close()`` from another thread (a robot stack's shutdown handler) ends that wait, then closes them (ZeroMQ sockets
are not shared between threads; a shared-memory frame is read in ``recv()`` from the pool that ``close()`` unmaps)."""

from __future__ import annotations

import threading

__all__ = ["RecvTurn"]


class RecvTurn:
    """The receiving thread's turn on the sockets of the consumer of ``endpoint``. ``cond`` is the consumer's own
    condition, on which a latest-mode ``recv()`` waits for frames: a close wakes it at once."""

    def __init__(self, endpoint: str, cond: threading.Condition) -> None:
        self.endpoint, self.cond, self.closing = endpoint, cond, threading.Event()
        self._receiver: int | None = None  # the thread in recv() now

    def enter(self) -> None:
        """A ``recv()`` starts: either a close sees it and waits for it, or this sees the close (RuntimeError)."""
        with self.cond:
            self.check()
            self._receiver = threading.get_ident()

    def leave(self) -> None:
        """The ``recv()`` is over: the sockets are no longer in use."""
        with self.cond:
            self._receiver = None
            self.cond.notify_all()

    def check(self) -> None:
        """RuntimeError once closed (by another thread: a waiting ``recv()`` looks within each poll's wait)."""
        if self.closing.is_set():
            raise RuntimeError(f"subscriber {self.endpoint} is closed")

    def close(self) -> bool:
        """Close, waking a ``recv()`` waiting in another thread, and wait until it has left; False when closed before.
        A ``recv()`` of this very thread (a signal handler's close) is not waited for: it would never leave."""
        with self.cond:
            if self.closing.is_set():
                return False
            self.closing.set()
            self.cond.notify_all()
            while self._receiver not in (None, threading.get_ident()):
                self.cond.wait()
        return True
