"""The log queue of live runs: a full queue drops and counts lines instead of waiting, and says so when it can."""

from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections.abc import Callable, Iterator

import pytest

from streamfuse.log_queue import _DroppingHandler


@pytest.fixture
def dropping_log() -> Iterator[tuple[logging.Logger, queue.Queue]]:
    """A logger whose lines go to a queue of two that nobody reads (the test takes them)."""
    lines: queue.Queue = queue.Queue(maxsize=2)
    log = logging.getLogger("test_log_queue")
    log.propagate, log.level = False, logging.INFO
    handler = _DroppingHandler(lines)
    log.addHandler(handler)
    yield log, lines
    log.removeHandler(handler)


def test_a_full_queue_drops_and_counts_lines_and_the_next_line_says_how_many(dropping_log) -> None:
    log, lines = dropping_log
    for i in range(5):
        log.info("line %d", i)  # returns at once though nobody takes the lines
    assert [lines.get_nowait() for _ in range(2)] == ["line 0", "line 1"]
    log.info("line 5")
    assert [lines.get_nowait() for _ in range(2)] == [
        "3 log lines dropped: nothing was reading this output", "line 5"]


def test_a_value_holding_a_newline_or_an_escape_cannot_forge_a_log_line() -> None:
    """A path or a name read from a file (a bag's topic) went into the log as it was: its newline began a line that
    looked like the program's own, its escape sequence drew on the terminal."""
    from pathlib import Path

    from streamfuse.log_queue import BLOCK, _OneLine

    formatter = _OneLine("%(levelname)s %(message)s")
    record = logging.getLogger("t").makeRecord(
        "t", logging.WARNING, __file__, 1, "input %s on %s (%d frames)",
        (Path("a\nERROR all frames lost.mp4"), OSError("/ir\x1b[2J"), 3), None)
    assert formatter.format(record) == r"WARNING input a\nERROR all frames lost.mp4 on /ir\x1b[2J (3 frames)"
    assert str(record.args[1]) == "/ir\x1b[2J"  # the record itself is left as it was (other handlers format it too)
    block = logging.getLogger("t").makeRecord("t", logging.INFO, __file__, 1, "%s", ("replay a\n  stage",), None,
                                              extra=BLOCK)
    assert formatter.format(block) == "INFO replay a\n  stage"
    # a value without control characters is left as it is, not turned into its text: a library's %r shows its repr
    plain = logging.getLogger("t").makeRecord("t", logging.INFO, __file__, 1, "%r", (Path("ir.mp4"),), None)
    assert formatter.format(plain) == f"INFO {Path('ir.mp4')!r}"


def test_another_librarys_line_quoting_a_peer_is_escaped_and_clipped() -> None:
    """The Foxglove SDK quotes a client's bad message in its line whole, as it was: a peer's newline began a line that
    looked like the bridge's own, its escape sequence drew on the terminal, and messages of 8 MB made lines of 8 MB
    (20 of them every 10 s got past the throttle)."""
    from streamfuse.log_queue import _MAX_OTHER_LINE, _OneLine

    formatter = _OneLine("%(levelname)s %(name)s: %(message)s")

    def line(message: str) -> str:
        return formatter.format(logging.getLogger("foxglove.ws").makeRecord(
            "foxglove.ws", logging.ERROR, __file__, 1, message, (), None))

    assert line("Invalid message: unknown variant `x\nWARNING streamfuse.foxglove: forged\x1b[31m`") == \
        r"ERROR foxglove.ws: Invalid message: unknown variant `x\nWARNING streamfuse.foxglove: forged\x1b[31m`"
    clipped = line("Invalid message: " + "x" * 1_000_000)
    assert len(clipped) < 2100 and clipped.endswith("x... (998036 characters more)"), clipped[-40:]
    assert clipped.index("...") == _MAX_OTHER_LINE  # the line's first 2000 characters are kept, not one fewer
    whole = "x" * (_MAX_OTHER_LINE - len("ERROR foxglove.ws: "))  # a line of just 2000 characters is kept whole
    assert line(whole) == f"ERROR foxglove.ws: {whole}"


def test_a_replay_summary_escapes_its_paths_and_keeps_its_lines() -> None:
    from streamfuse.replay.summary import ReplaySummary

    text = ReplaySummary(ir="i\nr.mp4", vis="v.mp4", out="o\x1b[31m.mp4", complete=True).format()
    assert text.splitlines()[0] == r"replay i\nr.mp4 + v.mp4 -> o\x1b[31m.mp4 (complete)"
    assert len(text.splitlines()) > 3


def test_commands_off_the_live_path_escape_their_log_values_too() -> None:
    """`subscribe`, `evaluate`, `train`, `view`, `foxglove` and the tools logged through logging's basic setup, which
    wrote a value's newline or escape sequence as it was."""
    import subprocess
    import sys

    code = ("import logging; from streamfuse.log_queue import install_direct; "
            "install_direct(logging.INFO, '%(levelname)s %(name)s: %(message)s'); "
            "logging.getLogger('streamfuse.subscribe').warning('no frame from %s', 'tcp://h\\nERROR forged\\x1b[2J')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr == "WARNING streamfuse.subscribe: no frame from tcp://h\\nERROR forged\\x1b[2J\n"


def test_no_command_sets_up_logging_without_the_escapes() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sources = [path for folder in ("streamfuse", "tools") for path in (root / folder).rglob("*.py")]
    callers = [str(path.relative_to(root)) for path in sources
               if "logging.basicConfig(" in path.read_text() and path.name != "log_queue.py"]
    assert callers == []


def test_another_librarys_flood_is_held_to_a_few_lines_and_the_next_one_says_how_many() -> None:
    """The Foxglove SDK logs one line for each message a client sends on a channel it never advertised: one peer
    wrote about 13,000 lines a second into the bridge's log."""
    from streamfuse.log_queue import _BURST, _WINDOW_S, _OneLine, _Throttle

    clock = [0.0]
    lines: list[str] = []
    ends: list[tuple[float, Callable[[], None]]] = []  # what the throttle asked to run when a window ends
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(handler.format(record))  # type: ignore[method-assign]
    handler.setFormatter(_OneLine("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(_Throttle(lambda: clock[0], lambda delay, call: ends.append((delay, call))))
    peer, own = logging.getLogger("foxglove.test_log_queue"), logging.getLogger("streamfuse.test_log_queue")
    tool = logging.getLogger("__main__")  # a tools/ script's own logger (run as __main__): the project's too
    trainer = logging.getLogger("train")  # training's own (streamfuse.train logs as "train"): an epoch a line
    kept = [(log.propagate, log.level) for log in (peer, own, tool, trainer)]
    for log in (peer, own, tool, trainer):
        log.propagate, log.level = False, logging.INFO
        log.addHandler(handler)
    try:
        for i in range(1000):
            peer.error("Received message for unknown channel: %d", i)
            own.warning("skipped frame %d", i)  # the project's own lines are each an event: never held back
            tool.info("pair %d scored", i)
            trainer.info("epoch %d", i)
        shown = [line for line in lines if line.startswith("ERROR foxglove.")]
        assert len(shown) == _BURST and shown[-1].endswith(
            f"unknown channel: {_BURST - 1} (further lines of foxglove.test_log_queue for up to {_WINDOW_S:g} s are "
            f"held back and counted)")
        own_lines = [line for line in lines if line.startswith(("WARNING streamfuse.", "INFO __main__", "INFO train "))]
        assert len(own_lines) == 3000
        assert [delay for delay, _ in ends] == [_WINDOW_S]
        clock[0] += _WINDOW_S
        peer.error("Received message for unknown channel: %d", 7)
        assert lines[-1] == (f"ERROR foxglove.test_log_queue Received message for unknown channel: 7 ({1000 - _BURST} "
                             f"lines of foxglove.test_log_queue before this one not shown)")
        ends.pop()[1]()  # the first window's end: its count was said by the line above
        assert lines[-1].endswith("channel: 7 (980 lines of foxglove.test_log_queue before this one not shown)")

        clock[0] += 3.0
        for i in range(_BURST + 4):  # a flood in the window the line above opened, then silence: 5 lines held back
            peer.warning("slow client %d", i) if i % 2 else peer.error("Received message for unknown channel: %d", i)
        assert len(ends) == 1 and ends[0][0] == _WINDOW_S - 3.0
        ends.pop()[1]()
        assert lines[-1] == (
            f"ERROR foxglove.test_log_queue 5 lines of foxglove.test_log_queue held back in the last {_WINDOW_S:g} s, "
            f"not shown")
        clock[0] += _WINDOW_S
        peer.info("reconnected")  # nothing held back is left to say
        assert lines[-1] == "INFO foxglove.test_log_queue reconnected"

        for i in range(_BURST):  # the window "reconnected" opened: one line over its burst, then silence
            peer.error("Received message for unknown channel: %d", i)
        assert len(ends) == 1  # a single line held back is said at the window's end too
        ends.pop()[1]()
        assert lines[-1] == (f"ERROR foxglove.test_log_queue 1 lines of foxglove.test_log_queue held back in the last "
                             f"{_WINDOW_S:g} s, not shown")
    finally:
        for log, (propagate, level) in zip((peer, own, tool, trainer), kept):
            log.removeHandler(handler)
            log.propagate, log.level = propagate, level


def test_a_drop_count_is_kept_while_the_queue_stays_full_and_said_only_once(dropping_log) -> None:
    """Lines dropped while the queue is still full add to the count until its line finds room; once said, the count
    starts again from zero."""
    log, lines = dropping_log
    for i in range(6):  # lines 2..5 dropped: 3 of them while a count was already waiting for room
        log.info("line %d", i)
    assert [lines.get_nowait() for _ in range(2)] == ["line 0", "line 1"]
    log.info("line 6")
    assert [lines.get_nowait() for _ in range(2)] == [
        "4 log lines dropped: nothing was reading this output", "line 6"]
    log.info("line 7")
    assert lines.get_nowait() == "line 7" and lines.empty()


def test_the_end_of_a_window_that_was_followed_by_another_says_nothing() -> None:
    """A window's end that comes late, after the next window began and held lines back of its own, leaves those for
    the next window's end (or its next line) to say, at their own level (not that of the lines held back before)."""
    from streamfuse.log_queue import _BURST, _WINDOW_S, _OneLine, _Throttle

    clock = [0.0]
    lines: list[str] = []
    ends: list[tuple[float, Callable[[], None]]] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(handler.format(record))  # type: ignore[method-assign]
    handler.setFormatter(_OneLine("%(levelname)s %(message)s"))
    handler.addFilter(_Throttle(lambda: clock[0], lambda delay, call: ends.append((delay, call))))
    peer = logging.getLogger("foxglove.test_log_queue_late")
    peer.propagate, peer.level = False, logging.INFO
    peer.addHandler(handler)
    try:
        for i in range(_BURST + 3):  # the first window: 3 held back
            peer.error("flood %d", i)
        clock[0] += _WINDOW_S
        for i in range(_BURST + 2):  # the next window: its first line says the 3, then 2 held back
            peer.warning("flood %d", i)
        assert lines[_BURST].endswith("(3 lines of foxglove.test_log_queue_late before this one not shown)")
        first_end, second_end = ends[0][1], ends[1][1]
        shown = len(lines)
        first_end()  # late: the second window's 2 are not the first window's to say
        assert len(lines) == shown
        second_end()
        assert lines[-1] == (f"WARNING 2 lines of foxglove.test_log_queue_late held back in the last {_WINDOW_S:g} s, "
                             f"not shown")
    finally:
        peer.removeHandler(handler)
        peer.propagate, peer.level = True, logging.NOTSET


@pytest.mark.timeout(30)
def test_a_flush_gives_up_on_a_stuck_writer_and_the_next_one_returns_at_once(monkeypatch) -> None:
    """stderr never read: the writer thread is stuck. A flush gives up after its timeout, whether its mark found room
    in the queue or not, and the flush after it queues no second mark while the first one is still not written."""
    from streamfuse import log_queue

    stuck: queue.Queue = queue.Queue(maxsize=2)  # no writer takes from it
    monkeypatch.setattr(log_queue, "_queue", stuck)
    monkeypatch.setattr(log_queue, "_pending", None)
    log_queue.flush(0.01)  # the mark is queued, and never written
    log_queue.flush(0.01)
    assert stuck.qsize() == 1 and isinstance(stuck.get_nowait(), threading.Event)
    monkeypatch.setattr(log_queue, "_pending", None)
    stuck.put("a line the writer never wrote")
    stuck.put("another")
    log_queue.flush(0.01)  # the queue full: no room for the mark
    assert stuck.qsize() == 2


_SET_UP = """
import logging
from streamfuse import log_queue
log_queue.{install}(logging.INFO, "%(levelname)s %(name)s: %(message)s")
for i in range(30):
    logging.getLogger("foxglove.x").warning("flood %d", i)
logging.getLogger("streamfuse.x").debug("not shown at INFO")
logging.getLogger("streamfuse.x").info("shown")
log_queue.flush()
"""


@pytest.mark.parametrize("install", ["install", "install_direct"])
def test_both_set_ups_log_at_their_level_and_hold_another_librarys_flood_back(install: str) -> None:
    import subprocess
    import sys

    from streamfuse.log_queue import _BURST

    done = subprocess.run([sys.executable, "-c", _SET_UP.replace("{install}", install)], capture_output=True,
                          text=True, timeout=60)
    assert done.stderr.splitlines() == [f"WARNING foxglove.x: flood {i}" for i in range(_BURST - 1)] + [
        f"WARNING foxglove.x: flood {_BURST - 1} (further lines of foxglove.x for up to 10 s are held back and "
        f"counted)", "INFO streamfuse.x: shown"]


_WARNING = """
import logging, warnings
from streamfuse import log_queue
log_queue.{install}(logging.INFO, "%(levelname)s %(name)s: %(message)s")
warnings.warn("align: Sinkhorn did not converge", RuntimeWarning)
log_queue.flush()
"""


@pytest.mark.parametrize("install", ["install", "install_direct"])
def test_a_python_warning_is_one_log_line_through_the_set_up(install: str) -> None:
    """align's Sinkhorn that did not converge, numpy's overflow in a library: one line (not two with a line of the
    package's source) that a live run queues, not a write straight to a stderr whose full pipe would block it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _WARNING.replace("{install}", install)], capture_output=True,
                          text=True, timeout=60)
    assert done.stderr.splitlines() == [
        "WARNING py.warnings: <string>:5: RuntimeWarning: align: Sinkhorn did not converge"]


_STDERR_CLOSED = """
import io, logging, sys
from streamfuse import log_queue
log_queue.install(logging.INFO, "%(message)s")
real, sys.stderr = sys.stderr, io.StringIO()
sys.stderr.close()  # a reader that went away: the line is lost
logging.getLogger("streamfuse.x").info("lost")
log_queue.flush(5)
sys.stderr = real
logging.getLogger("streamfuse.x").info("after")
log_queue.flush(5)
print("flushed" if log_queue._pending.is_set() else "not flushed", file=sys.stderr)
"""


def test_the_log_writer_outlives_a_closed_stderr_and_a_flush_waits_for_its_lines() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _STDERR_CLOSED], capture_output=True, text=True, timeout=60)
    assert done.stderr.splitlines() == ["after", "flushed"], done.stderr[-2000:]


def test_install_leaves_a_root_logger_that_has_a_handler_alone(monkeypatch) -> None:
    """A test's log capture (or an embedding program's own set-up) keeps its handler, level and lines."""
    from streamfuse import log_queue

    root = logging.getLogger()
    monkeypatch.setattr(log_queue, "_queue", None)
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])
    monkeypatch.setattr(root, "level", logging.WARNING)
    own_warnings = warnings.showwarning
    monkeypatch.setattr(warnings, "showwarning", own_warnings)  # put back whatever the set-ups do to it
    log_queue.install(logging.DEBUG, "%(message)s")
    assert log_queue._queue is None and len(root.handlers) == 1 and root.level == logging.WARNING
    log_queue.install_direct(logging.DEBUG, "%(message)s")  # its Python warnings too are its own to route
    assert len(root.handlers) == 1 and root.level == logging.WARNING and warnings.showwarning is own_warnings


def test_a_flush_after_one_that_found_the_queue_full_waits_for_the_lines_again(monkeypatch) -> None:
    """A reader paused long enough for a flush to find the queue full, then reading again: the flush before exit
    must queue its mark and wait for the lines once more, or the process exits before its last lines are written
    (the first flush's mark was never queued, so nothing would ever set it)."""
    from streamfuse import log_queue

    lines: queue.Queue = queue.Queue(maxsize=1)  # no writer thread here: the test takes the lines itself
    monkeypatch.setattr(log_queue, "_queue", lines)
    monkeypatch.setattr(log_queue, "_pending", None)
    lines.put("a line")
    log_queue.flush(0.01)  # no room for its mark: it gives up
    assert lines.get_nowait() == "a line"  # the writer catches up
    log_queue.flush(0.01)
    mark = lines.get_nowait()
    assert isinstance(mark, threading.Event)
    mark.set()  # written: the flush after it queues a mark of its own and waits for that one
    log_queue.flush(0.01)
    assert isinstance(lines.get_nowait(), threading.Event)


class _CatchingUp(queue.Queue):
    """A full queue whose writer takes a line while a put waits for room (a reader that was paused a moment)."""

    def put(self, item, block=True, timeout=None) -> None:
        if block and self.full():
            self.get_nowait()
        super().put(item, block, timeout)


def test_a_flush_waits_for_room_in_a_full_queue_for_its_mark(monkeypatch) -> None:
    """At exit the queue may be full of lines still being written: the flush waits for room up to its timeout, not
    giving up at once (and letting the process exit before those lines are written)."""
    from streamfuse import log_queue

    lines = _CatchingUp(maxsize=1)
    monkeypatch.setattr(log_queue, "_queue", lines)
    monkeypatch.setattr(log_queue, "_pending", None)
    lines.put_nowait("a line")
    log_queue.flush(0.01)
    assert isinstance(lines.get_nowait(), threading.Event)
