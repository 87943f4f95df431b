"""Whose a shared-memory object is: the capture rings' and the publisher pools' alike, for their writers, for a start
that frees what killed runs left, and for same-host consumers (which import this module, not the capture package).

Names carry the creating process's id (``<prefix><pid>_<random>``), so that a start frees the objects of runs killed
as a whole (OOM killer, ``docker kill``), which nothing could unlink (:func:`remove_stale`). A run in another PID
namespace that shares /dev/shm (a container started with ``--ipc=host`` or given the host's /dev/shm, as same-host
consumers in other containers need) sees no process of that pid, or another one: it freed every object of the rigs
running beside it. So the creator also holds a shared ``flock`` on each object while it uses it (the kernel drops it
with the process), and an object someone holds is never stale, whatever its pid says (:func:`hold`, :func:`in_use`).
``flock`` locks are apart from the ``fcntl`` byte-range locks a publisher pool's slots take. The other way round, a
pid that runs may be another process's now (:func:`pid_used_again`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
import time
import weakref
from pathlib import Path
from typing import TypeVar

__all__ = ["SHM_DIR", "hold", "release", "hold_semaphore", "in_use", "pid_used_again", "process_alive", "remove_stale"]

SHM_DIR = Path("/dev/shm")  # where Linux keeps POSIX shared memory and named semaphores (``sem.<name>``)

T = TypeVar("T")
_HELD: dict[str, int] = {}  # object name -> the descriptor holding this process's shared lock on it
# a process started this much later than an object last changed is not its maker: /proc counts a start in clock ticks,
# and an object held from the moment it is made never comes to this test
_USED_AGAIN_AFTER_NS = 10**9


def hold(name: str) -> None:
    """Hold a shared lock on this process's object ``name`` (its file in /dev/shm) until :func:`release`."""
    try:
        fd = os.open(SHM_DIR / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # not Linux, or not a file there: nothing to hold, the pid is all there is
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # only in_use takes the other kind, for an instant
    except OSError:
        os.close(fd)
        return
    release(name)
    _HELD[name] = fd


def release(name: str) -> None:
    """Give up the lock :func:`hold` took on ``name`` (before the object is unlinked)."""
    if (fd := _HELD.pop(name, None)) is not None:
        os.close(fd)


def hold_semaphore(semaphore: T) -> T:
    """:func:`hold` a named multiprocessing semaphore's file (``sem.<name>``) for as long as the object lives; returns
    it."""
    name = getattr(getattr(semaphore, "_semlock", None), "name", None)
    if name:  # None where the name was unlinked at once (the fork start method): no file to hold
        file = "sem." + name.lstrip("/")
        hold(file)
        weakref.finalize(semaphore, release, file)
    return semaphore


def in_use(path: Path) -> bool:
    """Whether a process holds ``path`` (:func:`hold`): a running rig's object, whatever its name's pid says here."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a filesystem without locks
        return False
    finally:
        os.close(fd)
    return False


def process_alive(pid: int) -> bool:
    """True while process ``pid`` runs. A killed one its parent has not reaped yet (a zombie) is gone where /proc
    tells (Linux): a parent may reap it only once every holder of its output pipe has closed it (``kill`` then
    ``subprocess.communicate``), and the producers holding it wait for their consumer to be gone."""
    if not 0 < pid < 2**31:  # no process's (a name in /dev/shm, which anyone can write, may carry any number)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:  # reaped since, or no /proc (not Linux: the signal test is all there is)
        return not Path("/proc/self/stat").exists()
    except ProcessLookupError:  # reaped between the open and the read
        return False
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")  # the state follows "(command name) "


def pid_used_again(pid: int, path: Path) -> bool:
    """Whether process ``pid`` started after ``path``, named for it, last changed: the pid is another process's now,
    the object's maker gone. A container started again with /dev/shm shared gives its run the pid of the run killed
    before it (1, say), whose objects every start then took for its own. False where /proc cannot tell."""
    try:
        changed = path.lstat().st_ctime_ns
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        ticks = int(stat[stat.rindex(b")") + 2:].split()[19])  # field 22, starttime: clock ticks after boot
    except (OSError, ValueError, IndexError):
        return False
    booted_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)  # the start's clock includes suspends
    return booted_ns + ticks * 10**9 // os.sysconf("SC_CLK_TCK") > changed + _USED_AGAIN_AFTER_NS


def remove_stale(prefix: str, directory: Path = SHM_DIR) -> list[str]:
    """Unlink the segments and semaphores named ``<prefix><pid>_...`` whose creating process is gone (its pid
    free, or another process's started since) and that nobody holds.

    Only a run killed as a whole leaves them (its own clean-up and its resource tracker died with it). Linux only
    (elsewhere shared memory is not a listable folder); returns the names removed.
    """
    if not sys.platform.startswith("linux") or not directory.is_dir():
        return []
    pattern = re.compile(rf"(?:sem\.)?{re.escape(prefix)}(\d+)_")
    removed = []
    for path in directory.iterdir():
        pid = int(match.group(1)) if (match := pattern.match(path.name)) else 0
        # in use: another PID namespace's. Gone meanwhile: another start got there first; another user's, in a folder
        # where only its owner may unlink (/dev/shm is sticky): theirs to free, never a reason to stop this run
        if match and (not process_alive(pid) or pid_used_again(pid, path)) and not in_use(path):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                path.unlink()
                removed.append(path.name)
    return removed
