"""ROS 2 image messages, as an independent CDR writer (mcap_ros2) encodes them: every raw encoding, the compressed
forms and the errors."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from helpers_ros import (COMPRESSED, IMAGE, ROS1_COMPRESSED, ROS1_IMAGE, STAMP_NS, compressed, image_message, raw,
                         ros1)

from streamfuse.capture.ros_images import ENCODINGS, Unsupported, decode


@pytest.fixture
def bgr() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, (4, 6, 3), np.uint8)


@pytest.mark.parametrize("encoding, channels", [("bgr8", "bgr"), ("8UC3", "bgr"), ("rgb8", "rgb"), ("bgra8", "bgra"),
                                                ("8UC4", "bgra"), ("rgba8", "rgba"), ("mono8", "grey"),
                                                ("8UC1", "grey")])
def test_every_8_bit_encoding_gives_bgr_or_grey(bgr, encoding, channels):
    alpha = np.full(bgr.shape[:2] + (1,), 9, np.uint8)
    pixels = {"bgr": bgr, "rgb": bgr[..., ::-1], "bgra": np.dstack([bgr, alpha]),
              "rgba": np.dstack([bgr[..., ::-1], alpha]), "grey": bgr[..., 1]}[channels]
    stamp, image = decode(IMAGE, raw(encoding, np.ascontiguousarray(pixels)))
    assert stamp == STAMP_NS
    np.testing.assert_array_equal(image, bgr[..., 1] if channels == "grey" else bgr)


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "bgr16", "rgb16"])
def test_16_bit_encodings_keep_their_counts_in_either_byte_order(encoding, big):
    counts = np.random.default_rng(5).integers(0, 65536, (3, 5, 3), np.uint16)
    pixels = {"bgr16": counts, "rgb16": counts[..., ::-1]}.get(encoding, counts[..., 0])
    _, image = decode(IMAGE, raw(encoding, np.ascontiguousarray(pixels), big=big))
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, counts if encoding in ("bgr16", "rgb16") else counts[..., 0])


@pytest.mark.parametrize("encoding, order", [("yuv422", "UYVY"), ("uyvy", "UYVY"), ("yuv422_yuy2", "YUYV"),
                                             ("yuyv", "YUYV")])
def test_packed_yuv_encodings_read_their_byte_order(encoding, order):
    # two grey pixels, 50 and 200 (no chroma): UYVY holds U Y0 V Y1, YUYV holds Y0 U Y1 V
    packed = [128, 50, 128, 200] if order == "UYVY" else [50, 128, 200, 128]
    _, image = decode(IMAGE, raw(encoding, np.array([packed], np.uint8).reshape(1, 2, 2)))
    assert image.shape == (1, 2, 3)  # video-range luma (16..235) stretched to 0..255, as BT.601 says
    assert abs(int(image[0, 0, 1]) - (50 - 16) * 255 / 219) < 1.5 and abs(int(image[0, 1, 1]) - 214) < 1.5


@pytest.mark.parametrize("encoding", ["nv21", "nv24"])
def test_semi_planar_yuv_gives_the_colours_opencv_gives_planar_yuv(bgr, encoding):
    h, w = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # Y, then the U and V planes at half size
    y, u, v = i420[:h], i420[h:h + h // 4].reshape(h // 2, w // 2), i420[h + h // 4:].reshape(h // 2, w // 2)
    if encoding == "nv21":
        chroma = np.stack([v, u], axis=-1).reshape(h // 2, w)
    else:  # full-size chroma, U first: each 2x2 block alike, so it averages back to the planes above
        chroma = np.stack([u, v], axis=-1).repeat(2, axis=0).repeat(2, axis=1).reshape(h, 2 * w)
    planes = np.zeros((h + chroma.shape[0], 2 * w + 6 if encoding == "nv24" else w + 6), np.uint8)
    planes[:h, :w], planes[h:, :chroma.shape[1]] = y, chroma
    step = w + 6 if encoding == "nv21" else w + 3  # rows padded: nv24's chroma rows are 2 x step
    data = np.concatenate([planes[:h, :step].ravel(), planes[h:, :(step if encoding == "nv21" else 2 * step)].ravel()])
    msg = image_message(encoding, h, w, step, data.tobytes())
    _, image = decode(IMAGE, msg)
    assert np.array_equal(image, cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420))
    with pytest.raises(ValueError, match=f"a {w}x{h} {encoding} image needs an even size"):
        decode(IMAGE, image_message(encoding, h, w, step, data[:h * step].tobytes()))  # its Y plane alone


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("colour", ["red", "blue"])
def test_bayer_patterns_give_the_colour_the_sensor_saw(pattern, colour, bits):
    # a mosaic of a flat red (or blue) scene: v where the pattern has a red (blue) site, 0 elsewhere
    site, v = {"red": "r", "blue": "b"}[colour], 200 if bits == 8 else 51_234
    mosaic = np.zeros((8, 8), np.uint8 if bits == 8 else np.uint16)
    for i, letter in enumerate(pattern):  # the pattern's 2x2 cell, row by row
        if letter == site:
            mosaic[i // 2::2, i % 2::2] = v
    _, image = decode(IMAGE, raw(f"bayer_{pattern}{bits}", mosaic, big=bits == 16))
    assert image.dtype == mosaic.dtype
    b, g, r = (int(c) for c in image[3:5, 3:5].reshape(-1, 3).mean(0))
    assert (r, b) == ((v, 0) if colour == "red" else (0, v)) and g == 0, (b, g, r)


@pytest.mark.parametrize("big", [False, True])
def test_32fc1_keeps_a_thermal_cameras_temperatures(big):
    temps = np.random.default_rng(8).uniform(-20.0, 60.0, (3, 5)).astype(np.float32)
    temps[1, 2] = np.nan  # a pixel without a reading stays one (streamfuse.bitdepth decides what it becomes)
    _, image = decode(IMAGE, raw("32FC1", temps, big=big))
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, temps)


def test_compressed_jpeg_png_and_compressed_depth_decode():
    yy, xx = np.mgrid[0:16, 0:16]
    smooth = np.dstack([xx * 12, yy * 12, 255 - xx * 8]).astype(np.uint8)  # blue to red across, green down
    ok, jpeg = cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_QUALITY, 100])
    _, image = decode(COMPRESSED, compressed("rgb8; jpeg compressed bgr8", jpeg.tobytes()))
    assert image.shape == smooth.shape and np.abs(image.astype(int) - smooth).mean() < 3
    counts = np.random.default_rng(6).integers(0, 65536, (4, 6), np.uint16)
    ok, png = cv2.imencode(".png", counts)
    stamp, image = decode(COMPRESSED, compressed("mono16; png compressed", png.tobytes()))
    assert stamp == STAMP_NS and image.dtype == np.uint16
    np.testing.assert_array_equal(image, counts)
    depth_header = struct.pack("<iff", 0, 0.0, 0.0)  # image_transport's compressedDepth: format, quantisation
    _, image = decode(COMPRESSED, compressed("16UC1; compressedDepth png", depth_header + png.tobytes()))
    np.testing.assert_array_equal(image, counts)


def test_what_is_not_an_image_we_read_is_one_line(bgr):
    with pytest.raises(Unsupported, match="image encoding '64FC1' is not supported; supported: mono8"):
        decode(IMAGE, raw("64FC1", bgr[..., 0].astype(np.float64)))
    with pytest.raises(Unsupported, match="messages of sensor_msgs/msg/Imu are not images"):
        decode("sensor_msgs/msg/Imu", b"\x00\x01\x00\x00")
    with pytest.raises(ValueError, match="data is not an image OpenCV decodes"):
        decode(COMPRESSED, compressed("jpeg", b"not a jpeg"))
    whole = raw("bgr8", bgr)
    with pytest.raises(ValueError, match="cut short|holds .* bytes"):
        decode(IMAGE, whole[:len(whole) // 2])
    with pytest.raises(ValueError, match="not a plain CDR message"):
        decode(IMAGE, b"\x00\x03\x00\x00" + whole[4:])
    with pytest.raises(ValueError, match=r"^a sensor_msgs/msg/Image message cut short \(20 bytes\)$"):
        decode(IMAGE, whole[:20])  # inside its header
    with pytest.raises(Unsupported, match="messages encoded as 'json' are not ROS messages"):
        decode(IMAGE, whole, "json")
    assert len(ENCODINGS) == 27


def test_ros1_messages_decode_as_ros2_ones():
    counts = np.random.default_rng(7).integers(0, 65536, (3, 4), np.uint16)
    msg = ros1(ROS1_IMAGE, height=3, width=4, encoding="16UC1", is_bigendian=0, step=8, data=counts.tobytes())
    stamp, image = decode(ROS1_IMAGE, msg, "ros1")
    assert stamp == STAMP_NS
    np.testing.assert_array_equal(image, counts)
    ok, png = cv2.imencode(".png", counts)
    _, image = decode(ROS1_COMPRESSED, ros1(ROS1_COMPRESSED, format="png", data=png.tobytes()), "ros1")
    np.testing.assert_array_equal(image, counts)
    with pytest.raises(Unsupported, match="encoded as 'protobuf' are not ROS messages"):
        decode(IMAGE, b"", "protobuf")


def _cdr(counts: np.ndarray, *, big: bool) -> bytes:
    """A mono16 sensor_msgs/Image written by hand in CDR of either byte order (its pixels too), as a DDS on a
    big-endian machine sends it: every field aligned to its size from the end of the 4-byte encapsulation header."""
    order, out = ">" if big else "<", bytearray(b"\x00\x00\x00\x00" if big else b"\x00\x01\x00\x00")

    def put(fmt: str, *values) -> None:
        out.extend(bytes(-(len(out) - 4) % struct.calcsize(fmt[0])))
        out.extend(struct.pack(order + fmt, *values))

    def text(value: bytes) -> None:
        put("I", len(value) + 1)
        out.extend(value + b"\x00")

    put("iI", STAMP_NS // 10**9, STAMP_NS % 10**9)
    text(b"camera_optical_frame")
    put("II", *counts.shape)
    text(b"mono16")
    put("B", int(big))
    put("I", 2 * counts.shape[1])
    put("I", counts.nbytes)
    out.extend(counts.astype(counts.dtype.newbyteorder(order)).tobytes())
    return bytes(out)


def test_a_big_endian_cdr_message_reads_as_its_little_endian_twin():
    counts = np.random.default_rng(10).integers(0, 65536, (3, 4), np.uint16)
    assert _cdr(counts, big=False) == raw("mono16", counts, pad=0)  # the hand-written layout is mcap_ros2's
    stamp, image = decode(IMAGE, _cdr(counts, big=True))
    assert stamp == STAMP_NS and image.dtype == np.uint16
    np.testing.assert_array_equal(image, counts)


def test_rows_closer_than_the_pixels_need_are_one_line_not_overlapping_rows():
    # a 4-pixel-wide mono8 image whose step says 2 bytes: its rows would read each other's pixels
    with pytest.raises(ValueError, match="a 4x2 mono8 image needs rows of 4 bytes; it has step 2 and 8 bytes"):
        decode(IMAGE, image_message("mono8", 2, 4, 2, bytes(range(8))))


@pytest.mark.parametrize("encoding", ["nv21", "nv24"])
def test_semi_planar_yuv_of_an_odd_size_is_one_line(encoding):
    data = bytes(4 * 3 * 3)  # enough bytes for either layout: the size is what is wrong
    with pytest.raises(ValueError, match=f"a 4x3 {encoding} image needs an even size"):
        decode(IMAGE, image_message(encoding, 3, 4, 4, data))


def test_the_last_row_needs_only_its_pixels_not_the_padding_of_a_whole_step():
    # rows 4 bytes apart, 2 pixels each: 4 + 2 bytes hold both rows, the last one without its padding
    _, image = decode(IMAGE, image_message("mono8", 2, 2, 4, bytes([1, 2, 0, 0, 3, 4])))
    np.testing.assert_array_equal(image, [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="a 2x2 mono8 image needs rows of 2 bytes; it has step 4 and 5 bytes"):
        decode(IMAGE, image_message("mono8", 2, 2, 4, bytes([1, 2, 0, 0, 3])))


def test_a_png_with_an_alpha_channel_keeps_its_colours(bgr):
    alpha = np.full(bgr.shape[:2] + (1,), 200, np.uint8)
    ok, png = cv2.imencode(".png", np.dstack([bgr, alpha]))  # OpenCV writes BGRA; a PNG holds RGBA
    _, image = decode(COMPRESSED, compressed("bgra8; png compressed", png.tobytes()))
    np.testing.assert_array_equal(image, bgr)


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2"])
def test_packed_yuv_of_an_odd_width_is_one_line(encoding):
    """Each two pixels share their chroma: OpenCV's conversion asserted on an odd width, a traceback."""
    with pytest.raises(ValueError, match=f"^a 3x2 {encoding} image needs an even width$"):
        decode(IMAGE, image_message(encoding, 2, 3, 6, bytes(12)))


@pytest.mark.parametrize("encoding", ["rgb8", "bgra8", "yuv422", "bayer_rggb8", "nv21"])
def test_an_image_without_pixels_is_empty_whatever_its_encoding_not_an_opencv_assertion(encoding):
    """A 4x0 image of an encoding OpenCV converts reached its assertion (a traceback); empty, the recording's reader
    names it in one line as it does an empty mono8 image."""
    _, image = decode(IMAGE, image_message(encoding, 0, 4, 16, b""))
    assert image.size == 0
