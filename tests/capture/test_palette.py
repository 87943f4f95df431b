"""False-colour thermal frames (``ir.palette``): back to temperature order, live, from files and from a robot's bag; a
camera's own palette named by a file (R G B rows or an image of its colour bar)."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
from helpers_ros import IMAGE, raw, write_bag

from streamfuse.bitdepth import To8Bit
from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.palette import PALETTES, check_depth, ir_grey, to_temperature
from streamfuse.capture.sources import SourceConfig, SourceError, open_source
from streamfuse.checks import ConfigError
from streamfuse.config import config_from_dict
from streamfuse.eval_pairs import read_grey

COLOUR_MAPS = [p for p in PALETTES if p != "black_hot"]


def _colormap(name: str) -> int:
    return getattr(cv2, f"COLORMAP_{name.upper()}")


def _scene() -> np.ndarray:
    """A thermal frame using every level: a ramp across, a warm body in the middle."""
    t = np.tile(np.linspace(0, 255, 96), (64, 1))
    t[20:44, 36:60] = 255
    return np.round(t).astype(np.uint8)


@pytest.mark.parametrize("name", COLOUR_MAPS)
def test_every_colour_map_comes_back_to_its_levels(name):
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    back = to_temperature(cv2.applyColorMap(levels, _colormap(name)), name)
    assert np.abs(back.astype(int) - levels).max() <= 2


def test_a_compressed_frame_comes_back_within_a_level_on_average():
    truth = cv2.resize(_scene(), (384, 256), interpolation=cv2.INTER_LINEAR)
    ok, jpeg = cv2.imencode(".jpg", cv2.applyColorMap(truth, cv2.COLORMAP_INFERNO), [cv2.IMWRITE_JPEG_QUALITY, 85])
    error = np.abs(to_temperature(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), "inferno").astype(int) - truth)
    assert error.mean() < 1.0 and np.percentile(error, 99) <= 6  # the most at the body's edges (chroma subsampling)


def _folder(tmp_path, frames: list[np.ndarray]) -> str:
    folder = tmp_path / "thermal"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    return str(folder)


def _read_ir(path: str, palette: str = "", kind: str = "folder") -> tuple[list[np.ndarray], list[str]]:
    lines = []
    with open_source("ir", SourceConfig(kind=kind, path=path, realtime=False, palette=palette)) as src:
        src.warn = lines.append
        frames = []
        while (frame := src.read()) is not None:
            frames.append(frame.image)
    return frames, lines


def test_a_jet_thermal_camera_fuses_in_temperature_order_and_without_a_palette_is_told(tmp_path):
    truth = _scene()
    path = _folder(tmp_path, [cv2.applyColorMap(truth, cv2.COLORMAP_JET)] * 2)
    frames, lines = _read_ir(path, "jet")
    assert lines == [] and all(np.abs(f.astype(int) - truth).max() <= 1 for f in frames)
    grey, lines = _read_ir(path)  # luminance: jet's hottest red is darker than its middle levels
    assert grey[0][32, 48] < grey[0][32, 30] and truth[32, 48] > truth[32, 30]
    assert len(lines) == 1 and "name the palette in ir.palette" in lines[0] and path in lines[0]


def _video(path, frames: list[np.ndarray]) -> str:
    """A lossless colour video (FFV1, bgr0) of BGR frames, as a thermal viewer's export."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "bgr0"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode())
    return str(path)


def test_a_false_colour_video_is_decoded_in_colour_for_its_palette_and_told_without_one(tmp_path):
    truth = _scene()
    path = _video(tmp_path / "thermal.mkv", [cv2.applyColorMap(truth, cv2.COLORMAP_INFERNO)] * 3)
    frames, lines = _read_ir(path, "inferno", kind="file")
    assert len(frames) == 3 and lines == [] and all(np.abs(f.astype(int) - truth).max() <= 1 for f in frames)
    grey, lines = _read_ir(path, kind="file")  # decoded to grey by FFmpeg: told on the first frame
    assert len(grey) == 3 and len(lines) == 1 and "name the palette in ir.palette" in lines[0]


def test_a_looped_false_colour_video_without_a_palette_is_told_once_not_at_every_pass(tmp_path):
    path = _video(tmp_path / "thermal.mkv", [cv2.applyColorMap(_scene(), cv2.COLORMAP_INFERNO)] * 2)
    lines = []
    with open_source("ir", SourceConfig(kind="file", path=path, realtime=False, loop=True)) as src:
        src.warn = lines.append
        assert [src.read().seq for _ in range(6)] == list(range(6))  # three passes
    assert len(lines) == 1 and "name the palette in ir.palette" in lines[0]


def test_black_hot_is_inverted_grey_or_colour(tmp_path):
    truth = _scene()
    # the colour frame first: a first frame is judged against the palette named, and black_hot has no colours
    frames, lines = _read_ir(_folder(tmp_path, [cv2.cvtColor(255 - truth, cv2.COLOR_GRAY2BGR), 255 - truth]),
                             "black_hot")
    assert lines == [] and all(np.array_equal(f, truth) for f in frames)


def test_colour_frames_without_a_colour_map_go_grey_by_their_bgr_luminance():
    # a red and a blue body (BGR): red is the brighter by BT.601 luma, 0.299 R + 0.587 G + 0.114 B
    frame = np.zeros((2, 2, 3), np.uint8)
    frame[0, :, 2], frame[1, :, 0] = 255, 255
    luma = np.array([[76, 76], [29, 29]], np.uint8)
    np.testing.assert_array_equal(ir_grey(frame, ""), luma)
    np.testing.assert_array_equal(to_temperature(frame, "black_hot"), 255 - luma)
    np.testing.assert_array_equal(ir_grey(frame, "black_hot"), 255 - luma)


def test_frames_in_another_palette_are_told_and_what_cannot_be_a_palette_is_one_line(tmp_path):
    truth = _scene()
    # another palette, and ones close to that named (median colour distances of about 27 and 37)
    for frames, named in (("inferno", "jet"), ("magma", "inferno"), ("rainbow", "jet")):
        (where := tmp_path / frames).mkdir()
        _, lines = _read_ir(_folder(where, [cv2.applyColorMap(truth, _colormap(frames))]), named)
        assert len(lines) == 1 and f"do not look like the {named} palette" in lines[0]
    for name, frame, words in [("grey", truth, "frames are grey, not in the jet palette"),
                               ("counts", truth.astype(np.uint16) * 50, "uint16 frames are counts or temperatures")]:
        folder = tmp_path / name
        folder.mkdir()
        cv2.imwrite(str(folder / "000.png"), frame)
        with pytest.raises(SourceError, match=words) as caught:
            _read_ir(str(folder), "jet")
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="float32 frames are counts or temperatures"):  # a float TIFF's
        check_depth(truth.astype(np.float32), "jet")


def test_a_grey_frame_stored_in_colour_even_slightly_tinted_is_not_taken_for_a_false_colour_one(tmp_path):
    """Channels 4 levels apart each way (a grey camera's frames through a colour encoder): grey by luminance, without
    a word about a palette."""
    truth = np.clip(_scene(), 4, 251).astype(np.int16)
    tinted = np.stack([truth + 4, truth, truth - 4], axis=2).astype(np.uint8)
    frames, lines = _read_ir(_folder(tmp_path, [tinted]))
    assert lines == [] and np.abs(frames[0].astype(int) - truth).max() <= 2


def test_a_palette_is_the_ir_cameras_and_one_it_does_not_know_lists_those_it_does():
    with pytest.raises(ConfigError, match=r"vis.palette='jet': a palette is the IR camera's"):
        config_from_dict({"vis": {"palette": "jet"}})
    with pytest.raises(ConfigError, match=r"ironbow.*black_hot \| autumn"):
        config_from_dict({"ir": {"palette": "ironbow"}})
    for cyclic in ("hsv", "twilight", "twilight_shifted"):  # they give no temperature order: not offered
        with pytest.raises(ConfigError, match=f"palette='{cyclic}': neither a palette"):
            config_from_dict({"ir": {"palette": cyclic}})
    with pytest.raises(ConfigError, match=r"palette='xxx.*xxx': neither a palette nor a file this system can open"):
        config_from_dict({"ir": {"palette": "x" * 300}})  # a name too long for the file system, shown cut short


def test_a_bag_of_a_false_colour_thermal_camera_replays_in_temperature_order(tmp_path):
    truth = _scene()
    bag = tmp_path / "robot.mcap"
    coloured = cv2.cvtColor(cv2.applyColorMap(truth, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    write_bag(bag, {"/thermal/image": IMAGE}, [("/thermal/image", 10**9 + i, raw("rgb8", coloured, stamp_ns=10**9 + i))
                                               for i in range(3)])
    lines = []
    frames = list(read_recording(bag, {"ir": "/thermal/image"}, "turbo", lines.append))
    assert len(frames) == 3 and lines == [] and all(np.abs(f.image.astype(int) - truth).max() <= 1 for f in frames)
    frames = list(read_recording(bag, {"ir": "/thermal/image"}, "", lines.append))
    assert len(lines) == 1 and "/thermal/image" in lines[0] and "ir.palette" in lines[0]
    lines.clear()  # live, looped: told once, not at every pass
    cfg = SourceConfig(kind="mcap", path=str(bag), topic="/thermal/image", realtime=False, loop=True)
    with open_source("ir", cfg) as src:
        src.warn = lines.append
        assert all(src.read() is not None for _ in range(7)) and len(lines) == 1


# An iron palette as thermal viewers draw it (black, violet, magenta, red, orange, yellow, white), RGB key colours.
IRON_KEYS = np.array([[0, 0, 0], [40, 0, 110], [120, 0, 150], [200, 30, 110], [240, 90, 20], [255, 170, 0],
                      [255, 230, 90], [255, 255, 255]], float)


def _iron() -> np.ndarray:
    """The camera's 256 RGB colours, coldest first."""
    at = np.linspace(0, len(IRON_KEYS) - 1, 256)
    return np.round(np.stack([np.interp(at, np.arange(len(IRON_KEYS)), IRON_KEYS[:, c]) for c in range(3)], 1))


def _camera_frame(levels: np.ndarray) -> np.ndarray:
    """BGR frame of what an iron-palette camera shows for these temperatures."""
    return _iron()[levels][..., ::-1].astype(np.uint8)


def test_a_csv_of_the_cameras_colours_brings_its_frames_back_to_temperature_order(tmp_path):
    palette = tmp_path / "IRON.CSV"  # a suffix in capitals, as Windows tools write it
    palette.write_text("r,g,b\n" + "".join(f"{r:.0f},{g:.0f},{b:.0f}\n" for r, g, b in _iron()))
    truth = _scene()
    frames, lines = _read_ir(_folder(tmp_path, [_camera_frame(truth)]), str(palette))
    assert lines == [] and np.abs(frames[0].astype(int) - truth).max() <= 2
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every level, not only the scene's
    (tmp_path / "levels").mkdir()
    back, _ = _read_ir(_folder(tmp_path / "levels", [_camera_frame(levels)]), str(palette))
    assert np.abs(back[0].astype(int) - levels).max() <= 2


def test_key_colours_in_0_to_1_are_spread_over_256_levels(tmp_path):
    palette = tmp_path / "iron.txt"
    palette.write_text("# iron, coldest first\n" + "".join(f"{r / 255:.4f} {g / 255:.4f} {b / 255:.4f}\n"
                                                            for r, g, b in IRON_KEYS))
    truth = _scene()
    frames, lines = _read_ir(_folder(tmp_path, [_camera_frame(truth)]), str(palette))
    assert lines == [] and np.abs(frames[0].astype(int) - truth).max() <= 2


def test_an_image_of_the_colour_bar_hot_at_the_top_with_ticks_is_a_palette(tmp_path):
    bar = np.repeat(_camera_frame(np.arange(256)[::-1].reshape(256, 1)), 24, axis=1)  # hot at the top
    bar = cv2.resize(bar, (24, 300), interpolation=cv2.INTER_LINEAR)
    bar[::30, :4] = 255  # ticks at the edge, off the middle half
    cv2.imwrite(str(tmp_path / "bar.png"), bar)
    truth = _scene()
    video = _video(tmp_path / "thermal.mkv", [_camera_frame(truth)])  # a viewer's export: decoded in colour
    frames, lines = _read_ir(video, str(tmp_path / "bar.png"), kind="file")
    assert len(frames) == 1 and lines == [] and np.abs(frames[0].astype(int) - truth).max() <= 3
    wide = cv2.rotate(bar, cv2.ROTATE_90_CLOCKWISE)  # a wide bar: coldest at the left
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    frames, _ = _read_ir(_folder(tmp_path, [_camera_frame(truth)]), str(tmp_path / "wide.png"))
    assert np.abs(frames[0].astype(int) - truth).max() <= 3


def test_a_user_palette_in_the_home_folder_is_named_with_a_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "iron.csv").write_text("".join(f"{r:.0f},{g:.0f},{b:.0f}\n" for r, g, b in IRON_KEYS))
    assert config_from_dict({"ir": {"palette": "~/iron.csv"}}).ir.palette == str(tmp_path / "iron.csv")


@pytest.mark.parametrize(("text", "words"), [
    ("0 0 0\n10 10\n", "line 2 is not three numbers R G B of 0..255"),
    ("0 0 0\n300 0 0\n", "line 2 is not three numbers"),
    ("0 0 0\nnan 1 1\n", "line 2 is not three numbers"),
    ("r g b\n0 0 0\nwarm 0 0\n", "line 3 is not three numbers"),
    ("255 0 0\n", "1 R G B rows; a palette needs two or more"),
    ("red green blue\n", r"0 R G B rows after its header \(line 1\); a palette needs two or more"),
    ("# iron\nhot to cold\nblack\n0 0 0\n", "line 3 is not three numbers"),
    ("0 0 0\n255 255 255\n0 0 0\n", "are alike, so it gives no temperature order"),
    # its ends 4 levels apart; a colour that comes back 57 indices on
    ("0 0 0\n255 0 0\n0 255 0\n0 0 255\n255 255 255\n0 3 3\n", "colours at 0 and 255 .* are alike"),
    ("0 0 0\n255 0 0\n0 0 0\n0 255 0\n0 0 255\n255 255 0\n255 0 255\n0 255 255\n128 128 128\n255 255 255\n",
     "colours at 0 and 57 .* are alike"),
])
def test_a_palette_file_that_gives_no_order_is_one_line_naming_it(tmp_path, text, words):
    (tmp_path / "p.txt").write_text(text)
    with pytest.raises(ConfigError, match=words) as caught:
        config_from_dict({"ir": {"palette": str(tmp_path / "p.txt")}})
    assert "\n" not in str(caught.value) and f"ir: palette='{tmp_path / 'p.txt'}': palette file" in str(caught.value)


def test_a_cyclic_bar_an_unreadable_image_and_a_missing_file_are_one_line(tmp_path):
    hsv = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(1, 256).repeat(8, 0), cv2.COLORMAP_HSV)
    cv2.imwrite(str(tmp_path / "hsv.png"), hsv)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    for name, words in [("hsv.png", "colours at 0 and 2.. .* are alike"), ("broken.png", "not an image OpenCV reads"),
                        ("missing.csv", r"missing.csv': neither a palette \(black_hot .*\) nor a file: a palette")]:
        with pytest.raises(ConfigError, match=words) as caught:
            config_from_dict({"ir": {"palette": str(tmp_path / name)}})
        assert "\n" not in str(caught.value)


def test_a_false_colour_ir_still_goes_grey_alike_in_a_replay_and_in_evaluate(tmp_path):
    """Without a palette a colour IR image goes grey by one luma on every path: the folder source of a replay or live
    run and evaluate's reader (BGR2GRAY and YCrCb's Y differ by a level on a share of a colour image's pixels)."""
    frame = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(16, 16), cv2.COLORMAP_JET)
    path = _folder(tmp_path, [frame])
    frames, _ = _read_ir(path)
    np.testing.assert_array_equal(frames[0], read_grey(tmp_path / "thermal" / "000.png", To8Bit(ir=True)))


def test_evaluate_tells_of_colour_ir_images_in_the_words_capture_does(tmp_path, caplog):
    # evaluate turned a false-colour IR still grey without a word, where a replay or live run of it warns
    from streamfuse.eval_pairs import check_readable, find_pairs

    jet = cv2.applyColorMap(_scene(), cv2.COLORMAP_JET)
    for name, images in (("ir", [jet, jet, _scene()]), ("vi", [_scene()] * 3)):
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):
            cv2.imwrite(str(tmp_path / name / f"{i:03d}.png"), image)
    _, captured = _read_ir(str(tmp_path / "ir"))
    with caplog.at_level("WARNING", logger="streamfuse.eval_pairs"):
        check_readable(find_pairs(tmp_path / "ir", tmp_path / "vi"), {})
    told = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(told) == 1 and told[0].startswith(f"IR {tmp_path / 'ir' / '000.png'} and 1 more of the 3: "), told
    assert told[0].split(": ", 1)[1].split("; ")[0] == captured[0].split(": ", 2)[2].split("; ")[0]


def test_training_tells_of_colour_ir_images_once_a_run_in_the_words_capture_does(tmp_path, caplog):
    # training read a false-colour IR still as grey without a word, where capture and evaluate warn
    from streamfuse.eval_pairs import read_grey
    from streamfuse.train.data import load_pairs

    jet = cv2.applyColorMap(_scene(), cv2.COLORMAP_JET)
    for folder, ir_images in (("msrs/train", [jet, _scene()]), ("llvip/train", [jet])):
        for name, images in (("ir", ir_images), ("vi", [_scene()] * len(ir_images))):
            (tmp_path / folder / name).mkdir(parents=True)
            for i, image in enumerate(images):
                cv2.imwrite(str(tmp_path / folder / name / f"{i:03d}.png"), image)
    _, captured = _read_ir(str(tmp_path / "msrs/train/ir"))
    with caplog.at_level("WARNING", logger="train"):
        pairs = load_pairs(tmp_path)
    told = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(told) == 1 and told[0].startswith(f"IR {tmp_path / 'msrs/train/ir/000.png'} and 1 more of the 3: "), told
    assert told[0].split(": ", 1)[1].split("; ")[0] == captured[0].split(": ", 2)[2].split("; ")[0]
    assert told[0].endswith("; give them in grey, in temperature order (training takes no palette)")
    grey = read_grey(tmp_path / "msrs/train/ir/000.png")  # by the luma evaluate and replay take
    np.testing.assert_array_equal(pairs[0][1], grey)
