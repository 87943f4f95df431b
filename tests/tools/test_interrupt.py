"""Ctrl-C to a tool, while it loads (numpy, torch, OpenCV: a second or more) or while it works: one line, not a
traceback, as for ``python -m streamfuse``."""

from __future__ import annotations

import runpy
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamfuse.signals import handled

REPO = Path(__file__).resolve().parents[2]
# the tools whose own module imports the heavy packages, and the thin ones that run a command's module
OWN_IMPORTS = ["ablate.py", "extract_pairs.py", "homography.py", "target_sweep.py", "temporal.py"]
THIN = ["evaluate.py", "bench_fuse.py", "bench_replay.py", "bench_transport.py", "bench_batch.py", "bench_peers.py",
        "train.py"]


@pytest.mark.parametrize("name", OWN_IMPORTS)
def test_a_ctrl_c_while_a_tool_imports_is_one_line(name, tmp_path):
    # the Ctrl-C lands on the first import after the tool's start-up (its first heavy package); Python then ends the
    # process by SIGINT, as it does for any Ctrl-C that no handler takes
    script = textwrap.dedent(f"""
        import runpy, sys

        class CtrlC:
            def find_spec(self, name, path=None, target=None):
                if sys.excepthook is not sys.__excepthook__:  # the tool's start-up is over
                    raise KeyboardInterrupt
                return None

        sys.meta_path.insert(0, CtrlC())
        sys.argv = [{name!r}, "-h"]
        runpy.run_path({str(REPO / "tools" / name)!r}, run_name="__main__")
        """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (-signal.SIGINT, f"{name}: interrupted (Ctrl-C)\n")


@pytest.mark.parametrize("name", THIN)
def test_a_ctrl_c_while_a_thin_tool_loads_its_command_is_one_line(name, monkeypatch, capsys):
    def loading(module: str):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", [name])
    monkeypatch.setattr("importlib.import_module", loading)  # last: monkeypatch itself imports by it
    # handled() puts back the Ctrl-C handler, which the tool leaves ignored once it is over
    with handled(signal.getsignal(signal.SIGINT), (signal.SIGINT,)), pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "tools" / name), run_name="__main__")
    assert exc.value.code == 130
    assert capsys.readouterr().err == f"{name}: interrupted (Ctrl-C)\n"


@pytest.mark.parametrize("name", OWN_IMPORTS)
def test_a_ctrl_c_while_a_tool_works_is_one_line(name, monkeypatch, capsys):
    def working(*_args, **_kwargs):  # where every tool starts its work
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", [name])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # put back after: the tool sets its own for its process
    monkeypatch.setattr("argparse.ArgumentParser.parse_args", working)
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "tools" / name), run_name="__main__")
    assert exc.value.code == 130
    assert capsys.readouterr().err == f"{name}: interrupted (Ctrl-C)\n"
