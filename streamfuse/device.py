"""Where fusion runs and how the CPU side is set up: device names, torch threads, glibc malloc, OpenMP wait policy.

Used by :class:`streamfuse.engine.Engine`, by training and by the live run (malloc); nothing here holds a model, and
torch is imported only where it is used, so a live run of a baseline fuser does not load it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import TYPE_CHECKING

from streamfuse.openmp import LATE_WAIT_POLICY

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device", "available_cores", "prepare_cpu", "tune_malloc"]

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h) and the values streamfuse sets: large enough that activation buffers of a
# 1280x1024 forward stay in the heap instead of being unmapped after each forward and faulted in again.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOPT = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 256 << 20}
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_malloc_tuned: bool | None = None


def resolve_device(name: str) -> torch.device:
    """Map ``auto | cpu | cuda | cuda:N`` to a torch device; ``auto`` takes the GPU when torch sees one.

    Raises:
        ValueError: one line when the name is not a device or a GPU is asked for that torch cannot see.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device; allowed: auto | cpu | cuda | cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device {name!r} is not supported; allowed: auto | cpu | cuda | cuda:N")
    if not torch.cuda.is_available():
        version = ".".join(torch.__version__.split(".")[:2])
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise ValueError(f"device {name!r} requested but torch sees no CUDA GPU (torch {version}, {built})")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"device {name!r} requested but torch sees only {count} CUDA GPU(s)")
    return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)


def tune_malloc() -> bool:
    """Keep freed large buffers (a forward's activations, a live frame's arrays) in the glibc heap (process-wide,
    applied once).

    glibc's default malloc returns every large buffer to the OS with ``munmap`` and page-faults it back on the next
    forward or frame; on the 2-core dev machine that was as much system time as compute (method.md). Raising the
    mmap and trim thresholds and the top pad keeps them. Skipped when the C library is not glibc or when the user set
    the ``MALLOC_*_`` environment variables (their choice wins).

    Returns:
        True when the settings are in effect.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = _apply_mallopt()
    return _malloc_tuned


def _apply_mallopt() -> bool:
    if any(name in os.environ for name in _MALLOC_ENV):
        log.info("malloc tuning left to the MALLOC_*_ environment variables")
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it: musl and others are left alone
    except (OSError, AttributeError):
        log.info("malloc tuning skipped: the C library is not glibc")
        return False
    ok = all(libc.mallopt(param, value) == 1 for param, value in _MALLOPT.items())
    log.info("glibc malloc tuning %s", "applied" if ok else "rejected by mallopt")
    return ok


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare_cpu(threads: int) -> None:
    """Set up torch for fusion on the CPU: ``threads`` threads, glibc malloc tuned, and a warning (once) when
    torch loaded before ``streamfuse`` could set the OpenMP wait policy."""
    import torch

    torch.set_num_threads(threads)
    tune_malloc()
    if LATE_WAIT_POLICY:
        _warn_late_wait_policy()


@functools.cache
def _warn_late_wait_policy() -> None:
    log.warning("torch was imported before streamfuse, so OMP_WAIT_POLICY=PASSIVE could not take effect; under load "
                "fusion on the CPU runs several times slower: import streamfuse first, or set it in the environment")
