"""One-line reasons: how an exception reads in a log line, a run's summary or a batch's table (never a traceback)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
from collections.abc import Iterator

try:  # imported now: with no file left to open, its import fails where its limit is to be named
    import resource
except ImportError:  # not Unix
    resource = None

__all__ = ["one_line", "limit_reached", "io_reason", "not_found", "opencv_quiet", "printable", "redact",
           "unreachable"]

# a URL's password (``scheme://user:password@``, to the token's last ``@``: a password written with a raw ``@``
# too) and secret query values (``?password=``, ``&token=``)
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:'\"]*):[^\s'\"]*@")
_SECRET_QUERY = re.compile(r"([?&](?:password|passwd|pass|pwd|token|key|secret|auth)=)(?:[^&#:\s'\"]|:(?!\s|$))*",
                           re.IGNORECASE)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TORCH_NO_MEMORY = re.compile(r"DefaultCPUAllocator: (can't allocate memory|not enough memory)")


def printable(message: object) -> str:
    r"""``message`` with its control characters written as escapes: a path holding a newline (or a terminal's escape
    sequence) keeps an error on its one line, and cannot draw on the user's terminal.

    >>> printable("input not found: a\nb.mp4")
    'input not found: a\\nb.mp4'
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(message))


def redact(text: str) -> str:
    """``text`` with the secrets of the URLs in it masked: a camera's credentials stay out of logs, errors and the
    configs written beside outputs (FFmpeg still gets them).

    >>> redact("cannot open rtsp://admin:s3cret@10.0.0.7/live?ch=1&token=a:b: Connection refused")
    'cannot open rtsp://admin:***@10.0.0.7/live?ch=1&token=***: Connection refused'
    >>> redact("rtsp://admin:p@ss:w/rd@10.0.0.7/live")
    'rtsp://admin:***@10.0.0.7/live'
    """
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))


def one_line(exc: BaseException, *, typed: bool = False) -> str:
    """``exc``'s message folded onto one line (URL secrets masked: :func:`redact`), or its type's name when it has none.

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
    why = " ".join(redact(text).split()) + limit_reached(exc)
    if typed:
        return f"{type(exc).__name__}: {why}" if why else type(exc).__name__
    return why or type(exc).__name__


def limit_reached(exc: BaseException) -> str:
    """The limit that ``exc`` ran into, said after its reason (" (...)"), or "" for another error: "Too many open
    files" named neither the limit nor what to change, and the file it failed on was anything the run opened next (a
    pipe, a module, a shared-memory segment: dozens of subscribers, each a socket, had taken the rest); nor did an
    allocation refused under an address-space or data limit (``ulimit -v``, ``-d``; systemd's ``LimitAS=``)."""
    if _out_of_memory(exc):
        return _memory_limit()
    if not isinstance(exc, OSError) or exc.errno not in (errno.EMFILE, errno.ENFILE):
        return ""
    if exc.errno == errno.ENFILE:
        return " (the system's open-file table is full: fs.file-max)"
    if resource is None:  # not Unix: no ulimit to name
        return " (the process's open-file limit is reached)"
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return f" (the process's open-file limit, ulimit -n, is {soft}: raise it)"


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation refused: Python's or NumPy's, the OS's, or torch's CPU allocator's (a plain
    RuntimeError: a message that quotes it, as a stopped replay's does, has been told its limit already)."""
    if isinstance(exc, MemoryError) or isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    return type(exc) is RuntimeError and _TORCH_NO_MEMORY.search(str(exc)) is not None


def _memory_limit() -> str:
    """The lower of the address-space and data limits where one is set, said as :func:`limit_reached` says it."""
    if resource is None:
        return ""
    limits = [(resource.getrlimit(which)[0], name) for which, name in (
        (resource.RLIMIT_AS, "address-space limit, ulimit -v"), (resource.RLIMIT_DATA, "data limit, ulimit -d"))]
    limits = [(soft, name) for soft, name in limits if soft != resource.RLIM_INFINITY]
    if not limits:
        return ""
    soft, name = min(limits)
    return f" (out of memory: the process's {name}, is {soft / 2 ** 30:.1f} GiB: raise it)"


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says a network peer is not there (yet): refused, reset, timed out, no route or network; a camera
    still booting says so too, where a wrong path or password does not."""
    codes = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
             errno.EHOSTDOWN, errno.ENETDOWN}
    return isinstance(exc, OSError) and exc.errno in codes


def io_reason(exc: BaseException) -> str:
    """The OS or FFmpeg reason of an I/O error, without PyAV's call details and its repeat of the file name or URL
    (the caller names it); other errors as :func:`one_line` gives them."""
    return getattr(exc, "strerror", None) or one_line(exc)


def not_found(path: str | os.PathLike) -> str:
    """'not found' for a path that ``exists()`` is False for, with the OS's reason where it is not a missing name (a
    symlink loop: 'Too many levels of symbolic links'; a folder on the way that may not be entered)."""
    try:
        os.stat(path)
    except OSError as exc:
        return "not found" if exc.errno == errno.ENOENT else f"not found ({io_reason(exc)})"
    return "not found"


_QUIET_LOCK = threading.Lock()
_quiet: list[int] = []  # one entry per open opencv_quiet block, each the level before the first


@contextlib.contextmanager
def opencv_quiet() -> Iterator[None]:
    """OpenCV's own warning lines off for the block: a damaged image or video is the caller's one clear line. The
    level is the process's: blocks that overlap on several threads (a replay reading both folders at once) put it
    back once the last one ends, not to what another block had set (silent for good)."""
    import cv2

    with _QUIET_LOCK:
        if not _quiet:
            _quiet.append(cv2.utils.logging.getLogLevel())
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        else:
            _quiet.append(_quiet[0])
    try:
        yield
    finally:
        with _QUIET_LOCK:
            previous = _quiet.pop()
            if not _quiet:
                cv2.utils.logging.setLogLevel(previous)
