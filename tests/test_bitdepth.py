"""One bit-depth rule for every reader: 8-bit images untouched, 16-bit visible by its top 8 bits, 16-bit IR stretched
by its range (a still's own; a sequence holds a range while its frames fit it and takes the range of the first frame
that does not), float IR temperatures as counts, other pixel types refused in one line; evaluation, training and the
folder and file sources read the same 16-bit image alike."""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers_video import write_grey16
from helpers_zmq import wait_until

from streamfuse.bitdepth import To8Bit, deep_grey, read_8bit, read_image
from streamfuse.capture.sources import SourceConfig, SourceError, open_source
from streamfuse.eval_pairs import read_pair
from streamfuse.postprocess import vis_luma
from streamfuse.train.data import load_pairs


def _counts(rng: np.random.Generator, lo: int = 7000, hi: int = 9000) -> np.ndarray:
    """Radiometric IR counts (40 x 56) spanning exactly lo..hi, also without the outer 0.1% of the pixels (2 of
    2240 at each end): near black in their top 8 bits."""
    img = rng.integers(lo, hi + 1, (40, 56)).astype(np.uint16)
    img[0, :3], img[-1, -3:] = lo, hi
    return img


def _stretch(img: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """lo..hi -> 0..255; the scale computed first, as the rule's table does, so that a count half-way between two
    grey levels rounds the same way."""
    return np.clip(np.rint((img.astype(np.float64) - lo) * (255 / (hi - lo))), 0, 255).astype(np.uint8)


def _robust(img: np.ndarray) -> tuple[int, int]:
    """The range the rule takes of ``img``, by sorting: its k-th lowest and k-th highest count, k = 0.1% of the
    pixels."""
    k, ranked = img.size // 1000, np.sort(img, axis=None)
    return int(ranked[k]), int(ranked[-k - 1])


def _noisy(rng: np.random.Generator, scene: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` frames of a still ``scene``, each with its own sensor noise of up to 4 counts."""
    return [(scene + rng.integers(-4, 5, scene.shape)).astype(np.uint16) for _ in range(n)]


def _frames(cfg: SourceConfig) -> list[np.ndarray]:
    with open_source("ir", cfg) as src:
        return [frame.image for frame in iter(src.read, None)]


def test_8_bit_images_pass_unchanged(rng):
    img = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert To8Bit(ir=True)(img) is img and To8Bit(ir=False)(img) is img


def test_16_bit_visible_keeps_its_top_8_bits(rng):
    img = rng.integers(0, 65536, (8, 9, 3), dtype=np.uint16)
    np.testing.assert_array_equal(To8Bit(ir=False)(img), (img >> 8).astype(np.uint8))


def test_16_bit_ir_is_stretched_by_its_range(rng):
    img = _counts(rng)
    depth = To8Bit(ir=True)
    out = depth(img)
    assert out.dtype == np.uint8 and (out.min(), out.max()) == (0, 255)
    np.testing.assert_array_equal(out, _stretch(img, 7000, 9000))
    assert (img >> 8).max() == 35  # what the top 8 bits would have shown


def test_dead_and_hot_pixels_do_not_take_the_ir_scale(rng):
    """Two pixels stuck at 65535 and one at 0 (a dead and hot pixel): the stretch still spans the scene's counts,
    where min/max would put the whole scene in 8 grey levels."""
    img = _counts(rng)
    broken = img.copy()
    broken[5, 5] = broken[9, 20] = 65535
    broken[30, 40] = 0
    out = To8Bit(ir=True)(broken)
    np.testing.assert_array_equal(out, _stretch(broken, 7000, 9000))
    assert out[(img > 8000) & (broken == img)].min() > 127 and (out[5, 5], out[30, 40]) == (255, 0)
    few = np.full((40, 56), 7000, np.uint16)  # a flat scene with two warm pixels still gets a scale
    few[3, 3] = few[4, 4] = 7100
    assert To8Bit(ir=True)(few)[3, 3] == 255


def test_a_steady_scene_keeps_one_mapping_after_a_narrow_first_range(rng):
    """A lens cap at start-up (a few counts wide), then a real scene with sensor noise: the first real frame takes
    the scene's range and uses 0..255, and every later frame is mapped by that same range (no flicker), also after a
    shutter frame outside it (a few counts of noise, which it would otherwise stretch over 0..255 for a frame)."""
    depth = To8Bit(ir=True)
    assert not depth(np.full((40, 56), 8000, np.uint16)).any()  # flat: no range yet, black
    cap = (8000 + rng.integers(0, 4, (40, 56))).astype(np.uint16)
    np.testing.assert_array_equal(depth(cap), _stretch(cap, 8000, 8003))
    frames = _noisy(rng, _counts(rng, 6000, 12000), 8)
    frames.insert(4, (13000 + rng.integers(0, 9, (40, 56))).astype(np.uint16))  # a shutter (NUC) frame
    held = _robust(frames[0])
    assert any(_robust(img) != held for img in frames[1:])  # a range per frame would flicker
    for img in frames:
        np.testing.assert_array_equal(depth(img), _stretch(img, *held))
    first = depth(frames[0])
    assert np.count_nonzero((first == 0) | (first == 255)) < 0.01 * first.size and np.ptp(first) == 255


def _with(scene: np.ndarray, patch: tuple[slice, slice], counts: tuple[int, int]) -> np.ndarray:
    """``scene`` with an object whose temperatures rise evenly over ``counts`` in ``patch``."""
    img = scene.copy()
    img[patch] = np.linspace(*counts, img[patch].size).reshape(img[patch].shape)
    return img


@pytest.mark.parametrize("patch, counts", [
    ((slice(10, 20), slice(10, 20)), (9500, 12000)),  # 4.5% of the pixels clipped, the frame's range 2.5x the held one
    ((slice(10, 11), slice(10, 20)), (30000, 40000)),  # 0.4% clipped, but the frame's range 10x the held one
])
def test_a_hot_object_entering_widens_the_range(rng, patch, counts):
    """A small object a little warmer than the scene is clipped white (the range holds); a hot one takes the frame's
    range, so its temperatures are told apart; when it leaves, that range is held."""
    scene = _counts(rng)
    depth = To8Bit(ir=True)
    depth(scene)
    warm = _with(scene, (slice(10, 11), slice(10, 20)), (9500, 12000))  # 0.4% clipped, range 2.5x the held one
    np.testing.assert_array_equal(depth(warm), _stretch(warm, 7000, 9000))
    hot = _with(scene, patch, counts)
    out = depth(hot)
    np.testing.assert_array_equal(out, _stretch(hot, *_robust(hot)))
    assert np.ptp(out[patch]) > 50
    np.testing.assert_array_equal(depth(scene), _stretch(scene, *_robust(hot)))


@pytest.mark.parametrize("patch, counts", [
    ((slice(10, 20), slice(10, 20)), (9500, 12000)),  # the scene alone spans 40% of the range it took
    ((slice(10, 11), slice(10, 20)), (30000, 40000)),  # 6%
])
def test_the_range_narrows_once_a_hot_object_has_left_for_30_frames(rng, patch, counts):
    """A hot object widens the range; 29 frames of the scene alone, or a shutter frame (a few counts), leave it held;
    the 30th frame in a row less than half as wide as it takes its own range (the scene's contrast back)."""
    depth = To8Bit(ir=True)
    scene = _noisy(rng, _counts(rng), 31)
    hot = _with(scene[0], patch, counts)
    depth(hot)
    shutter = (8000 + rng.integers(0, 4, (40, 56))).astype(np.uint16)
    for img in [*scene[:10], shutter, hot, *scene[:29]]:  # the hot object back once: a new row of 30 begins after it
        np.testing.assert_array_equal(depth(img), _stretch(img, *_robust(hot)))
    np.testing.assert_array_equal(depth(scene[29]), _stretch(scene[29], *_robust(scene[29])))
    np.testing.assert_array_equal(depth(scene[30]), _stretch(scene[30], *_robust(scene[29])))


def test_pixels_at_the_ends_of_the_held_range_are_inside_it(rng):
    # without it, a scene whose coldest 5% sit exactly at the held low end (a sky at the sensor's floor) counts them
    # as clipped and re-scales the sequence: the level jumps although no pixel left the range
    depth = To8Bit(ir=True)
    depth(_counts(rng))  # holds 7000..9000
    img = _counts(rng, 7000, 8800)
    img[:2] = 7000  # 5% of the pixels at the held range's low end
    np.testing.assert_array_equal(depth(img), _stretch(img, 7000, 9000))
    img = _counts(rng, 7200, 9000)
    img[:2] = 9000  # and at its high end
    np.testing.assert_array_equal(depth(img), _stretch(img, 7000, 9000))


def test_frames_exactly_half_as_wide_do_not_narrow_the_range(rng):
    # the rule narrows after 30 frames "less than half as wide": half as wide is not less, and the range holds
    depth = To8Bit(ir=True)
    depth(_counts(rng))  # holds 7000..9000
    for _ in range(31):
        img = _counts(rng, 7500, 8500)
        assert _robust(img) == (7500, 8500)
        np.testing.assert_array_equal(depth(img), _stretch(img, 7000, 9000))


def _scene_of_2000(rng: np.random.Generator) -> np.ndarray:
    """2000 pixels (1% is 20 of them) spanning 7000..9000."""
    img = _counts(rng)[:, :50]
    img[-1, -3:] = 9000
    return img


def test_frames_exactly_4_times_as_wide_or_exactly_1_percent_outside_keep_the_range(rng):
    # the rule re-scales at once for "more than 1%" of the pixels outside the held range, or a range "more than 4
    # times as wide": a frame at either bound is held, its warm patch clipped white
    depth = To8Bit(ir=True)
    depth(_scene_of_2000(rng))  # holds 7000..9000
    wide, clipped = _scene_of_2000(rng), _scene_of_2000(rng)
    wide[10, 10:20] = 15000  # 0.5% of the pixels; the frame's range 7000..15000, exactly 4x the held one
    clipped[10:12, 10:20] = 9001 + np.arange(20, dtype=np.uint16).reshape(2, 10)  # exactly 1% just outside it
    for img in (wide, clipped):
        np.testing.assert_array_equal(depth(img), _stretch(img, 7000, 9000))


@pytest.mark.parametrize("side", ["above", "below"])
def test_a_frame_just_over_1_percent_outside_the_range_takes_its_own_at_once(rng, side):
    # the other side of the bound: 21 of 2000 pixels just above the held range (a warm patch that would otherwise be
    # clipped white), or just below it, re-scale the sequence on that frame
    depth = To8Bit(ir=True)
    depth(_scene_of_2000(rng))  # holds 7000..9000
    clipped = _scene_of_2000(rng)
    if side == "above":
        clipped[10:12, 10:20] = 9001 + np.arange(20, dtype=np.uint16).reshape(2, 10)
        clipped[12, 10] = 9021
    else:
        clipped[10:12, 10:20], clipped[12, 10] = 6999, 6999
    lo, hi = _robust(clipped)
    assert (lo, hi) != (7000, 9000)
    np.testing.assert_array_equal(depth(clipped), _stretch(clipped, lo, hi))


def test_a_frame_just_over_4_times_as_wide_takes_its_own_range_at_once(rng):
    depth = To8Bit(ir=True)
    depth(_scene_of_2000(rng))  # holds 7000..9000
    wide = _scene_of_2000(rng)
    wide[10, 10:20] = 15001  # 0.5% of the pixels; the frame's range 7000..15001, just over 4x the held one
    assert _robust(wide) == (7000, 15001)
    np.testing.assert_array_equal(depth(wide), _stretch(wide, 7000, 15001))


def test_an_alpha_channel_takes_no_part_in_the_ir_range(rng):
    # without it, a 16-bit BGRA IR image's opaque alpha (65535) is a quarter of the counts: the range runs to 65535
    # and the scene is crushed into a few grey levels
    img = _counts(rng)
    bgra = np.dstack([img, img, img, np.full_like(img, 65535)])
    out = To8Bit(ir=True)(bgra)
    np.testing.assert_array_equal(out[..., :3], np.dstack([_stretch(img, 7000, 9000)] * 3))


def test_float_ir_temperatures_take_the_ir_rule_as_counts_of_a_fiftieth_of_a_degree(tmp_path, rng):
    """A radiometric camera's float temperatures: degrees as 1/50-degree counts from -273.15 (so kelvins too), the
    same 8-bit image as those counts give; a pixel without a reading as the frame's coldest; read from a float TIFF
    as any IR still."""
    counts = _counts(rng, 14000, 17000)  # 6.85 .. 66.85 degrees C
    celsius = (counts / 50 - 273.15).astype(np.float32)
    expected = To8Bit(ir=True)(counts)
    np.testing.assert_array_equal(To8Bit(ir=True)(celsius), expected)
    kelvin = To8Bit(ir=True)(celsius + np.float32(273.15))  # the same range 13657.5 counts up: rounding moves 1 level
    assert np.abs(kelvin.astype(int) - expected).max() <= 1
    celsius[5:8, 5:8] = np.nan
    blind = To8Bit(ir=True)(celsius)
    assert (blind[5:8, 5:8] == 0).all() and (blind[8:] == expected[8:]).all()
    saturated = celsius.copy()
    saturated[5:8, 5:8] = np.inf  # a reading over the camera's range: the hottest, not the coldest as NaN
    hot = To8Bit(ir=True)(saturated)
    assert (hot[5:8, 5:8] == 255).all() and (hot[8:] == expected[8:]).all()  # the scene keeps its scale
    path = tmp_path / "thermal.tiff"
    assert cv2.imwrite(str(path), celsius)
    np.testing.assert_array_equal(read_8bit(path, To8Bit(ir=True)), blind)


def test_other_pixel_types_are_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^float32 pixels \(8- and 16-bit images are read, and float IR "):
        To8Bit(ir=False)(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"^int32 pixels \(8- and 16-bit images are read"):
        To8Bit(ir=True)(np.zeros((4, 4), np.int32))
    path = tmp_path / "t.tiff"
    assert cv2.imwrite(str(path), np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=rf"^cannot read image {path}: float32 pixels \("):
        read_8bit(path, To8Bit(ir=False))


_CUT = "corrupt, or not an image"  # said before the decoder, whose libpng printed a line of its own


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# a whole PNG whose header says 100000 x 100000 pixels: OpenCV's size limit raises cv2.error rather than give None
_HUGE_PNG = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
             + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) + _png_chunk(b"IEND", b""))


def test_a_multi_page_tiff_is_refused_not_read_as_its_first_page(tmp_path):
    # OpenCV decodes a TIFF's first page alone: a sequence saved as one file passed as one frame, the rest unsaid
    pages = [np.full((24, 32), level, np.uint16) for level in (100, 40000)]
    assert cv2.imwritemulti(str(tmp_path / "seq.tif"), pages)
    with pytest.raises(ValueError, match=r"^cannot read image .*seq\.tif: a TIFF of 2 pages \(a sequence\?\), of which "
                                         r"only the first would be read; save each page as an image of its own$"):
        read_image(tmp_path / "seq.tif")
    assert cv2.imwrite(str(tmp_path / "one.tif"), pages[1])
    np.testing.assert_array_equal(read_image(tmp_path / "one.tif"), pages[1])


@pytest.mark.parametrize("content, why", [(None, "the file is gone"), (b"", "empty file"),
                                          (b"\x89PNG\r\n\x1a\n junk", _CUT), ("half", _CUT),
                                          (b"GIF89a junk", "corrupt, or not an image"), ("flipped", _CUT),
                                          ("no end chunk", _CUT), (_HUGE_PNG, _CUT),
                                          ("jpeg", "Corrupt JPEG data: premature end of data segment"),
                                          ("jpeg half", "Premature end of JPEG file")])
def test_unreadable_files_are_one_line(tmp_path, capfd, content, why):
    path = tmp_path / "a.png"
    if content in ("half", "flipped", "no end chunk", "jpeg", "jpeg half"):  # a frame cut short by a killed copy, or
        # damaged on disk (a byte of its pixel data flipped, its end intact): libpng printed a line of its own beside
        # ours; a JPEG's decoder also concealed the damage (the rest of the picture grey) and OpenCV gave the picture
        # without an error
        image = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64).astype(np.uint8)
        damaged = bytearray(cv2.imencode(".jpg" if content.startswith("jpeg") else ".png", image)[1].tobytes())
        if content in ("half", "jpeg half"):
            damaged = damaged[: len(damaged) // 2]
        elif content == "no end chunk":  # cut where a chunk ends, before IEND: each chunk there passes its CRC
            damaged = damaged[:-12]
        elif content == "jpeg":
            damaged[len(damaged) // 2:len(damaged) // 2 + 2] = b"\xff\xd9"  # an end of image amid its coded data
        else:
            damaged[60] ^= 0xFF
        content = bytes(damaged)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_image(path)
    assert str(info.value) == f"cannot read image {path}: {why}"
    assert capfd.readouterr().err == ""


def test_a_folder_named_as_an_image_is_said_to_be_one(tmp_path):
    # not "a pipe or a device": the OS's own reason
    (tmp_path / "a.png").mkdir()
    with pytest.raises(ValueError, match=r"^cannot read image .*a\.png: Is a directory$"):
        read_image(tmp_path / "a.png")


def test_a_jpeg_claiming_more_pixels_than_opencv_reads_is_refused_unread(tmp_path, monkeypatch):
    # one damaged byte of its frame size: the damage check decoded all 60000x60000 pixels claimed (3.5 GB, 20 s) to
    # find the data missing, where OpenCV refuses such a picture at once (its pixel limit)
    import simplejpeg

    ok, data = cv2.imencode(".jpg", np.full((16, 16, 3), 100, np.uint8))
    data = bytearray(data.tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2  # height, width
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data))
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *a, **k: pytest.fail("decoded what OpenCV refuses"))
    with pytest.raises(ValueError, match="corrupt, or not an image"):
        read_image(path)


@pytest.mark.parametrize("marker", [b"\xff\xda", b"\xff\xd9"], ids=["before the scan", "after the picture"])
def test_a_jpeg_with_extraneous_bytes_before_a_marker_is_read_whole(tmp_path, marker):
    # libjpeg calls these "corrupt JPEG data" too, but the picture is whole: many cameras write them. Before the scan
    # the header read already fails (the file is left to OpenCV); between the picture and its end marker only the
    # damage check's decode reports them (libjpeg reads ahead a few: 100 bytes, so that some are left to report)
    image = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64).astype(np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    at = data.rindex(marker)
    (tmp_path / "a.jpg").write_bytes(data[:at] + b"\x12\x34" * 50 + data[at:])
    np.testing.assert_array_equal(read_image(tmp_path / "a.jpg"), cv2.imdecode(np.frombuffer(data, np.uint8), -1))


def test_a_jpeg_whose_libjpeg_warning_is_no_damage_is_read_whole(tmp_path):
    # a baseline JPEG whose scan header gives a spectral end of 0 (some encoders write it): libjpeg warns "Invalid SOS
    # parameters for sequential JPEG" and decodes the whole picture; only reports of corrupt data refuse a JPEG
    image = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64).astype(np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    scan = data.index(b"\xff\xda")
    end = scan + 2 + int.from_bytes(data[scan + 2:scan + 4], "big")  # its Ss, Se and Ah/Al are the last 3 bytes
    (tmp_path / "a.jpg").write_bytes(data[:end - 2] + b"\x00" + data[end - 1:])
    np.testing.assert_array_equal(read_image(tmp_path / "a.jpg"), cv2.imdecode(np.frombuffer(data, np.uint8), -1))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_named_as_an_image_is_one_line_not_a_wait(tmp_path):
    """A FIFO in a folder of frames (or of pairs to evaluate): reading it waited for a writer that never came, and the
    replay or evaluation hung; it is no image file."""
    path, said = tmp_path / "0007.png", []
    os.mkfifo(path)

    def read() -> None:
        try:
            read_image(path)
        except ValueError as exc:
            said.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: not reader.is_alive(), "read_image of a FIFO returns")
    finally:
        if reader.is_alive():  # end the blocked read: a writer that opens and closes at once
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert said == [f"cannot read image {path}: not a file (a pipe or a device?)"]


def test_evaluation_training_and_the_folder_source_read_a_16_bit_pair_alike(tmp_path, rng):
    ir16, vis16 = _counts(rng), rng.integers(0, 65536, (40, 56, 3), dtype=np.uint16)
    root = tmp_path / "data" / "roadscene"
    for sub, img in (("ir", ir16), ("vi", vis16)):
        (root / sub).mkdir(parents=True)
        assert cv2.imwrite(str(root / sub / "a.png"), img)
    ir, vis_y = read_pair("a", root / "ir" / "a.png", root / "vi" / "a.png")
    np.testing.assert_array_equal(ir, _stretch(ir16, 7000, 9000))
    np.testing.assert_array_equal(vis_y, vis_luma((vis16 >> 8).astype(np.uint8)))
    [(_, train_ir, train_vis)] = load_pairs(tmp_path / "data")
    np.testing.assert_array_equal(train_ir, ir)
    np.testing.assert_array_equal(train_vis, vis_y)
    [folder_ir] = _frames(SourceConfig(kind="folder", path=str(root / "ir"), realtime=False))
    np.testing.assert_array_equal(folder_ir, ir)


def test_the_folder_source_holds_one_scale_while_frames_fit_it(tmp_path, rng):
    frames = [_counts(rng), _counts(rng, 7500, 8000), _counts(rng, 6000, 12000), _counts(rng, 7000, 11000)]
    for i, img in enumerate(frames):
        assert cv2.imwrite(str(tmp_path / f"{i:04d}.png"), img)
    out = _frames(SourceConfig(kind="folder", path=str(tmp_path), realtime=False))
    ranges = [(7000, 9000), (7000, 9000), (6000, 12000), (6000, 12000)]  # 67% of the third frame out of range
    for img, got, (lo, hi) in zip(frames, out, ranges, strict=True):
        np.testing.assert_array_equal(got, _stretch(img, lo, hi))  # no level jump between frames that fit


def test_a_folder_of_float_ir_temperatures_is_a_sequence_and_a_float_visible_image_one_line(tmp_path, rng):
    frames = [_counts(rng), _counts(rng, 7200, 8800), _counts(rng, 6000, 12000)]
    for sub, kind in (("counts", np.uint16), ("temps", np.float32)):
        (tmp_path / sub).mkdir()
        for i, img in enumerate(frames):
            assert cv2.imwrite(str(tmp_path / sub / f"{i:04d}.tiff"), img if kind == np.uint16 else
                               (img / 50 - 273.15).astype(kind))
    temps = _frames(SourceConfig(kind="folder", path=str(tmp_path / "temps"), realtime=False))
    for got, want in zip(temps, _frames(SourceConfig(kind="folder", path=str(tmp_path / "counts"), realtime=False)),
                         strict=True):
        np.testing.assert_array_equal(got, want)
    path = tmp_path / "temps" / "0000.tiff"
    with pytest.raises(SourceError, match=rf"^vis: cannot read image {re.escape(str(path))}: float32 pixels \(8- and "):
        with open_source("vis", SourceConfig(kind="folder", path=str(tmp_path / "temps"), realtime=False)) as src:
            src.read()


def test_a_16_bit_grey_ir_video_holds_its_scale_while_frames_fit_it(tmp_path, rng):
    frames = [_counts(rng), _counts(rng, 7200, 8800), _counts(rng, 8000, 9500)]
    path = tmp_path / "ir.mkv"
    write_grey16(path, frames)
    out = _frames(SourceConfig(kind="file", path=str(path), realtime=False))
    for img, got, (lo, hi) in zip(frames, out, [(7000, 9000), (7000, 9000), (8000, 9500)], strict=True):
        np.testing.assert_array_equal(got, _stretch(img, lo, hi))


def test_a_still_is_read_at_its_own_depth(tmp_path: Path, rng):
    img = rng.integers(0, 65536, (6, 7), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "a.png"), img)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)
    assert read_image(tmp_path / "a.png", cv2.IMREAD_COLOR).shape == (6, 7, 3)


def test_a_hot_object_over_4_times_as_wide_widens_the_range_at_once(rng):
    """Fewer than 1% of the pixels outside the held range, but the frame's range 5 times as wide ("more than 4
    times"): the frame takes its own range."""
    scene = _counts(rng)
    depth = To8Bit(ir=True)
    depth(scene)
    hot = _with(scene, (slice(10, 11), slice(10, 20)), (9500, 20000))  # 0.4% clipped
    lo, hi = _robust(hot)
    assert 4 * 2000 < hi - lo < 6 * 2000
    np.testing.assert_array_equal(depth(hot), _stretch(hot, lo, hi))


def _shutter(rng: np.random.Generator) -> np.ndarray:
    """A shutter (NUC) frame: a few counts of noise inside the scene's range."""
    return (8000 + rng.integers(0, 4, (40, 56))).astype(np.uint16)


def test_a_widened_range_waits_its_own_30_frames_before_narrowing(rng):
    # narrow frames seen before the widening (shutter frames under the old range) count for nothing after it
    depth = To8Bit(ir=True)
    scene = _noisy(rng, _counts(rng), 29)
    depth(scene[0])
    for _ in range(20):
        depth(_shutter(rng))
    hot = _with(scene[0], (slice(10, 20), slice(10, 20)), (9500, 12000))
    np.testing.assert_array_equal(depth(hot), _stretch(hot, *_robust(hot)))
    for img in scene:
        np.testing.assert_array_equal(depth(img), _stretch(img, *_robust(hot)))


def test_after_narrowing_a_shutter_frame_is_held_by_the_new_range(rng):
    # the count of narrow frames starts again once the range has narrowed: the next narrow frame is not taken at once
    depth = To8Bit(ir=True)
    scene = _noisy(rng, _counts(rng), 30)
    depth(_with(scene[0], (slice(10, 20), slice(10, 20)), (9500, 12000)))
    for img in scene:
        depth(img)  # the 30th takes its own range
    shutter = _shutter(rng)
    np.testing.assert_array_equal(depth(shutter), _stretch(shutter, *_robust(scene[-1])))


def test_float_temperatures_are_fiftieths_of_a_degree_up_to_1037_kelvins():
    """A scene 0.1 degree wide is 5 counts (6 grey levels at most), and a furnace at 1000 K is still inside the
    counts' range (not all clipped to one count, black)."""
    fine = np.linspace(20.0, 20.1, 2240, dtype=np.float32).reshape(40, 56)  # Celsius
    assert len(np.unique(To8Bit(ir=True)(fine))) <= 6
    furnace = np.linspace(900.0, 1000.0, 2240, dtype=np.float32).reshape(40, 56)  # kelvins
    assert np.ptp(To8Bit(ir=True)(furnace)) == 255


def test_float_temperatures_below_the_counts_are_the_coldest_and_above_them_the_hottest(rng):
    """-inf (under the camera's range) is the frame's coldest reading, and a reading over 1037.55 K is clipped to
    the top count: neither wraps around into the scene's counts, nor takes the hottest's or the coldest's place."""
    celsius = (_counts(rng, 14000, 17000) / 50 - 273.15).astype(np.float32)
    scene = To8Bit(ir=True)(celsius)
    celsius[5:8, 5:8] = -np.inf
    image = To8Bit(ir=True)(celsius)
    assert (image[5:8, 5:8] == 0).all() and (image[8:] == scene[8:]).all()  # the scene keeps its scale
    celsius[10:13, 5:8] = 1100.0  # 68658 counts: 3122 (-210 degrees, colder than the scene) once wrapped
    image = To8Bit(ir=True)(celsius)
    assert (image[5:8, 5:8] == 0).all() and (image[10:13, 5:8] == 255).all()


def test_float64_ir_temperatures_take_the_ir_rule_as_float32_ones_do(rng):
    counts = _counts(rng, 14000, 17000)
    np.testing.assert_array_equal(To8Bit(ir=True)(counts / 50 - 273.15), To8Bit(ir=True)(counts))


def test_an_ir_frame_without_any_reading_is_black_not_an_error(rng):
    # a radiometric camera's frames before its first reading are all NaN: the run goes on to the frames after them
    depth = To8Bit(ir=True)
    assert not depth(np.full((40, 56), np.nan, np.float32)).any()
    celsius = (_counts(rng, 14000, 17000) / 50 - 273.15).astype(np.float32)
    assert np.ptp(depth(celsius)) == 255


def test_converted_counts_the_16_bit_images_of_either_kind(rng):
    # training notes the 16-bit files it read by this count, visible ones too
    vis, ir = To8Bit(ir=False), To8Bit(ir=True)
    for depth in (vis, ir):
        depth(np.zeros((4, 4), np.uint8))
        depth(_counts(rng))
        depth(_counts(rng))
    assert (vis.converted, ir.converted) == (2, 2)


@pytest.mark.parametrize("name, deep", [("gray", False), ("gray10le", True), ("gray16le", True),
                                        ("yuv420p10le", False)])
def test_deep_grey_is_grey_deeper_than_8_bits(name, deep):
    assert deep_grey(av.VideoFormat(name)) is deep


def _exif_orientation(value: int) -> bytes:
    """An EXIF block (a TIFF header and one IFD) holding only the Orientation tag."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, value, 0)  # tag, SHORT, one value, the value padded to 4 bytes
    return b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + entry + struct.pack(">I", 0)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_photo_is_read_upright_as_its_exif_orientation_says(tmp_path: Path, suffix: str) -> None:
    """A camera's portrait still is stored sideways with orientation 6 (turn 90 degrees clockwise to view): read as
    stored, a folder's frames were fused sideways while a TIFF's and the homography tool's came upright."""
    stored = np.zeros((48, 64), np.uint8)
    stored[:16, :16] = 255  # a bright corner at the top left, at the top right once upright
    data = cv2.imencode(suffix, stored)[1].tobytes()
    exif = _exif_orientation(6)
    if suffix == ".jpg":  # an APP1 segment after the start of image
        data = data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 8) + b"Exif\x00\x00" + exif + data[2:]
    else:  # an eXIf chunk after the header chunk
        chunk = b"eXIf" + exif
        data = data[:33] + struct.pack(">I", len(exif)) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]
    path = tmp_path / f"0000{suffix}"
    path.write_bytes(data)
    image = read_image(path)
    assert image.shape[:2] == (64, 48)
    assert image[:16, -16:].mean() > 200 > 50 > image[-16:, :16].mean()


def test_a_flat_frame_in_a_row_of_narrow_frames_neither_counts_nor_breaks_it(rng):
    # "a flat frame (one count) takes no range and is passed over": a lens cap or a shutter frame of one count amid
    # the 30 frames after a hot object left must not start the row again (the contrast would come back late)
    depth = To8Bit(ir=True)
    scene = _noisy(rng, _counts(rng), 30)
    hot = _with(scene[0], (slice(10, 20), slice(10, 20)), (9500, 12000))
    depth(hot)
    flat = np.full((40, 56), 8000, np.uint16)
    for img in [*scene[:15], flat, *scene[15:29]]:
        np.testing.assert_array_equal(depth(img), _stretch(img, *_robust(hot)))
    np.testing.assert_array_equal(depth(scene[29]), _stretch(scene[29], *_robust(scene[29])))  # the 30th


def test_a_cold_object_entering_below_the_range_widens_it_at_once(rng):
    # the pixels clipped below the held range count as those above it do: a cold sky or a window filling 5% of the
    # view takes the frame's range at once, not clipped black for good
    scene = _counts(rng)
    depth = To8Bit(ir=True)
    depth(scene)  # holds 7000..9000
    cold = _with(scene, (slice(0, 2), slice(0, 56)), (5000, 6000))  # 5% of the pixels, the range 2x the held one
    np.testing.assert_array_equal(depth(cold), _stretch(cold, *_robust(cold)))
    assert _robust(cold)[0] < 6000
