"""A latest-mode consumer's reader thread and its handoff: the thread takes every frame off the socket and keeps only
the newest, which ``recv()`` takes, so no backlog builds up while the consumer is busy (replaced ones are counted)."""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

__all__ = ["NewestFrame"]

Item = tuple[dict[str, Any], Any]  # (header, payload not yet decoded)


class NewestFrame:
    """The newest frame not yet taken, handed from the reader thread to the consumer under ``cond`` (the consumer's
    own, which a close notifies: ``closing`` then wakes a waiting :meth:`take`)."""

    def __init__(self, endpoint: str, cond: threading.Condition, closing: threading.Event) -> None:
        self.discarded = 0  # frames replaced before they were taken, or passed over in the ring
        self._endpoint, self._cond, self._closing = endpoint, cond, closing
        self._item: Item | None = None
        self._failure = ""  # why the reader thread stopped
        self._reader: threading.Thread | None = None

    def start(self, next_item: Callable[[float], Item | None], poll_s: float) -> None:
        """Run the reader thread on ``next_item`` (a bound method of the socket's owner, which the thread holds
        weakly, so that an owner dropped without close() is collected), looking for a close every ``poll_s``."""
        # start(): the memory barrier ZeroMQ needs for the socket to go to the thread, the only one using it
        self._reader = threading.Thread(target=self._read_forever, args=(weakref.WeakMethod(next_item), poll_s),
                                        name=f"subscriber {self._endpoint}", daemon=True)
        self._reader.start()

    def join(self) -> None:
        """Wait for the reader thread, if any, to end (after a close): the sockets' owner until then."""
        if self._reader is not None:
            self._reader.join()

    def discard(self, count: int) -> None:
        """Count ``count`` frames passed over unread."""
        with self._cond:
            self.discarded += count

    def take(self, timeout_s: float, check: Callable[[], None]) -> Item | None:
        """The newest frame, waiting up to ``timeout_s``; None when none came. ``check()`` raises once closed.

        Raises:
            RuntimeError: the reader thread stopped on an error (one line: which).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._item is not None or self._failure or self._closing.is_set(),
                                       timeout_s):
                return None
            check()
            if self._item is None:
                raise RuntimeError(f"subscriber {self._endpoint}: the reader thread stopped: {self._failure}")
            item, self._item = self._item, None
        return item

    def _read_forever(self, next_item: weakref.WeakMethod, poll_s: float) -> None:
        """Keep the newest frame until closing, the owner is dropped, or an unexpected failure, which goes to the
        consumer; the owner is held only while reading."""
        while not self._closing.is_set() and (read := next_item()) is not None:
            try:
                item = read(poll_s)
            except Exception as exc:  # noqa: BLE001 - whatever it is, the consumer must hear of it, not wait forever
                with self._cond:
                    self._failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    self._cond.notify()
                return
            del read
            if item is not None:
                with self._cond:
                    self.discarded += self._item is not None
                    self._item = item
                    self._cond.notify()
