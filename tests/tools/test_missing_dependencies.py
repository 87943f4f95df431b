"""A tool run by a Python without the dependencies names them, in the one line of ``python -m streamfuse``; one whose
command lacks a deeper module (an extra, a dependency's own) says so as that command does."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = sorted(p.name for p in (REPO / "tools").glob("*.py"))


def _stderr(args: list[str], cwd: Path, path: Path | None = None) -> tuple[int, str]:
    # -S and no PYTHONPATH (or only ``path``): no site-packages, as with a system Python that installed neither the
    # requirements nor the package
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | ({"PYTHONPATH": str(path)} if path else {})
    proc = subprocess.run([sys.executable, "-S", *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)
    return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def package_line() -> str:
    code, err = _stderr(["-m", "streamfuse", "-h"], REPO)
    assert code == 1 and err.startswith("streamfuse: numpy, ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("name", TOOLS)
def test_a_tool_names_the_missing_dependencies(name, package_line, tmp_path):
    # from another folder: the tool finds its checkout's package, whose check says what this Python lacks
    assert _stderr([str(REPO / "tools" / name), "-h"], tmp_path) == (1, package_line)


@pytest.mark.parametrize("name", TOOLS)
def test_a_folder_an_uninstall_left_is_not_taken_for_the_package(name, package_line, tmp_path):
    # pip uninstall leaves numba's cache files (site-packages/streamfuse/__pycache__/*.nbi): that folder imports as an
    # empty namespace package, which the tools took for the installed package (ModuleNotFoundError: streamfuse.cli)
    left = tmp_path / "site" / "streamfuse" / "__pycache__"
    left.mkdir(parents=True)
    (left / "post_kernels.colour-12.py311.nbi").write_bytes(b"")
    assert _stderr([str(REPO / "tools" / name), "-h"], tmp_path, path=tmp_path / "site") == (1, package_line)


@pytest.mark.parametrize("name, module", [("bench_fuse.py", "streamfuse.bench.fuse"),
                                          ("evaluate.py", "streamfuse.cli.evaluate"), ("train.py", "streamfuse.train")])
def test_a_tool_whose_command_lacks_a_module_is_one_line(name, module, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # its import fails as that of a module not installed would
    monkeypatch.setattr(sys, "argv", [name])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "tools" / name), run_name="__main__")
    # said by the command line's guard while its stop handlers still stand, then exit status 1
    assert exc.value.code == 1
    assert capsys.readouterr().err == (f"{name}: needs {module}, which is not installed for {sys.executable} (see "
                                       "pyproject.toml's optional dependencies)\n")
