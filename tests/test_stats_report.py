"""The live run's stats report (every interval and the final line): each counter the sources, the pairer, the fuser and
the recording hand over lands under its own name, so that a loss is said where it happened; a recording discarded
after a source failed says the frames it held."""

from __future__ import annotations

from types import SimpleNamespace

from streamfuse.pipeline import _end_recording, _report
from streamfuse.sync import Pairer, SyncConfig
from streamfuse.telemetry import Telemetry, TelemetryConfig


def test_every_capture_and_recording_counter_is_in_the_final_snapshot_and_line(caplog):
    sent = []
    capture = {"ir": {"dropped": 1, "skipped": 2, "restarts": 3, "stalls": 4},
               "vis": {"dropped": 5, "skipped": 6, "restarts": 7, "stalls": 8}}
    rec = SimpleNamespace(dropped={"ir": 9, "vis": 10}, error="disk full")
    with caplog.at_level("INFO", logger="streamfuse.pipeline"):
        snap = _report(Telemetry(TelemetryConfig()), SimpleNamespace(send_stats=sent.append), Pairer(SyncConfig()),
                       None, SimpleNamespace(stats=lambda: {"ot_cache_hits": 11}), rec, final=True, capture=capture)
    counters = snap["counters"]
    for source, said in capture.items():
        assert {name: counters[f"capture_{name}.{source}"] for name in said} == said
    assert [counters["record_dropped.ir"], counters["record_dropped.vis"], counters["record_failed"]] == [9, 10, 1]
    assert counters["ot_cache_hits"] == 11 and counters["received.ir"] == 0 and sent == [snap]
    final = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("final: "))
    assert "capture_skipped.ir=2" in final and "capture_skipped.vis=6" in final and "record_dropped.vis=10" in final


def test_a_recording_discarded_after_a_source_failed_says_the_frames_it_held(caplog, tmp_path):
    # the frames the discarded recording held are what it drops, not those the disk could not keep up with
    rec = SimpleNamespace(counts={"ir": 3, "vis": 0}, dropped={"ir": 1, "vis": 0}, path=tmp_path / "rig.mcap",
                          discard=lambda: None)
    stats = {"ir": {"delivered": 4, "dropped": 0}, "vis": {"delivered": 0, "dropped": 0}}
    _end_recording(rec, stats, "vis: no such file")
    assert caplog.messages == [f"no recording kept in {rec.path}: the run failed before the visible source delivered "
                               f"a frame (3 IR frames dropped); the corrected run can record there"]
