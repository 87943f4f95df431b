"""The topics a consumer (the client, ``subscribe``, the viewers) may take: its fused topic, refused where it would
read something other than frames, and its stats topic, refused where it would take the frames."""

from __future__ import annotations

from streamfuse.checks import shown
from streamfuse.wire import FUSED_PREFIX, PREVIEW_PREFIX, RING_TOPIC_PREFIX, SHM_TOPIC_PREFIX, STATS_PREFIX

__all__ = ["topic_refusal", "consumer_topic", "consumer_stats_topic"]

# what else a publisher sends that a short prefix ("", "s", "preview/") would take as frames: both cameras' previews,
# each numbered apart from the fused frames, and the stats
_OTHER_PREFIXES = (PREVIEW_PREFIX, STATS_PREFIX)


def topic_refusal(topic: str) -> str | None:
    """Why a consumer cannot take ``topic`` (text) for its fused topic (prefix), else None: shared-memory descriptors
    (``shm/``, ``ring/``: the first maps the pool, which unsubscribes that very topic), the stats' JSON snapshots
    (``stats/``: each would read as a malformed frame), or a prefix of the previews' or stats' topics (``""``,
    ``"preview/"``: they came in mixed with the frames)."""
    if topic.startswith((SHM_TOPIC_PREFIX, RING_TOPIC_PREFIX)):
        return (f"carries shared-memory descriptors, not frames: give the fused topic "
                f"{topic.removeprefix(RING_TOPIC_PREFIX).removeprefix(SHM_TOPIC_PREFIX)!r} (a same-host consumer "
                f"reads the publisher's shared memory by itself)")
    if topic.startswith(STATS_PREFIX):
        return (f"carries the stats' JSON snapshots, not frames: give the fused topic, e.g. {FUSED_PREFIX!r} (README, "
                f"Telemetry: the same line the pipeline logs)")
    if others := [prefix for prefix in _OTHER_PREFIXES if prefix.startswith(topic)]:
        return (f"also takes the {' and '.join(others)} topics, whose messages would come in mixed with the frames: "
                f"give the fused topic, e.g. {FUSED_PREFIX!r} (every rig) or 'preview/ir/' (one camera's previews)")
    return None


def consumer_topic(topic: str | bytes) -> str:
    """A consumer's fused topic (prefix) as text (bytes: UTF-8); ValueError naming ``topic`` for one not text or one
    :func:`topic_refusal` refuses."""
    topic = _text(topic, "topic", FUSED_PREFIX)
    if why := topic_refusal(topic):
        raise ValueError(f"topic={topic!r} {why}")
    return topic


def _text(topic: object, name: str, example: str) -> str:
    """``topic`` as text (bytes: UTF-8); ValueError naming it where it is no text ZeroMQ can subscribe to."""
    try:
        topic = topic.decode() if isinstance(topic, bytes) else topic
    except UnicodeDecodeError:
        raise ValueError(f"{name}={shown(topic)} is not UTF-8") from None
    if not isinstance(topic, str):
        raise ValueError(f"{name}={shown(topic)} must be a str or UTF-8 bytes, e.g. {example!r}")
    if not topic.isascii():  # a surrogate (a name's undecodable bytes, os.fsdecode's) has no UTF-8 to subscribe to
        try:
            topic.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{name}={shown(topic)} is not UTF-8 text") from None
    return topic


def consumer_stats_topic(stats_topic: str | bytes, topic: str) -> str:
    """A consumer's stats topic (prefix) as text (bytes: UTF-8); ValueError for one not text, or one that also takes
    the frames of the fused ``topic``, its previews or its shared-memory descriptors (``""``: each frame came in as a
    malformed stats message, logged)."""
    stats_topic = _text(stats_topic, "stats_topic", STATS_PREFIX)
    if topic.startswith(stats_topic) or any(p.startswith(stats_topic) for p in (PREVIEW_PREFIX, SHM_TOPIC_PREFIX)):
        raise ValueError(f"stats topic {stats_topic!r} also takes frames (of {topic!r}, the previews or the shared-"
                         f"memory descriptors), each a malformed stats message: give the stats topic, e.g. "
                         f"{STATS_PREFIX!r}")
    return stats_topic
