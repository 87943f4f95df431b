"""A stop that comes as a command prints its error line: the line stays whole, and the status is the error's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

# the command's standard error, a stream whose first write sends the process a SIGTERM: Python runs the handler as
# that write returns, between the line's text and its newline
_STOPPED_AS_IT_SAYS = """
import os, signal, sys
from streamfuse import cli

class Stopped:
    def __init__(self, stream):
        self._stream, self._sent = stream, False

    def write(self, text):
        written = self._stream.write(text)
        if not self._sent:
            self._sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return written

    def __getattr__(self, name):
        return getattr(self._stream, name)

sys.stderr = Stopped(sys.stderr)
sys.argv = ["streamfuse", *sys.argv[1:]]
cli.console()
"""


@pytest.mark.parametrize("argv, line, status", [
    (["recover", "{tmp}/.rig.mcap.partial"], r"streamfuse recover: error: recording not found: .*\.rig\.mcap\.partial",
     1),
    (["replay", "--config", "{tmp}/none.yaml", "--out", "{tmp}/fused.mp4"], r"streamfuse replay: config error: .*", 2),
    # raised as SystemExit(line): Python printed it at exit, the handlers back to the default, and died by the SIGTERM
    (["evaluate", "{tmp}/ir", "{tmp}/vis", "--out", "{tmp}/scores", "--fuser", "max"],
     r"streamfuse evaluate: error: IR folder not found: .*/ir", 1),
    (["bench", "replay", "--ir", "{tmp}/ir.mp4", "--vis", "{tmp}/vis.mp4"],
     r"streamfuse bench replay: error: IR video not found: .*/ir\.mp4", 1),
], ids=["recover", "replay", "evaluate", "bench-replay"])
def test_a_sigterm_as_the_error_line_is_printed_leaves_it_whole_and_its_status(tmp_path, argv, line, status):
    # seen: "streamfuse recover: error: recording not found: ...partialstreamfuse recover: interrupted (SIGTERM)" on
    # one line, and exit status 130 for a command that had failed
    done = subprocess.run([sys.executable, "-c", _STOPPED_AS_IT_SAYS, *(a.format(tmp=tmp_path) for a in argv)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout) == (status, ""), done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.endswith("\n"), done.stderr
    assert re.fullmatch(line + "\n", done.stderr), done.stderr


def test_a_sigterm_as_a_bench_replays_fuser_is_said_not_run_leaves_that_line_whole_then_stops(tmp_path):
    # seen: "streamfuse bench replay: error: max not run: ...streamfuse bench: interrupted (SIGTERM)" on one line
    not_run = _STOPPED_AS_IT_SAYS.replace("sys.stderr = Stopped", """import streamfuse.replay

def not_built(*args, **kwargs):
    raise RuntimeError("no weights")

streamfuse.replay.run_replay = not_built
sys.stderr = Stopped""")
    argv = ["bench", "replay", "--fuser", "max,average", "--frames", "2", "--size", "32x24"]
    done = subprocess.run([sys.executable, "-c", not_run, *argv], capture_output=True, text=True, timeout=120,
                          check=False, cwd=tmp_path)
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines() == ["streamfuse bench replay: error: max not run: no weights",
                                        "streamfuse bench: interrupted (SIGTERM)"], done.stderr



@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("argv, error", [
    (["evaluate", "--no-such-option"], "streamfuse evaluate: error: "),
    (["bench", "fuse", "--sizes", "0x0"], "streamfuse bench fuse: error: "),
    (["recover", "--out", ""], "streamfuse recover: error: "),
    (["subscribe", "--timeout", "-1", "tcp://127.0.0.1:1"], "streamfuse subscribe: error: "),
    (["bench", "nope"], "streamfuse bench: unknown command 'nope'"),
], ids=["evaluate", "bench-fuse", "recover", "subscribe", "bench-unknown"])
def test_a_stop_as_a_usage_error_is_printed_leaves_its_lines_whole_and_status_2(argv, error, signal_name):
    # seen: the usage line cut by "streamfuse evaluate: interrupted (SIGTERM)" and status 130, no error line at all
    # (argparse printed the usage and the error with the stops' handlers standing); an unknown bench's line the same
    stopped = _STOPPED_AS_IT_SAYS.replace("signal.SIGTERM", f"signal.{signal_name}")
    done = subprocess.run([sys.executable, "-c", stopped, *argv], capture_output=True, text=True, timeout=120,
                          check=False)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    *usage, last = done.stderr.splitlines()
    assert last.startswith(error) and done.stderr.endswith("\n") and "interrupted" not in done.stderr, done.stderr
    assert usage == [] if argv[1] == "nope" else usage[0].startswith("usage: python -m streamfuse "), done.stderr


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_stop_as_python_flushes_a_usage_errors_lines_at_exit_keeps_status_2(signal_name):
    # seen: argparse's SystemExit(2) raised past the console, the stops' handlers back to Python's own: a SIGTERM
    # as Python flushed the lines at exit ended the command by the signal (143)
    stopped = _STOPPED_AS_IT_SAYS.replace("signal.SIGTERM", f"signal.{signal_name}")
    at_exit = stopped.replace("""    def write(self, text):
        written = self._stream.write(text)
        if not self._sent:""", """    def write(self, text):
        return self._stream.write(text)

    def flush(self):
        written = self._stream.flush()
        if not self._sent:""")
    done = subprocess.run([sys.executable, "-c", at_exit, "evaluate", "--no-such-option"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].startswith("streamfuse evaluate: error: "), done.stderr


# a Ctrl-C as the command starts (its config being read; a benchmark's batch), then a SIGTERM as it says that stop
_STOPPED_TWICE = _STOPPED_AS_IT_SAYS.replace(
    "if not self._sent:", 'if not self._sent and "interrupted" in text:').replace(
    "sys.stderr = Stopped", """import runpy
import streamfuse.batch
import streamfuse.configs


def ctrl_c(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    raise AssertionError("the Ctrl-C was not acted on")


def batch_stopped(*args, **kwargs):
    raise streamfuse.batch.BatchInterrupted(None, "interrupted (Ctrl-C)")


if "batch" in sys.argv:
    streamfuse.batch.run_batch = batch_stopped
else:
    streamfuse.configs.resolve = ctrl_c
sys.stderr = Stopped""").replace("cli.console()", """if sys.argv[1].endswith(".py"):
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
cli.console()""")


@pytest.mark.parametrize("argv, line", [
    (["run", "--config", "demo"], "streamfuse run: interrupted (Ctrl-C)"),
    (["replay", "--ir", "{tmp}/ir.mp4", "--vis", "{tmp}/vis.mp4", "--out", "{tmp}/fused.mp4"],
     "streamfuse replay: interrupted (Ctrl-C)"),
    (["{repo}/tools/replay_many.py", "{tmp}", "--out", "{tmp}/fused"], "replay_many.py: interrupted (Ctrl-C)"),
    (["bench", "batch", "--pairs", "2", "--frames", "1", "--size", "32x24"],
     "streamfuse bench batch: interrupted (Ctrl-C)"),
    (["bench", "start"], "streamfuse bench: interrupted (Ctrl-C)"),  # the command line's own stop line
], ids=["run", "replay", "replay_many", "bench-batch", "bench-start"])
def test_a_sigterm_as_a_stop_line_is_printed_leaves_it_whole_and_its_status(tmp_path, argv, line):
    # seen: "streamfuse run: interrupted (Ctrl-C)streamfuse run: interrupted (SIGTERM)" on one line, and exit status 0
    # (the SIGTERM's, for a live run) for a command that a Ctrl-C had stopped; the command line's own line cut by the
    # SIGTERM's default, status 143
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _STOPPED_TWICE, *(a.format(tmp=tmp_path, repo=repo) for a in argv)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines()[-1] == line and done.stderr.endswith(f"{line}\n"), done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("interrupted") == 1, done.stderr
