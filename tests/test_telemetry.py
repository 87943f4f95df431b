import pytest

from streamfuse.checks import parse_section
from streamfuse.telemetry import Telemetry, TelemetryConfig, format_stats


def test_snapshot_percentiles_and_counters():
    tel = Telemetry(TelemetryConfig(window=100))
    for ms in range(1, 201):  # the window keeps the last 100 samples: 101..200
        tel.record("fuse", float(ms))
    tel.count("published", 5)
    tel.set("dropped.ir", 3)
    snap = tel.snapshot()
    fuse = snap["stages"]["fuse"]
    assert fuse["n"] == 100 and fuse["min_ms"] == 101.0
    assert fuse["median_ms"] == pytest.approx(150.5)
    assert 199.0 <= fuse["p99_ms"] <= 200.0
    assert snap["counters"] == {"published": 5, "dropped.ir": 3}
    assert snap["interval_s"] == 5.0  # how often stats come: a consumer's stats link is silent after two of these
    assert "fuse=150.5/" in format_stats(snap) and "dropped.ir=3" in format_stats(snap)


def test_ranges():
    with pytest.raises(ValueError, match="interval_s"):
        parse_section(TelemetryConfig, {"interval_s": 0}, "telemetry")


def test_a_snapshot_right_after_another_measures_its_rate_from_the_one_before(monkeypatch):
    """The final snapshot at exit often comes milliseconds after a periodic one: its rate is not that window's."""
    clock = iter([0.0, 5.0, 5.004, 10.0])  # start, a periodic snapshot, the final one, the next periodic one
    monkeypatch.setattr("streamfuse.telemetry.time.perf_counter", lambda: next(clock))
    tel = Telemetry(TelemetryConfig(interval_s=5.0))
    tel.count("published", 100)
    assert tel.snapshot()["rate_fps"] == 20.0
    tel.count("published", 1)  # one frame in 4 ms would read as 250 frames/s
    assert tel.snapshot()["rate_fps"] == pytest.approx(101 / 5.004, abs=0.01)
    tel.count("published", 99)
    assert tel.snapshot()["rate_fps"] == pytest.approx(99 / 4.996, abs=0.01)  # a full interval: its own window


def test_p99_is_the_99th_percentile_not_the_slowest_sample():
    # without it, one stall in 1000 frames (a GC pause, a page fault) would read as the stage's p99
    tel = Telemetry(TelemetryConfig(window=1000))
    for ms in [10.0] * 999 + [500.0]:
        tel.record("fuse", ms)
    fuse = tel.snapshot()["stages"]["fuse"]
    assert fuse["p99_ms"] == 10.0 and fuse["median_ms"] == 10.0


def test_the_mean_rate_counts_every_frame_since_start(monkeypatch):
    # without it, the rate "since start" in the log and the stats would be measured over some other span
    clock = iter([0.0, 5.0, 10.0])  # start, then two periodic snapshots
    monkeypatch.setattr("streamfuse.telemetry.time.perf_counter", lambda: next(clock))
    tel = Telemetry(TelemetryConfig(interval_s=5.0))
    tel.count("published", 100)
    assert tel.snapshot()["mean_rate_fps"] == 20.0
    tel.count("published", 200)
    snap = tel.snapshot()
    assert (snap["rate_fps"], snap["mean_rate_fps"]) == (40.0, 30.0)
