"""An iterator that can look at its next items before they are taken: a video file's decoded frames, so that a run
of frames repeating one pts is known to stand still (:data:`~streamfuse.capture.timestamps.STILL_REPEATS`) before
its first repeat leaves the source, and is timed so from it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["LookAhead"]

T = TypeVar("T")


class LookAhead(Generic[T]):
    """The items of ``items``, any number of which can be looked at (:meth:`count`) before they are taken; an error
    met while looking is raised where it came, after the items before it."""

    def __init__(self, items: Iterator[T]) -> None:
        self._items = items
        self._ahead: deque[tuple[str, Any]] = deque()  # ("item", item), ("error", its exception) or ("end", None)

    def __iter__(self) -> LookAhead[T]:
        return self

    def __next__(self) -> T:
        if not self._ahead:
            return next(self._items)
        kind, value = self._ahead.popleft()
        if kind == "error":
            raise value
        if kind == "end":
            raise StopIteration
        return value

    def count(self, same: Callable[[T], bool], limit: int) -> int:
        """How many of the next items in a row, up to ``limit``, ``same`` is true of; they stay to be taken."""
        n = 0
        while n < limit:
            if n == len(self._ahead):
                self._ahead.append(self._pull())
            kind, value = self._ahead[n]
            if kind != "item" or not same(value):
                break
            n += 1
        return n

    def _pull(self) -> tuple[str, Any]:
        try:
            return "item", next(self._items)
        except StopIteration:
            return "end", None
        except Exception as exc:  # whatever it is, the caller meets it only once the items before it are taken
            return "error", exc
