"""Files another user left in a shared folder with the sticky bit (``/tmp``, a drop folder made with ``chmod 1777``):
there only the file's owner, the folder's owner and root may rename or delete it, whatever the folder's mode says, so
a run that must replace such a file fails midway with "Operation not permitted" unless it asks first."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

__all__ = ["stuck_owner", "user_name"]


def stuck_owner(path: str | os.PathLike) -> str | None:
    """Who owns ``path`` (a user name, else ``uid N``) where it is another user's file that this user may neither
    rename nor delete for the sticky bit of its folder; None where this user may (or nothing is there)."""
    path = Path(path)
    try:
        info, folder = path.lstat(), path.absolute().parent.stat()
    except OSError:
        return None
    me = os.geteuid()
    if me == 0 or not folder.st_mode & stat.S_ISVTX or me in (info.st_uid, folder.st_uid):
        return None
    return user_name(info.st_uid)


def user_name(uid: int) -> str:
    """The name of user ``uid``, else ``uid N`` (a uid without a name here: a container's, another machine's)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
