"""Each stage's range checks at their edges: the value at a bound loads, and one just past it is refused at load in
one line naming the key (a bound moved by one step refuses a documented value, or lets through one the stage cannot
run)."""

from __future__ import annotations

import pytest

from streamfuse.config import ConfigError, config_from_dict

# (section, key, the edge value that loads, the value just past it that is refused, other keys the value needs)
EDGES = [
    ("ir", "fps", 0.1, 0.099, {}), ("ir", "fps", 1000.0, 1000.1, {}),
    ("ir", "width", 16, 15, {}), ("ir", "width", 8192, 8193, {"height": 16}),
    ("ir", "height", 16, 15, {}), ("ir", "height", 8192, 8193, {"width": 16}),
    ("ir", "stall_factor", 2, 1.9, {}), ("ir", "stall_factor", 1000, 1001, {}),
    ("ir", "decode_threads", 256, 257, {}), ("ir", "seed", 0, -1, {}),
    ("ir", "delay_ms", 5000.0, 5000.1, {"kind": "camera"}),
    ("sync", "slop_ms", 0.001, 0.0, {}), ("sync", "slop_ms", 10_000.0, 10_000.1, {}),
    ("sync", "queue_size", 2, 1, {}), ("sync", "queue_size", 10_000, 10_001, {}), ("sync", "hold_ms", 0.001, 0.0, {}),
    ("sync", "hold_ms", 60_000.0, 60_000.1, {}),
    ("stabilize", "strength", 0.95, 0.96, {}), ("stabilize", "strength", 0.0, -0.01, {}),
    ("align", "reg", 0.001, 0, {}), ("align", "reg", 10, 10.1, {}), ("align", "tol", 0.001, 0, {}),
    ("align", "blend", 0, -0.1, {}), ("align", "blend", 1, 1.1, {}),
    ("align", "max_iter", 1, 0, {}), ("align", "max_iter", 10_000, 10_001, {}), ("align", "tol", 1, 1.1, {}),
    ("align", "drift", 1, 1.1, {}), ("align", "refresh", 1, 0, {}),
    ("hclfuse", "steps", 1, 0, {}), ("hclfuse", "steps", 20, 21, {}),
    ("hclfuse", "guidance_scale", 10.0, 10.1, {}), ("hclfuse", "image_guidance", 20, 21, {}),
    ("hclfuse", "seed", 2**32 - 1, 2**32, {}), ("hclfuse", "seed", 0, -1, {}),
    ("engine", "threads", 0, -1, {}), ("engine", "threads", 1024, 1025, {}),
    ("baseline", "sharpen", 10, 10.1, {}), ("baseline", "contrast", 0.5, 0.49, {}),
    ("baseline", "contrast", 3.0, 3.1, {}),
    ("post", "denoise", 0.95, 0.96, {}), ("post", "denoise_threshold", 0.01, 0.009, {}),
    ("post", "denoise_threshold", 255, 256, {}),
    ("publish", "sndhwm", 1, 0, {}), ("publish", "sndhwm", 1000, 1001, {}),
    ("publish", "unsent_kb", 1_048_576, 1_048_577, {}), ("publish", "wait_ms", 60_000, 60_001, {"nodrop": True}),
    ("publish", "jpeg_quality", 1, 0, {}), ("publish", "jpeg_quality", 100, 101, {}),
    ("publish", "h264_keyint", 1, 0, {}), ("publish", "h264_keyint", 600, 601, {}),
    ("publish", "h264_crf", 0, -1, {}), ("publish", "h264_crf", 51, 52, {}),
    ("publish", "shm_slots", 1024, 1025, {}), ("publish", "wait_subscriber_s", 3600, 3601, {}),
    ("publish", "preview_width", 16, 15, {}), ("publish", "preview_width", 4096, 4097, {}),
    ("telemetry", "interval_s", 0.01, 0.009, {}), ("telemetry", "interval_s", 86400, 86401, {}),
    ("telemetry", "window", 10, 9, {}), ("telemetry", "window", 1_000_000, 1_000_001, {}),
    ("replay", "crf", 0, -1, {}), ("replay", "crf", 51, 52, {}),
    ("replay", "codec_threads", 0, -1, {}), ("replay", "codec_threads", 256, 257, {}),
    ("record", "chunk_mb", 0.0625, 0.0624, {"path": "r.mcap"}), ("record", "chunk_mb", 256, 257, {"path": "r.mcap"}),
    ("record", "flush_s", 0.01, 0.009, {"path": "r.mcap"}), ("record", "flush_s", 3600, 3601, {"path": "r.mcap"}),
    ("record", "split_s", 1, 0.9, {"path": "r.mcap"}), ("record", "split_s", 30 * 86400, 30 * 86400 + 1,
                                                         {"path": "r.mcap"}),
    ("record", "split_mb", 1, 0.9, {"path": "r.mcap"}), ("record", "split_mb", 2**20, 2**20 + 1, {"path": "r.mcap"}),
]


@pytest.mark.parametrize("section, key, edge, past, needs", EDGES, ids=[f"{s}.{k}={e}" for s, k, e, _, _ in EDGES])
def test_a_value_at_a_bound_loads_and_one_past_it_is_refused(section, key, edge, past, needs):
    cfg = config_from_dict({section: {key: edge, **needs}})
    assert getattr(getattr(cfg, section), key) == edge
    with pytest.raises(ConfigError) as exc:
        config_from_dict({section: {key: past, **needs}})
    said = str(exc.value)  # a float key shows an integer given as a float
    assert f"{section}: {key}={past!r} is out of range; allowed: " in said.replace(f"={float(past)!r}", f"={past!r}")
    assert "\n" not in said


@pytest.mark.parametrize("section, key, off", [("ir", "stall_factor", 0), ("record", "split_s", 0),
                                               ("record", "split_mb", 0), ("publish", "preview_width", 0),
                                               ("publish", "wait_ms", 0), ("replay", "codec_threads", 0)])
def test_a_zero_that_means_off_loads_below_the_lower_bound(section, key, off):
    cfg = config_from_dict({section: {key: off, **({"path": "r.mcap"} if section == "record" else {})}})
    assert getattr(getattr(cfg, section), key) == off


def test_a_wait_for_subscribers_without_nodrop_is_refused():
    with pytest.raises(ConfigError, match=r"publish: wait_ms=1 is out of range"):
        config_from_dict({"publish": {"wait_ms": 1}})
