"""Another user's view of files and sockets this test made: an act run in a fresh interpreter that drops to another
uid before it acts (root only: the tests that need it are skipped otherwise, and root, whom no mode or sticky folder
stops, could not see what a user sees)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

OTHER = 65534  # nobody: a uid no file of the test's is owned by
OWNER = 65533  # the owner given to files that stand for a third user's
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")

# The act's leading imports run as root, the rest as OTHER: this interpreter and its standard library may be in a
# folder only root may enter (a Python installed under /root), which OTHER could neither start nor import from.
_RUNNER = """
import ast, json, os, sys
fd, uid, tree, names = int(sys.argv[1]), int(sys.argv[2]), ast.parse(sys.argv[3]), json.loads(sys.argv[4])
first = next((i for i, node in enumerate(tree.body) if not isinstance(node, (ast.Import, ast.ImportFrom))),
             len(tree.body))
said = ""
try:
    exec(compile(ast.Module(tree.body[:first], []), "<act>", "exec"), names)
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    exec(compile(ast.Module(tree.body[first:], []), "<act>", "exec"), names)
except BaseException as exc:
    said = f"{type(exc).__name__}: {exc}"
os.write(fd, said.encode())
"""


def as_other_user(act: str, **data: object) -> str:
    """``act`` (Python statements, each of ``data`` a variable of theirs: JSON values, paths as text) run as uid and
    gid :data:`OTHER` in a fresh interpreter, its standard output and error this process's: '' when it ends, else
    ``Type: message`` of what it raised."""
    read, write = os.pipe()
    try:
        subprocess.run([sys.executable, "-c", _RUNNER, str(write), str(OTHER), act, json.dumps(data, default=str)],
                       pass_fds=(write,), cwd=Path(__file__).resolve().parents[1], check=True)
    finally:
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            said = pipe.read().decode()
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
