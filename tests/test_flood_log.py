"""FloodLog: a peer's flood of warnings said as a window's first lines, then as one line with their count."""

from __future__ import annotations

import logging
import threading
import time
import types

import pytest
import zmq
from helpers_zmq import PATIENCE_S

from streamfuse import flood_log
from streamfuse.flood_log import FloodLog
from streamfuse.view.stats_in import StatsMessages


def test_warnings_past_a_windows_lines_are_counted_and_said_as_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    clock = [100.0]
    monkeypatch.setattr(flood_log, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    said = FloodLog(logging.getLogger("streamfuse.test"), "malformed messages from here", lines=3, window_s=10.0)
    with caplog.at_level(logging.WARNING, logger="streamfuse.test"):
        for n in range(10):
            said.say(f"bad {n}")
        assert caplog.messages == ["bad 0", "bad 1", "bad 2 (3 said in 10 s: further malformed messages from here "
                                   "are counted, then said as one line)"]
        assert said.unsaid == 7
        clock[0] += 10.0  # the window is over: the next one says what the last held back, then itself
        said.say("bad 10")
    assert caplog.messages[3:] == ["7 more malformed messages from here not said one by one; the last: bad 9", "bad 10"]
    assert said.unsaid == 0


def test_by_default_a_peers_flood_is_said_in_twenty_lines_per_ten_seconds(monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    clock = [100.0]
    monkeypatch.setattr(flood_log, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    said = FloodLog(logging.getLogger("streamfuse.test"), "malformed messages")
    with caplog.at_level(logging.WARNING, logger="streamfuse.test"):
        for n in range(30):
            said.say(f"bad {n}")
        assert len(caplog.messages) == 20 and caplog.messages[-1].startswith("bad 19 (20 said in 10 s:")
        clock[0] = 109.999  # still the same window
        said.say("bad 30")
        assert said.unsaid == 11
        clock[0] = 110.0
        said.say("bad 31")
    assert caplog.messages[20:] == ["11 more malformed messages not said one by one; the last: bad 30", "bad 31"]


def test_a_flood_of_malformed_stats_messages_is_counted_not_logged_line_by_line(
        raw_pub: tuple[zmq.Socket, str], caplog: pytest.LogCaptureFixture) -> None:
    # the viewer and the Foxglove bridge wrote a warning line for each malformed stats message a peer sent
    sock, endpoint = raw_pub
    stop = threading.Event()
    stats = StatsMessages(endpoint, "stats/", ("", ""), stop)
    reader = threading.Thread(target=lambda: list(stats), daemon=True)
    with caplog.at_level(logging.WARNING, logger="streamfuse.view.stats_in"):
        reader.start()
        try:
            deadline = time.monotonic() + PATIENCE_S
            while stats.malformed < 100:  # sent until 100 have arrived (a subscription takes a while to arrive)
                assert time.monotonic() < deadline, f"only {stats.malformed} malformed stats messages arrived"
                sock.send_multipart([b"stats/x", b"{oops"])
        finally:
            stop.set()
            reader.join(PATIENCE_S)
    warnings = [m for m in caplog.messages if "malformed stats message" in m]
    assert 0 < len(warnings) < 50, len(warnings)
    said = [m for m in warnings if m.startswith("skipped malformed stats message")]  # the rest counted, said at the end
    assert len(said) + sum(int(m.split()[0]) for m in warnings if " more " in m) == stats.malformed, warnings
