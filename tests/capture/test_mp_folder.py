"""multiprocessing's folder for a live run: one a run killed as a whole left is removed by the next start, and only
such ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_START = """
import sys
from multiprocessing import current_process
from streamfuse.capture.producer_process import process_context
process_context()  # the fork server started, its socket in multiprocessing's folder
print(current_process()._config["tempdir"], flush=True)
sys.stdin.readline()
"""


def _start(temp: Path) -> subprocess.Popen:
    """A process that starts the capture's servers in ``temp`` and waits for a line on its stdin."""
    return subprocess.Popen([sys.executable, "-c", _START], env={**os.environ, "TMPDIR": str(temp)}, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


@pytest.mark.timeout(180)
def test_the_folder_of_a_run_killed_as_a_whole_is_removed_by_the_next_start() -> None:
    # multiprocessing's /tmp/pymp-<random> folder, with the fork server's socket in it, stayed after every kill -9
    # of a live run: its exit handler never ran, and no later start could tell the folder from another program's
    with tempfile.TemporaryDirectory() as temp:  # the system's: a test's own is too long a path for the socket
        _killed_then_started(Path(temp))


def _killed_then_started(tmp_path: Path) -> None:
    killed = _start(tmp_path)
    folder = Path(killed.stdout.readline().strip())
    assert folder.parent == tmp_path and folder.is_dir()
    killed.send_signal(signal.SIGKILL)
    killed.wait(60)
    killed.stdout.close()
    killed.stdin.close()
    later = _start(tmp_path)
    own = Path(later.stdout.readline().strip())
    assert not folder.exists() and own.is_dir()
    later.communicate("\n", timeout=60)  # a run that ends removes its own at exit
    assert later.returncode == 0 and list(tmp_path.iterdir()) == []


def test_only_the_folders_of_runs_gone_of_this_namespace_are_removed(tmp_path) -> None:
    from streamfuse.capture.mp_folder import PREFIX, _namespace, remove_stale

    if not _namespace():
        pytest.skip("no pid namespace to read here (not Linux): no folder is removed")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60, check=True)
    names = {"gone": f"{PREFIX}{_namespace():x}-{gone.stdout.strip()}-ab12", "running": f"{PREFIX}{_namespace():x}-"
             f"{os.getpid()}-cd34", "elsewhere": f"{PREFIX}{_namespace() + 1:x}-{gone.stdout.strip()}-ef56",
             "another program's": "pymp-gh78"}
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "listener-x").touch()
    assert remove_stale(tmp_path) == [names["gone"]]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "gone")


def test_a_temporary_folder_too_deep_for_the_socket_in_a_run_folder_is_left_to_multiprocessing(monkeypatch,
                                                                                            tmp_path) -> None:
    # its socket's path would not fit a Unix socket address, where multiprocessing's shorter name still may
    from multiprocessing import current_process

    from streamfuse.capture import mp_folder

    deep = tmp_path / ("d" * (100 - len(str(tmp_path))))
    deep.mkdir()
    monkeypatch.setattr(mp_folder.tempfile, "tempdir", str(deep))
    monkeypatch.setitem(current_process()._config, "tempdir", None)
    mp_folder.own_folder()
    assert current_process()._config["tempdir"] is None and list(deep.iterdir()) == []
