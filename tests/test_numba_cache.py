"""The numba kernels compile where numba cannot keep them beside the package or in the home folder (a root-owned
install run by a service user, a read-only container), cached in a private folder, or not at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamfuse import numba_cache, private_folder
from streamfuse.private_folder import own_folder

REPO = Path(__file__).resolve().parents[1]
# both kernel modules, each kernel called once
_KERNELS = """
import numpy as np
from streamfuse import post_kernels as p
from streamfuse.diffusion import structure_kernels as s
y, out = np.full((4, 6), 300.0, np.float32), np.zeros((4, 6), np.uint8)
p.luma_kernel(y, out)
a = np.ones((4, 6), np.float32)
s.g_max_kernel(a, a, np.zeros_like(a))
assert out.max() == 255
"""
# the smaller kernel module alone: its kernels read the cache choice as every module's do, in half the compile time
_ONE_MODULE = """
import numpy as np
from streamfuse.diffusion import structure_kernels as s
a = np.ones((4, 6), np.float32)
s.g_max_kernel(a, a, np.zeros_like(a))
"""


def _compile(tmp: str, script: str = _KERNELS) -> subprocess.CompletedProcess:
    """The kernels of ``script`` imported and run where numba finds no folder of its own (only NUMBA_CACHE_DIR would
    do), with ``tmp`` as the temporary directory."""
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "numba.core.caching.UserProvidedCacheLocator", "TMPDIR": tmp}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.timeout(400)  # every kernel compiled in a fresh process: 30 s at load 8, 117 s and more at load 11-17
def test_kernels_are_cached_in_a_private_folder_where_numba_has_none(tmp_path):
    done = _compile(str(tmp_path))
    assert done.returncode == 0, done.stderr
    folder = tmp_path / f"streamfuse-numba-{os.getuid()}"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert len(list(folder.rglob("*.nbi"))) == 5  # each kernel's index: the next start loads them
    assert _compile(str(tmp_path)).returncode == 0


def test_kernels_compile_uncached_where_no_folder_can_be_written(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    # a TMPDIR that is no folder only sends tempfile on to /tmp, where the run cached in a folder shared by every run;
    # set after the package's import, which makes torch's cache folder there (no numba folder chosen yet)
    script = f"import streamfuse, tempfile\ntempfile.tempdir = {str(not_a_folder)!r}\n{_ONE_MODULE}"
    done = _compile(str(not_a_folder), script)
    assert done.returncode == 0, done.stderr
    assert "numba kernels compiled at every start" in done.stderr


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_folder_others_can_write_into_is_not_used(tmp_path, monkeypatch, mode):
    """numba loads pickled machine code from the cache: a folder another user could write into would run theirs."""
    monkeypatch.setattr(private_folder.tempfile, "gettempdir", lambda: str(tmp_path))
    planted = tmp_path / f"streamfuse-numba-{os.getuid()}"
    planted.mkdir()
    planted.chmod(mode)
    assert own_folder("numba") == f"{planted} is writable by other users"  # what the warning says
    planted.chmod(0o700)
    assert own_folder("numba") == planted


def test_the_warning_says_why_the_private_folder_cannot_be_used(tmp_path, monkeypatch):
    # it said "... /tmp is read-only" of a writable folder whose cache folder was only not private
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setattr(private_folder.tempfile, "gettempdir", lambda: str(not_a_folder))
    assert own_folder("numba") == f"{not_a_folder}/streamfuse-numba-{os.getuid()} cannot be made: Not a directory"


def test_a_link_or_another_users_folder_in_its_place_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setattr(private_folder.tempfile, "gettempdir", lambda: str(tmp_path))
    private = tmp_path / "elsewhere"
    private.mkdir(mode=0o700)
    link = tmp_path / f"streamfuse-numba-{os.getuid()}"
    link.symlink_to(private)  # whoever made the link chose where the pickled code is loaded from
    assert own_folder("numba") == f"{link} is not a folder of this user's"
    link.unlink()
    uid = os.getuid() + 1  # the folder of that name is ours, not the user's whose name it bears
    monkeypatch.setattr(private_folder.os, "getuid", lambda: uid)
    (tmp_path / f"streamfuse-numba-{uid}").mkdir(mode=0o700)
    assert own_folder("numba") == f"{tmp_path / f'streamfuse-numba-{uid}'} is not a folder of this user's"


def test_a_private_folder_that_is_read_only_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setattr(private_folder.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = tmp_path / f"streamfuse-numba-{os.getuid()}"
    folder.mkdir(mode=0o700)
    access = os.access  # a read-only mount: not writable even by root, whatever the mode says
    monkeypatch.setattr(private_folder.os, "access", lambda p, mode: not mode & os.W_OK and access(p, mode))
    assert own_folder("numba") == f"{folder} is read-only"


def test_the_chosen_folder_is_told_to_numba_through_the_environment_too(tmp_path, monkeypatch):
    """numba re-reads its config from the environment when that changes: the folder must be there as well."""
    monkeypatch.setattr(private_folder.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(numba_cache, "_locatable", lambda: False)
    monkeypatch.setattr(numba_cache.config, "CACHE_DIR", "")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert numba_cache._choose() is True
    folder = str(tmp_path / f"streamfuse-numba-{os.getuid()}")
    assert os.environ["NUMBA_CACHE_DIR"] == numba_cache.config.CACHE_DIR == folder


def test_a_cache_folder_the_user_named_is_left_to_numba(tmp_path, monkeypatch):
    """NUMBA_CACHE_DIR is the user's choice: not probed, not replaced by the private folder (even where numba could
    not use it, it says so itself)."""
    monkeypatch.setattr(private_folder.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(numba_cache, "_locatable", lambda: False)
    monkeypatch.setattr(numba_cache.config, "CACHE_DIR", "/the/users/choice")
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/the/users/choice")
    assert numba_cache._choose() is True
    assert os.environ["NUMBA_CACHE_DIR"] == numba_cache.config.CACHE_DIR == "/the/users/choice"
    assert not list(tmp_path.iterdir())


def test_kernels_are_told_not_to_cache_where_no_folder_can_be_had(tmp_path, monkeypatch, caplog):
    # cache=True with no folder to cache in fails every kernel's compile ("no locator available")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setattr(private_folder.tempfile, "gettempdir", lambda: str(not_a_folder))
    monkeypatch.setattr(numba_cache, "_locatable", lambda: False)
    monkeypatch.setattr(numba_cache.config, "CACHE_DIR", "")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    with caplog.at_level("WARNING", logger="streamfuse.numba_cache"):
        assert numba_cache._choose() is False
    assert "numba kernels compiled at every start" in caplog.text and "NUMBA_CACHE_DIR" not in os.environ


def test_a_cache_the_disk_cannot_hold_costs_the_cache_not_the_run(tmp_path):
    # a full disk (here a file size limit) as a kernel compiled: numba raised its cache file's write error from the
    # compile, and a replay or live run ended on a traceback at its first frame. One kernel module: once its cache
    # write failed, the cache is off and a second module would compile uncached whether or not it took the same path.
    script = ("import resource, signal\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
              "import numpy as np\n"
              "from streamfuse.postprocess import _kernels\n"
              "y, out = np.full((4, 6), 300.0, np.float32), np.zeros((4, 6), np.uint8)\n"
              "_kernels().luma_kernel(y, out)\n"
              "assert out.max() == 255\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}  # empty: every kernel compiles and is saved
    env.pop("NUMBA_DISABLE_JIT", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "numba kernels not cached: File too large; compiled at every start" in done.stderr
