"""The wire format: the header encoder (every field of every format, as a consumer decodes it), the stats checks and
the server key option."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from helpers_zmq import fused_frame, good_parts, with_header

from streamfuse import checks
from streamfuse.consumer_topics import consumer_topic
from streamfuse.frames import FusedFrame
from streamfuse.shm_pool import MAX_SLOTS
from streamfuse.wire import (FORMAT_FIELDS, HEADER_FIELDS, MAX_HEADER_BYTES, SCHEMA, SCHEMA_2, HeaderEncoder,
                             MalformedMessage, decode_header, decode_message, decode_stats, encode_json)

_FIELDS = {"raw": {}, "jpeg": {}, "h264": {"keyframe": 1},
           "shm": {"shm_pool": "streamfuse_pub_12_0123abcd", "shm_slot": 3, "shm_gen": 8}}


def _payload(fmt: str, image: np.ndarray) -> bytes:
    return {"raw": image.tobytes(), "shm": b""}.get(fmt, b"\x00")


@pytest.mark.parametrize("fmt", list(_FIELDS))
@pytest.mark.parametrize("shape", [(6, 8, 3), (6, 8)], ids=["bgr8", "mono8"])
def test_every_field_of_every_format_decodes(fmt: str, shape: tuple[int, ...]) -> None:
    image = np.zeros(shape, np.uint8)
    sent = fused_frame(image, seq=4)
    sent = FusedFrame(sent.pair, image, 'odd "fuser" 100%', "%d", sent.t_fused_ns, sent.timings_ms)  # escaped once
    encoder = HeaderEncoder('cam "vis" %s')
    for seq in (7, 8):  # the second header comes from the cached template
        header = decode_header([b"fused/x", encoder.encode(sent, image, seq=seq, fmt=fmt, **_FIELDS[fmt]),
                                _payload(fmt, image)])
        assert set(header) == set(HEADER_FIELDS) | set(FORMAT_FIELDS.get(fmt, {}))
        assert header["seq"] == seq and header["format"] == fmt
    assert header["schema"] == (SCHEMA if fmt == "raw" else SCHEMA_2)
    assert (header["height"], header["width"], header["step"]) == (6, 8, 8 * (3 if len(shape) == 3 else 1))
    assert header["encoding"] == ("bgr8" if len(shape) == 3 else "mono8") and header["is_bigendian"] == 0
    assert (header["frame_id"], header["fuser"], header["fuser_version"]) == ('cam "vis" %s', 'odd "fuser" 100%', "%d")
    assert header["t_capture_clock"] == "epoch"  # HeaderEncoder's default
    assert (header["seq_ir"], header["seq_vis"]) == (104, 204) and header["t_fused_ns"] == sent.t_fused_ns
    assert (header["t_capture_ir_ns"], header["t_capture_vis_ns"]) == (sent.pair.ir.t_capture_ns,
                                                                         sent.pair.vis.t_capture_ns)
    assert sent.t_fused_ns <= header["t_publish_ns"]
    assert header["timings_ms"] == {"fuse": 1.25, "post": 0.5}
    assert {k: header[k] for k in _FIELDS[fmt]} == _FIELDS[fmt]


def test_a_new_geometry_gets_its_own_header_and_a_bad_image_none() -> None:
    encoder = HeaderEncoder("f")
    small, big = np.zeros((4, 6, 3), np.uint8), np.zeros((8, 10), np.uint8)
    for image in (small, big, small):
        header = json.loads(encoder.encode(fused_frame(image), image, seq=0))
        assert (header["height"], header["width"], header["step"]) == (image.shape[0], image.shape[1],
                                                                      image.strides[0])
    for bad in (np.zeros((4, 6, 3), np.float32), np.zeros((4, 6, 4), np.uint8)):
        with pytest.raises(ValueError, match="fused image must be"):
            encoder.encode(fused_frame(bad), bad, seq=0)


def test_a_new_fuser_version_gets_its_own_header() -> None:
    # weights swapped under the same fuser name: a header template kept from the old version would misname every frame
    encoder, image = HeaderEncoder("f"), np.zeros((4, 6, 3), np.uint8)
    for version in ("1.0", "2.0", "1.0"):
        sent = fused_frame(image)
        sent = FusedFrame(sent.pair, image, sent.fuser, version, sent.t_fused_ns, sent.timings_ms)
        assert json.loads(encoder.encode(sent, image, seq=0))["fuser_version"] == version


@pytest.mark.parametrize("channels", [3, 1], ids=["bgr8", "mono8"])
def test_a_raw_frame_decodes_to_its_pixels_without_the_row_padding(channels: int) -> None:
    sent = np.arange(4 * 5 * channels, dtype=np.uint8).reshape(4, 5, channels).squeeze()
    padded = np.zeros((4, 5 * channels + 3), np.uint8)  # step: 3 bytes more than a row, as a raw publisher may send
    padded[:, : 5 * channels] = sent.reshape(4, -1)
    header = json.loads(good_parts(sent)[1]) | {"encoding": "bgr8" if channels == 3 else "mono8",
                                                 "step": padded.shape[1]}
    got, image = decode_message([b"fused/x", json.dumps(header).encode(), padded.tobytes()])
    assert got["step"] == 5 * channels + 3 and image.shape == sent.shape and np.array_equal(image, sent)


def _stats(body: str) -> list[bytes]:
    return [b"stats/x", ('{"schema": "streamfuse.stats/1", ' + body + "}").encode()]


def test_a_telemetry_snapshot_decodes() -> None:
    stats = decode_stats(_stats('"t_ns": 1700000000000000000, "uptime_s": 2.5, "interval_s": 5.0, "rate_fps": 25, '
                                '"mean_rate_fps": 24.9, '
                                '"stages": {"fuse": {"median_ms": 1.0, "p99_ms": 2.0, "min_ms": 0.5, "n": 30}}, '
                                '"counters": {"published": 60, "dropped.ir": 0}, "fuser": {"name": "max"}'))
    assert stats["stages"]["fuse"]["p99_ms"] == 2.0 and stats["counters"]["published"] == 60


def test_a_stats_time_and_number_are_taken_at_their_bounds() -> None:
    # t_ns 0 .. 2^63-1 ns and any finite number, the ends taken (past them refused: test_hostile_stats_are_malformed)
    for t_ns in (0, 2**63 - 1):
        assert decode_stats(_stats(f'"t_ns": {t_ns}'))["t_ns"] == t_ns
    largest = sys.float_info.max
    assert decode_stats(_stats(f'"rate_fps": {largest!r}, "counters": {{"x": {-largest!r}}}'))["rate_fps"] == largest


def test_numpy_numbers_and_arrays_in_stats_go_out_as_json_numbers_and_lists() -> None:
    # what Publisher.send_stats promises for a snapshot a user fills from numpy (a histogram, a mean)
    body = {"hist": np.arange(3, dtype=np.int64), "grid": np.eye(2, dtype=np.uint8), "mean": np.float32(0.5)}
    assert json.loads(encode_json(body)) == {"hist": [0, 1, 2], "grid": [[1, 0], [0, 1]], "mean": 0.5}


def test_a_stats_value_json_cannot_hold_is_refused_not_sent_as_null() -> None:
    # a snapshot holding, say, a set or a datetime is the sender's mistake: it must say so, not publish null
    with pytest.raises(TypeError, match="set is not JSON serialisable"):
        encode_json({"stages": {"fuse"}})


@pytest.mark.parametrize(("body", "reason"), [
    ('"stages": [1, 2]', "stats field stages=[1, 2] is not an object of objects"),
    ('"stages": {"fuse": 3}', "is not an object of objects"),
    ('"stages": {"fuse": {"median_ms": "1 ms"}}', "stats field stages['fuse']['median_ms']='1 ms' is not a finite"),
    ('"stages": {"fuse": {"p99_ms": NaN}}', "stats field stages['fuse']['p99_ms']=nan is not a finite number"),
    ('"t_ns": "abc"', "stats field t_ns='abc' is not an int"),
    ('"t_ns": -1', "stats field t_ns=-1 is not an int"),
    ('"t_ns": 1e18', "stats field t_ns=1e+18 is not an int"),
    ('"t_ns": 9223372036854775808', "stats field t_ns=9223372036854775808 is not an int"),
    ('"counters": [3]', "stats field counters=[3] is not an object"),
    ('"counters": {"published": true}', "stats field counters['published']=True is not a finite number"),
    ('"rate_fps": Infinity', "stats field rate_fps=inf is not a finite number"),
    ('"uptime_s": 1e999', "stats field uptime_s=inf"),
    ('"mean_rate_fps": {}', "stats field mean_rate_fps={} is not a finite number"),
    ('"interval_s": "5 s"', "stats field interval_s='5 s' is not a finite number"),
    ('"fuser": {"steps": [NaN]}', "stats hold NaN or an infinite number"),
    ('"x": ' + "[" * 500 + "]" * 500, "stats are nested more than 8 deep"),
    ('"x": ' + "[" * 7 + "1" + "]" * 7, "stats are nested more than 8 deep"),  # the number is the 9th level
    ('"t_ns": true', "stats field t_ns=True is not an int"),
])
def test_hostile_stats_are_malformed(body: str, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_stats(_stats(body))
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_stats_nested_8_deep_decode() -> None:
    assert decode_stats(_stats('"x": ' + "[" * 6 + "1" + "]" * 6))["x"] == [[[[[[1]]]]]]


def test_stats_of_other_than_two_parts_are_malformed() -> None:
    for parts in (_stats('"t_ns": 1')[:1], [*_stats('"t_ns": 1'), b""]):
        with pytest.raises(MalformedMessage, match=f"expected 2 parts \\[topic, stats\\], got {len(parts)}"):
            decode_stats(parts)


@pytest.mark.parametrize(("timings", "reason"), [
    ({"fuse": -2e12}, "timings_ms['fuse']=-2000000000000.0 is not a number of ms within +-1e+12"),
    ({"fuse": True}, "timings_ms['fuse']=True is not a number of ms"),
], ids=["huge_negative", "boolean"])
def test_a_stage_timing_that_is_no_measurement_is_malformed(timings: dict, reason: str) -> None:
    topic, header, payload = good_parts(np.zeros((4, 6, 3), np.uint8))
    with pytest.raises(MalformedMessage, match=re.escape(reason)):
        decode_header([topic, json.dumps(json.loads(header) | {"timings_ms": timings}).encode(), payload])


@pytest.mark.parametrize("fmt", ["jpeg", "h264"])
def test_a_compressed_message_with_an_empty_payload_is_malformed(fmt: str) -> None:
    image = np.zeros((6, 8, 3), np.uint8)
    header = HeaderEncoder("f").encode(fused_frame(image), image, seq=0, fmt=fmt, **_FIELDS[fmt])
    with pytest.raises(MalformedMessage, match=f"^empty {fmt} payload$"):
        decode_header([b"fused/x", header, b""])


def test_the_capture_clock_is_said_and_is_empty_from_older_publishers() -> None:
    image = np.zeros((6, 8, 3), np.uint8)
    header = decode_header([b"fused/x", HeaderEncoder("f", "media").encode(fused_frame(image), image, seq=0),
                            image.tobytes()])
    assert header["t_capture_clock"] == "media"
    assert decode_header(good_parts(image))["t_capture_clock"] == ""  # a header made before the field


def test_a_header_of_exactly_the_size_bound_is_taken_and_one_byte_more_is_not() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    topic, header, payload = good_parts(image)
    padded = json.loads(header) | {"note": ""}
    fill = MAX_HEADER_BYTES - len(json.dumps(padded).encode())
    at_bound = json.dumps(padded | {"note": "x" * fill}).encode()
    assert len(at_bound) == MAX_HEADER_BYTES and decode_header([topic, at_bound, payload])["note"] == "x" * fill
    with pytest.raises(MalformedMessage, match=f"header is {MAX_HEADER_BYTES + 1} bytes, more than {MAX_HEADER_BYTES}"):
        decode_header([topic, json.dumps(padded | {"note": "x" * (fill + 1)}).encode(), payload])


def test_a_raw_payload_one_byte_longer_than_its_header_says_is_refused() -> None:
    # Without the check, a consumer would show (or record) a frame whose header and pixels disagree: a publisher with a
    # stride bug or a forged message passes as valid, its surplus bytes silently ignored.
    image = np.zeros((4, 6, 3), np.uint8)
    topic, header, payload = good_parts(image)
    with pytest.raises(MalformedMessage, match=r"image payload is 73 bytes, header says 4 x 18 = 72"):
        decode_header([topic, header, payload + b"\x00"])


def test_a_shared_memory_descriptor_with_an_odd_generation_is_refused() -> None:
    # An odd shm_gen marks a slot being written: a consumer that accepted one would map and show half-written pixels
    # (torn frames) instead of skipping the message as malformed.
    image = np.zeros((6, 8, 3), np.uint8)
    encoder = HeaderEncoder("f")
    good = {**_FIELDS["shm"], "shm_gen": 8}
    assert decode_header([b"shm/fused/x", encoder.encode(fused_frame(image), image, seq=0, fmt="shm", **good),
                          b""])["shm_gen"] == 8
    odd = {**good, "shm_gen": 9}
    with pytest.raises(MalformedMessage, match="shm_gen 9 is odd"):
        decode_header([b"shm/fused/x", encoder.encode(fused_frame(image), image, seq=0, fmt="shm", **odd), b""])


@pytest.mark.parametrize(("parts", "reason"), [
    (with_header()[:2], "expected 3 parts [topic, header, image], got 2"),
    ([*with_header(), b""], "expected 3 parts [topic, header, image], got 4"),  # a part a consumer would never read
    (with_header(format="jpeg"), f"format 'jpeg' under schema {SCHEMA} (only raw)"),  # what a /1 consumer misreads
    (with_header(height=0)[:2] + [b""], "header field height=0 is out of range 1..65535"),  # no image to make of it
    (with_header(is_bigendian=True), "header field is_bigendian=True is missing or not int"),  # JSON true is no int
], ids=["2_parts", "4_parts", "schema_1_jpeg", "height_0", "bool_for_int"])
def test_a_frame_message_a_consumer_would_misread_is_malformed(parts: list[bytes], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=f"^{re.escape(reason)}"):
        decode_header(parts)


_GONE = object()  # a field left out


def _shm_message(**changes: object) -> list[bytes]:
    """A 6x8 bgr8 shared-memory descriptor as the publisher encodes it, with fields changed (``_GONE``: left out)."""
    image = np.zeros((6, 8, 3), np.uint8)
    header = json.loads(HeaderEncoder("f").encode(fused_frame(image), image, seq=0, fmt="shm", **_FIELDS["shm"]))
    header = {k: v for k, v in {**header, **changes}.items() if v is not _GONE}
    return [b"shm/fused/x", json.dumps(header).encode(), b""]


_BOUNDS = {"seq": (0, 2**63 - 1), "seq_ir": (0, 2**63 - 1), "t_publish_ns": (-(2**63), 2**63 - 1),
           "t_capture_ir_ns": (-(2**63), 2**63 - 1), "is_bigendian": (0, 1), "height": (1, 65535),
           "shm_slot": (0, MAX_SLOTS - 1), "shm_gen": (2, 2**63 - 2)}


@pytest.mark.parametrize("pool", ["../dev/shm/streamfuse_pub_12_0123abcd", "streamfuse_pub_12_0123ABCD",
                                  "other_pool", "streamfuse_pub_12_0123abcd/x"])
def test_a_shared_memory_descriptor_naming_no_publisher_pool_is_refused(pool: str) -> None:
    # a consumer maps the pool named: a forged name must not make it open another file of /dev/shm (or beyond)
    with pytest.raises(MalformedMessage, match=f"^shm_pool {re.escape(repr(pool))} is not a publisher pool name$"):
        decode_header(_shm_message(shm_pool=pool))


@pytest.mark.parametrize("key", list(_BOUNDS))
def test_an_int_field_is_taken_at_its_bounds_and_refused_by_name_past_them_or_of_another_type(key: str) -> None:
    lo, hi = _BOUNDS[key]
    for value in (lo, hi):
        assert decode_header(_shm_message(**{key: value}))[key] == value
    for value in (lo - 1, hi + 1):
        with pytest.raises(MalformedMessage, match=f"^header field {key}={value} is out of range {lo}..{hi}$"):
            decode_header(_shm_message(**{key: value}))
    for value, shown in ((True, "True"), (float(lo), repr(float(lo))), (str(lo), repr(str(lo))), (_GONE, "None")):
        with pytest.raises(MalformedMessage, match=f"^header field {key}={re.escape(shown)} is missing or not int$"):
            decode_header(_shm_message(**{key: value}))


@pytest.mark.parametrize("key", ["frame_id", "fuser", "fuser_version", "t_capture_clock"])
def test_a_text_field_takes_any_unicode_and_is_refused_by_name_when_no_text(key: str) -> None:
    assert decode_header(_shm_message(**{key: "é 日本 \U0001f525"}))[key] == "é 日本 \U0001f525"
    with pytest.raises(MalformedMessage, match=f"^header field {key}='x\\\\ud800' is not Unicode text"):
        decode_header(_shm_message(**{key: "x\ud800"}))
    for value in (5, None, ["a"]):
        with pytest.raises(MalformedMessage, match=f"^header field {key}=.* is missing or not str$"):
            decode_header(_shm_message(**{key: value}))


def test_stage_timings_are_taken_to_their_bound_and_refused_by_stage_past_it() -> None:
    taken = {"fuse": 1, "post": 2.5, "up": 1e12, "down": -1e12}
    assert decode_header(_shm_message(timings_ms=taken))["timings_ms"] == taken
    for bad, shown in ((10**13, "10000000000000"), (float("nan"), "nan"), (float("inf"), "inf"), ("1", "'1'"),
                       (None, "None"), (False, "False")):
        with pytest.raises(MalformedMessage, match=f"^header field timings_ms\\['post'\\]={shown} is not a number"):
            decode_header(_shm_message(timings_ms={"fuse": 1.0, "post": bad}))
    with pytest.raises(MalformedMessage, match="^header field timings_ms=\\[\\] is missing or not dict$"):
        decode_header(_shm_message(timings_ms=[]))


def test_a_header_is_read_as_json_reads_it_and_refused_when_it_is_no_json_object() -> None:
    topic, header, payload = _shm_message()
    assert decode_header([topic, b" \n" + header + b" \r\n\t", payload])["seq"] == 0
    for raw, reason in ((header + b"x", "is not UTF-8 JSON (Extra data"), (b"{" + header, "is not UTF-8 JSON"),
                        (header.replace(b'"f"', b'"\xff"'), "is not UTF-8 JSON ('utf-8' codec can't decode"),
                        (b"[" + header + b"]", "is JSON list, expected an object"), (b"{}\x00", "is not UTF-8 JSON")):
        with pytest.raises(MalformedMessage, match=f"^header {re.escape(reason)}"):
            decode_header([topic, raw, payload])


def test_a_long_value_in_an_error_line_is_cut_as_a_config_error_cuts_it() -> None:
    # the wire and the consumer's topic checks each kept a copy of the cut, shorter than the config errors' one
    forged = "streamfuse.fused/" + "9" * 60_000
    with pytest.raises(MalformedMessage) as info:
        decode_message(with_header(schema=forged))
    assert str(info.value).startswith(f"unsupported schema {checks.shown(forged)}; expected ")
    topic = b"fused/" + b"\xff" * 200
    with pytest.raises(ValueError) as info:
        consumer_topic(topic)
    assert str(info.value) == f"topic={checks.shown(topic)} is not UTF-8" and len(str(info.value)) < 120


def test_an_h264_frame_that_is_a_keyframe_or_not_decodes_and_no_other_value_does() -> None:
    # most h264 frames are inter frames (keyframe 0): refused, a consumer would see one frame a GOP
    image = np.zeros((6, 8, 3), np.uint8)
    for keyframe in (0, 1):
        header = HeaderEncoder("f").encode(fused_frame(image), image, seq=0, fmt="h264", keyframe=keyframe)
        assert decode_header([b"fused/x", header, b"\x00"])["keyframe"] == keyframe
    for bad in (-1, 2):
        forged = header.replace(b'"keyframe":1', b'"keyframe":%d' % bad)
        with pytest.raises(MalformedMessage, match=f"^header field keyframe={bad} is out of range 0..1$"):
            decode_header([b"fused/x", forged, b"\x00"])


def test_a_grey_frame_one_pixel_wide_decodes() -> None:
    # the smallest geometry on the wire: width 1, step 1
    image = np.arange(5, dtype=np.uint8).reshape(5, 1)
    header, decoded = decode_message([b"fused/x", HeaderEncoder("f").encode(fused_frame(image), image, seq=0),
                                      image.tobytes()])
    assert (header["width"], header["step"]) == (1, 1)
    np.testing.assert_array_equal(decoded, image)


def test_stage_timings_go_out_rounded_to_the_microsecond() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    sent = fused_frame(image)
    sent = FusedFrame(sent.pair, image, sent.fuser, sent.fuser_version, sent.t_fused_ns,
                      {"fuse": 1.23456, "post": np.float32(0.0004)})
    header = decode_header([b"fused/x", HeaderEncoder("f").encode(sent, image, seq=0), image.tobytes()])
    assert header["timings_ms"] == {"fuse": 1.235, "post": 0.0}
