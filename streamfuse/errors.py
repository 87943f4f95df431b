"""One-line reasons: how an exception reads in a log line, a run's summary or a batch's table (never a traceback)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["one_line", "io_reason", "opencv_quiet"]


def one_line(exc: BaseException, *, typed: bool = False) -> str:
    """``exc``'s message folded onto one line, or its type's name when it has none.

    >>> one_line(ValueError("bad\\n  value"))
    'bad value'
    >>> one_line(RuntimeError("worker died\\nTraceback ..."), typed=True)
    'RuntimeError: worker died'

    Args:
        exc: the exception.
        typed: one from outside the project's own checks (a crash, a Ray error): its type's name goes first, and only
            the first line of its message is kept, since tracebacks and tables follow it.
    """
    text = str(exc).split("\n", 1)[0] if typed else str(exc)
    why = " ".join(text.split())
    if typed:
        return f"{type(exc).__name__}: {why}" if why else type(exc).__name__
    return why or type(exc).__name__


def io_reason(exc: BaseException) -> str:
    """The OS or FFmpeg reason of an I/O error, without PyAV's call details (the caller names the file)."""
    return getattr(exc, "strerror", None) or str(exc)


@contextlib.contextmanager
def opencv_quiet() -> Iterator[None]:
    """OpenCV's own warning lines off for the block: a damaged image or video is the caller's one clear line."""
    import cv2

    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)
