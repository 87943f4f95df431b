"""``run_live`` called by a program of its own: how a stop signal ends it at any moment, whose handler it takes, and
how a program that calls it without the main-module guard is told so."""

from __future__ import annotations

import multiprocessing.process
import os
import signal
import subprocess
import sys
import threading

import pytest

from helpers_data import REPO


def _cfg():
    """The demo rig at a small frame size, fused by ``max`` (no model to load), on a free port."""
    from streamfuse.config import load_config

    return load_config(REPO / "streamfuse/configs/demo.yaml", [
        "publish.endpoint=tcp://127.0.0.1:*", "fuse.name=max", "engine.device=cpu", "telemetry.interval_s=60",
        "ir.width=64", "ir.height=48", "vis.width=64", "vis.height=48"])


def _ctrl_c_then(call):
    """``call``, with a Ctrl-C sent to this process first."""
    def hooked(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return call(*args, **kwargs)
    return hooked


def _run(stop: threading.Event) -> dict:
    from streamfuse.pipeline import run_live

    try:
        return run_live(_cfg(), duration_s=60.0, stop=stop)  # the duration only bounds a failure
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C was raised out of run_live")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("when", ["the model loads", "the capture servers start"])
def test_a_ctrl_c_while_the_run_starts_stops_it_and_returns_its_snapshot_as_later(monkeypatch, when):
    # one in the run's first moments, before its handler was installed, raised KeyboardInterrupt out of run_live; it
    # now ends the start-up there, the capture not started
    from streamfuse import pipeline
    from streamfuse.processor import FrameProcessor

    if when == "the model loads":
        monkeypatch.setattr(FrameProcessor, "from_config", _ctrl_c_then(FrameProcessor.from_config))
    else:
        monkeypatch.setattr(pipeline, "start_servers", _ctrl_c_then(pipeline.start_servers))
    monkeypatch.setattr(pipeline, "start_producers", lambda *args: pytest.fail("the capture started after the stop"))
    stop = threading.Event()
    snap = _run(stop)
    assert stop.is_set() and "published" in snap["counters"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.timeout(180)
def test_a_programs_own_ctrl_c_handler_is_kept_during_the_run_and_after(monkeypatch):
    # a program that handles Ctrl-C itself (a robot stack's shutdown) lost it to run_live's for the run's length
    from streamfuse import pipeline

    stop, got = threading.Event(), []

    def own(signum, frame):
        got.append(signum)
        stop.set()

    monkeypatch.setattr(pipeline, "_drain", _ctrl_c_then(pipeline._drain))  # at the run's first turn
    previous = signal.signal(signal.SIGINT, own)
    try:
        _run(stop)
        assert got == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.timeout(180)
def test_a_ctrl_c_while_a_capture_process_starts_stops_the_run(monkeypatch):
    # one that came as a producer process started (the run's first two, or a restart's) was ignored and lost: the
    # run went on
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start",
                        _ctrl_c_then(multiprocessing.process.BaseProcess.start))
    stop = threading.Event()
    _run(stop)
    assert stop.is_set()


_LOCKED = """
import fcntl
import sys

from streamfuse.config import load_config
from streamfuse.pipeline import RunFailed, run_live

lock = open({lock!r}, "w")  # one instance at a time
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit("another instance is running")

if __name__ == "__main__":
    try:
        run_live(load_config("demo", {overrides!r}), duration_s=60.0)  # the duration only bounds a failure
    except RunFailed as exc:
        sys.exit(f"failed: {{exc}}")
    print("ended")
"""


@pytest.mark.timeout(180)
def test_a_program_whose_main_module_fails_in_its_capture_processes_ends_its_run_once_saying_where(tmp_path):
    # a capture process runs the program's main module as it starts; one that exits there (here: the program's
    # one-instance lock, which the program itself holds) was restarted until the run's end, which then read as a run
    program = tmp_path / "locked.py"
    program.write_text(_LOCKED.format(lock=str(tmp_path / "lock"), overrides=[
        "publish.endpoint=tcp://127.0.0.1:*", "fuse.name=max", "engine.device=cpu", "ir.width=64", "ir.height=48",
        "vis.width=64", "vis.height=48"]))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=150)
    failed = [line for line in proc.stderr.splitlines() if line.startswith("failed: ")]
    assert proc.returncode == 1 and len(failed) == 1, proc.stderr
    assert "producer (pid " in failed[0] and "as it started, in the program's main module" in failed[0]
    assert "restarting" not in proc.stderr
