"""Room in /dev/shm: how much is free, and a capture ring's pages taken when the ring is made.

/dev/shm is a tmpfs, and its files are sparse: a segment of any size is made whatever room is left, and the first
write to a page there is no room for kills the writing process with SIGBUS. A producer whose frames outgrew its ring
(a file's frames larger than its source's width x height) died that way at every restart; a ring's pages are
therefore reserved as it is made, so that a full /dev/shm is one line at that moment instead.
"""

from __future__ import annotations

import os
from multiprocessing import shared_memory

from streamfuse.shm_owners import SHM_DIR

__all__ = ["ShmFull", "free_bytes", "reserve"]


class ShmFull(OSError):
    """A shared-memory segment that /dev/shm has no room for; its message is the one line to show."""


def free_bytes() -> int | None:
    """Bytes free in /dev/shm for this process; None where there is no /dev/shm (not Linux)."""
    if not SHM_DIR.is_dir():
        return None
    fs = os.statvfs(SHM_DIR)
    return fs.f_bavail * fs.f_frsize


def reserve(shm: shared_memory.SharedMemory, what: str) -> None:
    """Take the pages of the new segment ``shm`` now; one there is no room for is closed and unlinked.

    Raises:
        ShmFull: /dev/shm has not that much room left; ``what`` (the ring and its frames) starts its line.
    """
    path = SHM_DIR / shm.name.lstrip("/")
    if not hasattr(os, "posix_fallocate") or not path.is_file():
        return  # no /dev/shm file to reserve in (not Linux): nothing to do
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, shm.size)
    except OSError as exc:
        shm.close()
        shm.unlink()
        free = free_bytes() or 0
        raise ShmFull(f"{what} needs {shm.size / 2**20:.1f} MiB of shared memory but {SHM_DIR} has "
                      f"{free / 2**20:.1f} MiB free ({exc.strerror}): lower width/height, or give {SHM_DIR} more "
                      "room (docker: --shm-size)") from None
    finally:
        os.close(fd)
