"""A live run's start, steady cost and stop: the seconds from starting ``python -m streamfuse run`` to its first
published frame (read by a subscriber that connects as soon as the run publishes, raw over loopback TCP); then,
over ``--seconds`` of frames, the CPU time and the page faults of the run's main process (the live loop: frames out
of the rings, pairing, the frame processor, publishing; the capture processes are its children) per frame it
published (its ``seq``); and the seconds from a SIGTERM to its exit (its capture processes stopped and its shared
memory freed). ``--runs`` runs follow one another, each a fresh
process: a first run after an install compiles the numba kernels (its start includes that), the next find them
cached. The load average is printed with each run.

Run: ``python -m streamfuse bench start --runs 3`` (the demo config; ``--set fuse.name=max`` for a baseline fuser).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streamfuse.bench import child
from streamfuse.cli.args import DefaultsFormatter, Parser, config_error, int_at_least, positive
from streamfuse.client import Subscriber
from streamfuse.config import ConfigError, load_config
from streamfuse.configs import resolve
from streamfuse.errors import printable
from streamfuse.signals import said_last

_PROG = "streamfuse bench start"  # as its usage errors and every command's own lines start
__all__ = ["main"]

FIRST_S = 120.0  # a run's first frame comes within this of its publishing (a first compile on a busy machine)
EXIT_S = 30.0  # and it exits within this of its SIGTERM, else it is reported and killed


def _steady(sub: Subscriber, pid: int, seconds: float) -> tuple[float, float]:
    """Milliseconds of CPU and page faults of process ``pid`` per frame it published while ``sub`` read for
    ``seconds``, from one frame's arrival to the last's."""
    marks = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(marks) < 2:
        if (frame := sub.recv()) is None:
            raise SystemExit(f"{_PROG}: error: the run published no frame for {sub.timeout_s:g} s")
        marks[1:] = [(frame[0]["seq"], child.cpu_s(pid), child.page_faults(pid))]  # the first and the latest
    (seq0, cpu0, faults0), (seq1, cpu1, faults1) = marks[0], marks[-1]
    frames = max(1, seq1 - seq0)
    return 1e3 * (cpu1 - cpu0) / frames, (faults1 - faults0) / frames


def _run(argv: list[str], log: Path, seconds: float) -> tuple[float, float, float, float]:
    """Seconds from the start of ``argv`` to a subscriber's first frame, the main process's CPU ms and page faults a
    frame over ``seconds``, and the seconds from its SIGTERM to its exit."""
    t0 = time.monotonic()
    proc, endpoint = child.start(_PROG, argv, log, r"publishing \S+ on (tcp://127\.0\.0\.1:\d+) ")
    try:
        with Subscriber(endpoint, timeout_s=FIRST_S, shm=False) as sub:
            if sub.recv() is None:
                raise SystemExit(f"{_PROG}: error: no frame in {FIRST_S:g} s of the run's publishing")
            first = time.monotonic() - t0
            cpu_ms, faults = _steady(sub, proc.pid, seconds)
        t1 = time.monotonic()
        proc.terminate()
        try:
            proc.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{_PROG}: error: the run had not exited {EXIT_S:g} s after its SIGTERM") from None
        return first, cpu_ms, faults, time.monotonic() - t1
    finally:
        child.stop(proc)


def main(argv: list[str] | None = None) -> int:
    """Start, time and stop ``--runs`` live runs one after another, printing a line for each; returns the exit
    status."""
    parser = Parser(prog="python -m streamfuse bench start", description=__doc__, formatter_class=DefaultsFormatter)
    parser.add_argument("--runs", type=int_at_least(1, 100), default=3, help="runs, one after another")
    parser.add_argument("--seconds", type=positive(600), default=5.0,
                        help="seconds of frames over which the main process's CPU and page faults are counted")
    parser.add_argument("--config", default="demo", help="live config: a shipped name or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a config value (repeatable)")
    args = parser.parse_args(argv)
    overrides = [*args.overrides, "publish.endpoint=tcp://127.0.0.1:*"]
    try:  # here, before any run: a bad --config or --set was the first run's failure to start, exit status 1
        load_config(resolve(args.config), overrides)
    except ConfigError as exc:
        return config_error(_PROG, exc)
    except (ValueError, OSError) as exc:
        return said_last(f"{_PROG}: error: {printable(exc)}", 2)
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [sys.executable, "-m", "streamfuse", "run", "--config", args.config, *sets]
    print(f"{' '.join(['python -m streamfuse run --config', args.config, *sets[:-2]])}; {os.cpu_count()} cores",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="streamfuse-bench-start-") as tmp:
        for i in range(args.runs):
            load = os.getloadavg()[0]
            first, cpu_ms, faults, exit_s = _run(cmd, Path(tmp, f"run{i}.log"), args.seconds)
            print(f"run {i + 1}: first frame {first:.2f} s after its start; main process {cpu_ms:.2f} ms of CPU and "
                  f"{faults:.0f} page faults a frame; exit {exit_s:.2f} s after its SIGTERM (load average {load:.2f})",
                  flush=True)
    return 0
