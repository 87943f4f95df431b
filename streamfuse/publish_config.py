"""PublishConfig: the ``publish`` section of a config (endpoint, topics, queues, encryption, formats, previews)."""

from __future__ import annotations

from dataclasses import dataclass

from streamfuse.checks import check, tcp_port_ok
from streamfuse.frames import MAX_FRAME_ID
from streamfuse.shm_pool import MAX_SLOTS
from streamfuse.wire import FORMATS, FUSED_PREFIX, RING_TOPIC_PREFIX, SHM_TOPIC_PREFIX, STATS_PREFIX

__all__ = ["PublishConfig"]


@dataclass(frozen=True)
class PublishConfig:
    """The publish stage.

    Args:
        endpoint: ZeroMQ endpoint the PUB socket binds (``tcp://HOST:PORT``, IPv6 in brackets: ``tcp://[::1]:PORT``,
            ``ipc://PATH``); loopback by default.
        topic: topic of fused frames (first message part).
        stats_topic: topic of the telemetry messages.
        sndhwm: messages queued per subscriber before that subscriber's frames are dropped (small = fresh frames).
        unsent_kb: ``tcp://``: KiB the kernel holds for each subscriber beyond what is on its way
            (``TCP_NOTSENT_LOWAT``): a subscriber that stops reading fills no more, so hundreds of them cannot hold
            the I/O thread from the others' frames; a distant one's data in flight is not limited. 0 = the kernel's
            own (megabytes a subscriber).
        nodrop: ``ZMQ_XPUB_NODROP``: a full subscriber queue makes ``send_fused`` return False (counted) instead
            of dropping that subscriber's copy silently; one stalled subscriber then holds frames back from all.
        wait_ms: with ``nodrop``, how long ``send_fused`` may wait for room before it drops the frame: lossless
            back-pressure for offline replay into a recorder. 0 = never wait (a live run leaves it unused).
        frame_id: ``frame_id`` header field: the optical frame the fused image is registered to; empty = the
            visible camera's (``vis.frame_id``).
        curve_secret_file: CURVE encryption: a secret-key file made by ``zmq.auth.create_certificates``; subscribers
            need the matching public key. Empty = plain TCP (keep the endpoint on loopback then).
        curve_clients_dir: with ``curve_secret_file``, a folder of the consumers' public keys (``.key`` files made by
            ``zmq.auth.create_certificates``): only they get in ("ironhouse"). Empty = any consumer that knows the
            publisher's public key ("stonehouse").
        encoding: what ``topic`` carries: ``raw`` pixels, ``jpeg`` (``jpeg_quality``) or ``h264`` (one frame per
            message, no B-frames, a keyframe every ``h264_keyint`` frames) for consumers on other machines.
        jpeg_quality: JPEG quality, 1..100.
        h264_keyint: frames between H.264 keyframes (a new consumer waits for one), 1..600.
        h264_crf: H.264 constant rate factor, 0 (lossless) .. 51 (smallest).
        shm_slots: slots of the same-host shared-memory pool (one frame each; a frame is written there only while a
            consumer on this host reads the pool); 0 = off. Off with ``wait_ms`` too: lossless back-pressure cannot
            be promised through a pool whose writer never waits.
        preview_width: width of the downscaled IR and visible previews, sent on their own topics only while a
            subscriber asks for them (a viewer subscribes to ``preview/...``); 0 = never send previews.
        wait_subscriber_s: an offline replay waits up to this long, before its first frame, for a subscriber of
            ``topic``, which would otherwise miss the frames sent before its subscription arrived (ZeroMQ's slow
            joiner: a recorder started with the replay); 0 = start at once. A live run never waits.
    """

    endpoint: str = "tcp://127.0.0.1:5555"
    topic: str = f"{FUSED_PREFIX}rig0"
    stats_topic: str = f"{STATS_PREFIX}rig0"
    sndhwm: int = 2
    unsent_kb: int = 64
    nodrop: bool = False
    wait_ms: int = 0
    frame_id: str = ""
    curve_secret_file: str = ""
    curve_clients_dir: str = ""
    preview_width: int = 320
    encoding: str = "raw"
    jpeg_quality: int = 90
    h264_keyint: int = 30
    h264_crf: int = 23
    shm_slots: int = 8
    wait_subscriber_s: float = 0.0

    def __post_init__(self) -> None:
        check(_address_ok(self.endpoint) and tcp_port_ok(self.endpoint, bind=True),
              "endpoint", self.endpoint, "tcp://HOST:PORT (PORT 1..65535, or * for any free one) | ipc://PATH | "
              "inproc://NAME")
        check(bool(self.topic), "topic", self.topic, "a non-empty string, e.g. fused/rig0")
        check(bool(self.stats_topic) and not self.stats_topic.startswith(self.topic) and
              not self.topic.startswith(self.stats_topic), "stats_topic", self.stats_topic,
              "a non-empty string that is not a prefix of topic (or the other way round)")
        check(not self.curve_clients_dir or bool(self.curve_secret_file), "curve_clients_dir", self.curve_clients_dir,
              "empty, or a folder of consumers' public keys with curve_secret_file set (they are CURVE clients)")
        check(1 <= self.sndhwm <= 1000, "sndhwm", self.sndhwm, "1..1000")
        check(0 <= self.unsent_kb <= 1_048_576, "unsent_kb", self.unsent_kb, "0 (the kernel's own) .. 1048576 KiB")
        check(self.wait_ms == 0 or (self.nodrop and 0 < self.wait_ms <= 60_000), "wait_ms", self.wait_ms,
              "0, or 1..60000 with nodrop: true (without nodrop a full queue drops, it never waits)")
        check(self.encoding in FORMATS[:3], "encoding", self.encoding, "raw | jpeg | h264")
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "1..100")
        check(1 <= self.h264_keyint <= 600, "h264_keyint", self.h264_keyint, "1..600")
        check(0 <= self.h264_crf <= 51, "h264_crf", self.h264_crf, "0..51")
        check(0 <= self.shm_slots <= MAX_SLOTS, "shm_slots", self.shm_slots, f"0 (off) .. {MAX_SLOTS}")
        check(not self.topic.startswith((SHM_TOPIC_PREFIX, RING_TOPIC_PREFIX)), "topic", self.topic, f"a topic not "
              f"starting with {SHM_TOPIC_PREFIX} or {RING_TOPIC_PREFIX} (reserved for shared-memory descriptors and "
              f"their ring: no consumer takes it)")
        check(len(self.frame_id) <= MAX_FRAME_ID, "frame_id", self.frame_id,
              f"at most {MAX_FRAME_ID} characters (every frame's header holds it: consumers refuse one over 64 KiB)")
        check(0 <= self.wait_subscriber_s <= 3600, "wait_subscriber_s", self.wait_subscriber_s, "0 (off) .. 3600 s")
        check(self.preview_width == 0 or 16 <= self.preview_width <= 4096, "preview_width", self.preview_width,
              "0 (off) or 16..4096 pixels")


def _address_ok(endpoint: str) -> bool:
    """A transport ZeroMQ binds and an address after it: a ``tcp://`` host (a name, an address, an interface, ``*``;
    IPv6 in whole brackets) without spaces, an ``ipc://`` path, an ``inproc://`` name (libzmq's own error for
    ``tcp://:5555`` is "No such device", at bind)."""
    scheme, _, address = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return bool(address.strip())
    host = address.rpartition(":")[0]
    bracketed = host.startswith("[") or host.endswith("]")
    return (scheme == "tcp" and bool(host) and not any(c.isspace() for c in host)
            and (not bracketed or (host.startswith("[") and host.endswith("]") and len(host) > 2)))
