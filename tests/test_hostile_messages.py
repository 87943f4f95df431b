"""Hostile messages: a seeded fuzzer mutates valid messages of every kind the publisher sends (made by its encoders)
and feeds them to the consumers' decoding (``decode_message``, ``decode_stats`` and a Subscriber's receive path, with
its shared-memory reads and h264 state). Each one is skipped as malformed, in one line, or decodes to exactly what its
header says. After it, a direct test of each failure it found in the decoding (those of the viewer and the Foxglove
bridge are in their own test files)."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import zmq
from helpers_zmq import PATIENCE_S, fused_frame, plain_pub, raw_connect, with_header, with_raw_field

from streamfuse.client import Subscriber
from streamfuse.codecs import DecodeError, H264Decoder, H264Encoder, JpegEncoder
from streamfuse.shm_pool import ShmPool, shm_supported
from streamfuse.telemetry import Telemetry, TelemetryConfig
from streamfuse.wire import (ENCODINGS, HEADER_FIELDS, STATS_SCHEMA, HeaderEncoder, MalformedMessage, decode_header,
                             decode_message, decode_stats, encode_json, preview_topic, shm_topic)

MUTATIONS = 2000  # per seed: about a second each
MAX_FRAME_BYTES = 1 << 20  # the fuzzed subscriber's limit (its raw payloads stay under 256 kB)
# After each mutated message (or burst): two valid frames, seq 0 then 1, that the subscriber takes whatever seq the
# mutated ones left it at (0: a restart, a repeat or a copy of the last; 1 then follows 0); frame_id tells them apart.
SENTINELS = [with_header(seq=seq, frame_id="sentinel") for seq in (0, 1)]
# JSON a header field gets: wrong types, out of range, NaN and infinities, other fields' values, long and broken text
HOSTILE = ['""', '"1"', '"abc"', '"bgr8"', '"mono8"', '"rgba9"', '"raw"', '"jpeg"', '"h264"', '"shm"', "-1", "0", "1",
           "2", "3", "65535", "65536", str(2**31), str(2**63 - 1), str(2**63), str(2**64), str(-(2**63) - 1),
           "1" + "0" * 30, "1.0", "1.5", "-0.0", "NaN", "Infinity", "-Infinity", "1e999", "true", "false", "null",
           "[]", "[1, 2]", "{}", '{"a": 1}', '"' + "x" * 3000 + '"', '"\\u0000"', '"\\ud800"', '"\\udfff x"', '"é"',
           '"streamfuse.fused/1"', '"streamfuse.fused/2"', '"streamfuse_pub_1_0123abcd"']


def _valid_messages(pool: ShmPool | None) -> list[list[bytes]]:
    """One message of each kind the publisher sends, made by its encoders: raw bgr8 and mono8 (odd sizes), a preview,
    jpeg bgr8 and mono8, three h264 packets (a keyframe, then inter frames), a shared-memory descriptor (``pool``: a
    real slot) and a telemetry snapshot."""
    rng = np.random.default_rng(0)
    headers = HeaderEncoder("vis_optical_frame")

    def message(image: np.ndarray, fmt: str = "raw", topic: str = "fused/x", **fields: str | int) -> list[bytes]:
        return [topic.encode(), headers.encode(fused_frame(image), image, seq=3, fmt=fmt, **fields)]

    images = [rng.integers(0, 256, shape, np.uint8) for shape in [(7, 5, 3), (6, 9), (1, 1, 3), (4, 8)]]
    found = [message(image) + [image.tobytes()] for image in images[:3]]
    found.append(message(images[3], topic=preview_topic("fused/x", "ir")) + [images[3].tobytes()])
    for image in (rng.integers(0, 256, (16, 24, 3), np.uint8), rng.integers(0, 256, (9, 13), np.uint8)):
        found.append(message(image, "jpeg") + [JpegEncoder(90).encode(image)])
    encoder = H264Encoder(keyint=3, crf=23)
    for i in range(3):
        image = np.full((18, 22, 3), 40 * i, np.uint8)
        packet, key = encoder.encode(image)
        found.append(message(image, "h264", keyframe=int(key)) + [packet])
    if pool is not None:
        slot, gen = pool.write(images[0])
        found.append(message(images[0], "shm", shm_topic("fused/x"), shm_pool=pool.name, shm_slot=slot, shm_gen=gen)
                     + [b""])
    telemetry = Telemetry(TelemetryConfig())
    telemetry.record("fuse", 1.5)
    telemetry.count("published", 3)
    body = {"schema": STATS_SCHEMA, "t_ns": 1_700_000_000_000_000_000, "fuser": {"name": "max", "steps": 4},
            **telemetry.snapshot()}
    return found + [[b"stats/x", encode_json(body)]]


def _noise(rng: np.random.Generator, most: int) -> bytes:
    return rng.integers(0, 256, int(rng.integers(0, most + 1)), np.uint8).tobytes()


def _json_text(rng: np.random.Generator, depth: int = 0) -> str:
    """Random JSON built of hostile values: a value, a list, an object, or lists nested up to 3000 deep."""
    kind = rng.integers(10)
    if depth > 2 or kind < 5:
        return HOSTILE[rng.integers(len(HOSTILE))]
    if kind < 7:
        return "[" + ",".join(_json_text(rng, depth + 1) for _ in range(rng.integers(4))) + "]"
    if kind < 9:
        return "{" + ",".join(f'"k{i}":' + _json_text(rng, depth + 1) for i in range(rng.integers(4))) + "}"
    n = int(rng.choice([10, 100, 990, 3000]))  # 990: just within the parser's recursion limit
    return "[" * n + "]" * n


def _mutate(rng: np.random.Generator, parts: list[bytes]) -> list[bytes]:
    """One random mutation: of the parts (drop, duplicate, swap, add), of a part's bytes (truncate, extend, flip,
    invalid UTF-8, a random topic) or of the header (a random JSON document, a field, the geometry)."""
    parts = list(parts)
    i, j = (int(k) for k in rng.integers(len(parts), size=2))
    op = rng.integers(13)
    if op == 0:
        del parts[i]
    elif op == 1:
        parts.insert(i, parts[i])
    elif op == 2:
        parts[i], parts[j] = parts[j], parts[i]
    elif op == 3:
        parts.append(_noise(rng, 32))
    elif op == 4:
        parts[i] = parts[i][: rng.integers(len(parts[i]) + 1)]
    elif op == 5:
        parts[i] += _noise(rng, 64)
    elif op == 6 and parts[i]:
        flipped = np.frombuffer(parts[i], np.uint8).copy()
        flipped[rng.integers(len(flipped), size=rng.integers(1, 9))] ^= rng.integers(1, 256, dtype=np.uint8)
        parts[i] = flipped.tobytes()
    elif op == 7:
        parts[0] = _noise(rng, 16)
    elif op == 8 and len(parts) > 1:
        at = rng.integers(len(parts[1]) + 1)
        parts[1] = parts[1][:at] + [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"][rng.integers(4)] + parts[1][at:]
    elif op == 9 and len(parts) > 1:
        parts[1] = _json_text(rng).encode()
    elif op in (10, 11):
        return _edit_header(rng, parts, _edit_field)
    elif op == 12:
        return _edit_header(rng, parts, _inflate)
    return parts


def _edit_header(rng: np.random.Generator, parts: list[bytes],
                 edit: Callable[[np.random.Generator, dict, bytes], tuple[bytes, str, str]]) -> list[bytes]:
    """``parts`` with the header (a JSON object, else unchanged) and payload changed by ``edit``, which returns the
    payload and a field to set to a JSON text verbatim (NaN, 1e999, deep lists: what json.dumps never writes)."""
    try:
        header = json.loads(parts[1])
        if not isinstance(header, dict) or len(parts) < 3:
            return parts
        payload, key, text = edit(rng, header, parts[2])
        body = json.dumps({**header, key: "@@"} if key else header).replace('"@@"', text, 1)
    except (ValueError, RecursionError, IndexError):  # not JSON, or nested too deep to write back
        return parts
    return [parts[0], body.encode(), payload, *parts[3:]]


def _edit_field(rng: np.random.Generator, header: dict, payload: bytes) -> tuple[bytes, str, str]:
    """Drop a field, set it to hostile JSON, shift an int, set a geometry (consistent with a raw payload), or swap
    the format and schema."""
    keys = [*header, "format", "keyframe", "shm_pool", "shm_slot", "shm_gen", "x_new"]
    key = keys[rng.integers(len(keys))]
    op = rng.integers(5)
    if op == 0:
        header.pop(key, None)
    elif op == 1:
        return payload, key, _json_text(rng)
    elif op == 2 and type(header.get(key)) is int:
        header[key] += int(rng.choice([-2, -1, 1, 2, 1000, -1000]))
    elif op == 3:
        channels = ENCODINGS.get(str(header.get("encoding")), 3)
        height, width = (int(n) for n in rng.integers(1, 40, size=2))
        header.update(height=height, width=width, step=width * channels + int(rng.choice([0, 0, 1, 5])))
        if header.get("format", "raw") == "raw":
            payload = rng.integers(0, 256, height * header["step"], np.uint8).tobytes()
    else:
        header.update(format=str(rng.choice(["raw", "jpeg", "h264", "shm"])), keyframe=1,
                      schema=str(rng.choice(["streamfuse.fused/1", "streamfuse.fused/2"])))
    return payload, "", ""


def _inflate(rng: np.random.Generator, header: dict, payload: bytes) -> tuple[bytes, str, str]:
    """An extreme geometry: one row or column of 65490..65535 (a raw payload to match), or a compressed frame
    claiming up to 4096 x 4096 (a JPEG's SOF patched to match)."""
    channels = ENCODINGS.get(str(header.get("encoding")), 3)
    size = (1, int(rng.integers(65490, 65536))) if rng.random() < 0.5 else tuple(int(n) for n in
                                                                                rng.integers(64, 4097, size=2))
    height, width = size[:: 1 if rng.random() < 0.5 else -1]
    header.update(height=height, width=width, step=width * channels)
    if header.get("format") == "raw" and height * width * channels <= 1 << 18:
        payload = bytes(height * width * channels)
    sof = payload.find(b"\xff\xc0")
    if header.get("format") == "jpeg" and sof >= 0:
        payload = payload[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + payload[sof + 9:]
    return payload, "", ""


def _depth(obj: object) -> int:
    """How deep ``obj`` nests lists and objects (walked level by level)."""
    level, depth = [obj], 0
    while level:
        children = [o.values() if isinstance(o, dict) else o for o in level if isinstance(o, (dict, list))]
        level = [value for values in children for value in values]
        depth += bool(level)
    return depth


def _check_frame(header: dict, image: np.ndarray) -> None:
    """A decoded frame is what its header says, and its header what consumers pass on (strict JSON, 8 deep at most,
    Unicode text where they encode it)."""
    channels = ENCODINGS[header["encoding"]]
    assert image.dtype == np.uint8, image.dtype
    assert image.shape == (header["height"], header["width"], channels)[: 3 if channels > 1 else 2], header
    assert image.nbytes <= MAX_FRAME_BYTES
    for key, tp in HEADER_FIELDS.items():
        assert isinstance(header[key], tp), key
        if tp is str:
            header[key].encode()  # raises on a lone surrogate
    json.dumps(header, allow_nan=False)
    assert _depth(header) <= 8


def _decode_directly(parts: list[bytes]) -> list[str]:
    """What ``decode_message`` and ``decode_stats`` make of ``parts``, checked (frames by :func:`_check_frame`)."""
    got = []
    for name, decode in (("decode_message", decode_message), ("decode_stats", decode_stats)):
        try:
            result = decode(parts)
        except MalformedMessage as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 400, str(exc)
            got.append(f"{name}: malformed")
            continue
        if name == "decode_message":
            _check_frame(*result)
        else:
            assert _depth(result) <= 8 and json.dumps(result, allow_nan=False)
        got.append(f"{name}: ok")
    return got


class _Queued:
    """A Subscriber's socket whose messages are queued here (anything else goes to the real socket): its receive path
    without a network, so a message costs microseconds."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock, self.frames = sock, collections.deque()

    def send(self, parts: list[bytes]) -> None:
        frames = [zmq.Frame(part) for part in parts]
        for frame in frames[:-1]:
            frame.more = True
        self.frames.extend(frames)

    def recv(self, flags: int = 0, copy: bool = True) -> zmq.Frame:
        return self.frames.popleft()

    def getsockopt(self, option: int) -> int:
        return (zmq.POLLIN if self.frames else 0) if option == zmq.EVENTS else self.sock.getsockopt(option)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


@contextmanager
def _queued_subscriber(**kwargs: object) -> Iterator[tuple[Subscriber, _Queued]]:
    with Subscriber("inproc://hostile-messages", timeout_s=PATIENCE_S, ring=False, **kwargs) as sub:
        queue = sub._sock = _Queued(sub._sock)
        try:
            yield sub, queue
        finally:
            sub._sock = queue.sock


def _is_sentinel(header: dict, seq: int | None = None) -> bool:
    """Whether ``header`` is one of ``SENTINELS`` (``seq``: that one)."""
    return header["frame_id"] == "sentinel" and header["seq"] in ((0, 1) if seq is None else (seq,))


def _consume(sub: Subscriber, queue: _Queued, parts: list[bytes]) -> list[tuple[dict, np.ndarray]]:
    """Queue ``parts`` then ``SENTINELS``; the frames ``sub`` returns before them."""
    for message in (parts, *SENTINELS):
        queue.send(message)
    frames = []
    while (frame := sub.recv()) is not None and not _is_sentinel(frame[0], 1):
        frames += [] if _is_sentinel(frame[0]) else [frame]
    assert frame is not None, "the valid frames after a mutated message never came"
    return frames


@contextmanager
def _pool() -> Iterator[ShmPool | None]:
    """A shared-memory pool where this host has them, else None."""
    if not shm_supported():
        yield None
        return
    with ShmPool(4, 4096) as pool:
        yield pool


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mutated_messages_are_skipped_or_decode_to_what_their_header_says(seed: int) -> None:
    rng = np.random.default_rng(seed)
    outcomes: collections.Counter[str] = collections.Counter()
    with _pool() as pool, _queued_subscriber(shm=pool is not None, max_frame_bytes=MAX_FRAME_BYTES) as (sub, queue):
        valid = _valid_messages(pool)
        for _mutation in range(MUTATIONS):
            parts = valid[rng.integers(len(valid))]
            for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
                parts = _mutate(rng, parts) if parts else parts
            outcomes.update(_decode_directly(parts))
            if parts:
                malformed = sub.malformed
                for header, image in _consume(sub, queue, parts):
                    _check_frame(header, image)
                    outcomes[f"subscriber: {header['format']}"] += 1
                assert sub.malformed == malformed or ("\n" not in sub.last_malformed and len(sub.last_malformed) < 400)
    # not vacuous: most mutations are refused, yet some of every format get through to their decoder
    assert sub.malformed > MUTATIONS // 2 and outcomes["decode_message: ok"] > MUTATIONS // 20, outcomes
    assert all(outcomes[f"subscriber: {fmt}"] for fmt in ("raw", "jpeg", "h264", "shm" if pool else "raw")), outcomes


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
def test_a_subscriber_on_a_socket_goes_on_after_a_burst_of_mutated_messages(latest: bool) -> None:
    rng = np.random.default_rng(11)
    valid = _valid_messages(None)
    with plain_pub() as sock, Subscriber(sock.getsockopt_string(zmq.LAST_ENDPOINT), timeout_s=PATIENCE_S, rcvhwm=1000,
                                         shm=False, latest=latest, max_frame_bytes=MAX_FRAME_BYTES) as sub:
        raw_connect(sock, sub)
        for _ in range(300):
            parts = _mutate(rng, valid[rng.integers(len(valid))])
            if parts:
                sock.send_multipart(parts)
        for message in SENTINELS:
            sock.send_multipart(message)
        while (frame := sub.recv()) is not None and not _is_sentinel(frame[0], 1):
            _check_frame(*frame)
    assert frame is not None and sub.malformed >= 100


@pytest.mark.parametrize("fmt", ["jpeg", "h264", "jpeg claiming 4000 x 4000"])
def test_a_compressed_frame_that_decodes_over_max_frame_bytes_is_skipped_undecoded(fmt: str) -> None:
    # A 1 kB JPEG claiming 65535 x 65535 (header and SOF alike) made the subscriber allocate 12 GB and decode garbage
    # into it (MemoryError out of recv(), or minutes of CPU); a real frame over the limit was returned.
    image = np.full((300, 400, 3), 77, np.uint8)
    fields = {"keyframe": 1} if fmt == "h264" else {}
    header = HeaderEncoder("f").encode(fused_frame(image), image, seq=1, fmt=fmt[:4], **fields)
    payload = H264Encoder(keyint=3, crf=23).encode(image)[0] if fmt == "h264" else JpegEncoder(90).encode(image)
    parts = [b"fused/x", header, payload]
    claimed = (300, 400) if fmt != "jpeg claiming 4000 x 4000" else (4000, 4000)
    if claimed != (300, 400):
        sof = parts[2].find(b"\xff\xc0") + 5
        parts[2] = parts[2][:sof] + b"".join(n.to_bytes(2, "big") for n in claimed) + parts[2][sof + 4:]
        parts[1] = json.dumps({**json.loads(parts[1]), "height": 4000, "width": 4000, "step": 12000}).encode()
    with _queued_subscriber(shm=False, max_frame_bytes=image.nbytes - 1) as (sub, queue):
        assert _consume(sub, queue, parts) == []
    assert sub.malformed == 1
    said = f"frame of {claimed[1]}x{claimed[0]} is {claimed[0] * claimed[1] * 3} bytes, more than max_frame_bytes"
    assert said in sub.last_malformed


def test_an_h264_keyframe_bigger_than_its_header_says_is_refused_undecoded() -> None:
    # FFmpeg allocated (and concealed) whatever picture size the stream's SPS said before the size was compared.
    packet, _ = H264Encoder(keyint=3, crf=23).encode(np.zeros((256, 256, 3), np.uint8))
    with pytest.raises(DecodeError, match="Invalid data found"):
        H264Decoder().decode(packet, True, 16, 16, 3)
    odd = np.full((17, 33), 90, np.uint8)  # the bound leaves room for FFmpeg's own alignment
    assert H264Decoder().decode(H264Encoder(keyint=3, crf=23).encode(odd)[0], True, 17, 33, 1).shape == (17, 33)


def test_an_empty_h264_packet_is_refused_and_the_decoder_waits_for_a_keyframe() -> None:
    # FFmpeg takes it without an error and gives no picture
    encoder, decoder = H264Encoder(keyint=3, crf=23), H264Decoder()
    image = np.full((16, 16, 3), 90, np.uint8)
    decoder.decode(*encoder.encode(image), 16, 16, 3)
    with pytest.raises(DecodeError, match="^bad H.264 payload: H.264 packet decoded to 0 frames, expected 1$"):
        decoder.decode(b"", False, 16, 16, 3)
    assert decoder.decode(*encoder.encode(image), 16, 16, 3) is None  # an inter frame


@pytest.mark.parametrize("frame_id", [b'"vis\\ud800"', b'"vis\xed\xa0\x80"'], ids=["escape", "utf8-bytes"])
def test_a_header_text_that_is_not_unicode_is_malformed(frame_id: bytes) -> None:
    # json.loads lets lone surrogates through; Foxglove's frame_id could not encode one and its relay thread died.
    topic, header, payload = with_header(frame_id="@")
    with pytest.raises(MalformedMessage) as info:
        decode_header([topic, header.replace(b'"@"', frame_id), payload])
    assert "header field frame_id='vis\\ud800' is not Unicode text" in str(info.value)


@pytest.mark.parametrize(("extra", "reason"), [("[" * 100 + "]" * 100, "header fields are nested more than 8 deep"),
                                               ("NaN", "header fields hold NaN"),
                                               ('{"a": [1e999]}', "header fields hold NaN or an infinite number")])
def test_unknown_header_fields_hold_only_what_consumers_pass_on(extra: str, reason: str) -> None:
    # The viewer sends headers to its page: NaN broke the page's JSON.parse, and ~980 levels passed the decoder but
    # not the viewer's json.dumps (RecursionError: the page froze).
    with pytest.raises(MalformedMessage, match=reason):
        decode_header(with_raw_field("x_new", extra))
    assert decode_header(with_header(x_new={"a": [1, "b"]}))["x_new"] == {"a": [1, "b"]}  # a newer publisher's field
