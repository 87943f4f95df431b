"""The pipeline's stats as the viewer and the Foxglove bridge read them: validated, bounded in size, the connection
kept up (:class:`StatsMessages`)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

from streamfuse.connection_watch import SILENT_S, connect_sub
from streamfuse.flood_log import FloodLog
from streamfuse.telemetry import TelemetryConfig
from streamfuse.wire import MAX_HEADER_BYTES, MalformedMessage, decode_stats, read_parts

__all__ = ["StatsMessages", "POLL_S"]

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a viewer's reader threads (stats, frames) look at their stop flags
_MAX_STATS_BYTES = 16 * MAX_HEADER_BYTES  # a stats message is a few kB
_STATS_RCVHWM = 8  # stats come every telemetry.interval_s and are read at once: a few queued bound the memory
_MAX_PLOT_STAGES = 32  # a pipeline's stats have 8 stages; more would be a peer making every plot point megabytes
_MAX_STAGE_NAME = 64  # names are like "fuse", "capture.ir"; longer ones would make the plots' history megabytes


class StatsMessages:
    """The validated stats on ``topic`` from ``endpoint`` (:func:`streamfuse.wire.decode_stats`) until ``stop`` is
    set, for one iteration on one thread, which closes the socket at the end (or :meth:`close`, never iterated).
    Malformed ones (also: more than ``_MAX_PLOT_STAGES`` stages or a stage name over ``_MAX_STAGE_NAME`` characters)
    are logged, counted in ``malformed`` and skipped; a connection that ZeroMQ dropped on a part over
    ``_MAX_STATS_BYTES`` is restored and counted the same way; a connection silent for two of the publisher's stats
    intervals (``interval_s`` of its messages; before the first, the default's; at least ``SILENT_S``) is made again.
    ``keys``: the publisher's CURVE public key and this consumer's key file (each empty or as :func:`connect_sub`
    takes them); ``name_wait_s``: see :func:`connect_sub`.

    Raises:
        ValueError: the endpoint cannot be connected (its host name still does not resolve after ``name_wait_s``,
            say), or a bad server or client key (one line).
    """

    def __init__(self, endpoint: str, topic: str, keys: tuple[str, str], stop: threading.Event, *,
                 name_wait_s: float | None = None) -> None:
        # two-part messages, which ``Subscriber`` does not take: a SUB socket of its own
        self.sock, self.watch = connect_sub(endpoint, [topic.encode()], rcvhwm=_STATS_RCVHWM,
                                            max_part_bytes=_MAX_STATS_BYTES, server_key=keys[0],
                                            client_key_file=keys[1], name_wait_s=name_wait_s)
        self.endpoint, self.stop, self.malformed = endpoint, stop, 0
        self._said = FloodLog(log, f"malformed stats messages from {endpoint}")
        self._last_message, self._silent_s = time.monotonic(), 2 * TelemetryConfig.interval_s
        self._heard = False  # a message has come since the start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        taken = False  # a message was taken since the watch last marked what libzmq had read
        try:
            while not self.stop.is_set():
                if not self.sock.poll(round(self.watch.unended_wait(POLL_S, taken) * 1000)):
                    taken = False
                    self._tend()
                    continue
                self._last_message, self._heard, taken = time.monotonic(), True, True
                try:
                    stats = _check_stages(decode_stats(read_parts(self.sock, ("topic", "stats"))))
                except MalformedMessage as exc:
                    self._skip(exc)
                    continue
                self._silent_s = max(SILENT_S, 2 * stats.get("interval_s", 0))
                yield stats
        finally:
            self.close()

    def _tend(self) -> None:
        """While no stats arrive: follow the connection and restore one that libzmq dropped for good."""
        self.watch.on_events()
        if unended := self.watch.cut_unended(_MAX_STATS_BYTES + 2 * MAX_HEADER_BYTES):  # topic, stats, lengths
            self._skip(f"{unended / 2**20:.1f} MiB of a message not ended yet from {self.endpoint}; reconnected")
        elif self.watch.restore_due() and self.watch.restore():
            self._skip(f"ZeroMQ refused it (a part over {_MAX_STATS_BYTES} bytes, or a peer that is no publisher: "
                       f"another socket type, another protocol) and dropped the connection to {self.endpoint}; "
                       "reconnected")
        else:
            self.watch.remake_if_silent(self._last_message, self._silent_s, heard=self._heard)

    def _skip(self, why: Exception | str) -> None:
        self.malformed += 1
        self._said.say(f"skipped malformed stats message: {why}")

    def close(self) -> None:
        """Close the socket and its watch (linger 0)."""
        self._said.flush()
        self.watch.close()


def _check_stages(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` if its stages fit the plots (the snapshot and history a page gets first stay small).

    Raises:
        MalformedMessage: more than ``_MAX_PLOT_STAGES`` stages, or a name over ``_MAX_STAGE_NAME`` characters.
    """
    stages = stats.get("stages", {})
    if len(stages) > _MAX_PLOT_STAGES:
        raise MalformedMessage(f"stats hold {len(stages)} stages, more than {_MAX_PLOT_STAGES}")
    long = next((name for name in stages if len(name) > _MAX_STAGE_NAME), None)
    if long is not None:
        raise MalformedMessage(f"stats stage name of {len(long)} characters, more than {_MAX_STAGE_NAME}")
    return stats
