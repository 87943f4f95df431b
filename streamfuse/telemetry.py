"""TelemetryConfig and per-stage latency / rate / counter bookkeeping for the pipeline.

Latencies are kept in a bounded window per stage (recent behaviour matters on a live rig, and memory stays flat
on long runs); counters are totals since start.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np

from streamfuse.checks import check

__all__ = ["TelemetryConfig", "Telemetry", "format_stats"]


@dataclass(frozen=True)
class TelemetryConfig:
    """How often stats are logged and published, and how many recent samples each stage keeps."""

    interval_s: float = 5.0
    window: int = 1000

    def __post_init__(self) -> None:
        check(0.01 <= self.interval_s <= 86400, "interval_s", self.interval_s, "0.01 .. 86400 seconds")
        check(10 <= self.window <= 1_000_000, "window", self.window, "10 .. 1000000 samples")


class Telemetry:
    """Per-stage latency samples (ms), counters, and the output rate."""

    def __init__(self, cfg: TelemetryConfig):
        self.cfg = cfg
        self._lat: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=cfg.window))
        self._counts: dict[str, float] = defaultdict(int)
        self._t_start = time.perf_counter()
        self._t_last = self._t_prev = self._t_start  # the last two snapshots
        self._outputs_last = self._outputs_prev = 0

    def record(self, stage: str, ms: float) -> None:
        """Add one latency sample for ``stage`` in milliseconds."""
        self._lat[stage].append(ms)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        self._counts[name] += n

    def set(self, name: str, value: float) -> None:
        """Set counter ``name`` (for values owned by another component: a pairer's drop count, its mean skew in
        ms)."""
        self._counts[name] = value

    def due(self) -> bool:
        """True once every ``interval_s``: time to log and publish a snapshot."""
        return time.perf_counter() - self._t_last >= self.cfg.interval_s

    def snapshot(self) -> dict:
        """Stats: per-stage median/p99/min ms over the last ``window`` samples, counters, and the ``published`` rate
        over the last interval (``rate_fps``) and since start (``mean_rate_fps``).

        A snapshot taken less than half an interval after the previous one (the final one, at exit) measures its rate
        from the snapshot before, so a window of a few milliseconds never stands for the rate.
        """
        now = time.perf_counter()
        done = self._counts.get("published", 0)
        if now - self._t_last < self.cfg.interval_s / 2:
            self._t_last, self._outputs_last = self._t_prev, self._outputs_prev
        rate = (done - self._outputs_last) / max(now - self._t_last, 1e-9)
        self._t_prev, self._outputs_prev = self._t_last, self._outputs_last
        self._t_last, self._outputs_last = now, done
        stages = {}
        for stage, samples in self._lat.items():
            arr = np.fromiter(samples, dtype=np.float64)
            stages[stage] = {"median_ms": round(float(np.median(arr)), 3),
                             "p99_ms": round(float(np.percentile(arr, 99)), 3),
                             "min_ms": round(float(arr.min()), 3), "n": len(arr)}
        return {"uptime_s": round(now - self._t_start, 3), "interval_s": self.cfg.interval_s,
                "rate_fps": round(rate, 2), "mean_rate_fps": round(done / max(now - self._t_start, 1e-9), 2),
                "stages": stages, "counters": dict(self._counts)}


def format_stats(snap: dict) -> str:
    """One human-readable line of a snapshot for the log: before any source's first frame (a source still opening: a
    large synthetic scene takes seconds to build) it says so, where a rate of 0 would read as a stalled run."""
    stages = " ".join(f"{k}={v['median_ms']:.1f}/{v['p99_ms']:.1f}ms" for k, v in snap["stages"].items())
    counters = " ".join(f"{k}={round(v, 2) if isinstance(v, float) else v}"
                        for k, v in sorted(snap["counters"].items()) if v)
    if not any(v for k, v in snap["counters"].items() if k == "published" or k.startswith("received.")):
        return f"no frame yet ({snap['uptime_s']:.0f} s since start: a source still opening, or stalled) | {counters}"
    rates = f"rate={snap['rate_fps']:.1f}fps (since start {snap['mean_rate_fps']:.1f})"
    return f"{rates} (median/p99) {stages} | {counters}"
