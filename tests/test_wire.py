"""The wire format's header encoder: every field of every format, as a consumer decodes it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_zmq import fused_frame

from streamfuse.frames import FusedFrame
from streamfuse.wire import FORMAT_FIELDS, HEADER_FIELDS, SCHEMA, SCHEMA_2, HeaderEncoder, decode_header

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
