"""Producer processes: hand-off, SIGKILL reported once and restarted (before the first frame too), hung producers
reported, counted and restarted, a replayable source resumed without repeats, bad sources reported in one line, stop
with a frozen producer, no leaked shared memory (a killed run's freed by the next start)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from helpers_clock import SleptClock

from streamfuse.capture.producer import ProducerEvent, Producers, start_producers
from streamfuse.capture.shm_ring import SHM_PREFIX, remove_stale_rings
from streamfuse.shm_owners import SHM_DIR
from streamfuse.capture.sources import BaseSource, SourceConfig
from streamfuse.frames import Frame

pytestmark = pytest.mark.timeout(90)
REPO = Path(__file__).resolve().parents[2]


def collect(prod: Producers, until, timeout: float = 30.0) -> tuple[list[Frame], list[ProducerEvent]]:
    """get() until ``until(frames, events)`` is true or the producers are done; fails after ``timeout`` s."""
    frames: list[Frame] = []
    events: list[ProducerEvent] = []
    deadline = time.monotonic() + timeout
    while not until(frames, events) and not prod.done:
        assert time.monotonic() < deadline, f"timed out with {len(frames)} frames, events {events}"
        item = prod.get(timeout=0.5)
        if isinstance(item, Frame):
            frames.append(item)
        elif item is not None:
            events.append(item)
    return frames, events


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    """Poll ``condition()`` until true; fails naming ``what`` after ``timeout`` s (generous: loaded machines)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def assert_stopped(prod: Producers, shm_names: list[str]) -> None:
    prod.stop(timeout=2.0)  # kills what is left after 2 s: no producer survives it
    assert all(pid is None for pid in prod.pids().values())
    if sys.platform.startswith("linux"):
        assert not [n for n in shm_names if (Path("/dev/shm") / n).exists()], "leaked shared memory"


def write_video(path: Path, n: int, fps: int, first: int = 0) -> None:
    """``n`` frames from pts ``first`` on, each of grey level its pts (mod 256)."""
    tb = Fraction(1, fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.time_base = 64, 48, "bgr0", tb
        for i in range(first, first + n):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 256, np.uint8), format="bgr24")
            frame.pts, frame.time_base = i, tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_live_sigkill_is_reported_once_and_restarted_without_stopping_the_other(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    cfg = SourceConfig(kind="synthetic", width=160, height=120, stall_factor=0)  # exactly one event: no stall checks
    prod = start_producers(cfg, cfg, backoff_s=0.2)
    names = prod.shm_names()
    try:
        # both running: the second process may start later than the first delivers frames (cold imports)
        before, _ = collect(prod, lambda f, e: sum(x.stream == "ir" for x in f) >= 5
                            and any(x.stream == "vis" for x in f))
        assert {f.stream for f in before} == {"ir", "vis"}
        victim, vis_pid = prod.pids()["ir"], prod.pids()["vis"]
        for sig in (signal.SIGINT, signal.SIGTERM):  # the parent's business (a group Ctrl-C or kill): ignored
            os.kill(vis_pid, sig)
        os.kill(victim, signal.SIGKILL)
        during, events = collect(prod, lambda f, e: e and sum(x.stream == "ir" for x in f) >= 5)
        names += prod.shm_names()
    finally:
        assert_stopped(prod, names)
    (event,) = events
    assert event.stream == "ir" and event.kind == "error" and event.restarting and "SIGKILL" in event.message
    assert [r.getMessage() for r in caplog.records].count(f"{event.message}; restarting in 0.2 s") == 1
    assert prod.stats()["ir"]["restarts"] == 1 and prod.stats()["vis"]["restarts"] == 0
    ir_seq = [f.seq for f in before + during if f.stream == "ir"]
    assert ir_seq == sorted(set(ir_seq))  # sequence numbers continue across the restart
    assert sum(f.stream == "vis" for f in during) >= 5  # the visible producer kept running
    assert all(f.image.shape == (120, 160) for f in during if f.stream == "ir")
    assert all(f.image.shape == (120, 160, 3) for f in during if f.stream == "vis")


def test_hung_producer_is_reported_counted_and_restarted_while_the_other_goes_on(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    cfg = SourceConfig(kind="synthetic", width=160, height=120, stall_factor=15)  # silent 2 s (the floor) = stalled
    prod = start_producers(cfg, replace(cfg, stall_factor=0), backoff_s=0.1)
    names = prod.shm_names()
    try:
        collect(prod, lambda f, e: {x.stream for x in f} == {"ir", "vis"})
        hung = prod.pids()["ir"]
        os.kill(hung, signal.SIGSTOP)  # alive but silent: no exit for the supervisor to see
        during, events = collect(prod, lambda f, e: e and sum(x.stream == "ir" for x in f) >= 5)
        names += prod.shm_names()
        stats = prod.stats()
    finally:
        assert_stopped(prod, names)
    (event,) = events
    assert event.stream == "ir" and event.kind == "error" and event.restarting
    assert f"ir: producer (pid {hung}) stalled: no frame for" in event.message and "stall_factor 15" in event.message
    assert [r.getMessage() for r in caplog.records] == [f"{event.message}; restarting in 0.1 s"]
    assert stats["ir"]["stalls"] == 1 and stats["ir"]["restarts"] == 1 and stats["vis"]["stalls"] == 0
    assert not _running(hung)  # the hung process was killed, not left behind
    assert sum(f.stream == "vis" for f in during) >= 5


def _restarted(prod: Producers, name: str, victim: int) -> bool:
    """Whether ``name``'s producer runs again in a process other than ``victim``; drives the supervisor, which restarts
    a producer only inside :meth:`Producers.get` (the event may have come before the restart's delay was over)."""
    prod.get(timeout=0.05)
    return prod.pids()[name] not in (None, victim)


def _silent_server() -> socket.socket:
    """A loopback TCP port that accepts connections and never sends a byte: a stream source hangs opening it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def test_producer_killed_before_its_first_frame_is_restarted(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    with _silent_server() as server:
        ir = SourceConfig(kind="stream", path=f"tcp://127.0.0.1:{server.getsockname()[1]}")
        vis = SourceConfig(kind="synthetic", width=64, height=48, stall_factor=0)
        prod = start_producers(ir, vis, backoff_s=0.1)
        names = prod.shm_names()
        try:
            victim = prod.pids()["ir"]
            os.kill(victim, signal.SIGKILL)  # still opening its stream: not a single frame yet
            frames, events = collect(prod, lambda f, e: e and sum(x.stream == "vis" for x in f) >= 5)
            wait_for(lambda: _restarted(prod, "ir", victim), "a new IR producer")
            names += prod.shm_names()
        finally:
            assert_stopped(prod, names)
    first, *later = events
    assert first.stream == "ir" and first.restarting and "SIGKILL" in first.message
    # on a loaded machine the new producer can meet its 10 s open timeout (the server never answers) before the
    # visible frames are in: a restart of its own, never a second kill
    assert all(e.stream == "ir" and e.restarting and "SIGKILL" not in e.message for e in later)
    assert not prod.done and prod.stats()["ir"]["restarts"] >= len(events)


def test_restart_after_sigkill_resumes_a_replayable_source_without_repeats() -> None:
    cfg = SourceConfig(kind="synthetic", width=64, height=48, realtime=False)  # replayable: virtual clock
    prod = start_producers(cfg, cfg, slots=4, backoff_s=0.1)
    names = prod.shm_names()
    try:
        frames, _ = collect(prod, lambda f, e: len(f) >= 20)
        # let the rings fill: the frames left in the killed producer's ring must not repeat
        wait_for(lambda: prod.stats()["vis"]["queued"] == 4, "a full visible ring")
        os.kill(prod.pids()["vis"], signal.SIGKILL)
        more, events = collect(prod, lambda f, e: sum(x.stream == "vis" for x in f) >= 60)
        names += prod.shm_names()
    finally:
        assert_stopped(prod, names)
    assert [e.restarting for e in events] == [True]
    period = round(1e9 / 30)
    vis = [f for f in frames + more if f.stream == "vis"]
    seqs = [f.seq for f in vis]
    assert seqs == sorted(set(seqs))  # latest rings may drop frames, but none comes twice
    assert [f.t_capture_ns for f in vis] == [seq * period for seq in seqs]  # the new process continues the clock


def test_truncated_file_delivers_what_decoded_then_one_final_error(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    write_video(tmp_path / "full.mkv", 30, fps=25)
    data = (tmp_path / "full.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    cfg = SourceConfig(kind="file", path=str(tmp_path / "cut.mkv"), realtime=False)  # restart=True by default
    prod = Producers({"vis": cfg}, slots=32, backoff_s=0.05)  # room for every frame: none overwritten
    names = prod.shm_names()
    try:
        frames, events = collect(prod, lambda f, e: False)
    finally:
        assert_stopped(prod, names)
    assert 0 < len(frames) < 30 and [f.seq for f in frames] == list(range(len(frames)))
    (event,) = events
    assert event.kind == "error" and not event.restarting and f"after frame {len(frames)}" in event.message
    assert not caplog.records  # a final error is the event's to say: the consumer that stops on it reports it once


def test_missing_file_is_one_line_and_not_retried(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    missing = tmp_path / "nope.mp4"
    cfg = SourceConfig(kind="file", path=str(missing))
    prod = start_producers(cfg, cfg, backoff_s=0.1)
    try:
        _, events = collect(prod, lambda f, e: len(e) == 2)
    finally:
        assert_stopped(prod, [])
    assert all(str(missing) in e.message and "not found" in e.message for e in events)
    assert not any(e.restarting for e in events)  # never opened: a configuration error, not retried
    assert not caplog.records and all("\n" not in e.message for e in events)  # said once, by the consumer
    assert prod.done and prod.stats()["ir"]["restarts"] == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="device nodes are looked for in /dev on Linux")
def test_a_camera_not_plugged_in_at_the_start_is_waited_for(caplog) -> None:
    # a USB camera enumerates seconds into a robot's boot: the run waits for it (a warning at every try, naming the
    # devices there are) instead of ending, as it does for one unplugged mid-run
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    prod = start_producers(SourceConfig(kind="synthetic", width=64, height=48),
                           SourceConfig(kind="camera", path="57"), backoff_s=0.1)
    try:
        frames, events = collect(prod, lambda f, e: len(e) >= 3 and f)
        assert not prod.done and prod.stats()["vis"]["restarts"] >= 2
    finally:
        assert_stopped(prod, [])
    assert all(e.stream == "vis" and e.restarting and e.message.startswith(
        "vis: camera '57' is not plugged in (/dev/video57 missing; found: ") for e in events)
    warnings = [r.getMessage() for r in caplog.records]
    assert f"{events[0].message}; restarting in 0.1 s" in warnings and all("\n" not in w for w in warnings)
    assert {f.stream for f in frames} == {"ir"}  # the other camera goes on meanwhile


_SERVERS_MASKS = """
import os, signal
from multiprocessing import forkserver
from streamfuse.capture.producer_process import start_servers
start_servers()
def blocked(pid):
    line = next(l for l in open(f"/proc/{pid}/status") if l.startswith("SigBlk"))
    return {s for s in (signal.SIGTERM, signal.SIGHUP) if int(line.split()[1], 16) >> (s - 1) & 1}
server = forkserver._forkserver._forkserver_pid
print(sorted(blocked(server)), sorted(blocked("self")))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_fork_server_keeps_sigterm_and_sighup_blocked_and_the_run_does_not() -> None:
    # a SIGTERM to the whole process group (systemd, timeout) ended the fork server, and every producer then read as
    # dead ("exited with code 255; restarting") while the run stopped cleanly
    out = subprocess.run([sys.executable, "-c", _SERVERS_MASKS], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[0] == f"{sorted([signal.SIGHUP, signal.SIGTERM])} []", out.stderr


_CTRL_C_AS_IT_STARTS = """
import os, signal, sys, time
from pathlib import Path

MARK = Path(sys.argv[1] if __name__ == "__main__" else os.environ["STARTS_IN"])

if __name__ == "__mp_main__":  # the producer, as it starts: its fork server's child imports the program's main module
    (MARK / "starting").write_text(str(os.getpid()))
    while not (MARK / "go").exists():
        time.sleep(0.01)


def body():
    (MARK / "body").touch()


if __name__ == "__main__":
    from streamfuse.capture.producer_process import process_context, start_servers
    from streamfuse.signals import blocked

    os.environ["STARTS_IN"] = str(MARK)
    ctx = process_context()  # the fork server started with Ctrl-C unblocked, as a live run's start-up starts it
    proc = ctx.Process(target=body, daemon=True)
    with blocked((signal.SIGINT,)):  # as start_process starts a producer
        start_servers()
        proc.start()
    deadline = time.monotonic() + 60
    while not (MARK / "starting").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches every process of its group
    (MARK / "go").touch()
    proc.join(60)
    print(proc.exitcode, (MARK / "body").exists())
"""


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="a fork server's children")
def test_a_ctrl_c_as_a_producer_starts_is_left_to_the_run(tmp_path) -> None:
    # the fork server gave the producers it forked Python's Ctrl-C back: one that came before the producer's body
    # ignored it ended it with KeyboardInterrupt (exit 1, read as dying in the program's main module)
    script = tmp_path / "starts.py"
    script.write_text(_CTRL_C_AS_IT_STARTS)
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.split("\n")[0] == "0 True", out.stdout + out.stderr[-2000:]

_FORK_SERVER_KILLED = """
import os, signal, time
from multiprocessing import forkserver
from streamfuse.capture.producer import ProducerEvent, start_producers
from streamfuse.shm_owners import process_alive
from streamfuse.capture.sources import SourceConfig

def blocks_sigterm(pid):
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return bool(int(status["SigBlk"], 16) >> (signal.SIGTERM - 1) & 1)

if __name__ == "__main__":
    cfg = SourceConfig(kind="synthetic", width=64, height=48, stall_factor=0)
    prod = start_producers(cfg, cfg, backoff_s=0.1)
    deadline, seen, ended = time.monotonic() + 60, set(), []
    try:
        while seen != {"ir", "vis"} and time.monotonic() < deadline:
            item = prod.get(timeout=0.1)
            seen |= {item.stream} if item is not None and not isinstance(item, ProducerEvent) else set()
        orphans, first = list(prod.pids().values()), forkserver._forkserver._forkserver_pid
        os.kill(first, signal.SIGKILL)
        while (len(ended) < 2 or forkserver._forkserver._forkserver_pid in (None, first)) \
                and time.monotonic() < deadline:
            item = prod.get(timeout=0.1)  # the ends are seen, and the restarts start a fork server again
            ended += [item.message] if isinstance(item, ProducerEvent) else []
        while any(process_alive(pid) for pid in orphans) and time.monotonic() < deadline:
            time.sleep(0.05)
        print([process_alive(pid) for pid in orphans], blocks_sigterm(forkserver._forkserver._forkserver_pid))
        print(*ended, sep="\\n")
    finally:
        prod.stop(timeout=2.0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_producers_whose_fork_server_was_killed_are_killed_and_the_new_server_keeps_sigterm_blocked(tmp_path) -> None:
    # the fork server's death (kill -9, the OOM killer) made each producer read as "died: exited with code 255" while
    # it ran on, orphaned, beside the producer started in its place (a camera held twice); and multiprocessing's own
    # restart of the server left SIGTERM unblocked in the new one. In a child interpreter: this one's server is left
    script = tmp_path / "killed.py"
    script.write_text(_FORK_SERVER_KILLED)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    lines = out.stdout.splitlines()
    assert lines[:1] == ["[False, False] True"], out.stderr[-2000:]
    ended = [line for line in lines[1:] if "producer (pid" in line]
    assert len(ended) == 2 and all("lost its fork server" in line for line in ended), lines


def test_a_producer_reaped_by_its_fork_server_is_not_killed_again_under_its_reused_number() -> None:
    # the fork server reaps a producer before it reports its exit code: a process started since under the same
    # number (another program's, on a busy robot) was killed with SIGKILL as an "orphan"
    from streamfuse.capture.producer_process import how_it_ended

    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert how_it_ended(types.SimpleNamespace(pid=other.pid, exitcode=1)) == "died: exited with code 1"
        assert other.poll() is None  # still running
    finally:
        other.stdin.close()
        other.wait()


def test_stop_ends_every_producer_even_a_frozen_one(caplog) -> None:
    cfg = SourceConfig(kind="synthetic", width=64, height=48, realtime=False)
    prod = start_producers(cfg, cfg, slots=2)
    collect(prod, lambda f, e: {x.stream for x in f} == {"ir", "vis"})  # both producers up, with frames written
    frozen = prod.pids()["vis"]
    os.kill(frozen, signal.SIGSTOP)  # deaf to the stop flag and to SIGTERM: only SIGKILL ends it
    prod._workers["vis"].beat[0] = 0  # as if frozen between a frame's write and its count: the frame seen tells
    names = prod.shm_names()
    with caplog.at_level(logging.INFO, logger="streamfuse.capture.producer"):
        prod.stop(timeout=2.0)
    assert f"producer streamfuse-vis (pid {frozen}) did not stop in time; killing it" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]  # it had written frames: not expected
    wait_for(lambda: not _running(frozen), "the frozen producer to die")  # killed; the kernel may take a moment
    assert prod.pids()["ir"] is None
    assert not [n for n in names if (SHM_DIR / n).exists()], "leaked shared memory"
    assert prod.get(timeout=0.1) is None and prod.shm_names() == []  # stopped producers are not dead ones to restart


def test_a_stop_while_a_network_source_is_still_opening_is_no_warning(caplog) -> None:
    # a camera that takes the connection and never answers holds its producer inside FFmpeg's open, which no stop
    # flag reaches: its kill, expected there, was a warning after the final stats of every stop
    with socket.create_server(("127.0.0.1", 0)) as silent:
        prod = Producers({"ir": SourceConfig(kind="stream", path=f"tcp://127.0.0.1:{silent.getsockname()[1]}")},
                         slots=2)
        try:
            silent.settimeout(30)
            conn, _ = silent.accept()  # the producer is inside the open now (its timeout: 10 s)
            with caplog.at_level(logging.INFO, logger="streamfuse.capture.producer"), conn:
                prod.stop(timeout=0.5)
        finally:
            prod.stop()
    assert "still opening its source; killing it" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class _Deaf:
    """A producer process no stop flag reaches (inside FFmpeg's open): each join waits its whole timeout on the test's
    clock, and so does the one after its kill (a kernel slow to reap it), after which it is gone."""

    def __init__(self, clock: SleptClock, pid: int) -> None:
        self.clock, self.pid, self.name, self.killed, self.gone = clock, pid, f"streamfuse-{pid}", False, False

    def join(self, timeout: float | None = None) -> None:
        self.clock.sleep(timeout or 0.0)
        self.gone = self.killed

    def is_alive(self) -> bool:
        return not self.gone

    def kill(self) -> None:
        self.killed = True


def test_a_stop_while_both_cameras_still_open_fits_the_producers_part_of_the_runs_2_s(monkeypatch) -> None:
    # The producers' stop had 2 s of the run's 2 s: 1.8 s for producers to stop on the flag, then 0.2 s for each one
    # killed, in turn (2.2 s with both cameras still opening); a stop while a camera opened ended 1.96-2.06 s after
    # the signal. What the rest of a run's end takes (up to 0.6 s at a load of 50-68) must fit beside it
    from streamfuse.capture import producer

    clock = SleptClock()
    monkeypatch.setattr(producer, "time", clock)
    prod = Producers.__new__(Producers)  # its stop alone: no process started
    prod._stopped, prod._watch, prod._stop = False, types.SimpleNamespace(stop=lambda: None), multiprocessing.Event()
    prod._workers = {name: producer._Worker(name, SourceConfig(kind="stream", path="rtsp://camera/stream"))
                     for name in ("ir", "vis")}
    for pid, w in enumerate(prod._workers.values(), 100):
        w.proc, w.beat = _Deaf(clock, pid), [0] * 6
    monkeypatch.setattr(prod, "_release", lambda w: None)
    prod.stop()
    assert all(w.proc.killed and not w.proc.is_alive() for w in prod._workers.values())
    assert clock.ns <= 1.4e9


def test_live_file_end_restarts_from_the_start_with_times_still_increasing(tmp_path: Path) -> None:
    write_video(tmp_path / "ir.mkv", 4, fps=25)
    cfg = SourceConfig(kind="file", path=str(tmp_path / "ir.mkv"), realtime=False, stall_factor=0)  # restart=True
    prod = Producers({"ir": cfg}, slots=16, backoff_s=0.05)  # unpaced: slots enough that latest drops nothing
    names = prod.shm_names()
    try:
        frames, events = collect(prod, lambda f, e: len(f) >= 10)
        names += prod.shm_names()
    finally:
        assert_stopped(prod, names)
    assert [f.seq for f in frames[:10]] == list(range(10))
    assert [f.t_capture_ns // 1_000_000 for f in frames[:10]] == [40 * i for i in range(10)]
    assert [int(f.image[0, 0]) for f in frames[:6]] == [0, 1, 2, 3, 0, 1]  # the file again from its start
    assert events and all(e.kind == "eos" and e.restarting for e in events)


_HELPER = """
import sys, time
from pathlib import Path
from streamfuse.capture import SourceConfig, start_producers
cfg = SourceConfig(kind="synthetic", width=64, height=48)
prod = start_producers(cfg, cfg)
while prod.get(timeout=1.0) is None:
    pass
tmp = Path(sys.argv[1] + ".tmp")  # renamed into place: the test never reads half a file
tmp.write_text(" ".join(str(p) for p in prod.pids().values()) + "|" + " ".join(prod.shm_names()))
tmp.rename(sys.argv[1])
time.sleep(60)
"""


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped (before the open, or after)
        return False


def _start_helper(tmp_path: Path, **popen) -> tuple[subprocess.Popen, list[int], list[str]]:
    """A separate interpreter running producers, as a real pipeline would be (it has its own resource tracker);
    returns it, its producers' pids and its segment names once frames flow."""
    pid_file = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen([sys.executable, "-c", _HELPER, str(pid_file)], env=env, **popen)
    wait_for(lambda: parent.poll() is not None or (pid_file.exists() and pid_file.read_text()),
             "the helper's producers", timeout=60)
    assert parent.poll() is None, "helper did not start its producers"
    pids, names = pid_file.read_text().split("|")
    return parent, [int(p) for p in pids.split()], names.split()


def _owned_by(pid: int) -> list[str]:
    """Shared-memory segments and semaphores created by process ``pid`` (their names carry it)."""
    return sorted(p.name for p in SHM_DIR.iterdir() if f"streamfuse_{pid}_" in p.name)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_producers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    parent, pids, names = _start_helper(tmp_path)
    parent.kill()  # SIGKILL: no clean-up code runs in the pipeline process
    parent.wait(30)
    wait_for(lambda: not any(_running(p) for p in pids), "orphaned producers to exit")
    # With everyone gone, the helper's resource tracker unlinks the segments its killed owner could not.
    segments = [SHM_DIR / n for n in names]
    assert segments
    wait_for(lambda: not any(p.exists() for p in segments), "the resource tracker to unlink the segments")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /dev/shm")
def test_next_start_frees_what_a_killed_process_group_left(tmp_path: Path) -> None:
    # docker kill, the OOM killer: the whole group dies, resource tracker included, so nothing unlinks anything.
    parent, pids, names = _start_helper(tmp_path, start_new_session=True)
    os.killpg(parent.pid, signal.SIGKILL)
    parent.wait(30)
    wait_for(lambda: not any(_running(p) for p in pids), "the group's producers to die")
    # Alone, the group leaves 2 segments and 5 semaphores. Another streamfuse start on this machine (a second test
    # run, a demo) frees a dead group's names too, so some may be gone already: each name still here must be freed by
    # this call, and nothing of the group may remain.
    left = set(_owned_by(parent.pid))
    assert left <= set(names) | {n for n in left if n.startswith("sem.")}
    removed = set(remove_stale_rings())  # what Producers() runs first
    assert not _owned_by(parent.pid) and (not left or left & removed)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/shm")
def test_rings_that_do_not_fit_the_free_shared_memory_are_refused_in_one_line(monkeypatch) -> None:
    class Tiny:  # a 64 MiB /dev/shm (docker's default) with 10 MiB free
        f_bavail, f_frsize = 10 * 256, 4096

    monkeypatch.setattr("streamfuse.capture.producer_process.os.statvfs", lambda path: Tiny)
    # 3 bytes a pixel a ring, IR's too: its 8-bit frame and a thermal camera's 16-bit counts; each ring (8 MiB) fits,
    # the two do not
    cfg = SourceConfig(kind="synthetic", width=1280, height=720)
    with pytest.raises(ValueError, match=r"need 16 MiB of shared memory \(ir 1280x720, vis 1280x720, 3 slots each\) "
                                         r"but /dev/shm has 10 MiB free") as info:
        start_producers(cfg, cfg)
    assert "\n" not in str(info.value)


_FORK_REFUSED = """
import os


def refused():
    raise BlockingIOError(11, "Resource temporarily unavailable")


os.fork = refused
"""
_START = """
from multiprocessing import forkserver

real = forkserver.set_forkserver_preload
forkserver.set_forkserver_preload = lambda modules: real([*modules, "fork_refused"])  # the server's forks fail
from streamfuse.capture.producer import start_producers
from streamfuse.capture.sources import SourceConfig

cfg = SourceConfig(kind="synthetic", width=64, height=48)
try:
    start_producers(cfg, cfg)
except OSError as exc:
    print(exc)
"""


@pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(), reason="fork server")
def test_producers_the_process_limit_leaves_no_room_for_are_one_line_each_side(tmp_path: Path) -> None:
    # Under ulimit -u the fork server's fork fails: it died with its traceback, and the run with another, an EOFError
    (tmp_path / "fork_refused.py").write_text(_FORK_REFUSED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", _START], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert out == ("[Errno 11] cannot start the ir producer process: its fork server could not make it (is the process "
                   "limit, ulimit -u, reached?)\n"), err
    assert err == "streamfuse fork server: BlockingIOError: [Errno 11] Resource temporarily unavailable\n"
    assert not list(SHM_DIR.glob(f"*streamfuse_{proc.pid}_*"))  # its rings and semaphores removed


def test_a_producer_failing_before_its_body_runs_says_so_in_one_whole_line_naming_its_pid(monkeypatch) -> None:
    # the fork server's hook, which the producers it forks keep, named the server for a producer's failure (the
    # program's main module failing in it) and wrote its line in two parts, which the other producer's line ran into
    import importlib.util

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the module sets the server's
    # loaded aside: imported, it tells a producer's start (``producer_process.end_start``) in this process too
    spec = importlib.util.find_spec("streamfuse.capture.fork_server_quiet")
    fork_server_quiet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fork_server_quiet)
    monkeypatch.setattr(fork_server_quiet, "SERVER_PID", os.getpid() + 1)  # a producer: forked
    writes = []
    monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(write=writes.append, flush=lambda: None))
    fork_server_quiet._one_line(RuntimeError, RuntimeError("boom"), None)
    assert writes == [f"streamfuse producer (pid {os.getpid()}): RuntimeError: boom\n"]


def test_a_producer_that_ran_the_programs_call_again_says_so_in_one_whole_line(monkeypatch) -> None:
    # written in two parts (print's text, then its newline), the two producers' lines ran together
    from streamfuse.capture import producer_process

    class Exited(Exception):
        pass

    def exit_now(code: int) -> None:
        raise Exited(code)

    forked = types.ModuleType("quiet")
    forked.SERVER_PID = os.getpid() + 1  # imported in the server, which forked this process
    monkeypatch.setitem(sys.modules, producer_process._QUIET, forked)
    monkeypatch.setattr(producer_process.os, "_exit", exit_now)
    writes = []
    monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(write=writes.append, flush=lambda: None))
    with pytest.raises(Exited, match=f"^{producer_process.MAIN_RAN_AGAIN}$"):
        producer_process.end_start("run_live was called again")
    assert writes == ["streamfuse producer: run_live was called again\n"]


def test_a_start_that_fails_for_its_second_source_leaves_the_first_one_stopped(monkeypatch) -> None:
    """A start that fails part-way (no memory, no file descriptors left) raises with no producer left running and no
    ring left in shared memory."""
    from streamfuse.capture import producer

    started, rings = [], []

    def start_then_fail(ctx, section, cfg, ring, *args):
        if started:
            raise OSError(24, "Too many open files")
        proc, conn = start_process(ctx, section, cfg, ring, *args)
        started.append(proc)
        rings.append(ring.name)
        return proc, conn

    start_process = producer.start_process
    monkeypatch.setattr(producer, "start_process", start_then_fail)
    cfg = SourceConfig(kind="synthetic", width=64, height=48)
    try:
        with pytest.raises(OSError, match="Too many open files"):
            start_producers(cfg, cfg)
        wait_for(lambda: not started[0].is_alive(), "the first producer to stop")
        assert not (SHM_DIR / rings[0]).exists()
    finally:
        started[0].kill()
        started[0].join(10)


_TS_SERVER = """
import socket, sys, time
import av
import numpy as np
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(1)
print("listening", flush=True)
conn, _ = server.accept()
with conn.makefile("wb", buffering=0) as sink, av.open(sink, "w", format="mpegts") as out:
    stream = out.add_stream("mpeg2video", rate=25)
    stream.width, stream.height, stream.pix_fmt, stream.gop_size = 64, 48, "yuv420p", 5
    for i in range(10**6):  # 25 fps until killed
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 256, np.uint8), format="bgr24")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
        time.sleep(0.04)
"""


def _serve_mpegts(port: int) -> subprocess.Popen:
    """A live MPEG-TS sender on a loopback port (a network camera); returns once it listens."""
    server = subprocess.Popen([sys.executable, "-c", _TS_SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "listening", "the MPEG-TS server did not start"
    return server


def test_network_stream_that_goes_away_and_comes_back_is_reconnected_while_the_other_goes_on(caplog) -> None:
    caplog.set_level(logging.INFO, logger="streamfuse.capture.producer")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _serve_mpegts(port)
    vis = SourceConfig(kind="stream", path=f"tcp://127.0.0.1:{port}", fps=25)
    prod = start_producers(SourceConfig(kind="synthetic", width=64, height=48), vis, backoff_s=0.1)
    names = prod.shm_names()
    try:
        before, _ = collect(prod, lambda f, e: sum(x.stream == "vis" for x in f) >= 5, timeout=60)
        server.kill()  # the camera goes away
        server.wait(30)
        during, lost = collect(prod, lambda f, e: e and sum(x.stream == "ir" for x in f) >= 10)
        server = _serve_mpegts(port)  # ... and comes back
        back_ns, back = time.time_ns(), time.monotonic()
        after, _ = collect(prod, lambda f, e: any(x.stream == "vis" and x.t_capture_ns > back_ns for x in f),
                           timeout=60)
        resumed_s = time.monotonic() - back
        names += prod.shm_names()
    finally:
        server.kill()
        server.wait(30)
        assert_stopped(prod, names)
    assert lost[0].stream == "vis" and lost[0].restarting  # the loss, in one line, and a reconnect planned
    assert f"tcp://127.0.0.1:{port}" in lost[0].message and "\n" not in lost[0].message
    assert sum(f.stream == "ir" for f in during) >= 10  # the other stream kept flowing meanwhile
    vis_seq = [f.seq for f in before + during + after if f.stream == "vis"]
    assert vis_seq == sorted(set(vis_seq))  # numbering continues across the reconnects
    print(f"stream output resumed {resumed_s:.2f} s after the server came back")


class _Counting:
    """A source of ``(48, 64)`` frames numbered from 0 at 30 fps that states no frame interval of its own (the config's
    ``fps`` stands for it)."""

    def __init__(self) -> None:
        self.n, self.stop_event, self.warn = 0, None, None

    def read(self) -> Frame:
        self.n += 1
        return Frame("ir", self.n - 1, (self.n - 1) * 1000, np.zeros((48, 64), np.uint8))

    def __enter__(self) -> _Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Written:
    """What a producer wrote into its ring, the pipe's messages, and a stop flag set after ``n`` frames."""

    def __init__(self, n: int) -> None:
        self.frames: list[Frame] = []
        self.sent: list[tuple[str, str]] = []
        self.n = n

    def write(self, frame: Frame, stop: object) -> bool:
        self.frames.append(frame)
        return True

    def is_set(self) -> bool:
        return len(self.frames) >= self.n

    def send(self, message: tuple[str, str]) -> None:
        self.sent.append(message)

    def close(self) -> None:
        pass


def test_a_resumed_producer_skips_what_was_delivered_continues_the_numbers_and_beats_per_frame(monkeypatch) -> None:
    # A restarted producer of a file repeated the frames delivered before its crash, or numbered its frames one off (a
    # gap the pairer counts as a drop); its beat is what the parent's stall watch reads: frames not counted there, or
    # an interval taken as milliseconds for nanoseconds, had a healthy producer killed as stalled.
    from streamfuse.capture import producer_process

    monkeypatch.setattr(producer_process, "STOP_SIGNALS", ())  # the test process keeps its own signal handlers
    monkeypatch.setattr(producer_process, "open_source", lambda section, cfg: _Counting())
    out, beat = _Written(3), [0, 0, 0, 0, 0, 0]
    cfg = SourceConfig(kind="synthetic", width=64, height=48, fps=30.0)
    producer_process.produce("ir", cfg, out, out, out, (10, 2, 5_000), beat)  # resume at seq 10, 2 frames in
    assert [(f.seq, f.t_capture_ns) for f in out.frames] == [(10, 7_000), (11, 8_000), (12, 9_000)]
    assert beat[:2] == [3, round(1e9 / 30)] and out.sent == []


class _Passing(_Counting):
    """A source that joined its time line late: its first 4 frames passed over (``BaseSource.passed``)."""

    passed = 0

    def read(self) -> Frame:
        self.passed, self.n = 4, max(self.n, 4)
        return super().read()


def test_the_frames_a_late_source_passed_over_keep_their_numbers(monkeypatch) -> None:
    # numbered from its first frame given, a restart (which skips the frames numbered before its own) gave the
    # frames of the time gone again, the time line's present ones after them
    from streamfuse.capture import producer_process

    monkeypatch.setattr(producer_process, "STOP_SIGNALS", ())  # the test process keeps its own signal handlers
    monkeypatch.setattr(producer_process, "open_source", lambda section, cfg: _Passing())
    out, beat = _Written(3), [0, 0, 0, 0, 0, 0]
    producer_process.produce("ir", SourceConfig(kind="file", path="clip.mkv"), out, out, out, (0, 0, 0), beat)
    assert [(f.seq, f.t_capture_ns) for f in out.frames] == [(4, 4_000), (5, 5_000), (6, 6_000)]


class _Slowing(_Counting):
    """A source whose frame interval is known only from its third frame on (a file whose times stand still)."""

    @property
    def frame_interval_ns(self) -> int:
        return 1_000 if self.n < 3 else 33_000_000


def test_the_stall_watch_gets_a_frame_interval_the_source_learns_after_its_first_frame(monkeypatch) -> None:
    from streamfuse.capture import producer_process

    monkeypatch.setattr(producer_process, "STOP_SIGNALS", ())
    monkeypatch.setattr(producer_process, "open_source", lambda section, cfg: _Slowing())
    out, beat = _Written(5), [0, 0, 0, 0, 0, 0]
    producer_process.produce("ir", SourceConfig(kind="file", path="x.mp4"), out, out, out, (0, 0, 0), beat)
    assert beat[:2] == [5, 33_000_000]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="segments in /dev/shm")
def test_frames_that_outgrow_a_ring_shared_memory_has_no_room_for_end_the_source_in_one_line(monkeypatch) -> None:
    # A file's frames larger than its source's width x height grow the ring: with /dev/shm short of room, the producer
    # died by SIGBUS at its first copy into the bigger ring, again at each restart, and the run ended on "killed by
    # SIGBUS"
    from streamfuse.capture import producer_process
    from streamfuse.capture.shm_ring import ShmRing

    real = os.posix_fallocate

    def fallocate(fd: int, offset: int, size: int) -> None:  # a /dev/shm with 4 KiB free
        if offset + size > 4096:
            raise OSError(28, "No space left on device")
        real(fd, offset, size)

    monkeypatch.setattr(producer_process, "STOP_SIGNALS", ())
    monkeypatch.setattr(producer_process, "open_source", lambda section, cfg: _Counting())
    ring = ShmRing("ir", slots=3, slot_bytes=16)  # the (48, 64) frames do not fit its slots
    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    beat, out = [0, 0, 0, 0, 0, 0], _Written(0)
    stop = types.SimpleNamespace(is_set=lambda: beat[0] >= 5)
    cfg = SourceConfig(kind="synthetic", width=16, height=16, fps=30.0)
    with pytest.raises(SystemExit, match="1"):
        producer_process.produce("ir", cfg, ring, out, stop, (0, 0, 0), beat)
    assert beat[0] == 0 and len(out.sent) == 1 and out.sent[0][0] == "error"
    assert re.fullmatch(r"ir: a capture ring of 3 frames of 3072 bytes needs [\d.]+ MiB of shared memory but /dev/shm "
                        r"has [\d.]+ MiB free \(No space left on device\): .*", out.sent[0][1])
    assert not list(SHM_DIR.glob(f"{ring.name}*"))  # closed and unlinked as the source ended


class _PacedClip(BaseSource):
    """A realtime 30 fps clip of ``(48, 64)`` frames from time 0 on a clock the test sets; pacing sleeps are noted in
    ``slept`` (seconds), not slept."""

    def __init__(self, clock: list[int], slept: list[float], section: str = "ir", first_ns: int = 0) -> None:
        super().__init__(section, SourceConfig(kind="file", path="clip.mkv", fps=30.0))
        self.clock, self.slept, self.n, self.first_ns = clock, slept, 0, first_ns

    def _open(self) -> None:
        pass

    def _read(self) -> Frame:
        t_ns, self.n = self.first_ns + self.n * round(1e9 / 30), self.n + 1
        self._pace(t_ns)
        return Frame(self.section, self.n - 1, t_ns, np.zeros((48, 64), np.uint8))

    def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock[0] += max(0, round(seconds * 1e9))


@pytest.mark.parametrize("shift_ns", [0, 7 * 10**9])  # 7 s: a later pass of a file replayed in a loop
def test_a_restarted_realtime_producer_keeps_its_predecessors_time_line(monkeypatch, shift_ns) -> None:
    # A looping file source restarted after a crash or a stall was paced from its own first frame: the restart's
    # delay and the frames it skipped put it behind the other source for good (1.7 s after one kill), so nothing
    # paired again and the live run published nothing for the rest of its life
    from streamfuse.capture import producer_process, sources

    clock, slept, pace = [10**12], [], [0, 0, 0, 0]  # perf_counter ns; the shared time line a Producers worker holds
    monkeypatch.setattr(producer_process, "STOP_SIGNALS", ())
    monkeypatch.setattr(sources.time, "perf_counter_ns", lambda: clock[0])
    monkeypatch.setattr(producer_process, "open_source", lambda section, cfg: _PacedClip(clock, slept))
    cfg = SourceConfig(kind="file", path="clip.mkv", fps=30.0)
    out = _Written(31)  # one second of frames, paced
    producer_process.produce("ir", cfg, out, out, out, (0, 0, shift_ns), [0, 0, 0, 0, 0, 0], pace)
    assert pace[:2] == [10**12, shift_ns] and clock[0] == 10**12 + 30 * round(1e9 / 30)
    clock[0] += 2 * 10**9  # killed, restarted 2 s later: it resumes after the 31 frames delivered
    slept.clear()
    out = _Written(100)
    producer_process.produce("ir", cfg, out, out, out, (31, 31, shift_ns), [0, 0, 0, 0, 0, 0], pace)
    assert [f.seq for f in out.frames] == list(range(31, 131))
    # the frames of the two seconds lost go at once (no sleep), then it paces on in step: its last frame (4.33 s into
    # the clip) goes when it would have without the crash, not 2 s and a restart's frame later
    assert sum(s > 0 for s in slept) == 130 - 90 and clock[0] == pytest.approx(10**12 + 130 * 10**9 / 30, abs=1e3)


@pytest.mark.parametrize("apart_s", [300.0, -300.0])
def test_a_paced_input_timed_on_another_clock_than_the_other_is_paced_on_its_own_and_said(monkeypatch, apart_s) -> None:
    # Folders numbered from 0 and from 9000 (300 s apart at 30 frames/s) on one time line: the later one slept 300 s
    # without a word, as if its camera were dead, or the earlier one raced through its frames, pass after pass
    from streamfuse.capture import sources

    clock, slept, said, line = [10**12], [], [], [0, 0, 0, 0]
    monkeypatch.setattr(sources.time, "perf_counter_ns", lambda: clock[0])
    clips = [_PacedClip(clock, [], "vis"), _PacedClip(clock, slept, "ir", round(apart_s * 1e9)),
             _PacedClip(clock, [], "ir", round(apart_s * 1e9))]  # the last: that source's producer restarted
    for clip in clips:
        clip.pace_origin, clip.warn = line, said.append
    for clip in clips:
        clip.read()
        clip.read()
    assert slept == [pytest.approx(1 / 30)]  # its second frame one frame interval after its first
    assert len(said) == 1 and f"300.0 s {'after' if apart_s > 0 else 'before'} the other source's" in said[0]


@pytest.mark.parametrize("kind", ["synthetic", "file"])  # a time line each, or one for both
def test_the_time_lines_locks_are_named_so_a_start_after_a_killed_run_frees_them(kind) -> None:
    # multiprocessing names a shared array's own lock mp-<random>: every run killed at once (kill -9 of its group)
    # left them in /dev/shm for good, as no start can tell them from another program's
    from streamfuse.capture.producer_process import process_context
    from streamfuse.capture.time_line import pace_lines

    cfg = SourceConfig(kind=kind, path="clip.mkv", width=64, height=48, realtime=True)
    for line in pace_lines(process_context(), {"ir": cfg, "vis": cfg}).values():
        assert line.get_lock()._semlock.name.startswith(f"/{SHM_PREFIX}{os.getpid()}_")  # sem.streamfuse_PID_*


def test_two_paced_files_go_by_one_time_line_so_the_one_starting_later_pairs(tmp_path: Path) -> None:
    # Each paced source began its own time line at its first frame: an IR video starting 0.75 s into the visible
    # one's times (its camera started later) came 0.75 s before the visible frames of its time, overflowed the
    # pairing queue, and a live run paired nothing (a replay of the same files paired every IR frame)
    from streamfuse.sync import Pairer, SyncConfig

    write_video(tmp_path / "ir.mkv", 30, fps=20, first=15)
    write_video(tmp_path / "vis.mkv", 45, fps=20)
    cfg = SourceConfig(kind="file", realtime=True, restart=False, stall_factor=0)
    prod = start_producers(replace(cfg, path=str(tmp_path / "ir.mkv")), replace(cfg, path=str(tmp_path / "vis.mkv")),
                           slots=64)  # slots enough that the rings overwrite nothing on a loaded machine
    names = prod.shm_names()
    try:
        frames, _ = collect(prod, lambda f, e: False)
    finally:
        assert_stopped(prod, names)
    pairer = Pairer(SyncConfig(slop_ms=10.0, queue_size=8))
    pairs = [pair for frame in frames for pair in pairer.push(frame)] + pairer.flush()
    assert [(int(p.ir.image[0, 0]), int(p.vis.image[0, 0, 0])) for p in pairs] == [(i, i) for i in range(15, 45)]
    assert pairer.stats()["ir"]["dropped"] == 0


def _ran_on_or_held(beat) -> bool:
    """A producer's source has paced 30 frames (1.5 s of its time line at 20 frames/s), or holds its first frame: its
    first pacing wait posted (``beat[2]``, read first) before any frame was written (``beat[0]``)."""
    waited = beat[2] > 0
    return beat[0] >= 30 or (waited and not beat[0])


def test_a_paced_file_whose_producer_starts_late_pairs_from_its_first_frame_on_their_time_line(tmp_path: Path,
                                                                                             monkeypatch) -> None:
    # The first paced source began the shared time line at its first frame: where the other's producer started late
    # (9-13 s on a loaded machine), its first frames were all due long before and came at once, after the visible
    # frames of their time had been paired or dropped: pairs began at (22, 22), not (15, 15). Here the IR producer
    # starts once the visible one has paced 1.5 s of frames, or holds its first frame for it.
    from streamfuse.sync import Pairer, SyncConfig

    write_video(tmp_path / "ir.mkv", 30, fps=20, first=15)
    write_video(tmp_path / "vis.mkv", 45, fps=20)
    spawn, late = Producers._spawn, []

    def spawn_ir_late(self, w, resume) -> None:
        if w.section == "ir" and not late:  # held back as a restart due never, until the test makes it due
            late.append(w)
            w.state, w.restart_at = "waiting", float("inf")
            return
        spawn(self, w, resume)

    monkeypatch.setattr(Producers, "_spawn", spawn_ir_late)
    cfg = SourceConfig(kind="file", realtime=True, restart=False, stall_factor=0)
    prod = start_producers(replace(cfg, path=str(tmp_path / "ir.mkv")), replace(cfg, path=str(tmp_path / "vis.mkv")),
                           slots=64)
    try:
        frames, _ = collect(prod, lambda f, e: _ran_on_or_held(prod._workers["vis"].beat))
        late[0].restart_at = 0.0
        rest, _ = collect(prod, lambda f, e: False)
    finally:
        assert_stopped(prod, prod.shm_names())
    pairer = Pairer(SyncConfig(slop_ms=10.0, queue_size=8))
    pairs = [pair for frame in frames + rest for pair in pairer.push(frame)] + pairer.flush()
    assert [(int(p.ir.image[0, 0]), int(p.vis.image[0, 0, 0])) for p in pairs] == [(i, i) for i in range(15, 45)]


def test_a_paced_file_starts_without_the_other_whose_producer_failed_before_its_first_frame(tmp_path: Path,
                                                                                          caplog) -> None:
    # a corrupt visible file must not hold the IR file's frames back (for the wait's bound), and it is said
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    write_video(tmp_path / "ir.mkv", 10, fps=20)
    (tmp_path / "vis.mkv").write_bytes(b"not a video" * 100)
    cfg = SourceConfig(kind="file", realtime=True, restart=False, stall_factor=0)
    prod = start_producers(replace(cfg, path=str(tmp_path / "ir.mkv")), replace(cfg, path=str(tmp_path / "vis.mkv")))
    names = prod.shm_names()
    try:
        frames, events = collect(prod, lambda f, e: False)
    finally:
        assert_stopped(prod, names)
    assert [f.seq for f in frames] == list(range(10)) and [e.stream for e in events] == ["vis", "ir"]
    said = [r.getMessage() for r in caplog.records if "time line" in r.getMessage()]
    assert said == ["ir: its time line starts without vis, whose producer ended before the line began"]


class _Died:
    """A producer process that has exited (SIGKILL)."""

    pid, exitcode = 4242, -signal.SIGKILL

    def join(self, timeout: float | None = None) -> None:
        pass


def test_restart_delays_double_per_failure_in_a_row_and_start_again_after_a_stable_run(caplog) -> None:
    # Without the doubling a camera that dies at once on every start (a flaky USB link) was restarted ten times a
    # second for as long as it failed, flooding the log; without the reset, one that failed once a day after running
    # for hours waited the longest delay (8 s) each time, a gap in the stream for no reason.
    from collections import deque

    from streamfuse.capture.producer import _STABLE_S, _Worker

    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    prod = Producers.__new__(Producers)  # its supervision alone: no process started
    prod._backoff, prod._events = (0.1, 0.5), deque()  # doubled up to backoff_max_s
    w = _Worker("ir", SourceConfig(kind="synthetic", width=64, height=48))
    for ran_s in (0.0, 0.0, 0.0, 0.0, _STABLE_S + 1, 0.0):
        w.proc, w.state, w.started_at = _Died(), "running", time.monotonic() - ran_s
        prod._on_exit(w)
        assert w.state == "waiting"
    said = [r.getMessage().rsplit("restarting in ", 1)[1] for r in caplog.records]
    assert said == ["0.1 s", "0.2 s", "0.4 s", "0.5 s", "0.1 s", "0.2 s"]
    assert [e.restarting for e in prod._events] == [True] * 6


def test_restart_delays_by_default_start_at_a_tenth_of_a_second_and_double_up_to_eight(caplog) -> None:
    # as the README says: a camera failing for minutes is retried every 8 s, neither every second nor ever more rarely
    from streamfuse.capture.producer import _Worker

    cfg = SourceConfig(kind="synthetic", width=32, height=24, stall_factor=0)
    prod = start_producers(cfg, cfg)
    assert_stopped(prod, prod.shm_names())  # its supervision alone from here: no process restarted
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    w = _Worker("ir", cfg)
    for _ in range(10):
        w.proc, w.state, w.started_at = _Died(), "running", time.monotonic()
        prod._on_exit(w)
    said = [r.getMessage().rsplit("restarting in ", 1)[1] for r in caplog.records]
    assert said == ["0.1 s", "0.2 s", "0.4 s", "0.8 s", "1.6 s", "3.2 s", "6.4 s", "8.0 s", "8.0 s", "8.0 s"]
    w.proc, w.state, w.started_at = _Died(), "running", time.monotonic() - 60  # it ran for a minute this time
    prod._on_exit(w)
    assert caplog.records[-1].getMessage().endswith("restarting in 0.1 s")


def test_a_failed_producer_is_restarted_once_its_delay_is_over_not_before(monkeypatch) -> None:
    from collections import deque

    from streamfuse.capture import producer

    now = 1000.0
    monkeypatch.setattr(producer, "time", types.SimpleNamespace(monotonic=lambda: now))
    prod = Producers.__new__(Producers)  # its supervision alone: no process started
    prod._backoff, prod._events, prod._stopped = (0.5, 8.0), deque(), False
    w = producer._Worker("ir", SourceConfig(kind="synthetic", width=64, height=48))
    w.proc, w.started_at = _Died(), now
    prod._workers, spawned = {"ir": w}, []
    monkeypatch.setattr(prod, "_spawn", lambda worker, resume: spawned.append(worker))
    prod._on_exit(w)
    now = 1000.499
    prod._supervise()
    assert spawned == [] and w.state == "waiting"
    now = 1000.5  # its 0.5 s over
    prod._supervise()
    assert spawned == [w] and w.restarts == 1



def test_a_get_waiting_long_for_frames_restarts_a_producer_when_its_delay_is_over(monkeypatch) -> None:
    # the wait for a frame is cut in 50 ms pieces: a producer's restart is not put off until a long get() ends
    from collections import deque

    from streamfuse.capture import producer

    clock = types.SimpleNamespace(ms=1_000_000)
    monkeypatch.setattr(producer, "time", types.SimpleNamespace(monotonic=lambda: clock.ms / 1000))
    prod = Producers.__new__(Producers)  # its supervision alone: no process started
    prod._events, prod._stopped, prod._supervise_at = deque(), False, 0.0
    w = producer._Worker("ir", SourceConfig(kind="synthetic", width=64, height=48))
    w.state, w.restart_at = "waiting", 1000.1
    prod._workers, restarted = {"ir": w}, []

    def wait_for_a_frame(timeout: float) -> None:  # none comes: the whole timeout passes (1 ms at least)
        clock.ms += max(round(timeout * 1000), 1)

    def restart(worker: producer._Worker, resume: tuple[int, int, int]) -> None:
        restarted.append(clock.ms)
        worker.state = "ended"

    prod._bell = types.SimpleNamespace(acquire=wait_for_a_frame)
    monkeypatch.setattr(prod, "_spawn", restart)
    assert prod.get(timeout=10.0) is None  # its only source then ended: nothing more to wait for
    assert restarted and restarted[0] <= 1_000_150

def test_a_replayable_source_restarted_in_a_later_pass_resumes_within_that_pass() -> None:
    # A looped file's next pass starts one frame step after its last frame (a file of one frame: 1 / fps); a crash in
    # that pass resumes after the frames of this pass delivered, not of every pass (it skipped past the end)
    from collections import deque

    from streamfuse.capture.producer import _Worker

    prod = Producers.__new__(Producers)
    prod._backoff, prod._events = (0.1, 8.0), deque()
    image, ms = np.zeros((4, 4), np.uint8), 1_000_000
    for times, resume in (((0,), (1, 0, 40 * ms)), ((0, 40 * ms, 80 * ms), (3, 0, 120 * ms))):
        w = _Worker("ir", SourceConfig(kind="file", path="clip.mkv", fps=25))
        prod._workers = {"ir": w}
        for seq, t in enumerate(times):
            prod._see(w, Frame("ir", seq, t, image))
        w.proc, w.started_at, w.message = _Died(), time.monotonic(), ("eos", "ir: end of stream (file clip.mkv)")
        prod._on_exit(w)
        assert w.resume == resume
    for seq in (3, 4):  # the three-frame file's second pass: it crashed after two of its frames
        prod._see(w, Frame("ir", seq, seq * 40 * ms, image))
    w.proc, w.state, w.message, w.seq_at_start = _Died(), "running", None, 3
    prod._on_exit(w)
    assert w.resume == (5, 2, 120 * ms)


def test_a_paced_file_played_again_goes_on_on_the_time_line_it_shares_with_the_other_source() -> None:
    # Paced afresh from its next pass's first frame, a file restarted at its end ran behind the other source by the
    # restart's delay (0.1 s doubling up to 8 s) for good; alone on its time line it is paced afresh as before
    from collections import deque

    from streamfuse.capture.producer import _Worker

    prod = Producers.__new__(Producers)
    prod._backoff, prod._events = (0.1, 8.0), deque()
    cfg = SourceConfig(kind="file", path="clip.mkv", fps=25)
    image, shared, own = np.zeros((4, 4), np.uint8), [10**12, 0], [10**12, 0]
    for ir_line, kept in ((shared, [10**12, 0]), (own, [0, 0])):
        prod._workers = {"ir": _Worker("ir", cfg, pace=ir_line), "vis": _Worker("vis", cfg, pace=shared)}
        w = prod._workers["ir"]
        prod._see(w, Frame("ir", 0, 0, image))
        w.proc, w.started_at, w.message = _Died(), time.monotonic(), ("eos", "ir: end of stream (file clip.mkv)")
        prod._on_exit(w)
        assert w.state == "waiting" and ir_line == kept


class _DroppingRing:
    """A retired producer's ring: empty, ``dropped`` frames overwritten while it ran."""

    def __init__(self, dropped: int) -> None:
        self.dropped = dropped

    def try_read(self) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {"dropped": self.dropped, "unread": 0}

    def close(self) -> None:
        pass


def test_frames_dropped_by_every_retired_producer_of_a_source_add_up() -> None:
    # only the last retired producer's drops were kept: a source restarted twice reported the drops of its second
    # producer alone, and the run's capture_dropped hid the others
    from streamfuse.capture.producer import _Worker

    prod = Producers.__new__(Producers)
    w = _Worker("ir", SourceConfig(kind="synthetic", width=64, height=48))
    prod._workers = {"ir": w}
    # -1: a ring whose lock its killed producer held (stats() could not read it) takes nothing off the others
    for dropped, skipped in ((3, 1), (-1, 0), (4, 2)):
        w.ring, w.beat = _DroppingRing(dropped), [0, 0, 0, skipped, 0, 0]
        prod._retire(w)
    stats = prod.stats()["ir"]
    assert (stats["dropped"], stats["skipped"], stats["queued"]) == (7, 3, 0)


class _Queued(_DroppingRing):
    """A running producer's ring holding ``frames``, oldest first."""

    def __init__(self, frames: list[Frame]) -> None:
        super().__init__(0)
        self.frames = frames

    def peek_time(self) -> int | None:
        return self.frames[0].t_capture_ns if self.frames else None

    def try_read(self) -> Frame | None:
        return self.frames.pop(0) if self.frames else None


def test_frames_of_both_sources_come_oldest_capture_time_first() -> None:
    # taken newest first, a source's frames waiting in its ring went past the other's newer ones: the pairer saw its
    # streams out of time order and left pairs unmade
    from collections import deque

    from streamfuse.capture.producer import _Worker

    image = np.zeros((4, 4), np.uint8)
    prod = Producers.__new__(Producers)
    prod._events = deque()
    prod._workers = {name: _Worker(name, SourceConfig(kind="synthetic", width=64, height=48)) for name in ("ir", "vis")}
    prod._workers["ir"].ring = _Queued([Frame("ir", i, t, image) for i, t in enumerate((10, 40, 70))])
    prod._workers["vis"].ring = _Queued([Frame("vis", i, t, image) for i, t in enumerate((20, 30, 80))])
    order = [(f.stream, f.t_capture_ns) for f in iter(prod._next, None)]
    assert order == [("ir", 10), ("vis", 20), ("vis", 30), ("ir", 40), ("ir", 70), ("vis", 80)]
    assert prod._workers["ir"].delivered == prod._workers["vis"].delivered == 3


class _Silent:
    """A producer process that is alive and writes nothing."""

    pid, killed = 4243, False

    def kill(self) -> None:
        self.killed = True

    def join(self, timeout: float | None = None) -> None:
        pass


def _supervised(prod: Producers, w: Any, clock: SleptClock, seconds: float, every_s: float = 0.05) -> None:
    """Supervision rounds of ``w`` every ``every_s`` of ``clock`` (the live loop's pace) for ``seconds``, its watch
    clock ticking on time in between; the rounds' times are logged in ``prod.rounds``."""
    from streamfuse.capture.stall import TICK_S

    start, next_round = clock.ns, clock.ns + round(every_s * 1e9)
    while clock.ns - start < round(seconds * 1e9):
        clock.sleep(min(TICK_S, (next_round - clock.ns) / 1e9))
        prod._watch.tick()
        if clock.ns >= next_round:
            next_round += round(every_s * 1e9)
            prod._check_stall(w)
            prod.rounds.append((clock.ns - start) / 1e9)


def _silent_worker(monkeypatch, cfg: SourceConfig, frames: int, queued: list | None = None,
                   pacing_s: float = 0.0) -> tuple[Producers, Any, SleptClock]:
    """A supervisor of one live, silent producer of ``cfg`` that has written ``frames`` (delivered), on a fake clock;
    ``pacing_s``: the producer waits that long for its next frame's time."""
    from streamfuse.capture import producer
    from streamfuse.capture.stall import WatchClock

    clock = SleptClock()
    clock.sleep(100.0)
    monkeypatch.setattr(producer, "time", clock)
    prod = Producers.__new__(Producers)
    prod._watch, prod.rounds = WatchClock(clock), []
    w = producer._Worker("ir", cfg)
    pacing_until = clock.monotonic_ns() + round(pacing_s * 1e9) if pacing_s else 0
    w.proc, w.ring, w.beat = _Silent(), _Queued(queued or []), [frames, round(1e9 / cfg.fps), pacing_until, 0, 0, 0]
    w.beats_seen, w.last_seq = -1, frames - 1
    prod._check_stall(w)  # the supervisor sees its beats: silence from now on
    return prod, w, clock


@pytest.mark.parametrize(("stall_factor", "queued", "beats", "killed"), [
    (20, [], 1, True),  # a frame delivered and nothing since: 5 s of silence (past 20 intervals and 2 s) is a stall
    (20, [Frame("ir", 1, 0, np.zeros((4, 4), np.uint8))], 1, False),  # a frame waits unread: the consumer is behind
    (0, [], 1, False)])  # stall_factor 0: never
def test_a_producer_silent_for_its_stall_allowance_is_killed(monkeypatch, stall_factor, queued, beats,
                                                             killed) -> None:
    cfg = SourceConfig(kind="synthetic", width=64, height=48, stall_factor=stall_factor)
    prod, w, clock = _silent_worker(monkeypatch, cfg, beats, queued)
    _supervised(prod, w, clock, 5.0)
    assert w.proc.killed == killed and w.stalls == killed


@pytest.mark.parametrize("round_s", [0.05, 1.5], ids=["normal-loop", "slow-loop"])
@pytest.mark.parametrize(("late_s", "silent_s", "killed"), [(5.0, 0.0, False), (0.0, 5.0, True), (5.0, 2.5, True)],
                         ids=["host-held", "producer-silent", "silent-after-the-hold"])
def test_only_the_silence_its_supervisor_saw_is_a_producers(monkeypatch, late_s, silent_s, killed, round_s) -> None:
    # a whole host held 5 s (a VM paused, the process group stopped) held the supervisor too: its next round came
    # 5 s late and took every producer for stalled; a producer silent while the supervisor ran is still killed,
    # however long the live loop's rounds take
    cfg = SourceConfig(kind="synthetic", width=64, height=48, fps=30.0)
    prod, w, clock = _silent_worker(monkeypatch, cfg, 1)
    _supervised(prod, w, clock, 0.5)
    clock.sleep(late_s)  # its watch clock's thread held with it
    prod._watch.tick()
    prod._check_stall(w)
    _supervised(prod, w, clock, silent_s, every_s=round_s)
    assert w.proc.killed == killed and w.stalls == killed


@pytest.mark.parametrize("round_s", [0.05, 1.5, 3.0], ids=["normal-loop", "slow-loop", "slower-loop"])
def test_a_hung_producer_is_found_at_its_limit_whatever_the_loops_pace(monkeypatch, round_s) -> None:
    # a live loop fusing under 2 frames/s looks at its producers once a round: counting at most 0.5 s a round, it
    # found a producer hung for its 4 s limit only after 8 rounds (12 s at 1.5 s a round)
    cfg = SourceConfig(kind="synthetic", width=64, height=48, fps=5.0)  # 5 fps x the default stall_factor 20: 4 s
    prod, w, clock = _silent_worker(monkeypatch, cfg, 1)
    _supervised(prod, w, clock, 4.0 + round_s, every_s=round_s)
    assert w.proc.killed and w.stalls == 1
    silent_s = float(w.stall_line.split("no frame for ")[1].split(" s")[0])
    first_past = next(t for t in prod.rounds if t > 4.0)  # found by the loop's first round past its limit
    assert 4.0 < silent_s <= first_past + 0.01


@pytest.mark.parametrize(("silent_s", "killed"), [(1.0, False), (2.5, True)], ids=["starved", "stalled"])
def test_a_fast_source_is_not_killed_for_a_busy_hosts_pause(monkeypatch, silent_s, killed) -> None:
    # 60 frames/s x stall_factor 20 is 0.33 s: a busy host leaves a process off the CPU that long, and restarting it
    # cost more frames than the pause; a source silent past the floor is still killed
    prod, w, clock = _silent_worker(monkeypatch, SourceConfig(kind="synthetic", width=64, height=48, fps=60.0), 1)
    _supervised(prod, w, clock, silent_s)
    assert w.proc.killed == killed and w.stalls == killed


@pytest.mark.parametrize(("frames", "silent_s", "paced", "killed"), [
    (1, 3.99, False, False), (1, 4.01, True, False), (1, 4.01, False, True),  # 5 fps x the default stall_factor 20
    (0, 29.9, False, False), (0, 30.1, False, True)])  # before its first frame: 30 s to open its source
def test_a_producer_is_killed_once_silent_past_its_allowance_and_not_before(monkeypatch, frames, silent_s, paced,
                                                                            killed) -> None:
    # paced: the source posted that it waits for its next frame's time (a recording with a gap in its timestamps)
    cfg = SourceConfig(kind="synthetic", width=64, height=48, fps=5.0)
    prod, w, clock = _silent_worker(monkeypatch, cfg, frames, pacing_s=silent_s + 1 if paced else 0.0)
    _supervised(prod, w, clock, silent_s, every_s=0.1)
    prod._check_stall(w)  # a process slow to die is not reported, nor killed, twice
    assert w.proc.killed == killed and w.stalls == killed


@pytest.mark.parametrize(("steps", "killed"), [(1, False), (0, True)], ids=["building", "hung"])
def test_an_open_that_steps_on_is_not_a_stall_and_one_that_hangs_is(monkeypatch, steps, killed) -> None:
    # a large synthetic scene's build takes seconds; on a busy host longer than the first-frame allowance, and its
    # producer was killed and restarted over and over; an open hung in FFmpeg makes no step and is still killed
    from streamfuse.capture.stall import FIRST_FRAME_S

    prod, w, clock = _silent_worker(monkeypatch, SourceConfig(kind="synthetic", width=64, height=48), 0)
    for _ in range(round(2 * FIRST_FRAME_S)):  # no frame yet, for twice its first frame's allowance
        w.beat[4] += steps
        _supervised(prod, w, clock, 1.0, every_s=0.1)
    assert w.proc.killed == killed and w.stalls == killed


def test_a_synthetic_scenes_build_beats_as_it_goes(monkeypatch) -> None:
    from streamfuse.capture import producer_process

    monkeypatch.setattr(producer_process, "STOP_SIGNALS", ())
    out, beat = _Written(1), [0, 0, 0, 0, 0, 0]
    cfg = SourceConfig(kind="synthetic", width=64, height=48, realtime=False)
    producer_process.produce("ir", cfg, out, out, out, (0, 0, 0), beat)
    assert beat[0] == 1 and beat[4] >= 8 and out.sent == []  # a step per noise frame of each modality


def _supervising(monkeypatch) -> Producers:
    """A producer set's supervision whose producers are started as processes that have died already."""
    import multiprocessing as mp
    from collections import deque

    from streamfuse.capture import producer
    from streamfuse.capture.stall import WatchClock

    monkeypatch.setattr(producer, "start_process", lambda *args: (_Died(), None))
    prod = Producers.__new__(Producers)
    prod._ctx, prod._slots, prod._bell, prod._stop = mp.get_context("spawn"), 1, None, None
    prod._watch = WatchClock()
    prod._backoff, prod._events = (0.1, 8.0), deque()
    return prod


def test_a_producer_restarted_after_a_stall_reports_its_own_end_not_the_stall(monkeypatch) -> None:
    # the successor of a producer killed as stalled that then fails is reported by what it said, not by the stall
    from streamfuse.capture.producer import _Worker

    prod = _supervising(monkeypatch)
    w = _Worker("ir", SourceConfig(kind="synthetic", width=16, height=16))
    stalled = "ir: producer (pid 4242) stalled: no frame for 1.00 s (...); killed it"
    w.proc, w.started_at, w.last_seq, w.stall_line = _Died(), time.monotonic(), 3, stalled
    prod._on_exit(w)
    w.restarts += 1
    prod._spawn(w, w.resume)  # its successor, which says what went wrong before it ends
    w.message = ("error", "ir: camera lost")
    prod._on_exit(w)
    assert [e.message for e in prod._events] == [stalled, "ir: camera lost"]


def test_a_files_producer_that_dies_again_before_its_next_frame_is_not_restarted_for_ever(monkeypatch) -> None:
    # the restarted producer of frames 5 on died before frame 5: it would die there at every start
    from streamfuse.capture.producer import _Worker

    prod = _supervising(monkeypatch)
    w = _Worker("ir", SourceConfig(kind="file", path="clip.mkv"))
    w.proc, w.started_at, w.last_seq = _Died(), time.monotonic(), 4
    prod._on_exit(w)
    assert w.state == "waiting" and w.resume[0] == 5
    w.restarts += 1
    prod._spawn(w, w.resume)
    prod._on_exit(w)
    assert w.state == "ended" and w.final.kind == "error"


def test_frames_rescued_from_a_dead_producer_come_first_and_before_the_sources_final_event() -> None:
    # the frames left in an ended producer's ring are older than its successor's, and the consumer stops on the
    # source's final event: taken after them, nothing the source delivered is lost
    from collections import deque

    from streamfuse.capture.producer import _Worker

    image = np.zeros((4, 4), np.uint8)
    prod = Producers.__new__(Producers)
    prod._events = deque()
    w = _Worker("ir", SourceConfig(kind="synthetic", width=64, height=48))
    prod._workers = {"ir": w}
    w.pending.append(Frame("ir", 0, 10, image))
    w.ring = _Queued([Frame("ir", 1, 20, image)])
    assert [f.seq for f in (prod._next(), prod._next())] == [0, 1]
    last, final = Frame("ir", 2, 30, image), ProducerEvent("ir", "error", "ir: camera lost")
    w.pending.append(last)
    w.ring, w.state, w.final = None, "ended", final
    assert not prod.done
    assert [prod._next(), prod._next()] == [last, final] and prod.done


@pytest.mark.parametrize(("delivered", "restarts"), [(0, False), (1, True), (5, True)])
def test_a_live_source_failing_is_restarted_once_it_has_delivered_even_one_frame(delivered: int,
                                                                                restarts: bool) -> None:
    # One that reported an error before any frame is a configuration error (a wrong address or password) and is not
    # retried; a camera that delivered its first frame and then lost its link is. Taking one frame for none ended the
    # run of a camera that dropped out right after it opened.
    from collections import deque

    from streamfuse.capture.producer import _Worker

    prod = Producers.__new__(Producers)
    prod._backoff, prod._events = (0.1, 8.0), deque()
    w = _Worker("ir", SourceConfig(kind="synthetic", width=64, height=48))  # live: a wall-clock source
    w.proc, w.started_at, w.last_seq = _Died(), time.monotonic(), delivered - 1
    w.message = ("error", "ir: camera lost")  # what the source itself said
    prod._on_exit(w)
    if restarts:
        assert w.state == "waiting" and w.final is None and [e.restarting for e in prod._events] == [True]
    else:
        assert w.state == "ended" and w.final == ProducerEvent("ir", "error", "ir: camera lost") and not prod._events


@pytest.mark.parametrize("message", [
    ("error", "ir: camera lost"),  # its reconnection failed with an error of its own (not a config error: it worked)
    ("unreachable", "ir: camera '0' is not plugged in")])  # waited for; its event an error like any other
def test_a_camera_that_fails_again_after_a_restart_before_a_frame_is_restarted_again(message) -> None:
    from collections import deque

    from streamfuse.capture.producer import _Worker

    prod = Producers.__new__(Producers)
    prod._backoff, prod._events = (0.1, 8.0), deque()
    w = _Worker("ir", SourceConfig(kind="synthetic", width=64, height=48))  # live: a wall-clock source
    w.proc, w.started_at, w.message = _Died(), time.monotonic(), message
    w.restarts, w.seq_at_start, w.last_seq = 1, 5, 4  # the first producer delivered 5 frames; this one none
    prod._on_exit(w)
    assert w.state == "waiting" and [(e.kind, e.message, e.restarting) for e in prod._events] == [
        ("error", message[1], True)]


def test_a_files_end_is_news_a_streams_a_fault_and_a_final_error_is_left_to_the_consumer(caplog) -> None:
    from collections import deque

    from streamfuse.capture.producer import _Worker

    caplog.set_level(logging.INFO, logger="streamfuse.capture.producer")
    prod = Producers.__new__(Producers)
    prod._backoff, prod._events = (0.1, 8.0), deque()
    for cfg, message in ((SourceConfig(kind="file", path="clip.mkv", restart=False), ("eos", "ir: end (file)")),
                         (SourceConfig(kind="file", path="clip.mkv", restart=False), ("error", "ir: truncated")),
                         (SourceConfig(kind="stream", path="tcp://cam:5000"), ("eos", "ir: end (stream)"))):
        w = _Worker("ir", cfg)
        w.proc, w.started_at, w.message = _Died(), time.monotonic(), message
        prod._on_exit(w)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "ir: end (file)"), (logging.WARNING, "ir: end (stream); restarting in 0.1 s")]


class _Ending(_Counting):
    """A source of ``n`` frames, then its end; ``skipped`` packets counted as it reads."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.limit, self.skipped, self.reads = n, 0, 0

    def read(self) -> Frame | None:
        self.reads += 1
        if self.n >= self.limit:
            return None
        self.skipped += 1
        return super().read()


class _Closed(_Written):
    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_a_producer_at_its_sources_end_says_which_source_ended_and_closes_its_ring_and_pipe(monkeypatch) -> None:
    from streamfuse.capture import producer_process

    monkeypatch.setattr(producer_process, "STOP_SIGNALS", ())  # the test process keeps its own signal handlers
    monkeypatch.setattr(producer_process, "open_source", lambda section, cfg: _Ending(3))
    ring, conn, beat = _Closed(10), _Closed(10), [0, 0, 0, 0, 0, 0]
    seen = []  # the skipped packets the parent reads (telemetry) as each frame is written
    ring.write = lambda frame, stop: seen.append(beat[3]) or ring.frames.append(frame) or True
    cfg = SourceConfig(kind="file", path="clip.mkv")
    producer_process.produce("ir", cfg, ring, conn, ring, (0, 1, 0), beat)  # one frame skipped for a resume
    assert [f.seq for f in ring.frames] == [0, 1] and beat[0] == 2 and seen == [2, 3] and beat[3] == 3
    assert conn.sent == [("eos", "ir: end of stream (file clip.mkv)")] and (ring.closed, conn.closed) == (1, 1)


def test_a_resume_past_the_sources_end_reads_no_further_than_its_end(monkeypatch) -> None:
    from streamfuse.capture import producer_process

    source = _Ending(2)
    producer_process._skip(source, 5)
    assert source.reads == 3  # two frames and the end


@pytest.mark.parametrize(("error", "kind", "message"), [
    ("unreachable", "unreachable", "ir: camera '0' is not plugged in"),
    ("wrong", "error", "ir: camera '0' is not plugged in"),
    ("crash", "error", "ir: producer crashed: ZeroDivisionError: division by zero")])
def test_a_producer_whose_source_fails_reports_it_once_and_exits_with_1(monkeypatch, error, kind, message) -> None:
    from streamfuse.capture import producer_process
    from streamfuse.capture.sources import SourceError

    def fail(section, cfg):
        if error == "crash":
            return 1 / 0
        raise SourceError("ir: camera '0' is not plugged in", unreachable=error == "unreachable")

    monkeypatch.setattr(producer_process, "STOP_SIGNALS", ())
    monkeypatch.setattr(producer_process, "open_source", fail)
    ring, conn = _Closed(1), _Closed(1)
    with pytest.raises(SystemExit) as exited:
        producer_process.produce("ir", SourceConfig(), ring, conn, ring, (0, 0, 0), [0, 0, 0, 0, 0, 0])
    assert exited.value.code == 1 and conn.sent == [(kind, message)] and (ring.closed, conn.closed) == (1, 1)


def test_a_producers_exit_code_in_words() -> None:
    from streamfuse.capture.producer_process import describe_exit

    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(0) == "exited with code 0" and describe_exit(1) == "exited with code 1"
    assert describe_exit(None) == "exited with code None"


def test_packets_skipped_before_an_error_ended_the_source_are_counted(monkeypatch) -> None:
    from streamfuse.capture import producer_process
    from streamfuse.capture.sources import SourceError

    class Truncated(_Ending):
        def read(self) -> Frame | None:
            if self.n == self.limit:
                self.skipped += 4
                raise SourceError("ir: clip.mkv: truncated or corrupt video")
            return super().read()

    monkeypatch.setattr(producer_process, "STOP_SIGNALS", ())
    monkeypatch.setattr(producer_process, "open_source", lambda section, cfg: Truncated(1))
    ring, beat = _Closed(10), [0, 0, 0, 0, 0, 0]
    with pytest.raises(SystemExit):
        producer_process.produce("ir", SourceConfig(), ring, ring, ring, (0, 0, 0), beat)
    assert beat[3] == 5


class _Paced(_Counting):
    """A source with a frame interval of its own (a video's rate) that asks to sleep 0.5 s before each frame through
    the stop event the producer gives it, and a ``skip`` of its own."""

    frame_interval_ns = 40_000_000

    def __init__(self) -> None:
        super().__init__()
        self.skipped_by_skip: list[int] = []

    def read(self) -> Frame:
        self.stop_event.wait(0.5)
        return super().read()

    def skip(self, n: int) -> int:
        self.skipped_by_skip.append(n)
        self.n += n
        return n


def test_a_sources_pacing_sleep_posts_its_end_in_the_beat_and_its_own_interval_is_used(monkeypatch) -> None:
    """The parent takes a source sleeping until its next frame's time (beat[2], monotonic ns) for a paced one, not a
    hung one; beat[1] is the source's own frame interval (a video's rate), not 1 / fps; a resume skips through the
    source's own ``skip`` (unpaced)."""
    from types import SimpleNamespace

    from streamfuse.capture import producer_process

    source, posted = _Paced(), []
    monkeypatch.setattr(producer_process, "STOP_SIGNALS", ())
    monkeypatch.setattr(producer_process, "open_source", lambda section, cfg: source)
    monkeypatch.setattr(producer_process, "time", SimpleNamespace(monotonic_ns=lambda: 1_000))
    out, beat = _Written(2), [0, 0, 0, 0, 0, 0]
    out.wait = lambda timeout: posted.append(beat[2]) or False  # the stop flag's sleep: beat[2] posted before it
    producer_process.produce("ir", SourceConfig(fps=30.0), out, out, out, (4, 4, 0), beat)
    assert posted == [1_000 + 500_000_000] * 2 and beat[1] == 40_000_000
    assert source.skipped_by_skip == [4] and [f.seq for f in out.frames] == [4, 5]


def test_a_stop_flags_wait_says_whether_the_flag_was_set() -> None:
    import multiprocessing as mp

    from streamfuse.capture.producer_process import StopFlag

    flag = StopFlag(mp.get_context("spawn"))
    assert flag.wait(0) is False
    flag.set()
    assert flag.wait(0) is True


def test_a_producers_stop_flag_is_set_once_its_consumer_is_gone_and_stays_set() -> None:
    """No producer outlives its consumer: in any other process the flag reads set once the consumer's process is gone
    (here a stand-in's, killed and reaped), and stays so at every check after."""
    import multiprocessing as mp

    from streamfuse.capture.producer_process import StopFlag

    consumer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        flag = StopFlag(mp.get_context("spawn"))
        flag._owner_pid = consumer.pid  # this process is then one of its producers
        assert flag.wait(0.1) is False and not any(flag.is_set() for _ in range(1000))
    finally:
        consumer.kill()
        consumer.wait(30)
    wait_for(flag.is_set, "the stop flag to read set")
    assert all(flag.is_set() for _ in range(1000)) and flag.wait(0) is True


def test_a_stop_flag_asks_after_its_consumer_once_per_poll_however_often_it_is_checked(monkeypatch) -> None:
    """A producer checks the flag at every frame and more; each look at the consumer's process costs syscalls and a
    /proc read, so one look serves every check until the next is due, and a due one runs at the next check."""
    import multiprocessing as mp

    from streamfuse.capture import producer_process

    looks, now = [], time.monotonic()
    monkeypatch.setattr(producer_process, "process_alive", lambda pid: looks.append(pid) or True)
    monkeypatch.setattr(producer_process, "time", types.SimpleNamespace(monotonic=lambda: now))
    flag = producer_process.StopFlag(mp.get_context("spawn"))
    flag._owner_pid = os.getpid() + 1  # another process's: this one is a producer
    assert not any(flag.is_set() for _ in range(50)) and looks == [os.getpid() + 1]
    now += producer_process.StopFlag._POLL_S
    assert not any(flag.is_set() for _ in range(50)) and len(looks) == 2
    flag.set()
    assert flag.is_set() and len(looks) == 2  # the flag itself is read at every check


def test_a_stop_flags_wait_sleeps_a_poll_at_a_time_and_sees_a_set_flag_after_that_poll(monkeypatch) -> None:
    """A stop is seen within one poll of 20 ms, however long the wait asked for: a producer waiting for its next
    frame's time (a slow camera, a paused file) stops at once, not at the end of its wait. On a clock that moves only
    as far as the flag sleeps."""
    import multiprocessing as mp

    from streamfuse.capture import producer_process

    clock = SleptClock()
    monkeypatch.setattr(producer_process, "time", clock)
    flag = producer_process.StopFlag(mp.get_context("spawn"))
    sleeps = []
    monkeypatch.setattr(clock, "sleep", lambda s: sleeps.append(s) or SleptClock.sleep(clock, s))
    assert flag.wait(0.1) is False
    assert sleeps[:4] == [0.02] * 4 and sum(sleeps) == pytest.approx(0.1) and len(sleeps) <= 6
    sleeps.clear()
    monkeypatch.setattr(clock, "sleep", lambda s: sleeps.append(s) or flag.set())  # set while the first poll sleeps
    assert flag.wait(60.0) is True and sleeps == [0.02]


def test_supervision_runs_once_per_round_however_often_get_is_called(monkeypatch) -> None:
    """The live loop calls get several times a frame; each supervision round polls every producer's pipe and process
    (syscalls), so one round serves every call until the next is due, and a due one runs at the next call."""
    from streamfuse.capture import producer

    cfg = SourceConfig(kind="synthetic", width=32, height=24, fps=100.0, stall_factor=0)
    prod = start_producers(cfg, cfg)
    names, rounds = prod.shm_names(), []
    supervise = prod._supervise
    monkeypatch.setattr(prod, "_supervise", lambda: rounds.append(1) or supervise())
    try:
        collect(prod, lambda f, e: {x.stream for x in f} == {"ir", "vis"})
        rounds.clear()
        now = time.monotonic()
        monkeypatch.setattr(producer, "time", types.SimpleNamespace(monotonic=lambda: now,
                                                                    monotonic_ns=lambda: round(now * 1e9)))
        for _ in range(50):  # frames keep coming meanwhile: some calls return one, others none
            prod.get(timeout=0)
        before = len(rounds)  # 1 when the round was due as the clock stopped
        assert before <= 1
        now += 0.02  # one round each 20 ms
        prod.get(timeout=0)
        assert len(rounds) == before + 1
    finally:
        monkeypatch.setattr(producer, "time", time)
        assert_stopped(prod, names)


def test_a_short_file_played_again_at_its_end_waits_the_first_delay_each_pass_not_a_doubled_one(caplog) -> None:
    # A file's end is no failure: a 3 s clip played again waited 0.1, 0.2, 0.4 ... 6.4 s between passes, and past 5 s
    # the restarted file was taken for one timed on another clock, paced on its own, and never paired again
    from collections import deque

    from streamfuse.capture.producer import _Worker

    caplog.set_level(logging.INFO, logger="streamfuse.capture.producer")
    prod = Producers.__new__(Producers)
    prod._backoff, prod._events = (0.1, 8.0), deque()
    w = _Worker("ir", SourceConfig(kind="file", path="clip.mkv", fps=25))
    prod._workers = {"ir": w}
    image = np.zeros((4, 4), np.uint8)
    for _ in range(8):  # eight passes of a 3-frame file, each shorter than a stable run
        w.seq_at_start = w.last_seq + 1
        for seq in range(w.seq_at_start, w.seq_at_start + 3):
            prod._see(w, Frame("ir", seq, seq * 40_000_000, image))
        w.proc, w.state, w.started_at = _Died(), "running", time.monotonic()
        w.message = ("eos", "ir: end of stream (file clip.mkv)")
        prod._on_exit(w)
        assert w.state == "waiting"
    said = [r.getMessage().rsplit("restarting in ", 1)[1] for r in caplog.records]
    assert said == ["0.1 s"] * 8
