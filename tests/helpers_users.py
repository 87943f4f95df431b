"""Another user's view of files and sockets this test made: a forked child that drops to another uid before it acts
(root only: the tests that need it are skipped otherwise, and root, whom no mode or sticky folder stops, could not
see what a user sees)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

OTHER = 65534  # nobody: a uid no file of the test's is owned by
OWNER = 65533  # the owner given to files that stand for a third user's
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")


def as_other_user(act: Callable[[], object]) -> str:
    """``act()`` run as uid and gid :data:`OTHER` in a forked child: '' when it returns, else ``Type: message`` of
    what it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest, whatever happens
        message = "child did not report"
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(OTHER)
            os.setuid(OTHER)
            act()
            message = ""
        except BaseException as exc:  # noqa: BLE001 (every failure is the parent's to see)
            message = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write, message.encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    os.waitpid(pid, 0)
    return said


@contextlib.contextmanager
def shared_folder(mode: int = 0o1777) -> Iterator[Path]:
    """A folder of the test's in the temporary directory that :data:`OTHER` can reach (pytest's ``tmp_path`` is
    root's alone), with ``mode`` (a sticky, world-writable one by default, as ``/tmp``); removed after."""
    folder = Path(tempfile.mkdtemp(prefix="streamfuse-test-"))
    try:
        folder.chmod(mode)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
