"""Why a video file or network stream did not open, in one line: a camera not there (yet) is waited for, where a
wrong setting (a path, a password, a URL serving something else) ends the source."""

from __future__ import annotations

import errno

from streamfuse.capture.sources import SourceError
from streamfuse.errors import hung_up, io_reason, unreachable, unresolved_host

__all__ = ["open_failure"]


def open_failure(section: str, path: str, exc: BaseException, *, live: bool, tcp_chosen: bool, waited_s: float,
                 timeout_s: float) -> SourceError:
    """The one line of ``path`` (``section``'s input) whose container did not open after ``waited_s`` (its open
    timeout ``timeout_s``); a live camera not there (yet) (not answering, no route, its name not resolving, busy,
    hanging up at once) is ``unreachable``: waited for, not the run's end. ``tcp_chosen``: RTSP over TCP was asked
    for this camera without its config saying so."""
    import av

    why = io_reason(exc)
    # FFmpeg's RTSP demuxer turns the open timeout's exit into "invalid data": a camera that took the
    # connection and never answered (still booting, hung) is a timeout, waited for as one
    waited = live and (isinstance(exc, av.ExitError) or (
        isinstance(exc, av.InvalidDataError) and waited_s >= timeout_s))
    # FFmpeg's words for a server that closed the connection (reset: with FFmpeg's request unread)
    closed = isinstance(exc, (av.InvalidDataError, EOFError)) or getattr(exc, "errno", None) == errno.ECONNRESET
    if waited:
        why = f"no readable video within {timeout_s:g} s (open timeout: nothing sent, or no video)"
    elif live and closed and hung_up(path):
        why, waited = "it took the connection and closed it at once (restarting, or its sessions all taken?)", True
    elif isinstance(exc, (av.InvalidDataError, UnicodeDecodeError)):
        why = f"not a readable video ({why})"
    elif tcp_chosen and getattr(exc, "errno", None) == errno.EPROTONOSUPPORT:  # its SETUP answered 461
        why += " (the camera refuses RTSP over TCP: give it ffmpeg: [rtsp_transport=udp])"
    elif live and getattr(exc, "errno", None) == errno.EIO and (host := unresolved_host(path)):
        why, waited = f"its host name {host} does not resolve (yet)", True  # FFmpeg's words: "I/O error"
    busy = isinstance(exc, (av.HTTPServerError, av.HTTPTooManyRequestsError))  # 5xx, 429: a previous run's
    return SourceError(f"{section}: cannot open {path}: {why}",  # sessions still held, a server booting
                       unreachable=live and (waited or busy or unreachable(exc)))
