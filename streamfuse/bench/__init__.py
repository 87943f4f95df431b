"""Benchmarks: ``python -m streamfuse bench NAME [ARGS...]`` (the names below); each prints its own
figures.

  fuse       the fusion stage from uint8 arrays to fused Y: latency, frames/s, GFLOPs (CPU or GPU)
  transport  loopback transport side by side: imagezmq, raw PUB/SUB, shared memory, jpeg, h264
  replay     offline replay throughput and each stage's share of the wall time
  batch      batch replay: the Ray engine with N workers against 1, and against a single replay
  view       the live viewer's CPU and each page's messages/s with many pages open
  peers      a reading consumer's frame age while many subscribers connect and never read; a paused one's stale frames
  client     the subscriber's read of a same-host frame: copied out of the shared-memory pool, or a view of it
  subscriptions  one long subscription's cost to a publisher: plain libzmq's against streamfuse's
  start      a live run's start to its first frame, and its SIGTERM to its exit
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["BENCHES", "main", "memory_available", "refuse_beyond_memory", "parse_sizes", "parse_size"]

MAX_SIDE = 8192  # a larger frame is a typo: its synthetic frames alone would take gigabytes

BENCHES = {
    "fuse": "streamfuse.bench.fuse:main",
    "transport": "streamfuse.bench.transport:main",
    "replay": "streamfuse.bench.replay:main",
    "batch": "streamfuse.bench.batch:main",
    "view": "streamfuse.bench.view:main",
    "peers": "streamfuse.bench.peers:main",
    "client": "streamfuse.bench.client:main",
    "subscriptions": "streamfuse.bench.subscriptions:main",
    "start": "streamfuse.bench.start:main",
}


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark; returns its exit status."""
    from streamfuse.cli import dispatch

    return dispatch("streamfuse bench", BENCHES, sys.argv[1:] if argv is None else argv, __doc__)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """An argparse ``type``: ``'640x480,64x48'`` -> ``[(480, 640), (48, 64)]`` as (height, width)."""
    sizes = []
    for size in text.split(","):
        try:
            w, h = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"size {size!r} is not WIDTHxHEIGHT") from None
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise argparse.ArgumentTypeError(f"size {size!r}: width and height must be in 1..{MAX_SIDE}")
        sizes.append((h, w))
    return sizes


def parse_size(text: str) -> tuple[int, int]:
    """An argparse ``type``: one ``WIDTHxHEIGHT`` -> ``(width, height)``."""
    if "," in text:
        raise argparse.ArgumentTypeError(f"{text!r}: one WIDTHxHEIGHT only")
    h, w = parse_sizes(text)[0]
    return w, h


def memory_available() -> int | None:
    """Bytes of memory the kernel reckons can be taken without swapping (``MemAvailable``); None where it does not
    say (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # given in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def refuse_beyond_memory(prog: str, sizes: list[tuple[int, int]], bytes_per_pixel: int) -> None:
    """Exit 2 with one line before anything is allocated where the largest of ``sizes`` (width, height) would hold
    more than the memory available at ``bytes_per_pixel``: the run would swap or be killed part way."""
    width, height = max(sizes, key=lambda size: size[0] * size[1])
    need, free = width * height * bytes_per_pixel, memory_available()
    if free is not None and need > free:
        print(f"{prog}: error: --sizes {width}x{height} would hold about {need / 1e9:.1f} GB of memory, and "
              f"{free / 1e9:.1f} GB is available", file=sys.stderr)
        raise SystemExit(2)
