"""Why a video file or network stream did not open, in one line: a camera not there (yet) is waited for, where a
wrong setting (a path, a password, a URL serving something else) ends the source."""

from __future__ import annotations

import errno
import socket
import urllib.parse

from streamfuse.capture.sources import SourceError
from streamfuse.errors import io_reason, unreachable

__all__ = ["open_failure"]

# the ports of the schemes a camera is read by, where its URL names none
_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
_HANG_UP_WAIT_S = 1.0  # how long the second connection waits for the server's first byte (or its hang-up)


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
    elif live and closed and _hung_up(path):
        why, waited = "it took the connection and closed it at once (restarting, or its sessions all taken?)", True
    elif isinstance(exc, (av.InvalidDataError, UnicodeDecodeError)):
        why = f"not a readable video ({why})"
    elif tcp_chosen and getattr(exc, "errno", None) == errno.EPROTONOSUPPORT:  # its SETUP answered 461
        why += " (the camera refuses RTSP over TCP: give it ffmpeg: [rtsp_transport=udp])"
    elif live and getattr(exc, "errno", None) == errno.EIO and (host := _unresolved_host(path)):
        why, waited = f"its host name {host} does not resolve (yet)", True  # FFmpeg's words: "I/O error"
    busy = isinstance(exc, (av.HTTPServerError, av.HTTPTooManyRequestsError))  # 5xx, 429: a previous run's
    return SourceError(f"{section}: cannot open {path}: {why}",  # sessions still held, a server booting
                       unreachable=live and (waited or busy or unreachable(exc)))


def _unresolved_host(url: str) -> str:
    """The host name of ``url`` when it does not resolve, else "": a camera named by DNS or mDNS (``cam.local``) is not
    there yet while the robot's network or resolver starts, where FFmpeg says only "Input/output error"."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:  # no URL a host can be read from ("rtsp://[cam/stream"): FFmpeg's own reason stands
        return ""
    if not host:
        return ""
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return host
    return ""


def _hung_up(url: str) -> bool:
    """Whether the server of ``url`` takes a connection and closes it without a byte, as a camera restarting or with
    its sessions all taken does, where FFmpeg says only "Invalid data found" or "End of file"; one that answers, or
    waits for a request as a server of something else does, has not hung up."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port or _PORTS.get(parts.scheme)
    except ValueError:  # no URL a host and port can be read from: FFmpeg's own reason stands
        return False
    if not host or not port:
        return False
    try:
        conn = socket.create_connection((host, port), timeout=_HANG_UP_WAIT_S)
    except OSError:  # not taken this time: FFmpeg's reason stands
        return False
    with conn:
        try:
            return conn.recv(1) == b""
        except OSError as exc:  # reset is hung up too; a timeout is a server waiting for a request
            return exc.errno == errno.ECONNRESET
