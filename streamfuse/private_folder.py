"""This user's own folder under the temporary directory, for caches of compiled code that the package's folder and the
home folder cannot hold (a root-owned install run by another user, a read-only container).

Such a folder has a name every user can know, so another user may have taken it first; code is loaded from it, so one
that another user could write into would run their code. It is used only when it is a real folder of this user's
that no one else may write into.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["own_folder"]


def own_folder(kind: str) -> Path | str:
    """``TMPDIR/streamfuse-KIND-UID``, made private; where it cannot be, or is not this user's alone, why not (one
    clause, for a warning)."""
    path = Path(tempfile.gettempdir()) / f"streamfuse-{kind}-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        return f"{path} cannot be made: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return f"{path} is not a folder of this user's"
    if info.st_mode & 0o022:
        return f"{path} is writable by other users"
    return path if os.access(path, os.W_OK) else f"{path} is read-only"
