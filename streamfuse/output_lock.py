"""One writer per output file: a replay holds an exclusive lock on ``.OUT.lock`` (beside ``OUT``) while it checks,
writes and finishes ``OUT``, so a second run given the same output (a command run twice by mistake, two batches
given one output folder) is refused in one line instead of writing into the first run's partial file.

The lock is ``flock`` on the lock file: the kernel drops it when its holder dies, however it dies, so a killed run
never leaves an output locked (its lock file stays, meaning nothing, and the next run takes it). Local filesystems and
NFS v4 honour it, across a batch's machines too; on a filesystem without locks the run goes on unprotected, warned.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from streamfuse.errors import io_reason
from streamfuse.sticky import user_name

__all__ = ["lock_path", "output_lock", "check_not_held"]

log = logging.getLogger(__name__)

_HELD: set[Path] = set()  # lock files this process holds: its own checks must not take them for another run's


def lock_path(out: str | os.PathLike, inside: bool = False) -> Path:
    """The lock file of output ``out``: ``.OUT.lock`` in its folder; with ``inside`` (an output folder, whose parent
    may be another user's or another filesystem), ``OUT/.streamfuse.lock``."""
    out = Path(out)
    return out / ".streamfuse.lock" if inside else out.with_name(f".{out.name}.lock")


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, inside: bool = False, label: str = "") -> Iterator[None]:
    """Hold ``out``'s lock (``inside`` it: see :func:`lock_path`) for the ``with`` block; ``FileExistsError`` (one
    line naming the holder, and ``out`` as ``label`` says it: ``output OUT`` by default) while another run holds it,
    ``OSError`` when the lock file cannot be made."""
    path = lock_path(out, inside)
    while True:
        try:  # never through a link: a planted one would make this run write into the file it names
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _cannot_open(out, path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise _busy(label or f"output {out}", holder, path) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise OSError(f"cannot lock output {out}: {path}: {io_reason(exc)}") from None
            log.warning("%s: this filesystem has no locks (%s): a second run given the same output would not be "
                        "refused", out, io_reason(exc))
            break
        if _same_inode(fd, path):
            break
        os.close(fd)  # its holder removed it as it ended, after we opened it: lock the file now at the path
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
        _HELD.add(path.absolute())
        yield
    finally:
        _HELD.discard(path.absolute())
        try:
            path.unlink(missing_ok=True)  # while still held, so that a run opening it now sees it removed (above)
        except OSError as exc:  # a folder made read-only meanwhile: the run's own error or result is what counts
            log.warning("%s: could not remove %s (%s); it locks nothing once this run ends", out, path.name,
                        io_reason(exc))
        finally:
            os.close(fd)


def check_not_held(out: str | os.PathLike) -> None:
    """``FileExistsError`` (as :func:`output_lock`'s) when another run holds ``out``'s lock now; takes nothing."""
    if lock_path(out).absolute() in _HELD:
        return
    try:
        fd = os.open(lock_path(out), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # none (no run since the last ended), or not one to read: output_lock says what it is
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(f"output {out}", _holder(fd), lock_path(out)) from None
    except OSError:  # a filesystem without locks: output_lock warns
        pass
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def _busy(what: str, holder: str, path: Path) -> FileExistsError:
    return FileExistsError(f"{what} is being written by another run ({holder}, holding {path.name}); "
                           "wait for it to end, or give another output")


def _cannot_open(out: str | os.PathLike, path: Path, exc: OSError) -> OSError:
    """Why ``out``'s lock file could not be opened: named with its owner where it is another user's, which a run of
    theirs left (it locks nothing once that run ends, but this user may not write it, and only they may remove it)."""
    try:
        uid = path.lstat().st_uid if exc.errno in (errno.EACCES, errno.EPERM) else os.geteuid()
    except OSError:
        uid = os.geteuid()
    if uid == os.geteuid():
        return OSError(f"cannot lock output {out}: {path}: {io_reason(exc)}")
    return PermissionError(f"cannot lock output {out}: {path} belongs to {user_name(uid)}, left by a run of theirs, "
                           "and this user may not write it: ask them to remove it, or give another output")


def _same_inode(fd: int, path: Path) -> bool:
    """True when ``fd`` is still the file at ``path`` (not removed or replaced since it was opened)."""
    try:
        held, now = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
