"""End to end: run_stream.py on the synthetic rig, received with plain pyzmq; shutdown; bad input; a source that fails
for good; a producer killed mid-run."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_video import cut, write

REPO = Path(__file__).resolve().parents[1]


def _start(*extra: str, endpoint: str = "tcp://127.0.0.1:*", fuser: str = "max",
           program: tuple[str, ...] = (str(REPO / "run_stream.py"),), **popen: object) -> subprocess.Popen:
    """run_stream.py on the demo rig, its stderr into its stdout; publishing on any free loopback port unless
    ``endpoint`` names one (a port picked free for it could be taken meanwhile by a suite running beside)."""
    args = [sys.executable, *program, "--config", "demo",
            "--set", f"publish.endpoint={endpoint}", "--set", f"fuse.name={fuser}",
            "--set", "telemetry.interval_s=1", "--set", "engine.device=cpu", *extra]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _bound(proc: subprocess.Popen, head: list[str]) -> str:
    """The endpoint a run started by :func:`_start` bound, read from its log; the lines read are added to ``head``."""
    for line in proc.stdout:
        head.append(line)
        if found := re.search(r" publishing \S+ on (tcp://\S+) \(stats on ", line):
            return found.group(1)
    pytest.fail("the run ended without publishing:\n" + "".join(head))


def _shm_of(pid: int) -> set[str]:
    """Shared-memory segments and semaphores created by process ``pid`` (their names carry it), nobody else's."""
    return {p.name for p in Path("/dev/shm").glob(f"*streamfuse_{pid}_*")}


@pytest.fixture
def receiver():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVTIMEO, 500)
    sock.setsockopt(zmq.LINGER, 0)
    yield sock
    sock.close()
    ctx.term()


def _receive(sock, fused: int, stats: int, deadline_s: float) -> list[tuple[bytes, ...]]:
    """Messages until ``fused`` frames and ``stats`` snapshots arrived, or the deadline."""
    out, end = [], time.monotonic() + deadline_s
    counts = {b"fused/": 0, b"stats/": 0}
    while (counts[b"fused/"] < fused or counts[b"stats/"] < stats) and time.monotonic() < end:
        try:
            out.append(tuple(sock.recv_multipart()))
        except zmq.Again:
            continue
        counts[out[-1][0][:6]] += 1
    return out


@pytest.mark.timeout(90)
def test_demo_publishes_fused_frames_and_stops_cleanly_on_sigterm(receiver):
    proc, head = _start("--set", "vis.frame_id=cam_front"), []
    try:
        receiver.connect(_bound(proc, head))
        receiver.setsockopt(zmq.SUBSCRIBE, b"")
        msgs = _receive(receiver, fused=20, stats=3, deadline_s=45)
        fused = [(json.loads(h), img) for topic, h, *rest in msgs if topic.startswith(b"fused/") for img in rest]
        stats = [json.loads(h) for topic, h, *_ in msgs if topic.startswith(b"stats/")]
        assert len(fused) >= 20, f"received {len(fused)} fused frames"
        seqs = [h["seq"] for h, _ in fused]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        for header, img in fused:
            assert header["schema"] == "streamfuse.fused/1" and header["encoding"] == "bgr8"
            assert len(img) == header["height"] * header["step"] == 480 * 640 * 3
            assert header["t_capture_ir_ns"] <= header["t_fused_ns"] <= header["t_publish_ns"]
            assert header["t_capture_vis_ns"] <= header["t_publish_ns"]
            assert abs(header["t_capture_ir_ns"] - header["t_capture_vis_ns"]) <= 25e6  # sync.slop_ms
            assert header["frame_id"] == "cam_front" and header["fuser"] == "max"  # the visible camera's
            assert header["t_capture_clock"] == "epoch"
        ir_seqs = [h["seq_ir"] for h, _ in fused]
        assert ir_seqs == sorted(ir_seqs)
        image = np.frombuffer(fused[-1][1], np.uint8).reshape(480, 640, 3)
        assert image.std() > 5  # a real scene, not a blank frame
        assert len(stats) >= 3 and stats[-1]["schema"] == "streamfuse.stats/1"
        assert "fuse" in stats[-1]["stages"] and stats[-1]["counters"]["published"] >= 1
        assert {"publish_dropped", "stale"} <= stats[0]["counters"].keys()  # present at 0 too
        in_use = _shm_of(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "final:" in out
    assert in_use and not _shm_of(proc.pid), "shared memory leaked"


# run_stream.py with a recorder whose disk fills up after 5 frames (the next writes raise ENOSPC)
_FULL_DISK_RUN = """
import errno, os, sys
from streamfuse.recording import Recorder
real_append, calls = Recorder._append, []
def append(self, frame):
    calls.append(frame)
    if len(calls) > 5:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_append(self, frame)
Recorder._append = append
from streamfuse.cli.run import exit_now, main
exit_now(main(sys.argv[1:]))
"""


@pytest.mark.timeout(90)
def test_a_failing_recording_stops_alone_and_the_run_exits_nonzero(receiver, tmp_path):
    """Fusion and publishing go on after the recording failed; the stats count what it lacks; the partial file is
    kept under its temporary name; the end says the recording failed, and the exit status is 1."""
    from streamfuse.atomic_write import partial_path
    from streamfuse.capture.mcap_source import read_recording
    from streamfuse.capture.sources import SourceError

    path, head = tmp_path / "rig.mcap", []
    small = [f"--set={s}.{k}={v}" for s in ("ir", "vis") for k, v in (("width", 160), ("height", 120))]
    proc = _start(f"--set=record.path={path}", "--set=record.chunk_mb=0.0625", *small, program=("-c", _FULL_DISK_RUN))
    after = []  # fused frames received after a stats snapshot said the recording had failed
    try:
        receiver.connect(_bound(proc, head))
        receiver.setsockopt(zmq.SUBSCRIBE, b"")
        failed, deadline = None, time.monotonic() + 60
        while len(after) < 5 and proc.poll() is None and time.monotonic() < deadline:
            try:
                topic, header, *_ = receiver.recv_multipart()
            except zmq.Again:
                continue
            if topic.startswith(b"stats/"):
                counters = json.loads(header)["counters"]
                failed = failed or (counters if counters.get("record_failed") else None)
            elif topic.startswith(b"fused/") and failed:
                after.append(json.loads(header)["seq"])
    finally:
        proc.send_signal(signal.SIGTERM)
        out = "".join(head) + proc.communicate(timeout=30)[0]
    assert failed and len(after) == 5, out
    assert after[0] >= failed["published"]  # seq counts from 0: published after that snapshot
    reason = f"writing recording {partial_path(path)} failed: No space left on device"
    assert out.count(f"ERROR streamfuse.recording: recording stopped: {reason}") == 1, out
    final = next(line for line in out.splitlines() if "final:" in line)
    assert "record_failed=1" in final and "record_dropped.ir=" in final and "record_dropped.vis=" in final
    assert f"recording failed: {path} was not completed ({reason})" in out.rstrip().splitlines()[-1]
    assert "Traceback" not in out and "leaked" not in out
    assert proc.returncode == 1
    assert not path.exists()
    got = []
    with contextlib.suppress(SourceError):
        got.extend(read_recording(partial_path(path)))
    assert 0 < len(got) <= 5  # what was written before the failure, up to its last complete chunk


@pytest.mark.timeout(120)
def test_a_run_killed_outright_keeps_its_recording_up_to_flush_s_before_the_kill(receiver, tmp_path):
    """Chunks far from ``chunk_mb`` are written out every ``flush_s`` while frames keep coming, so after kill -9
    ``recover`` finds every frame that was on disk, more than the first chunk could hold."""
    from streamfuse.atomic_write import partial_path
    from streamfuse.capture.mcap_source import read_recording
    from streamfuse.recover import main as recover
    from test_record import _readable

    path = tmp_path / "rig.mcap"
    small = [f"--set={s}.{k}={v}" for s in ("ir", "vis") for k, v in (("width", 160), ("height", 120))]
    proc = _start(f"--set=record.path={path}", "--set=record.chunk_mb=256", "--set=record.flush_s=0.2", *small)
    on_disk, deadline = 0, time.monotonic() + 60
    try:
        receiver.connect(_bound(proc, []))
        receiver.setsockopt(zmq.SUBSCRIBE, b"fused/")
        while on_disk < 40 and proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(zmq.Again):  # a fused frame: the recorder had its inputs
                receiver.recv_multipart()
            on_disk = _readable(partial_path(path)) if partial_path(path).exists() else 0
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert on_disk >= 40, out
    assert recover([str(partial_path(path))]) == 0
    assert len(list(read_recording(path))) >= on_disk


@pytest.mark.timeout(120)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe size and fill level through Linux fcntl/ioctl")
def test_a_live_run_whose_output_nobody_reads_keeps_publishing_and_stops_on_sigterm(receiver):
    """A launcher that never reads the run's stderr fills the pipe (shrunk here to one page); the live loop must not
    wait on its log lines: fused frames keep coming after the pipe is full, and SIGTERM still ends the run."""
    import array
    import fcntl
    import termios

    small = [f"--set={s}.{k}={v}" for s in ("ir", "vis") for k, v in (("width", 160), ("height", 120))]
    proc = _start("--set=telemetry.interval_s=0.05", *small)
    fcntl.fcntl(proc.stdout.fileno(), 1031, 4096)  # F_SETPIPE_SZ: one page
    capacity = fcntl.fcntl(proc.stdout.fileno(), 1032)  # F_GETPIPE_SZ

    def unread() -> int:
        n = array.array("i", [0])
        fcntl.ioctl(proc.stdout.fileno(), termios.FIONREAD, n)
        return n[0]

    after_full, deadline = 0, time.monotonic() + 60
    try:
        receiver.connect(_bound(proc, []))
        receiver.setsockopt(zmq.SUBSCRIBE, b"fused/")
        while after_full < 20 and proc.poll() is None and time.monotonic() < deadline:
            full = unread() > capacity - 1024  # no room for another stats line
            with contextlib.suppress(zmq.Again):
                receiver.recv_multipart()
                after_full += full
        assert after_full == 20, f"{after_full} fused frames after the pipe filled ({unread()} of {capacity} bytes)"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # nothing read from the pipe yet
    finally:
        proc.kill()
        proc.communicate(timeout=30)


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_a_terminal_hangup_stops_the_run_cleanly_with_its_recording_finished(receiver, tmp_path):
    """SIGHUP reaches the whole process group when the terminal (an SSH session) goes away: the run stops as on
    SIGTERM, its recording finished under its name, the final stats logged, its shared memory freed, and every
    process of the group gone (the output pipe they all hold reaches its end)."""
    from streamfuse.atomic_write import partial_path

    path = tmp_path / "rig.mcap"
    small = [f"--set={s}.{k}={v}" for s in ("ir", "vis") for k, v in (("width", 160), ("height", 120))]
    # started as from a terminal: SIGHUP at its default even where the suite runs under nohup
    proc = _start(f"--set=record.path={path}", *small, start_new_session=True,
                  preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        receiver.connect(_bound(proc, []))
        receiver.setsockopt(zmq.SUBSCRIBE, b"fused/")
        assert len(_receive(receiver, fused=5, stats=0, deadline_s=60)) == 5
        in_use = _shm_of(proc.pid)
        os.killpg(proc.pid, signal.SIGHUP)
        out, _ = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "final:" in out and path.exists() and not partial_path(path).exists(), out
    assert in_use and not _shm_of(proc.pid), "shared memory leaked"


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_under_nohup_a_hangup_leaves_the_run_going(receiver):
    """Started with SIGHUP ignored (``nohup``), the run outlives its terminal: frames keep coming after the hangup."""
    small = [f"--set={s}.{k}={v}" for s in ("ir", "vis") for k, v in (("width", 160), ("height", 120))]
    proc = _start(*small, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        receiver.connect(_bound(proc, []))
        receiver.setsockopt(zmq.SUBSCRIBE, b"fused/")
        assert len(_receive(receiver, fused=5, stats=0, deadline_s=60)) == 5
        os.killpg(proc.pid, signal.SIGHUP)
        after = [json.loads(header)["seq"] for _, header, *_ in _receive(receiver, fused=5, stats=0, deadline_s=60)]
        assert len(after) == 5 and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == 0 and "final:" in out, out


_RUN_STREAM = f"runpy.run_path({str(REPO / 'run_stream.py')!r}, run_name='__main__')"


@pytest.mark.parametrize("program, args, said, module", [
    *(pytest.param(_RUN_STREAM, [], "run_stream.py", m, id=f"run_stream.py-{m}")
      for m in ("streamfuse", "streamfuse.cli", "streamfuse.cli.run")),
    # -m imports the package itself before __main__ runs; the command's module loads under stoppable
    pytest.param("runpy.run_module('streamfuse', run_name='__main__', alter_sys=True)", ["run"], "streamfuse run",
                 "streamfuse.cli", id="-m streamfuse-streamfuse.cli")])
def test_a_ctrl_c_while_the_package_loads_is_one_line_and_130(program, args, said, module):
    # a Ctrl-C within ~30 ms of the start, before stoppable takes the stop signals, was a traceback; here a real SIGINT
    # lands as run_stream.py or ``python -m streamfuse run`` starts to import ``module``
    script = textwrap.dedent(f"""
        import os, runpy, signal, sys

        class CtrlC:
            def find_spec(self, name, path=None, target=None):
                if name == {module!r}:
                    os.kill(os.getpid(), signal.SIGINT)
                return None

        sys.meta_path.insert(0, CtrlC())
        sys.argv = ["", *{args!r}, "--config", "demo", "--set", "publish.endpoint=tcp://127.0.0.1:*"]
        {program}
        """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (130, f"{said}: interrupted (Ctrl-C)\n")


@pytest.mark.timeout(60)
def test_port_in_use_is_one_line_and_nonzero():
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as blocker:
        blocker.bind("tcp://127.0.0.1:*")
        taken = blocker.getsockopt_string(zmq.LAST_ENDPOINT)
        proc = _start("--duration", "5", endpoint=taken)
        out, _ = proc.communicate(timeout=50)
        blocker.close(linger=0)
    assert proc.returncode == 1
    assert f"{taken} is already in use" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_an_endpoint_a_running_publisher_holds_is_refused_before_the_model_loads_or_a_process_starts(
        tmp_path, monkeypatch, transport):
    # a second run on the first's endpoint said so only after its model had loaded (8-30 s on a busy machine), the
    # producers' servers started meanwhile
    from streamfuse import pipeline
    from streamfuse.config import load_config
    from streamfuse.configs import resolve
    from streamfuse.processor import FrameProcessor
    from streamfuse.publish import Publisher, PublishConfig

    monkeypatch.setattr(FrameProcessor, "from_config", lambda *args, **kwargs: pytest.fail("the model loaded"))
    monkeypatch.setattr(pipeline, "start_servers", lambda: pytest.fail("a process started"))
    asked = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmp_path}/fused"
    with Publisher(PublishConfig(endpoint=asked)) as first:
        cfg = load_config(resolve("demo"), [f"publish.endpoint={first.endpoint}", "fuse.name=max"])
        with pytest.raises(RuntimeError, match=re.escape(f"endpoint {first.endpoint} is already in use")):
            pipeline.run_live(cfg, duration_s=1)


def test_a_run_started_as_a_capture_process_imports_the_main_module_says_to_guard_it(monkeypatch):
    # a program of one's own that called run_live without `if __name__ == "__main__":` had every capture process run
    # the program again: each died on the taken endpoint and was restarted for ever, while the run waited for frames
    from streamfuse import pipeline
    from streamfuse.config import load_config
    from streamfuse.processor import FrameProcessor

    monkeypatch.setattr(FrameProcessor, "from_config", lambda *args, **kwargs: pytest.fail("the model loaded"))
    monkeypatch.setattr(pipeline, "start_servers", lambda: pytest.fail("a process started"))
    monkeypatch.setattr(mp.current_process(), "_inheriting", True, raising=False)
    cfg = load_config("demo", ["publish.endpoint=tcp://127.0.0.1:*", "fuse.name=max"])
    with pytest.raises(RuntimeError, match=r"^run_live was called while a capture process imported the program's "
                                           r"main module: call it under `if __name__ == \"__main__\":`$"):
        pipeline.run_live(cfg, duration_s=1)


def test_a_process_that_imported_the_fork_servers_hook_itself_is_no_starting_producer():
    # a test run's doctests import every module of the package, the fork server's hook too: the refusal of an
    # unguarded run_live then took the test process itself for a producer as it starts and ended it (exit 3)
    script = textwrap.dedent("""
        import multiprocessing
        import streamfuse.capture.fork_server_quiet
        from streamfuse.pipeline import _refuse_in_bootstrap
        multiprocessing.current_process()._inheriting = True
        try:
            _refuse_in_bootstrap()
        except RuntimeError:
            print("refused")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "refused\n"), done.stderr


def test_a_programs_own_live_run_never_waits_for_a_subscriber(monkeypatch, caplog):
    # publish.wait_ms was left unused by the run command alone: run_live, as a program calls it, kept it, and one
    # stalled subscriber held the fusion loop up to that long a frame
    from streamfuse import pipeline
    from streamfuse.config import load_config

    given = []

    def started(cfg, *_):  # what the publisher would be made from
        given.append(cfg)
        raise RuntimeError("stopped before the publisher")

    monkeypatch.setattr(pipeline, "_started", started)
    cfg = load_config("demo", ["publish.nodrop=true", "publish.wait_ms=250", "fuse.name=max"])
    with pytest.raises(RuntimeError, match="^stopped before the publisher$"):
        pipeline.run_live(cfg, duration_s=1)
    assert given[0].publish.wait_ms == 0 and cfg.publish.wait_ms == 250
    assert "publish.wait_ms=250 is for replay: a live run never waits for a subscriber" in caplog.text


@pytest.mark.timeout(180)
@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_a_program_calling_run_live_unguarded_ends_its_run_in_one_line(tmp_path, start):
    # each capture process imports the program as it starts, and ran the call again: it died and was restarted for
    # ever, two lines every 8 s, while the run waited for frames that never came; where the platform has no fork
    # server (spawn), each capture process printed multiprocessing's traceback
    spawn_only = 'import multiprocessing; multiprocessing.get_all_start_methods = lambda: ["spawn"]\n'
    program = tmp_path / "unguarded.py"
    program.write_text((spawn_only if start == "spawn" else "") + textwrap.dedent("""\
        import sys
        from streamfuse import load_config
        from streamfuse.pipeline import RunFailed, run_live
        cfg = load_config("demo", ["publish.endpoint=tcp://127.0.0.1:*", "fuse.name=max"])
        try:
            run_live(cfg)
        except RunFailed as exc:
            sys.exit(f"failed: {exc}")
    """))
    proc = subprocess.run([sys.executable, str(program)], cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    guard = "run_live was called while a capture process imported the program's main module: call it under `if " \
            "__name__ == \"__main__\":`"
    assert f"streamfuse producer: {guard}" in lines and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(r"failed: (ir|vis): producer \(pid \d+\) died: exited as it started: the program's main "
                        r"module, which it imports, called run_live again(; .*)?", lines[-1]), proc.stderr


@pytest.mark.timeout(60)
def test_unknown_config_key_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, str(REPO / "run_stream.py"), "--config", "demo",
                           "--set", "fuse.stepz=3"], cwd=REPO, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown config key fuse.stepz" in proc.stderr and "demo.yaml" in proc.stderr


@pytest.mark.timeout(60)
def test_missing_video_file_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "run_stream.py"), "--config", "demo",
                           "--set", "ir.kind=file", "--set", f"ir.path={tmp_path / 'nope.mp4'}",
                           "--set", "ir.restart=false", "--set", "vis.realtime=false",  # its times from 0, as a file's
                           "--set", "fuse.name=max", "--set", "publish.endpoint=tcp://127.0.0.1:*",
                           "--duration", "20"], cwd=REPO, capture_output=True, text=True, timeout=55)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    line = f"ir: video file not found: {tmp_path / 'nope.mp4'}"
    assert proc.stderr.count(line) == 1, proc.stderr  # said by the CLI alone, not also in the producers' log
    assert f"run_stream.py: error: {line}" in proc.stderr


@pytest.mark.timeout(120)
def test_a_run_failing_before_a_source_delivers_keeps_no_recording_that_blocks_its_rerun(tmp_path, receiver):
    """A wrong IR path with ``record:`` finished a recording of the visible frames of the failed start (and made its
    folder), and the corrected run was then refused: the record path existed. (A missing path is refused before the
    run starts: here a file that is no video, found out as its producer opens it.)"""
    record = tmp_path / "runs" / "rig.mcap"
    (tmp_path / "nope.mp4").write_bytes(b"no video in here")
    common = ["--set", "fuse.name=max", "--set", "publish.endpoint=tcp://127.0.0.1:*",
              "--set", f"record.path={record}", "--set", "ir.width=64", "--set", "ir.height=48",
              "--set", "vis.width=64", "--set", "vis.height=48"]
    proc = subprocess.run([sys.executable, str(REPO / "run_stream.py"), "--config", "demo", *common,
                           "--set", "ir.kind=file", "--set", f"ir.path={tmp_path / 'nope.mp4'}",
                           "--set", "vis.realtime=false", "--duration", "20"],
                          cwd=REPO, capture_output=True, text=True, timeout=55)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"no recording kept in {record}: the run failed before the IR source delivered a frame" in proc.stderr
    assert not (tmp_path / "runs").exists()
    proc = _start(*common)  # stopped once it has fused (and so recorded) a pair: a busy machine may take seconds
    try:
        receiver.connect(_bound(proc, []))
        receiver.setsockopt(zmq.SUBSCRIBE, b"fused/")
        assert len(_receive(receiver, fused=1, stats=0, deadline_s=60)) == 1
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert record.is_file() and f"to {record}" in out


@pytest.mark.timeout(60)
def test_a_run_whose_endpoint_is_taken_leaves_no_recording_file(tmp_path):
    """The recorder made its ``.partial`` file before the publisher failed to bind, and that empty file then refused
    every later run's record.path ("exists; recover it")."""
    import socket

    record = tmp_path / "runs" / "rig.mcap"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = subprocess.run([sys.executable, str(REPO / "run_stream.py"), "--config", "demo",
                               "--set", "fuse.name=max",
                               "--set", f"publish.endpoint=tcp://127.0.0.1:{taken.getsockname()[1]}",
                               "--set", f"record.path={record}", "--duration", "5"],
                              cwd=REPO, capture_output=True, text=True, timeout=55)
    assert proc.returncode == 1 and "is already in use" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(("kind", "what"), [("file", "video file"), ("folder", "image folder"), ("mcap", "recording")])
def test_missing_inputs_are_refused_before_any_process_starts(tmp_path, monkeypatch, kind, what):
    # a --duration that ended before the producers had opened their inputs (a busy machine) was exit 0, unsaid
    from streamfuse import pipeline
    from streamfuse.capture.sources import SourceError
    from streamfuse.config import load_config
    from streamfuse.configs import resolve

    monkeypatch.setattr(pipeline, "Publisher", lambda *args, **kwargs: pytest.fail("the run started"))
    cfg = load_config(resolve("demo"), [f"{s}.{k}={v}" for s in ("ir", "vis")
                                        for k, v in (("kind", kind), ("path", tmp_path / s), ("realtime", "false"))])
    with pytest.raises(SourceError) as exc:
        pipeline.run(cfg, duration_s=0.5)
    assert str(exc.value) == f"ir: {what} not found: {tmp_path / 'ir'}; vis: {what} not found: {tmp_path / 'vis'}"


def test_two_missing_video_files_are_both_named_in_one_line(tmp_path):
    paths = {s: tmp_path / f"{s}.mp4" for s in ("ir", "vis")}
    sources = [a for s, p in paths.items() for a in ("--set", f"{s}.kind=file", "--set", f"{s}.path={p}")]
    proc = subprocess.run([sys.executable, str(REPO / "run_stream.py"), "--config", "demo", *sources,
                           "--set", "fuse.name=max", "--set", "publish.endpoint=tcp://127.0.0.1:*",
                           "--duration", "20"], cwd=REPO, capture_output=True, text=True, timeout=55)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("run_stream.py: error: ")]
    assert all(f"{s}: video file not found: {p}" in line for s, p in paths.items()), proc.stderr


def _ir_cut_at_frame_25(tmp_path: Path) -> list[str]:
    """Overrides for a file rig whose IR video is cut after its frame 25, read with restart off: the IR source fails
    for good after one second of frames, while the visible one (2 s) still runs."""
    ir, vis = tmp_path / "ir.avi", tmp_path / "vis.avi"
    for path in (ir, vis):
        write(path, "avi", 0, 0, "mpeg4")
    cut(ir, 25)
    return ["ir.kind=file", f"ir.path={ir}", "ir.restart=false", "vis.kind=file", f"vis.path={vis}"]


def _counters(final_line: str) -> dict[str, int]:
    """The counters of a logged stats line (those at 0 are left out of it)."""
    return {k: int(v) for k, v in (kv.split("=") for kv in final_line.split(" | ", 1)[1].split())}


@pytest.mark.timeout(90)
def test_a_source_failing_for_good_ends_the_run_with_the_final_stats_then_its_reason(tmp_path):
    """As every other ending: the frames before the failure are fused and counted, the recording is finished and the
    final stats line is logged; then the failure's one line, last, and exit status 1."""
    from streamfuse.capture.mcap_source import read_recording

    path = tmp_path / "rig.mcap"
    proc = _start(*(f"--set={s}" for s in _ir_cut_at_frame_25(tmp_path)), f"--set=record.path={path}",
                  "--duration", "60")
    out, _ = proc.communicate(timeout=80)
    assert proc.returncode == 1 and "Traceback" not in out, out
    *before, last = out.rstrip().splitlines()
    assert last.startswith(f"run_stream.py: error: ir: {tmp_path / 'ir.avi'}: truncated or corrupt video: decoding "
                           f"stopped after frame 25 "), out
    finals = [line for line in before if "final: " in line]
    assert len(finals) == 1, out
    counters = _counters(finals[0])
    assert counters["received.ir"] + counters.get("capture_dropped.ir", 0) == 25, out
    assert counters["published"] > 0 and counters["paired.ir"] > 0, out
    recorded = [frame.stream for frame in read_recording(path)]  # finished under its own name, not left partial
    assert recorded.count("ir") == counters["received.ir"] and recorded.count("vis") == counters["received.vis"]


@pytest.mark.timeout(60)
def test_huge_sizes_are_one_line_exit_2():
    proc = subprocess.run([sys.executable, str(REPO / "run_stream.py"), "--config", "demo",
                           "--set", "ir.width=16384", "--set", "ir.height=16384"],
                          cwd=REPO, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "ir: width=16384" in proc.stderr and "8192" in proc.stderr


class _FusedWatcher:
    """Subscribes to a live run in a thread: headers of the fused frames with their arrival time (ns); sets
    ``stop`` once ``until(headers)`` is true, so a run lasts as long as the event it waits for, not a fixed time."""

    def __init__(self, endpoint: str, stop: threading.Event, until) -> None:
        self.headers: list[tuple[int, dict]] = []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVTIMEO, 200)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"fused/")
        self._sock.connect(endpoint)
        self._stop, self._until = stop, until
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                _, header, _ = self._sock.recv_multipart()
            except zmq.Again:
                continue
            self.headers.append((time.time_ns(), json.loads(header)))
            if self._until(self.headers):
                self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()
        self._ctx.term()


def _live_cfg(*overrides: str, endpoint: str = "tcp://127.0.0.1:*"):
    """The demo's config for an in-process run; ``endpoint``: the test's own ``ipc://`` path where it subscribes."""
    from streamfuse.config import load_config

    cfg = load_config(REPO / "streamfuse/configs/demo.yaml", [
        f"publish.endpoint={endpoint}", "fuse.name=max", "telemetry.interval_s=60", "engine.device=cpu", *overrides])
    return cfg, endpoint


@pytest.mark.parametrize("complete, code", [(True, 0), (False, 1)])
def test_a_config_with_a_replay_out_replays_and_its_exit_code_says_whether_it_finished(monkeypatch, tmp_path,
                                                                                       complete, code):
    # replay.out in the config makes a run without --out a replay, as --out does, not a live run of the sources;
    # a replay that did not fuse its inputs to their end (stopped, resumable) exits 1, for the script that runs it
    from types import SimpleNamespace

    from streamfuse import pipeline, replay

    given = []
    monkeypatch.setattr(pipeline, "run_live", lambda *a, **kw: pytest.fail("ran live"))
    monkeypatch.setattr(replay, "run_replay", lambda cfg, **kw: given.append(kw) or SimpleNamespace(complete=complete))
    cfg, _ = _live_cfg(f"replay.out={tmp_path / 'fused.mkv'}")
    assert pipeline.run(cfg) == code
    assert given == [{"ir_path": None, "vis_path": None, "out_path": None, "resume": None}]


def test_a_recording_source_without_a_path_is_a_config_error_before_the_run_starts(monkeypatch):
    # an mcap source has no first device to fall back on, as a file or folder has none: said before the publisher
    # binds, not as a source failing at its start
    from streamfuse import pipeline
    from streamfuse.checks import ConfigError

    monkeypatch.setattr(pipeline, "Publisher", lambda *a, **kw: pytest.fail("ran live"))
    cfg, _ = _live_cfg("ir.kind=mcap", "vis.kind=mcap", "vis.path=rig.mcap")
    with pytest.raises(ConfigError, match=r"ir\.path is empty: a mcap source needs one \(--set ir\.path=\.\.\.;"):
        pipeline.run(cfg)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("realtime", [True, False])
def test_capture_latency_only_for_wall_clock_sources(realtime, tmp_path):
    from streamfuse.pipeline import run_live

    flags = [f"ir.realtime={str(realtime).lower()}", f"vis.realtime={str(realtime).lower()}"]
    # Unpaced virtual clocks drift apart at each renderer's own speed: pair on a wide hold, not on capture time, and
    # let a frame stand for 1 ms of virtual time so that the drift (one renderer several times faster than the other
    # on a busy machine) stays within the hold for a minute, not two seconds.
    unpaced = ["sync.mode=latest", "sync.hold_ms=60000", "ir.fps=1000", "vis.fps=1000"]
    cfg, endpoint = _live_cfg(*flags, *([] if realtime else unpaced), endpoint=f"ipc://{tmp_path}/fused")
    stop = threading.Event()
    watcher = _FusedWatcher(endpoint, stop, lambda headers: len(headers) >= 3)
    try:
        stages = set(run_live(cfg, duration_s=120.0, stop=stop)["stages"])  # the duration only bounds a failure
    finally:
        watcher.close()
    assert len(watcher.headers) >= 3 and "fuse" in stages
    # virtual-clock frames carry recording times, not this machine's: no latency against time.time_ns()
    wall = {"capture.ir", "capture.vis", "end_to_end"}
    assert (wall <= stages) if realtime else not (wall & stages)


def _video_at(path: Path, pts_ms: list[int]) -> None:
    """A 64x48 FFV1 video of frames at these times (ms), frame ``i`` of grey level ``i``."""
    import av

    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt, stream.time_base = 64, 48, "bgr0", tb
        stream.codec_context.time_base = tb  # the encoder keeps the pts, not rounded to 1 / 30 s
        for i, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i, np.uint8), format="bgr24")
            frame.pts, frame.time_base = pts, tb
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.timeout(150)
def test_a_live_run_from_files_fuses_the_pair_their_end_makes(tmp_path, monkeypatch):
    # The last IR frame (0.9 s) waits for a visible frame nearer than the one 10 ms before it; the files' end makes
    # that pair, which the run counted and never fused, as a replay of the files does: pairs=10, published=9, stale=0
    from streamfuse import pipeline
    from streamfuse.capture import start_producers

    _video_at(tmp_path / "ir.mkv", [100 * k for k in range(10)])
    _video_at(tmp_path / "vis.mkv", [33 * k for k in range(27)] + [890])
    sources = [f"{s}.{key}={value}" for s in ("ir", "vis")
               for key, value in (("kind", "file"), ("path", tmp_path / f"{s}.mkv"), ("restart", "false"),
                                   ("stall_factor", "0"))]  # a loaded machine's pause is no failure here
    # rings and pairing queues with room for every frame of the files: on a busy machine the loop, or one producer,
    # can lag by several frames, and the live rules would drop the frames an IR frame pairs with (pairs=8)
    monkeypatch.setattr(pipeline, "start_producers", functools.partial(start_producers, slots=32))
    cfg, _ = _live_cfg(*sources, "sync.slop_ms=20", "sync.queue_size=32", endpoint=f"ipc://{tmp_path}/fused")
    counters = pipeline.run_live(cfg, duration_s=120.0)["counters"]  # the duration only bounds a failure
    assert counters["pairs"] == 10 and counters["published"] + counters["stale"] == 10


def _timed_run(monkeypatch, tmp_path, duration_s: float, start_s: float) -> int:
    """Frames fused before the loop's end in a run of ``duration_s`` on a clock that stands still but for one step of
    ``start_s`` at its second reading (the capture's start) and 1 s a fused frame."""
    import types

    from streamfuse import pipeline

    clock = {"now": 0.0, "readings": 0, "fused": 0, "at_end": None}
    fuse, flush = pipeline._fuse, pipeline._flush

    def monotonic() -> float:
        clock["readings"] += 1
        clock["now"] += start_s if clock["readings"] == 2 else 0.0
        return clock["now"]

    def fused(*args):
        clock["fused"] += 1
        clock["now"] += 1.0
        return fuse(*args)

    def flushed(*args):  # the loop's end: the pair the end completes, if any, is fused after it
        clock["at_end"] = clock["fused"]
        return flush(*args)

    timed = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    timed.monotonic = monotonic
    monkeypatch.setattr(pipeline, "time", timed)
    monkeypatch.setattr(pipeline, "_fuse", fused)
    monkeypatch.setattr(pipeline, "_flush", flushed)
    cfg, _ = _live_cfg(endpoint=f"ipc://{tmp_path}/fused")
    pipeline.run_live(cfg, duration_s=duration_s)
    return clock["at_end"]


@pytest.mark.timeout(150)
def test_a_duration_counts_from_the_first_fused_frame(monkeypatch, tmp_path):
    # --duration 6 gave about 4 s of frames: it counted from the model's load, the capture's start taking the rest.
    # A start of 4 s in a 5 s run: its first frame and 5 more are fused
    assert _timed_run(monkeypatch, tmp_path, 5.0, 4.0) == 6


@pytest.mark.timeout(150)
def test_a_duration_ends_a_run_that_fuses_nothing_within_it_of_the_capture_start(monkeypatch, tmp_path):
    # counted from a first fused frame alone, a run whose sources never paired would go on until stopped
    assert _timed_run(monkeypatch, tmp_path, 5.0, 10.0) == 0


@pytest.mark.timeout(150)
def test_capture_latency_is_measured_on_the_monotonic_clock_across_a_wall_clock_step(monkeypatch, tmp_path):
    """NTP steps this process's wall clock an hour forward after the cameras' frames were stamped: latency is taken
    from each frame's monotonic acquisition time, so it stays what it is instead of reading an hour."""
    import types

    from streamfuse import pipeline

    stepped = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    stepped.time_ns = lambda: time.time_ns() + 3600 * 10**9  # what the loop reads; the producers stamp unstepped
    monkeypatch.setattr(pipeline, "time", stepped)
    cfg, endpoint = _live_cfg(endpoint=f"ipc://{tmp_path}/fused")
    stop = threading.Event()
    watcher = _FusedWatcher(endpoint, stop, lambda headers: len(headers) >= 3)
    try:
        stages = pipeline.run_live(cfg, duration_s=120.0, stop=stop)["stages"]  # the duration only bounds a failure
    finally:
        watcher.close()
    assert len(watcher.headers) >= 3
    for stage in ("capture.ir", "capture.vis", "end_to_end"):  # an hour read as latency would be 3.6e6 ms
        assert 0 <= stages[stage]["min_ms"] and stages[stage]["median_ms"] < 1800 * 1000, (stage, stages[stage])


@pytest.mark.timeout(150)
@pytest.mark.parametrize("when", ["running", "before_first_frame"])
def test_live_run_resumes_after_the_ir_producer_is_killed(when, record_property, tmp_path):
    """Killed while running, or before it delivered a frame: the run goes on and fused frames flow again. The
    gap from the kill to the first fused frame with a new IR capture is recorded (a figure, not asserted)."""
    from streamfuse.pipeline import run_live

    cfg, endpoint = _live_cfg(endpoint=f"ipc://{tmp_path}/fused")
    stop = threading.Event()
    kill: dict[str, int] = {}

    def resumed(headers) -> bool:
        return bool(kill) and any(h["t_capture_ir_ns"] > kill["t_ns"] for _, h in headers)

    def killer() -> None:
        def ir_producer():
            return next((p for p in mp.active_children() if p.name == "streamfuse-ir"), None)

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not stop.is_set():
            proc = ir_producer()
            if proc is not None and (when == "before_first_frame" or len(watcher.headers) >= 5):
                kill["t_ns"] = time.time_ns()
                os.kill(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.001 if when == "before_first_frame" else 0.05)

    watcher = _FusedWatcher(endpoint, stop, resumed)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        snap = run_live(cfg, duration_s=120.0, stop=stop)
    finally:
        watcher.close()
        thread.join(10)
    assert kill and resumed(watcher.headers), f"no fused frame after the kill; {len(watcher.headers)} before it"
    gap_s = min(t for t, h in watcher.headers if h["t_capture_ir_ns"] > kill["t_ns"]) / 1e9 - kill["t_ns"] / 1e9
    record_property("resume_gap_s", round(gap_s, 3))
    print(f"resume gap after the IR producer was killed ({when}): {gap_s:.3f} s")
    assert snap["counters"]["capture_restarts.ir"] == 1


@pytest.mark.timeout(90)
def test_a_failed_run_publishes_its_final_snapshot_and_raises_it_with_the_reason(tmp_path, monkeypatch, caplog):
    from streamfuse.pipeline import run_live
    from streamfuse.publish import Publisher
    from streamfuse.telemetry import format_stats

    sent = []
    send_stats = Publisher.send_stats
    monkeypatch.setattr(Publisher, "send_stats", lambda pub, snap: sent.append(snap) or send_stats(pub, snap))
    cfg, _ = _live_cfg(*_ir_cut_at_frame_25(tmp_path))
    with caplog.at_level("INFO", logger="streamfuse.pipeline"), \
            pytest.raises(RuntimeError, match="truncated or corrupt video: decoding stopped after frame 25 ") as err:
        run_live(cfg, duration_s=60.0)
    snap = err.value.snapshot
    assert sent and sent[-1] is snap and snap["counters"]["received.ir"] > 0 and "fuse" in snap["stages"]
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("final: ")] == [
        f"final: {format_stats(snap)}"]


def test_a_pair_that_cannot_be_fused_ends_the_run_with_the_final_stats_then_its_reason(caplog):
    # An IR frame of another size than the visible one, refused (``resize: error``), raised out of the loop: no final
    # stats, and a recording would have been left cut.
    from streamfuse.pipeline import run_live
    from streamfuse.telemetry import format_stats

    cfg, _ = _live_cfg("ir.width=64", "ir.height=48", "vis.width=80", "vis.height=48", "ir.resize=error")
    with caplog.at_level("INFO", logger="streamfuse.pipeline"), \
            pytest.raises(RuntimeError, match="IR frame .* is 64x48 but visible frame .* is 80x48") as err:
        run_live(cfg, duration_s=60.0)
    snap = err.value.snapshot
    assert snap["counters"]["paired.ir"] >= 1 and snap["counters"]["published"] == 0
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("final: ")] == [
        f"final: {format_stats(snap)}"]


class _QueuedProducers:
    """Producers whose queue holds ``items`` (frames and events), every source delivering."""

    def __init__(self, items: list) -> None:
        self.items, self.done = list(items), False

    def get(self, timeout: float):
        return self.items.pop(0) if self.items else None

    def stats(self) -> dict:
        return {name: {"delivered": 1, "state": "running"} for name in ("ir", "vis")}


def test_frames_queued_behind_a_sources_failure_are_kept_for_the_run_to_count():
    # They were taken off the queue while the failure's line was gathered and dropped unseen: neither recorded nor
    # counted as received or unpaired.
    from streamfuse.capture import ProducerEvent
    from streamfuse.frames import Frame
    from streamfuse.pipeline import _drain

    image = np.zeros((4, 4), np.uint8)
    vis = [Frame("vis", i, i * 40_000_000, image) for i in range(3)]
    failed = ProducerEvent("ir", "error", "ir: x.avi: truncated or corrupt video", False)
    frames, failure = _drain(_QueuedProducers([vis[0], failed, vis[1], vis[2]]))
    assert frames == vis and failure == "ir: x.avi: truncated or corrupt video"


def test_a_failure_waits_for_a_source_still_opening_and_for_none_that_has_ended():
    # _OPENING_WAIT_S is for a source still opening: its failure, coming after a few empty polls, is named in the
    # same line. One that ended before its first frame will say nothing more: waiting for it held the run's end 15 s.
    from streamfuse.capture import ProducerEvent
    from streamfuse.pipeline import _failure

    second = ProducerEvent("vis", "error", "vis: nope.mp4: no such file", False)
    replies, vis_state = [None, None, second], ["opening"]

    def get(timeout):
        item = replies.pop(0) if replies else None
        vis_state[0] = "ended" if item is second else vis_state[0]
        return item

    producers = _QueuedProducers([])
    producers.get = get
    producers.stats = lambda: {"ir": {"delivered": 0, "state": "ended"}, "vis": {"delivered": 0, "state": vis_state[0]}}
    both = "ir: nope.avi: no such file; vis: nope.mp4: no such file"
    assert _failure(producers, "ir: nope.avi: no such file", []) == both
    waits = []
    producers.get = lambda timeout: waits.append(timeout)  # vis has ended: asked once, without waiting
    assert _failure(producers, "ir: nope.avi: no such file", []) == "ir: nope.avi: no such file"
    assert waits == [0]


def test_a_failure_waits_no_longer_for_a_source_still_opening_once_the_run_is_stopped():
    # A camera not plugged in yet is waited for: a Ctrl-C or SIGTERM that came while the failed run waited for it was
    # ignored until the wait's 15 s were over (README: every process stopped within 2 s)
    from streamfuse.pipeline import _failure

    stop, polls = threading.Event(), []

    def get(timeout):
        polls.append(timeout)
        stop.set()  # the stop comes while the run waits for the camera
        return None

    producers = _QueuedProducers([])
    producers.get = get
    producers.stats = lambda: {"ir": {"delivered": 0, "state": "ended"}, "vis": {"delivered": 0, "state": "waiting"}}
    assert _failure(producers, "ir: cannot open camera '/etc/passwd'", [], stop) == (
        "ir: cannot open camera '/etc/passwd'")
    assert polls == [0.05, 0]  # one wait, then the queue's last items without one


def test_a_failure_waits_no_longer_for_a_source_still_opening_than_the_runs_duration():
    # A 404 on one camera while the other was not up yet held a --duration 8 run for 17 s: the wait's 15 s
    from streamfuse.pipeline import _failure

    polls = []
    producers = _QueuedProducers([])
    producers.get = lambda timeout: polls.append(timeout)
    producers.stats = lambda: {"ir": {"delivered": 0, "state": "ended"}, "vis": {"delivered": 0, "state": "waiting"}}
    assert _failure(producers, "ir: cannot open http://cam/x: 404 Not Found", [], None, deadline=0.0) == (
        "ir: cannot open http://cam/x: 404 Not Found")  # the run's end (monotonic 0.0) has passed: no wait
    assert polls == [0]


@pytest.mark.timeout(90)
def test_the_fuser_is_warmed_up_at_the_visible_size_before_capture_starts(monkeypatch):
    # On a GPU the engine's first call (CUDA graph capture) took 0.9 s: made on the first pair, it dropped the
    # cameras' frames meanwhile and published a stale first frame.
    from streamfuse import pipeline
    from streamfuse.processor import FrameProcessor

    stop, events, made, start = threading.Event(), [], FrameProcessor.from_config, pipeline.start_producers

    def spied(cfg, fuser=None, **kw):
        proc = made(cfg, fuser, **kw)
        fuse = proc.fuser.fuse
        monkeypatch.setattr(proc.fuser, "warm_up", lambda h, w: events.append(("warm_up", h, w)))
        monkeypatch.setattr(proc.fuser, "fuse", lambda *a, **k: events.append("fuse") or stop.set() or fuse(*a, **k))
        return proc

    monkeypatch.setattr(FrameProcessor, "from_config", spied)
    monkeypatch.setattr(pipeline, "start_producers", lambda *a: events.append("capture") or start(*a))
    cfg, _ = _live_cfg("vis.width=320", "vis.height=240", "ir.width=320", "ir.height=240")
    pipeline.run_live(cfg, duration_s=60.0, stop=stop)  # the duration only bounds a failure
    assert events[:3] == [("warm_up", 240, 320), "capture", "fuse"]


@pytest.mark.timeout(90)
def test_fused_frames_with_a_nan_are_counted_in_the_run_stats(monkeypatch):
    # A fuser's NaN blanked the stream for good through the temporal filter's state, and nothing said so.
    from streamfuse.pipeline import run_live
    from streamfuse.processor import FrameProcessor

    stop, made = threading.Event(), FrameProcessor.from_config

    def faulty(cfg, fuser=None, **kw):
        proc = made(cfg, fuser, **kw)
        fuse, calls = proc.fuser.fuse, []

        def nan_fuse(*args, **kwargs):
            y = np.array(fuse(*args, **kwargs), np.float32)
            y[0, 0] = np.nan
            calls.append(1)
            if len(calls) >= 3:
                stop.set()
            return y

        monkeypatch.setattr(proc.fuser, "fuse", nan_fuse)
        return proc

    monkeypatch.setattr(FrameProcessor, "from_config", faulty)
    cfg, _ = _live_cfg("post.denoise=0.5")
    snap = run_live(cfg, duration_s=60.0, stop=stop)  # the duration only bounds a failure
    assert snap["counters"]["nonfinite"] == snap["counters"]["published"] >= 3


def test_frames_same_host_readers_never_got_are_counted():
    # readers that held every slot of the pool missed frames that the stats counted as published, and nothing else
    from types import SimpleNamespace

    from streamfuse.pipeline import _publish
    from streamfuse.telemetry import Telemetry, TelemetryConfig

    pub = SimpleNamespace(shm_busy=0, peers_cut=0, send_fused=lambda fused: True, previews_wanted=lambda: False)
    tel = Telemetry(TelemetryConfig())
    frame = SimpleNamespace(image=np.zeros((4, 4, 3), np.uint8), timings={})
    for busy in (0, 3):
        pub.shm_busy = busy
        pair = SimpleNamespace(t_paired_ns=0, ir=SimpleNamespace(t_mono_ns=0), vis=SimpleNamespace(t_mono_ns=0))
        _publish(pub, tel, pair, frame, SimpleNamespace(name="max", version="1"), 0)
    counters = tel.snapshot()["counters"]
    assert counters["published"] == 2 and counters["publish_shm_busy"] == 3
    assert "publish_peers_cut" not in counters  # present once one was cut
    pub.peers_cut = 1  # a consumer flooding the publisher with subscriptions was cut
    _publish(pub, tel, pair, frame, SimpleNamespace(name="max", version="1"), 0)
    assert tel.snapshot()["counters"]["publish_peers_cut"] == 1


def _stop_the_loops_clock(monkeypatch, now: int = 10**12) -> int:
    """The live loop's monotonic clock stopped at ``now`` ns (its other clocks left as they are); returns ``now``."""
    import types

    from streamfuse import pipeline

    stopped = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    stopped.monotonic_ns = lambda: now
    monkeypatch.setattr(pipeline, "time", stopped)
    return now


def test_how_long_the_older_frame_of_a_pair_waited_is_in_the_stats(monkeypatch):
    # end_to_end counts from the newer frame's capture: the older one's wait for its partner was in no stage
    from types import SimpleNamespace

    from streamfuse.pipeline import _publish
    from streamfuse.telemetry import Telemetry, TelemetryConfig

    pub = SimpleNamespace(shm_busy=0, peers_cut=0, send_fused=lambda fused: True, previews_wanted=lambda: False)
    tel = Telemetry(TelemetryConfig())
    now = _stop_the_loops_clock(monkeypatch)
    pair = SimpleNamespace(t_paired_ns=0, ir=SimpleNamespace(t_mono_ns=now - 70_000_000),
                           vis=SimpleNamespace(t_mono_ns=now - 30_000_000))
    frame = SimpleNamespace(image=np.zeros((4, 4, 3), np.uint8), timings={})
    _publish(pub, tel, pair, frame, SimpleNamespace(name="max", version="1"), 0)
    stages = tel.snapshot()["stages"]
    assert stages["pair_offset"]["median_ms"] == 40.0 and stages["end_to_end"]["median_ms"] == 30.0


class _EndingProducers(_QueuedProducers):
    """Producers that deliver ``items`` and then have ended (as a file's do), with the capture counters given."""

    def __init__(self, items: list, counters: dict) -> None:
        super().__init__(items)
        self.counters = counters

    @property
    def done(self) -> bool:
        return not self.items

    @done.setter
    def done(self, value: bool) -> None:
        pass

    def stats(self) -> dict:
        return {name: {"delivered": 3, "state": "ended", **self.counters} for name in ("ir", "vis")}

    def stop(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_the_newest_of_the_pairs_that_arrived_together_is_fused_and_the_older_ones_are_counted_stale(monkeypatch):
    # A live rig wants the freshest picture: fusing the oldest pair of a backlog showed the scene late by the backlog,
    # and miscounting the skipped ones hid how far behind the fuser was. The last frames, which arrived as the sources
    # ended, are fused too, and the capture counters and latency (ms on the monotonic clock) reach the final stats.
    from streamfuse import pipeline
    from streamfuse.frames import Frame
    from streamfuse.publish import Publisher

    now = _stop_the_loops_clock(monkeypatch)  # the frames were acquired 50 ms before it
    ir, vis = np.full((48, 64), 200, np.uint8), np.full((48, 64, 3), 40, np.uint8)
    frames = [Frame(stream, seq, seq * 40_000_000, image, t_mono_ns=now - 50_000_000)
              for seq in range(3) for stream, image in (("ir", ir), ("vis", vis))]
    counters = {"dropped": 2, "skipped": 0, "restarts": 0, "stalls": 1}
    monkeypatch.setattr(pipeline, "start_producers", lambda *a: _EndingProducers(frames, counters))
    fused, send_fused = [], Publisher.send_fused
    monkeypatch.setattr(Publisher, "send_fused", lambda pub, f: fused.append(f) or send_fused(pub, f))
    cfg, _ = _live_cfg("ir.width=64", "ir.height=48", "vis.width=64", "vis.height=48")
    snap = pipeline.run_live(cfg, duration_s=60.0)  # the duration only bounds a failure
    paired = snap["counters"]["paired.ir"]
    assert paired >= 2 and [(f.pair.ir.seq, f.pair.vis.seq) for f in fused] == [(paired - 1, paired - 1)]
    assert snap["counters"]["published"] == 1 and snap["counters"]["stale"] == paired - 1
    assert snap["counters"]["capture_stalls.ir"] == 1 and snap["counters"]["capture_dropped.vis"] == 2
    assert snap["stages"]["capture.ir"]["median_ms"] == 50.0 and snap["stages"]["end_to_end"]["median_ms"] == 50.0


def test_a_fused_frame_the_publisher_dropped_is_counted_as_dropped_and_its_pairing_wait_is_in_ms():
    # counted as published, a subscriber falling behind (nodrop queue full) went unseen in the stats; and the wait
    # from pairing to fusing, read in seconds, showed 0.005 for 5 ms
    from types import SimpleNamespace

    from streamfuse.pipeline import _publish
    from streamfuse.telemetry import Telemetry, TelemetryConfig

    tel = Telemetry(TelemetryConfig())
    frame = SimpleNamespace(image=np.zeros((4, 4, 3), np.uint8), timings={})
    pair = SimpleNamespace(t_paired_ns=10_000_000, ir=SimpleNamespace(t_mono_ns=0), vis=SimpleNamespace(t_mono_ns=0))
    for sent in (True, False, False):
        pub = SimpleNamespace(shm_busy=0, peers_cut=0,
                              send_fused=lambda fused, sent=sent: sent, previews_wanted=lambda: False)
        _publish(pub, tel, pair, frame, SimpleNamespace(name="max", version="1"), 15_000_000)
    snap = tel.snapshot()
    assert snap["counters"]["published"] == 1 and snap["counters"]["publish_dropped"] == 2
    assert snap["stages"]["pair"]["median_ms"] == 5.0


_NO_CAPTURE_LOSS = dict.fromkeys(("dropped", "skipped", "restarts", "stalls"), 0)  # _EndingProducers' counters


@pytest.mark.parametrize("kind, warmed", [("camera", [(240, 320)]), ("file", [])])
def test_a_cameras_requested_size_is_warmed_up_and_a_files_unknown_one_is_not(monkeypatch, tmp_path, kind, warmed):
    # a camera delivers the size the config requests, as the synthetic source does: the engine's first call is made
    # before capture starts; a file's size is known only from its first frame
    from streamfuse import pipeline
    from streamfuse.processor import FrameProcessor

    calls, made = [], FrameProcessor.from_config

    def spied(cfg, fuser=None, **kw):
        proc = made(cfg, fuser, **kw)
        monkeypatch.setattr(proc.fuser, "warm_up", lambda h, w: calls.append((h, w)))
        return proc

    monkeypatch.setattr(FrameProcessor, "from_config", spied)
    monkeypatch.setattr(pipeline, "start_producers", lambda *a: _EndingProducers([], _NO_CAPTURE_LOSS))
    sources = ["vis.kind=camera"]  # a camera's empty path: its first device
    if kind == "file":  # two files, whose times pair, that are there (the run refuses a missing one)
        sources = [f"{s}.{k}={v}" for s in ("ir", "vis") for k, v in (("kind", "file"), ("path", tmp_path / s))]
        (tmp_path / "ir").touch(), (tmp_path / "vis").touch()
    cfg, _ = _live_cfg(*sources, "vis.width=320", "vis.height=240")
    pipeline.run_live(cfg, duration_s=60.0)  # the sources deliver nothing and end at once
    assert calls == warmed


def test_a_run_a_source_failed_counts_the_pairs_its_end_made_as_stale_so_the_counters_add_up(monkeypatch):
    # The failure ends the run: the freshest pair of its last turn is fused, and the pair that only the end makes is
    # not (as a replay of the same input stops there); every pair the run made is either published or stale.
    from streamfuse import pipeline
    from streamfuse.capture import ProducerEvent
    from streamfuse.frames import Frame

    ir, vis = np.full((48, 64), 200, np.uint8), np.full((48, 64, 3), 40, np.uint8)
    frames = [Frame(stream, seq, seq * 40_000_000, image) for seq in range(3) for stream, image in (("ir", ir),
                                                                                                     ("vis", vis))]
    frames[-1] = Frame("vis", 2, 70_000_000, vis)  # 10 ms before the last IR frame, which waits for a nearer one
    failed = ProducerEvent("vis", "error", "vis: v.mkv: truncated or corrupt video", False)
    monkeypatch.setattr(pipeline, "start_producers", lambda *a: _EndingProducers([*frames, failed], _NO_CAPTURE_LOSS))
    cfg, _ = _live_cfg("ir.width=64", "ir.height=48", "vis.width=64", "vis.height=48")
    with pytest.raises(pipeline.RunFailed, match="truncated or corrupt") as ended:
        pipeline.run_live(cfg, duration_s=60.0)  # the duration only bounds a failure
    counters = ended.value.snapshot["counters"]
    assert counters["pairs"] == 3 and counters["published"] == 1
    assert counters["published"] + counters["publish_dropped"] + counters["stale"] == counters["pairs"]


def test_a_run_that_paired_nothing_reports_its_fused_frame_counters_as_zero(monkeypatch):
    # a dashboard plots published, publish_dropped and stale from every snapshot: absent, a run that never paired
    # (a camera pointed at nothing) showed no line rather than zeros
    from streamfuse import pipeline

    monkeypatch.setattr(pipeline, "start_producers", lambda *a: _EndingProducers([], _NO_CAPTURE_LOSS))
    snap = pipeline.run_live(_live_cfg()[0], duration_s=60.0)  # the sources deliver nothing and end at once
    assert {name: snap["counters"][name] for name in ("published", "publish_dropped", "stale")} == dict.fromkeys(
        ("published", "publish_dropped", "stale"), 0)


def test_the_config_a_live_run_logs_reads_back_as_the_same_config(monkeypatch, tmp_path, caplog):
    # the resolved config logged at the start, copied into a file, runs the same run again (Python's repr did not:
    # `record: None` was refused, and a backslash came back doubled)
    from streamfuse import pipeline
    from streamfuse.config import load_config

    monkeypatch.setattr(pipeline, "start_producers", lambda *a: _EndingProducers([], _NO_CAPTURE_LOSS))
    cfg = _live_cfg("ir.frame_id=ir\\cam")[0]
    with caplog.at_level("INFO", logger="streamfuse.pipeline"):
        pipeline.run_live(cfg, duration_s=60.0)  # the sources deliver nothing and end at once
    logged = next(m for m in caplog.messages if m.startswith(f"config {cfg.source_file}: "))
    (tmp_path / "logged.yaml").write_text(logged.removeprefix(f"config {cfg.source_file}: "))
    assert load_config(tmp_path / "logged.yaml") == cfg


def test_the_frames_left_waiting_for_a_partner_at_the_end_are_counted_unpaired(monkeypatch):
    # as a replay of the run's recording counts them: the final snapshot's counters of the two agree, and a frame
    # whose partner never came is not reported as still queued after the run
    from streamfuse import pipeline
    from streamfuse.frames import Frame

    ir, vis = np.full((48, 64), 200, np.uint8), np.full((48, 64, 3), 40, np.uint8)
    frames = [Frame("ir", 0, 0, ir), Frame("vis", 0, 0, vis), Frame("ir", 1, 40_000_000, ir)]  # IR 1: no partner
    monkeypatch.setattr(pipeline, "start_producers", lambda *a: _EndingProducers(frames, _NO_CAPTURE_LOSS))
    cfg, _ = _live_cfg("ir.width=64", "ir.height=48", "vis.width=64", "vis.height=48")
    counters = pipeline.run_live(cfg, duration_s=60.0)["counters"]  # the duration only bounds a failure
    assert (counters["paired.ir"], counters["unpaired.ir"], counters["queued.ir"]) == (1, 1, 0)


def test_a_recorded_run_says_what_capture_dropped_and_reports_the_recordings_losses(monkeypatch, tmp_path, caplog):
    # the recording lacks the frames capture dropped (the loop fell behind them): its end says so, as it says what the
    # disk could not keep up with; and every snapshot carries the recording's own losses, 0 while there are none
    from streamfuse import pipeline
    from streamfuse.frames import Frame

    ir, vis = np.full((48, 64), 200, np.uint8), np.full((48, 64, 3), 40, np.uint8)
    frames = [Frame("ir", 0, 0, ir), Frame("vis", 0, 0, vis)]
    monkeypatch.setattr(pipeline, "start_producers",
                        lambda *a: _EndingProducers(frames, {**_NO_CAPTURE_LOSS, "dropped": 2}))
    cfg, _ = _live_cfg("ir.width=64", "ir.height=48", "vis.width=64", "vis.height=48",
                       f"record.path={tmp_path / 'rig.mcap'}")
    with caplog.at_level("WARNING"):
        counters = pipeline.run_live(cfg, duration_s=60.0)["counters"]  # the duration only bounds a failure
    assert "lacks 2 IR and 2 visible frames that capture dropped before they reached it" in caplog.text
    assert [counters[f"record_dropped.{name}"] for name in ("ir", "vis")] + [counters["record_failed"]] == [0, 0, 0]
    assert (tmp_path / "rig.mcap").exists()


class _OverwritingProducers(_EndingProducers):
    """Producers whose rings go on overwriting frames once the loop has taken its last: one more each look (a live
    camera's while the run ends, its recording being finished)."""

    def stats(self) -> dict:
        if not self.items:
            self.counters = {**self.counters, "dropped": self.counters["dropped"] + 1}
        return super().stats()


def test_the_final_stats_count_what_capture_dropped_while_the_run_read_as_its_recording_says(monkeypatch, tmp_path,
                                                                                             caplog):
    # the final snapshot counted the frames the rings overwrote while the recording was finished, after the loop had
    # stopped reading them: capture_dropped.ir=5 against the recording's "lacks 3 IR" at the end of one demo run
    from streamfuse import pipeline
    from streamfuse.frames import Frame

    ir, vis = np.full((48, 64), 200, np.uint8), np.full((48, 64, 3), 40, np.uint8)
    producers = _OverwritingProducers([Frame("ir", 0, 0, ir), Frame("vis", 0, 0, vis)], _NO_CAPTURE_LOSS)
    monkeypatch.setattr(pipeline, "start_producers", lambda *a: producers)
    cfg, _ = _live_cfg("ir.width=64", "ir.height=48", "vis.width=64", "vis.height=48",
                       f"record.path={tmp_path / 'rig.mcap'}")
    with caplog.at_level("WARNING"):
        counters = pipeline.run_live(cfg, duration_s=60.0)["counters"]  # the duration only bounds a failure
    lost = (counters["capture_dropped.ir"], counters["capture_dropped.vis"])
    assert f"lacks {lost[0]} IR and {lost[1]} visible frames that capture dropped" in caplog.text, (lost, caplog.text)


def test_a_run_failing_after_each_source_delivered_a_frame_keeps_its_recording():
    # only a run that failed before a source's first frame (a wrong path) discards its recording: one frame from
    # each is a recording of what went wrong, kept for the replay that shows it
    from types import SimpleNamespace

    from streamfuse.pipeline import _end_recording

    calls = []
    rec = SimpleNamespace(close=lambda dropped: calls.append(("close", dropped)),
                          discard=lambda: calls.append("discard"))
    _end_recording(rec, {"ir": {"delivered": 1, "dropped": 0}, "vis": {"delivered": 9, "dropped": 3}}, "ir: gone")
    assert calls == [("close", {"ir": 0, "vis": 3})]


def test_a_recording_finished_but_not_given_its_name_is_said_whole_and_where(tmp_path, caplog):
    # the rename at the end failed (a permission changed meanwhile): the .partial file is the whole recording, and the
    # line says to rename it, not to `recover` it
    from types import SimpleNamespace

    from streamfuse.atomic_write import partial_path
    from streamfuse.pipeline import _log_recording_failure

    path = tmp_path / "rig.mcap"
    partial_path(path).touch()
    rec = SimpleNamespace(path=path, file=path, error="Permission denied", finished=True, counts={"ir": 4, "vis": 5})
    with caplog.at_level("ERROR", logger="streamfuse.pipeline"):
        _log_recording_failure(rec)
    assert caplog.messages == [f"recording failed: {partial_path(path)} was not given its name (Permission denied); "
                               f"it holds 4 IR and 5 visible frames, whole: rename it to {path}"]


def test_the_report_carries_the_fusers_counters_and_a_recording_left_unnamed_as_failed():
    # the fuser's own counters (hclfuse's OT cache hits) reach the stats topic; and a recording whole but left under
    # its .partial name is not where the rig's scripts look: record_failed (exit 1) says so
    from types import SimpleNamespace

    from streamfuse.pipeline import _report
    from streamfuse.sync import Pairer, SyncConfig
    from streamfuse.telemetry import Telemetry, TelemetryConfig

    rec = SimpleNamespace(dropped={"ir": 0, "vis": 0}, error="Permission denied", finished=True)
    producers = SimpleNamespace(stats=lambda: {name: dict(_NO_CAPTURE_LOSS) for name in ("ir", "vis")})
    pub, fuser = SimpleNamespace(send_stats=lambda snap: None), SimpleNamespace(stats=lambda: {"ot_cache_hits": 5})
    snap = _report(Telemetry(TelemetryConfig()), pub, Pairer(SyncConfig()), producers, fuser, rec, final=True)
    assert snap["counters"]["ot_cache_hits"] == 5 and snap["counters"]["record_failed"] == 1


def test_a_live_run_keeps_its_frames_buffers_in_the_heap_whatever_its_fuser(monkeypatch, tmp_path):
    # only a fusion engine on the CPU tuned malloc: a baseline fuser's run (and a GPU's) had its frame-sized arrays
    # mapped and page-faulted in at every frame, hundreds of faults a frame
    from streamfuse import device
    from streamfuse.pipeline import run_live

    calls = []
    monkeypatch.setattr(device, "_malloc_tuned", None)  # asked afresh: an earlier test's answer is remembered
    monkeypatch.setattr(device, "_apply_mallopt", lambda: calls.append(1) or True)
    cfg, _ = _live_cfg(endpoint=f"ipc://{tmp_path}/fused")
    stop = threading.Event()
    stop.set()  # the run starts, then ends at its first turn
    run_live(cfg, duration_s=60.0, stop=stop)
    assert calls == [1]


class _OpeningProducers(_EndingProducers):
    """Producers whose stop kills one still opening its source (a network camera that never answered), said in a line
    as :meth:`Producers.stop` says it."""

    def stop(self) -> None:
        if not self.stopped:
            logging.getLogger("streamfuse.capture.producer").info(
                "producer streamfuse-vis (pid 4242) still opening its source; killing it")
        self.stopped = True

    def __exit__(self, *exc) -> None:
        self.stop()


def test_the_final_stats_are_the_last_line_of_a_run_whose_camera_was_still_opening(monkeypatch, caplog):
    # A vis camera that took the connection and never sent (a silent RTSP port) was killed as the producers stopped,
    # after the final stats: the run's last line was "producer streamfuse-vis (pid N) still opening its source; killing
    # it", 2 s after the final stats, where a launcher reads the run's last line for them
    from streamfuse import pipeline

    producers = _OpeningProducers([], _NO_CAPTURE_LOSS)
    producers.stopped = False
    monkeypatch.setattr(pipeline, "start_producers", lambda *a: producers)
    with caplog.at_level("INFO", logger="streamfuse"):
        pipeline.run_live(_live_cfg()[0], duration_s=60.0)
    said = [r.getMessage() for r in caplog.records]
    assert producers.stopped and said[-1].startswith("final: ") and "still opening its source" in said[-2], said
