"""A stop as ``python -m streamfuse`` imports the package itself, before its ``__main__`` runs: one line, and the
status the command gives that stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# run by Python's start-up (site) before the package: the signal lands as the package's __init__ imports its first
# module of its own
_SIGNAL_AS_THE_PACKAGE_LOADS = """
import os, signal, sys


class Stop:
    def find_spec(self, name, path=None, target=None):
        if name == "streamfuse.openmp":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.{signal})
        return None


sys.meta_path.insert(0, Stop())
"""


@pytest.mark.parametrize("signal_name, line", [("SIGINT", "interrupted (Ctrl-C)"), ("SIGTERM", "interrupted (SIGTERM)"),
                                               ("SIGHUP", "interrupted (SIGHUP)")])
def test_a_stop_as_python_m_streamfuse_loads_the_package_is_one_line_and_130(tmp_path, signal_name, line):
    # seen: a Ctrl-C there was a traceback ending in KeyboardInterrupt and a death by SIGINT; a SIGTERM or hangup a
    # silent death by the signal (143, 129), the package's own lines running before __main__ could hold them
    (tmp_path / "sitecustomize.py").write_text(_SIGNAL_AS_THE_PACKAGE_LOADS.format(signal=signal_name))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "streamfuse", "recover", str(tmp_path / ".rig.mcap.partial")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
                          # as from a terminal: SIGHUP at its default even where the suite runs under nohup
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    assert (done.returncode, done.stderr) == (130, f"streamfuse recover: {line}\n")
