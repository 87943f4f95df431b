"""A benchmark's child process (the demo, a viewer, a live run): started until its log says it is ready, its CPU and
page faults read from ``/proc`` (Linux), and stopped."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

__all__ = ["START_S", "STOP_S", "cpu_s", "page_faults", "start", "stop"]

START_S = 60.0  # the demo and a viewer start within this (torch's import on a busy machine)
STOP_S = 10.0  # and stop within this once asked (the demo's capture processes, its shared memory)


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command's name, which may hold spaces."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """The CPU seconds, user and system, process ``pid`` has used."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def page_faults(pid: int) -> int:
    """The minor page faults of process ``pid`` so far."""
    return int(_stat(pid)[7])  # minflt


def start(prog: str, argv: list[str], log: Path, ready: str, src: Path | None = None) -> tuple[subprocess.Popen, str]:
    """A child process whose stderr goes to ``log``, run from the checkout ``src`` (default: this one); once the
    regular expression ``ready`` is found in it, the process and the expression's first group (the port or endpoint
    it took: each binds a free one itself, so no other program can take it meanwhile).

    Raises:
        SystemExit: it exited or did not get ready within ``START_S`` (one line starting ``prog``, with its last log
            line).
    """
    env = dict(os.environ)
    if src is not None:  # its folder, where ``-m`` looks first, and first on the path of what it starts
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(src), os.environ.get("PYTHONPATH"))))
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=src)
    deadline = time.monotonic() + START_S
    try:
        while (found := re.search(ready, log.read_text())) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                last = (log.read_text().strip().splitlines() or ["(no output)"])[-1]
                raise SystemExit(f"{prog}: error: {' '.join(argv[2:4])} did not start: {last}")
            time.sleep(0.1)
    except BaseException:  # a SIGTERM or Ctrl-C while it starts too: it is not the caller's to stop yet
        stop(proc)
        raise
    return proc, found.group(1)


def stop(proc: subprocess.Popen) -> None:
    """Ask a child to stop (the demo then removes its shared memory), and kill it if it has not within ``STOP_S``."""
    proc.terminate()
    try:
        proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
