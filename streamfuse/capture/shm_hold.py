"""Shared-memory objects marked in use by a lock, for runs whose process ids cannot see each other.

:func:`~streamfuse.capture.shm_ring.remove_stale` frees the objects whose creator (the pid in their name) is gone.
A run in another PID namespace that shares /dev/shm (a container started with ``--ipc=host`` or given the host's
/dev/shm, as same-host consumers in other containers need) sees no process of that pid, or another one: it freed
every object of the rigs running beside it. So the creator also holds a shared ``flock`` on each object while it
uses it (the kernel drops it with the process), and an object someone holds is never stale, whatever its pid says.
``flock`` locks are apart from the ``fcntl`` byte-range locks a publisher pool's slots take. The other way round, a
pid that runs may be another process's now (:func:`pid_used_again`).
"""

from __future__ import annotations

import fcntl
import os
import time
import weakref
from pathlib import Path
from typing import TypeVar

from streamfuse.capture.shm_space import SHM_DIR

__all__ = ["hold", "release", "hold_semaphore", "in_use", "pid_used_again"]

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
