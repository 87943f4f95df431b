"""A live run's start and stop: the seconds from starting ``python -m streamfuse run`` to its first published frame
(read by a subscriber that connects as soon as the run publishes), and from a SIGTERM, once its frames flow, to its
exit (its capture processes stopped and its shared memory freed). ``--runs`` runs follow one another, each a fresh
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

from streamfuse.bench.view import _start, _stop
from streamfuse.cli.args import DefaultsFormatter, Parser, int_at_least
from streamfuse.client import Subscriber

_PROG = "streamfuse bench start"  # as its usage errors and every command's own lines start
__all__ = ["main"]

FIRST_S = 120.0  # a run's first frame comes within this of its publishing (a first compile on a busy machine)
EXIT_S = 30.0  # and it exits within this of its SIGTERM, else it is reported and killed


def _run(argv: list[str], log: Path) -> tuple[float, float]:
    """Seconds from the start of ``argv`` to a subscriber's first frame, and from its SIGTERM to its exit."""
    t0 = time.monotonic()
    proc, endpoint = _start(argv, log, r"publishing \S+ on (tcp://127\.0\.0\.1:\d+) ")
    try:
        with Subscriber(endpoint, timeout_s=FIRST_S, shm=False) as sub:
            if sub.recv() is None:
                raise SystemExit(f"{_PROG}: error: no frame in {FIRST_S:g} s of the run's publishing")
        first = time.monotonic() - t0
        t1 = time.monotonic()
        proc.terminate()
        try:
            proc.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{_PROG}: error: the run had not exited {EXIT_S:g} s after its SIGTERM") from None
        return first, time.monotonic() - t1
    finally:
        _stop(proc)


def main(argv: list[str] | None = None) -> int:
    """Start and stop ``--runs`` live runs one after another, printing a line for each; returns the exit status."""
    parser = Parser(prog="python -m streamfuse bench start", description=__doc__, formatter_class=DefaultsFormatter)
    parser.add_argument("--runs", type=int_at_least(1, 100), default=3, help="runs, one after another")
    parser.add_argument("--config", default="demo", help="live config: a shipped name or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a config value (repeatable)")
    args = parser.parse_args(argv)
    sets = [a for o in [*args.overrides, "publish.endpoint=tcp://127.0.0.1:*"] for a in ("--set", o)]
    cmd = [sys.executable, "-m", "streamfuse", "run", "--config", args.config, *sets]
    print(f"{' '.join(['python -m streamfuse run --config', args.config, *sets[:-2]])}; {os.cpu_count()} cores",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="streamfuse-bench-start-") as tmp:
        for i in range(args.runs):
            load = os.getloadavg()[0]
            first, exit_s = _run(cmd, Path(tmp, f"run{i}.log"))
            print(f"run {i + 1}: first frame {first:.2f} s after its start, exit {exit_s:.2f} s after its SIGTERM "
                  f"(load average {load:.2f})", flush=True)
    return 0
