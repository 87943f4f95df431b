"""One-line reasons: how an exception reads in a log line, a run's summary or a batch's table (never a traceback)."""

from __future__ import annotations

__all__ = ["one_line", "io_reason"]


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
