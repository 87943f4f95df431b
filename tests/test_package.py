"""The package's import-time contract: a Python without the dependencies gets one line naming the environment to use."""

from __future__ import annotations

import ast
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

import pytest
import zmq
from helpers_zmq import PATIENCE_S, plain_pub, with_header

from streamfuse.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


ENTRY_POINTS = [["-m", "streamfuse", "run", "--config", "demo"], ["run_stream.py", "--config", "demo"],
                *(["tools/" + p.name, "-h"] for p in sorted((REPO / "tools").glob("*.py")))]


@pytest.mark.parametrize("args", ENTRY_POINTS, ids=[" ".join(a[:3]) if a[0] == "-m" else a[0] for a in ENTRY_POINTS])
def test_missing_dependencies_are_one_line(args):
    # -S: no site-packages, as with a system Python that never installed the requirements (from the checkout, so
    # -m and run_stream.py find the package; a tool finds neither the package nor its dependencies)
    proc = subprocess.run([sys.executable, "-S", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not installed for" in lines[0] and "make venv" in lines[0], proc.stderr


def test_import_check_names_every_runtime_dependency():
    # a dependency missing from the check reached users as a ModuleNotFoundError traceback from inside a command
    import streamfuse

    listed = re.search(r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.M | re.S).group(1)
    names = {re.match(r"[A-Za-z0-9_.-]+", req).group().lower() for req in re.findall(r'"([^"]+)"', listed)}
    imports = {"pot": "ot", "opencv-python-headless": "cv2", "pyzmq": "zmq", "pyyaml": "yaml"}
    assert sorted(imports.get(n, n) for n in names) == sorted(streamfuse._DEPENDENCIES)


def test_every_third_party_import_is_a_declared_dependency():
    # scipy was imported by the OT stage and declared nowhere (it came only as POT's own dependency)
    import streamfuse

    extras = re.search(r"^\[project.optional-dependencies\](.*?)^\[", (REPO / "pyproject.toml").read_text(),
                       re.M | re.S).group(1)
    optional = {"aiohttp", "foxglove", "ray", "imagezmq"}  # each command that needs one says so in one line
    assert all(name in extras for name in ("aiohttp", "foxglove-sdk", "ray", "imagezmq"))
    files = [*(REPO / "streamfuse").rglob("*.py"), *(REPO / "tools").glob("*.py"), REPO / "run_stream.py"]
    imported = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.partition(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"streamfuse"}
    assert sorted(third_party - set(streamfuse._DEPENDENCIES) - optional) == []


def test_config_loading_needs_no_heavy_imports():
    code = ("import sys; from streamfuse.config import load_config; from streamfuse.configs import resolve;"
            " load_config(resolve('demo')); print(sorted(m for m in ('torch', 'ot') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


# a same-host reader's shared-memory checks came from the capture package, which loads every source kind (PyAV's
# containers, MCAP, ROS bags): 0.2-0.3 s of each consumer's start on a loaded machine; and PyAV (for h264 frames) and
# OpenCV (--show, --save's PNGs, the pages' and Foxglove's JPEGs) are for the paths that use them
HEAVY = ("streamfuse.capture", "mcap", "torch", "numba", "av", "cv2")


@pytest.mark.parametrize("command", ["view", "foxglove"])
def test_a_consumer_command_loads_no_capture_model_kernels_or_codecs(command):
    module = COMMANDS[command].partition(":")[0]
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (0, "[]"), proc.stderr


def test_a_plain_subscribe_takes_its_frames_without_capture_model_kernels_or_codecs():
    # a robot stack's consumer of raw frames loaded PyAV and OpenCV at its start, and paid 0.1-0.2 s for them
    with plain_pub() as pub:
        endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        code = (f"import sys; from streamfuse.subscribe import main; status = main([{endpoint!r}, '--count', '2']);"
                f" print(status, sorted(m for m in {HEAVY!r} if m in sys.modules))")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 4 * PATIENCE_S  # its start and a subscriber's slow join, on a loaded machine
        try:
            for seq in itertools.count():  # until it has its frames (those before it connected are lost)
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                pub.send_multipart(with_header(seq=seq))
                time.sleep(0.02)
            out, err = proc.communicate(timeout=PATIENCE_S)
        finally:
            proc.kill()
            proc.wait()
    assert out.splitlines()[-1:] == ["0 []"], err


def _policy(env: dict[str, str], first: str = "") -> list[str]:
    """OMP_WAIT_POLICY and streamfuse.LATE_WAIT_POLICY as a fresh interpreter sees them after ``first``."""
    code = first + "import os, streamfuse; print(os.environ['OMP_WAIT_POLICY'], streamfuse.LATE_WAIT_POLICY)"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env).stdout.split()


def test_openmp_wait_policy_is_set_for_every_entry_point_but_a_users_choice_is_kept():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy(env) == ["PASSIVE", "False"]
    assert _policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == ["ACTIVE", "False"]
    assert _policy(env, "import torch; ") == ["PASSIVE", "True"]  # too late for torch's OpenMP: the engine warns once
    # a user's own choice with torch first: nothing of ours came too late, so the engine has nothing to warn of
    assert _policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}, "import torch; ") == ["ACTIVE", "False"]


def test_the_package_says_it_is_typed():
    # PEP 561: without the marker a robot stack's type checker ignores the hints of Subscriber and the wire format
    assert (REPO / "streamfuse" / "py.typed").is_file()
    assert re.search(r'^streamfuse = \[.*"py\.typed".*\]$', (REPO / "pyproject.toml").read_text(), re.M)


def test_a_type_checker_sees_the_lazy_public_names_as_they_are():
    # `from streamfuse import load_config` was `object` to mypy (the type of the package's __getattr__), so a program
    # calling it failed its type check: "object" not callable
    import streamfuse

    tree = ast.parse((REPO / "streamfuse" / "__init__.py").read_text())
    checked = [statement for node in tree.body if isinstance(node, ast.If)
               and getattr(node.test, "id", "") == "TYPE_CHECKING" for statement in node.body]
    imported = {alias.name: node.module for node in checked if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert imported == streamfuse._LAZY


def test_the_source_distribution_holds_every_tracked_file(tmp_path):
    # without MANIFEST.in it lacked the Makefile, run_stream.py, tools/ and the tests' helpers: unpacked, nothing ran
    pytest.importorskip("setuptools")
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no list of the tracked files")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tracked = {name for name in listed.decode().split("\0") if name and (REPO / name).is_file()}
    for name in tracked:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes((REPO / name).read_bytes())
    subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                    "build_meta.build_sdist(sys.argv[1])", str(tmp_path / "dist")], cwd=tmp_path / "src",
                   capture_output=True, check=True)
    [sdist] = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        held = {member.name.partition("/")[2] for member in archive.getmembers() if member.isfile()}
    assert tracked - held == set()


def test_make_demo_passes_its_options_to_the_run():
    # the demo's port was fixed: beside another run on 5555, `make demo` could only fail
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    args = ["DEMO_SECONDS=5", "DEMO_ARGS=--set publish.endpoint=tcp://127.0.0.1:6"]
    shown = subprocess.run(["make", "-n", "--no-print-directory", "demo", *args], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()  # under `make test` too (a sub-make)
    [run] = [line for line in shown if "run_stream.py" in line]
    assert run.endswith("run_stream.py --config demo --duration 5 --set publish.endpoint=tcp://127.0.0.1:6")


def test_the_wheel_holds_every_data_file_of_the_package():
    # configs, weights, the model card and the viewer's page reach a `pip install` user only through package-data
    import fnmatch

    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no list of the tracked files")
    listed = subprocess.run(["git", "ls-files", "streamfuse"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    data = [name.partition("/")[2] for name in listed if not name.endswith(".py")]
    section = (REPO / "pyproject.toml").read_text().partition("[tool.setuptools.package-data]")[2]
    globs = re.findall(r'"([^"]+)"', re.search(r"^streamfuse = \[(.*?)\]$", section, re.M).group(1))
    assert [name for name in data if not any(fnmatch.fnmatch(name, g) for g in globs)] == []


def test_an_editable_install_is_a_path_that_type_checkers_follow():
    # setuptools made `pip install -e .` of this layout an import hook (a .pth that runs a finder), which mypy and
    # pyright never run: a user's code importing streamfuse.client got "Cannot find implementation or library stub"
    # the environment's own record (the checkout's streamfuse.egg-info, first on pytest's path, has no .pth)
    dists = importlib.metadata.distributions(name="streamfuse", path=[sysconfig.get_path("purelib")])
    editable = [d for d in dists
                if json.loads(d.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable")]
    if not editable:
        pytest.skip("streamfuse is not installed editable in this environment")
    pths = [f.locate() for f in editable[0].files or [] if f.suffix == ".pth"]
    lines = [line for pth in pths for line in Path(pth).read_text().splitlines() if line.strip()]
    assert lines and all(not line.startswith("import") and (Path(line) / "streamfuse" / "py.typed").is_file()
                         for line in lines), lines
