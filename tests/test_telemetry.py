import pytest

from streamfuse.checks import parse_section
from streamfuse.telemetry import Telemetry, TelemetryConfig, format_stats


def test_snapshot_percentiles_and_counters():
    tel = Telemetry(TelemetryConfig(window=100))
    for ms in range(1, 201):  # the window keeps the last 100 samples: 101..200
        tel.record("fuse", float(ms))
    tel.count("published", 5)
    tel.set("dropped.ir", 2)
    tel.set("dropped.ir", 3)  # a total another component owns: its latest value, not a sum
    snap = tel.snapshot()
    fuse = snap["stages"]["fuse"]
    assert fuse["n"] == 100 and fuse["min_ms"] == 101.0
    assert fuse["median_ms"] == pytest.approx(150.5)
    assert 199.0 <= fuse["p99_ms"] <= 200.0
    assert snap["counters"] == {"published": 5, "dropped.ir": 3}
    assert snap["interval_s"] == 5.0  # how often stats come: a consumer's stats link is silent after two of these
    assert "fuse=150.5/" in format_stats(snap) and "dropped.ir=3" in format_stats(snap)
    tel.count("published")  # counting on leaves a snapshot already taken (handed to the stats publisher) as it was
    assert snap["counters"] == {"published": 5, "dropped.ir": 3}


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


def test_the_ends_of_each_range_are_accepted_and_just_beyond_them_refused():
    """interval_s 0.01 .. 86400 s and window 10 .. 1000000 samples, both ends included."""
    TelemetryConfig(interval_s=0.01, window=10)
    TelemetryConfig(interval_s=86400, window=1_000_000)
    for bad in ({"interval_s": 0.009}, {"interval_s": 86401}, {"window": 9}, {"window": 1_000_001}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            parse_section(TelemetryConfig, bad, "telemetry")


def test_a_snapshot_is_due_once_an_interval_has_passed_since_the_last_one(monkeypatch):
    # due() counts from the last snapshot, not from start: otherwise every frame after the first interval logs one
    clock = iter([0.0, 4.999, 5.0, 5.0, 9.999, 10.0])  # start, due?, due?, snapshot, due?, due?
    monkeypatch.setattr("streamfuse.telemetry.time.perf_counter", lambda: next(clock))
    tel = Telemetry(TelemetryConfig(interval_s=5.0))
    assert not tel.due() and tel.due()
    tel.snapshot()
    assert not tel.due() and tel.due()


def test_a_snapshot_counts_the_samples_a_stage_has_and_the_time_since_start(monkeypatch):
    clock = iter([0.0, 5.0, 7.5])  # start, a periodic snapshot, the final one
    monkeypatch.setattr("streamfuse.telemetry.time.perf_counter", lambda: next(clock))
    tel = Telemetry(TelemetryConfig(window=1000))
    for ms in (2.0, 1.0, 3.0):  # fewer than the window holds; the fastest is not the first
        tel.record("fuse", ms)
    fuse = tel.snapshot()["stages"]["fuse"]
    assert fuse["n"] == 3 and fuse["min_ms"] == 1.0
    assert tel.snapshot()["uptime_s"] == 7.5  # since start, not since the snapshot before


def test_the_log_line_shows_both_rates_in_place_and_only_the_counters_that_are_not_zero():
    snap = {"rate_fps": 24.96, "mean_rate_fps": 12.0, "stages": {"fuse": {"median_ms": 3.04, "p99_ms": 9.0}},
            "counters": {"published": 10, "dropped.ir": 0, "lag_ms": 1.23456}}
    assert format_stats(snap) == ("rate=25.0fps (since start 12.0) (median/p99) fuse=3.0/9.0ms | lag_ms=1.23 "
                                  "published=10")


def test_a_snapshot_right_after_a_later_one_measures_from_the_snapshot_just_before(monkeypatch):
    """The final snapshot's rate spans the last full interval and the few ms after it, not the whole run."""
    clock = iter([0.0, 5.0, 10.0, 10.004])  # start, two periodic snapshots, the final one
    monkeypatch.setattr("streamfuse.telemetry.time.perf_counter", lambda: next(clock))
    tel = Telemetry(TelemetryConfig(interval_s=5.0))
    tel.count("published", 500)  # a fast first interval
    tel.snapshot()
    tel.count("published", 50)
    tel.snapshot()
    tel.count("published", 1)
    assert tel.snapshot()["rate_fps"] == pytest.approx(51 / 5.004, abs=0.01)


@pytest.mark.parametrize(("after_s", "rate"), [(2.4, 101 / 7.4), (2.5, 1 / 2.5)])
def test_a_snapshot_measures_from_the_one_before_only_less_than_half_an_interval_after_the_last(monkeypatch, after_s,
                                                                                              rate):
    clock = iter([0.0, 5.0, 5.0 + after_s])  # start, a periodic snapshot, one 2.4 s (or 2.5 s) after it
    monkeypatch.setattr("streamfuse.telemetry.time.perf_counter", lambda: next(clock))
    tel = Telemetry(TelemetryConfig(interval_s=5.0))
    tel.count("published", 100)
    tel.snapshot()
    tel.count("published", 1)
    assert tel.snapshot()["rate_fps"] == pytest.approx(rate, abs=0.01)


def test_the_log_line_before_any_frame_says_so_rather_than_a_rate_of_zero():
    # a 3840x2160 synthetic rig's sources took seconds to open, logging "rate=0.0fps (since start 0.0)" meanwhile
    tel = Telemetry(TelemetryConfig())
    tel.set("capture_restarts.ir", 1)
    tel.set("received.ir", 0)
    line = format_stats(tel.snapshot())
    assert line.startswith("no frame yet (0 s since start: a source still opening, or stalled)") and "rate=" not in line
    assert line.endswith(" | capture_restarts.ir=1")
    tel.set("received.ir", 1)  # a first frame, none fused yet: a rate of 0 is the truth now
    assert format_stats(tel.snapshot()).startswith("rate=0.0fps (since start 0.0)")
