"""multiprocessing's folder for a run (where the fork server's socket lives), named for the run's process.

multiprocessing makes ``TMPDIR/pymp-<random>`` and removes it at exit; a run killed as a whole (``kill -9``) runs no
exit handler, and its folder stayed for good, as a name that says nothing of its owner cannot be told from another
program's. A run's folder is ``TMPDIR/sfmp-<pid namespace>-<pid>-<random>`` instead: a start removes those
of its own pid namespace whose process is gone, and only those.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from multiprocessing import current_process, util
from pathlib import Path
from typing import Any

from streamfuse.shm_owners import process_alive

__all__ = ["PREFIX", "own_folder", "remove_stale"]

log = logging.getLogger(__name__)

PREFIX = "sfmp-"  # short: the fork server's socket path in it must fit a Unix socket address (107 bytes)
_SOCKET = len("/listener-12345678")  # the socket's name in the folder (``connection.arbitrary_address``)


def _namespace() -> int:
    """This process's pid namespace (its inode), 0 where there is none to read (not Linux)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def own_folder() -> None:
    """Give multiprocessing a folder of this process's, unless it has one already (removed at exit as its own is),
    and remove the folders of this user's runs that are gone."""
    # private: where ``util.get_temp_dir`` (CPython 3.8-3.13) keeps its folder, and no API sets it; were it
    # renamed, a live run's start would fail with AttributeError
    config = current_process()._config
    if config.get("tempdir") is not None:
        return
    if removed := remove_stale():
        log.info("removed %d multiprocessing folders left by killed runs: %s", len(removed), " ".join(removed))
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{_namespace():x}-{os.getpid()}-")
    if len(os.fsencode(path)) + _SOCKET > 107:  # a long TMPDIR: multiprocessing's shorter name may still fit
        os.rmdir(path)
        return
    util.Finalize(None, _remove, args=(shutil.rmtree, path), exitpriority=-100)  # multiprocessing's own priority
    config["tempdir"] = path


def _remove(rmtree: Any, path: str) -> None:
    rmtree(path, ignore_errors=True)  # kept by reference: the finalizer may run late in the interpreter's shutdown
    with contextlib.suppress(AttributeError):  # no current process that late
        current_process()._config["tempdir"] = None


def remove_stale(directory: Path | None = None) -> list[str]:
    """Remove ``directory``'s (default: ``TMPDIR``) run folders of this pid namespace and user whose process is gone;
    return their names. Where the namespace cannot be read (not Linux), none: a pid may be another namespace's."""
    namespace = _namespace()
    if not namespace:
        return []
    pattern = re.compile(rf"{re.escape(PREFIX)}{namespace:x}-(\d+)-")
    removed = []
    for path in Path(directory or tempfile.gettempdir()).iterdir():
        match = pattern.match(path.name)
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if match and path.lstat().st_uid == os.getuid() and not process_alive(int(match.group(1))):
                shutil.rmtree(path)
                removed.append(path.name)
    return removed
