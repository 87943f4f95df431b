"""torch's compiler cache folder, which torch makes as the model is built, is one of this user's alone: a file,
link or shared folder that another user left at torch's default name neither stops the run nor receives its code."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers_users import OTHER, needs_root

from streamfuse.torch_cache import set_cache_dir

REPO = Path(__file__).resolve().parents[1]
USER = "streamfuse-test-user"
# what building the model does (a tensor op under a device context imports torch's compiler); then where it caches
_LOAD = """
import os, streamfuse, torch
with torch.device("cpu"):
    1.0 - torch.ones(2, dtype=torch.float64)
import torch._dynamo
print(os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""))
"""


def _load(tmp: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}, "TMPDIR": str(tmp),
           "USER": USER, "LOGNAME": USER, **env}
    return subprocess.run([sys.executable, "-c", _LOAD], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def _in_process(tmp: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """This process's environment and temporary directory as ``_load`` gives its interpreter, for set_cache_dir."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    for name, value in {"USER": USER, "LOGNAME": USER, **env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))


def _plant(default: Path, kind: str, tmp: Path) -> None:
    if kind == "file":
        default.write_text("")
    elif kind == "link":
        (tmp / "elsewhere").mkdir()
        default.symlink_to(tmp / "elsewhere")
    else:
        default.mkdir()
        modes = {"folder others can write into": 0o777, "folder its group can write into": 0o770}
        default.chmod(modes.get(kind, 0o700))
        if kind == "another user's folder":
            os.chown(default, OTHER, OTHER)


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_planted_default_folder_is_not_used(tmp_path, kind):
    default = tmp_path / f"torchinductor_{USER}"
    _plant(default, kind, tmp_path)
    done = _load(tmp_path)
    assert done.returncode == 0, done.stderr  # a file there: "FileExistsError: [Errno 17] File exists"
    private = tmp_path / f"streamfuse-torch-{os.getuid()}"
    assert done.stdout.strip() == str(private)
    assert private.stat().st_mode & 0o777 == 0o700
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").iterdir())


# The folders others or its group could write into, or another user's, take set_cache_dir's decision of the file's
# case above, whose run shows that torch then caches where the variable says: the decision alone is checked here,
# in this process, rather than by a start of torch each.
@pytest.mark.parametrize("kind", ["folder others can write into", "folder its group can write into",
                                  pytest.param("another user's folder", marks=needs_root)])
def test_a_default_folder_not_this_users_alone_is_not_used(tmp_path, monkeypatch, kind):
    _plant(tmp_path / f"torchinductor_{USER}", kind, tmp_path)
    _in_process(tmp_path, monkeypatch)
    set_cache_dir()
    private = tmp_path / f"streamfuse-torch-{os.getuid()}"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(private)
    assert private.stat().st_mode & 0o777 == 0o700


def test_a_run_of_its_own_is_used_where_the_private_folder_is_taken_too(tmp_path):
    _plant(tmp_path / f"torchinductor_{USER}", "file", tmp_path)
    (tmp_path / f"streamfuse-torch-{os.getuid()}").write_text("")
    done = _load(tmp_path)
    assert done.returncode == 0, done.stderr
    used = Path(done.stdout.strip())
    assert used.parent == tmp_path and used.name.startswith("streamfuse-torch-")
    assert not used.exists()  # removed as the run ended


def test_torchs_own_folder_and_the_users_choice_are_kept(tmp_path, monkeypatch):
    done = _load(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / f"torchinductor_{USER}")  # torch's choice, made by torch
    # the user's choice, set where torch's own could not be used, is left alone (in this process: no torch to start)
    (tmp := tmp_path / "planted").mkdir()
    _plant(tmp / f"torchinductor_{USER}", "file", tmp)
    _in_process(tmp, monkeypatch, TORCHINDUCTOR_CACHE_DIR=str(tmp / "chosen"))
    set_cache_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp / "chosen")
