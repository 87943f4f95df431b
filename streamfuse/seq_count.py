"""A subscriber's account of its publisher's ``seq`` (+1 a published frame, from 0): frames missed on the way,
restarts, and the seqs no publisher sends (a repeat, a leap ahead), which would otherwise make ``missed`` absurd."""

from __future__ import annotations

import logging
import threading
import time

from streamfuse.flood_log import FloodLog
from streamfuse.wire import MalformedMessage

__all__ = ["SeqCounter", "MAX_FPS"]

log = logging.getLogger(__name__)

MAX_FPS = 100_000  # no publisher sends faster: a seq further ahead than this rate (+1 s) allows is not a real gap
# endpoint -> when (monotonic) a subscriber last said that its publisher restarted: the line is about the publisher,
# so the subscribers of one process (the viewer's fused frames and previews, a program's own) say a restart once
_said_restart: dict[str, float] = {}
_said_lock = threading.Lock()


class SeqCounter:
    """The ``seq`` of the frames one subscriber takes from ``endpoint``, through two routes: ``"shm"`` (shared-memory
    descriptors) and ``"payload"`` (the ZeroMQ message), which carry the same frame while the subscriber switches.

    ``last``: the seq of the last frame taken (None before the first); ``restarted``: whether that frame began a new
    stream (a restarted publisher, or another one); ``restarts``: how many did. Their lines are bounded
    (:class:`FloodLog`): a peer whose seq goes back every other frame made one line of two frames.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.last: int | None = None
        self.restarted = False
        self._last_t = 0.0  # time.monotonic() when ``last`` was taken
        self._routes: set[str] = set()  # the routes ``last`` came through
        self._leap: tuple[int, float] | None = None  # the last leap refused and when
        self.restarts = 0
        self._said = FloodLog(log, f"publisher restarts at {endpoint}", level=logging.INFO)

    def take(self, seq: int, route: str) -> int | None:
        """The frames missed before ``seq`` (0 after a restart, which is logged: a seq lower than the last, or a
        stream going on from a leap refused before); None for the last frame again through the other route.

        Raises:
            MalformedMessage: ``seq`` repeats the last one through the same route, or leaps further ahead than
                ``MAX_FPS`` frames a second since the last frame (a forged seq of 2^63-1 made ``missed`` 2^63).
        """
        last, last_t, now = self.last, self._last_t, time.monotonic()
        if last is not None and seq == last:
            if route in self._routes:
                raise MalformedMessage(f"seq {seq} repeats the last frame's")
            self._routes.add(route)
            return None
        restart = last is not None and seq < last
        if last is not None and not _plausible(seq - last, now - self._last_t):
            leap, self._leap = self._leap, (seq, now)
            if leap is None or seq <= leap[0] or not _plausible(seq - leap[0], now - leap[1]):
                raise MalformedMessage(f"seq {seq} after {last}: more than {MAX_FPS} frames a second since")
            restart = True  # a stream goes on from the leap: another publisher took the endpoint
        self.last, self._last_t, self._routes, self._leap, self.restarted = seq, now, {route}, None, restart
        if restart:
            self.restarts += 1
            line = f"publisher at {self.endpoint} restarted (seq {seq} after {last})"
            if self._first_to_say(last_t, now):
                self._said.say(line)
            else:
                log.debug("%s", line)
            return 0
        return 0 if last is None else seq - last - 1

    def _first_to_say(self, last_t: float, now: float) -> bool:
        """Whether no subscriber of the endpoint has said a restart since this one's frame before it, at ``last_t``
        (that said the same restart); notes ``now`` as when it was said if so."""
        with _said_lock:
            first = _said_restart.get(self.endpoint, -float("inf")) < last_t
            if first:
                _said_restart[self.endpoint] = now
        return first

    def flush(self) -> None:
        """Say the restarts counted but not said one by one, if any: at the subscriber's end."""
        self._said.flush()

    def skip(self, frames: int) -> None:
        """``frames`` after the last taken were passed over on purpose (latest mode: older ring entries), not missed."""
        self.last = (self.last or 0) + frames


def _plausible(ahead: int, elapsed_s: float) -> bool:
    """Whether a publisher can be ``ahead`` frames further after ``elapsed_s`` seconds (behind: a restart, always)."""
    return ahead <= (elapsed_s + 1) * MAX_FPS
