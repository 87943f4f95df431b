"""Benchmarks: ``python -m streamfuse bench {fuse,transport,replay,batch} [ARGS...]``; each prints its own figures.

  fuse       the fusion stage from uint8 arrays to fused Y: latency, frames/s, GFLOPs (CPU or GPU)
  transport  loopback transport side by side: imagezmq, raw PUB/SUB, shared memory, jpeg, h264
  replay     offline replay throughput and each stage's share of the wall time
  batch      batch replay: the Ray engine with N workers against 1, and against a single replay
"""

from __future__ import annotations

import sys

__all__ = ["BENCHES", "main"]

BENCHES = {
    "fuse": "streamfuse.bench.fuse:main",
    "transport": "streamfuse.bench.transport:main",
    "replay": "streamfuse.bench.replay:main",
    "batch": "streamfuse.bench.batch:main",
}


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark; returns its exit status."""
    from streamfuse.cli import dispatch

    return dispatch("streamfuse bench", BENCHES, sys.argv[1:] if argv is None else argv, __doc__)
