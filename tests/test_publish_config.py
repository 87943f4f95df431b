"""PublishConfig: each range check's both ends taken and the values just outside refused naming their key, and the
defaults the README documents. (Apart from tests/test_publish.py, which is full.)"""

from __future__ import annotations

import pytest

from streamfuse.publish_config import PublishConfig
from streamfuse.shm_pool import MAX_SLOTS

# key: (lowest taken, highest taken, refused values)
RANGES = {
    "sndhwm": (1, 1000, [0, 1001]),
    "jpeg_quality": (1, 100, [0, 101]),
    "h264_keyint": (1, 600, [0, 601]),
    "h264_crf": (0, 51, [-1, 52]),
    "shm_slots": (0, MAX_SLOTS, [-1, MAX_SLOTS + 1]),
    "preview_width": (16, 4096, [15, 4097, -1]),
    "wait_subscriber_s": (0, 3600, [-0.5, 3600.5]),
}


@pytest.mark.parametrize("key", RANGES)
def test_each_range_takes_both_its_ends(key: str) -> None:
    low, high, _ = RANGES[key]
    assert getattr(PublishConfig(**{key: low}), key) == low
    assert getattr(PublishConfig(**{key: high}), key) == high


@pytest.mark.parametrize(("key", "value"), [(key, value) for key, (_, _, refused) in RANGES.items()
                                            for value in refused])
def test_a_value_just_outside_its_range_is_refused_naming_its_key(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{key}={value} is out of range"):
        PublishConfig(**{key: value})


@pytest.mark.parametrize(("changes", "key"), [
    ({"topic": "fused", "stats_topic": "fused/stats"}, "stats_topic"),  # stats_topic under topic
    ({"topic": "stats/rig0/frames", "stats_topic": "stats/rig0"}, "stats_topic"),  # topic under stats_topic
    ({"topic": "shm/fused/rig0"}, "topic"),  # the shared-memory descriptors' prefix
    ({"topic": "shm/"}, "topic"),
    ({"topic": "ring/rig0"}, "topic"),  # the ring readers' prefix: every consumer refuses a topic under it
])
def test_topics_that_would_take_each_others_messages_are_refused(changes: dict, key: str) -> None:
    # a subscriber of one topic also gets every message whose topic it prefixes (ZeroMQ matches prefixes)
    with pytest.raises(ValueError, match=f"^{key}="):
        PublishConfig(**changes)


def test_an_encoding_is_one_a_consumer_decodes_and_not_the_pools_descriptors() -> None:
    # "shm" is the wire's own format of the shared-memory descriptors, which only the pool's readers take
    assert [PublishConfig(encoding=e).encoding for e in ("raw", "jpeg", "h264")] == ["raw", "jpeg", "h264"]
    with pytest.raises(ValueError, match=r"^encoding='shm' is out of range; allowed: raw \| jpeg \| h264$"):
        PublishConfig(encoding="shm")


def test_a_wait_for_room_takes_1_to_60000_ms_and_only_with_nodrop() -> None:
    # without nodrop a full queue drops at once: a wait asked for there would never happen
    assert [PublishConfig(nodrop=True, wait_ms=ms).wait_ms for ms in (1, 60_000)] == [1, 60_000]
    for changes in ({"nodrop": True, "wait_ms": 60_001}, {"nodrop": True, "wait_ms": -1}, {"wait_ms": 1}):
        with pytest.raises(ValueError, match=f"^wait_ms={changes['wait_ms']} is out of range; allowed: 0, or 1..60000 "
                                             "with nodrop: true"):
            PublishConfig(**changes)


def test_a_consumers_key_folder_is_refused_without_the_publishers_secret_key() -> None:
    # the keys in curve_clients_dir are CURVE clients' keys: without curve_secret_file the publisher would run plain
    # TCP and let every consumer in
    with pytest.raises(ValueError, match="^curve_clients_dir='keys' is out of range; allowed: empty, or a folder"):
        PublishConfig(curve_clients_dir="keys")
    assert PublishConfig(curve_clients_dir="keys", curve_secret_file="server.key_secret").curve_clients_dir == "keys"


def test_the_defaults_are_the_documented_ones() -> None:
    # README: "each subscriber has a queue of publish.sndhwm (default 2)", loopback endpoint; Formats: raw,
    # jpeg_quality 90, h264_keyint 30, h264_crf 23, shm_slots 8
    cfg = PublishConfig()
    assert (cfg.endpoint, cfg.sndhwm, cfg.shm_slots) == ("tcp://127.0.0.1:5555", 2, 8)
    assert (cfg.encoding, cfg.jpeg_quality, cfg.h264_keyint, cfg.h264_crf) == ("raw", 90, 30, 23)
    assert (cfg.topic, cfg.stats_topic, cfg.preview_width, cfg.wait_subscriber_s) == ("fused/rig0", "stats/rig0",
                                                                                        320, 0.0)
    assert not cfg.nodrop and cfg.wait_ms == 0
