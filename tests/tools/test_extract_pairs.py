"""tools/extract_pairs.py: the chosen frames of paired videos become same-named PNG pairs; short videos are one line."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers_video import portrait_mov, write_grey16


def _video(path: Path, frames: int, seed: int, size: tuple[int, int] = (32, 24)) -> None:
    """An FFV1 video whose frame i shows the grey level 10 * i + seed (decodes exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        (stream.width, stream.height), stream.pix_fmt = size, "bgr0"
        for i in range(frames):
            img = np.full((size[1], size[0], 3), (10 * i + seed) % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        container.mux(stream.encode())


def test_writes_the_chosen_frames_as_pairs_up_to_the_end(tool, tmp_path):
    _video(tmp_path / "v" / "ir" / "a.mkv", 10, 0)
    _video(tmp_path / "v" / "vi" / "a.mkv", 10, 1)
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "2", "--every", "3",
                                "--count", "5"])
    names = sorted(p.name for p in (tmp_path / "out" / "ir").iterdir())  # 11 and 14 are past the end
    assert names == ["a_00002.png", "a_00005.png", "a_00008.png"]
    assert names == sorted(p.name for p in (tmp_path / "out" / "vi").iterdir())
    ir = cv2.imread(str(tmp_path / "out" / "ir" / "a_00005.png"), cv2.IMREAD_UNCHANGED)
    vis = cv2.imread(str(tmp_path / "out" / "vi" / "a_00005.png"), cv2.IMREAD_UNCHANGED)
    assert ir.ndim == 2 and int(ir[0, 0]) == 50 and vis.shape == (24, 32, 3) and int(vis[0, 0, 0]) == 51


def test_visible_pairs_keep_their_colours(tool, tmp_path):
    _video(tmp_path / "v" / "ir" / "a.mkv", 1, 0)
    (tmp_path / "v" / "vi").mkdir()
    with av.open(str(tmp_path / "v" / "vi" / "a.mkv"), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        (stream.width, stream.height), stream.pix_fmt = (32, 24), "bgr0"
        red = np.zeros((24, 32, 3), np.uint8)
        red[..., 2] = 200  # red in OpenCV's channel order
        container.mux(stream.encode(av.VideoFrame.from_ndarray(red, format="bgr24")))
        container.mux(stream.encode())
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "0"])
    assert tuple(cv2.imread(str(tmp_path / "out" / "vi" / "a_00000.png"))[5, 5]) == (0, 0, 200)


def test_a_count_past_any_video_takes_every_frame_there_is(tool, tmp_path):
    # --count 10**22 built a set of 10**22 frame numbers first: it never got to the videos
    _video(tmp_path / "v" / "ir" / "a.mkv", 4, 0)
    _video(tmp_path / "v" / "vi" / "a.mkv", 4, 1)
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "0", "--every", "1", "--count",
                                str(10**22)])
    assert sorted(p.name for p in (tmp_path / "out" / "ir").iterdir()) == [f"a_0000{i}.png" for i in range(4)]


def test_a_clip_shorter_than_start_is_one_line(tool, tmp_path):
    _video(tmp_path / "v" / "ir" / "a.mkv", 4, 0)
    _video(tmp_path / "v" / "vi" / "a.mkv", 4, 0)
    with pytest.raises(SystemExit, match=r"a: frame 5 is past the end") as info:
        tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "5"])
    assert "\n" not in str(info.value)


def _cut_mp4(path: Path, frames: int) -> None:
    """A faststart MP4 cut in the middle: its header still announces ``frames``, about half of them decode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        container.mux(stream.encode())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_truncated_video_is_one_line_and_writes_nothing(tool, tmp_path):
    _video(tmp_path / "v" / "ir" / "a.mkv", 10, 0)  # a good clip first: its pairs must not stay behind
    _video(tmp_path / "v" / "vi" / "a.mkv", 10, 0)
    _cut_mp4(tmp_path / "v" / "ir" / "b.mp4", 20)
    _video(tmp_path / "v" / "vi" / "b.mkv", 20, 0)
    with pytest.raises(SystemExit, match=r"ir/b\.mp4: truncated or damaged, \d+ of the 20 frames") as info:
        tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "1", "--every", "8"])
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["v"]


@pytest.mark.parametrize("option, value", [("--every", "0"), ("--every", "-3"), ("--count", "0"), ("--start", "-1"),
                                           ("--every", "x")])
def test_nonsense_numbers_are_refused(tool, tmp_path, capsys, option, value):
    _video(tmp_path / "v" / "ir" / "a.mkv", 4, 0)
    _video(tmp_path / "v" / "vi" / "a.mkv", 4, 0)
    with pytest.raises(SystemExit) as info:
        tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), option, value])
    assert info.value.code == 2 and f"error: argument {option}: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_among_the_videos_is_refused(tool, tmp_path):
    _video(tmp_path / "v" / "ir" / "a.mkv", 4, 0)
    _video(tmp_path / "v" / "vi" / "a.mkv", 4, 0)
    with pytest.raises(SystemExit, match="output folder .* is or lies in the videos folder"):
        tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "v"), "--start", "0"])
    assert sorted(p.name for p in (tmp_path / "v" / "ir").iterdir()) == ["a.mkv"]


def test_an_output_folder_holding_pairs_is_refused(tool, tmp_path):
    """A second run into the same folder would mix its pairs with the first's and write over same-named ones."""
    _video(tmp_path / "v" / "ir" / "a.mkv", 4, 0)
    _video(tmp_path / "v" / "vi" / "a.mkv", 4, 0)
    out = tmp_path / "out"
    tool("extract_pairs").main([str(tmp_path / "v"), str(out), "--start", "0", "--every", "2"])
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    with pytest.raises(SystemExit, match=f"output folder {out} already holds pairs in ir/; choose an empty or new "
                                         "folder") as info:
        tool("extract_pairs").main([str(tmp_path / "v"), str(out), "--start", "1", "--every", "2"])
    assert "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before and len(before) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "v"] and not list(out.rglob(".*"))  # no stage, lock
    (tmp_path / "empty" / "ir").mkdir(parents=True)  # an existing folder without pairs is fine
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "empty"), "--start", "1", "--every", "2"])
    assert sorted(p.name for p in (tmp_path / "empty" / "vi").iterdir()) == ["a_00001.png", "a_00003.png"]


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_pairs(tool, tmp_path, monkeypatch, capsys):
    """A Ctrl-C while the second clip decodes: the first clip's pairs were in the temporary folder, which goes."""
    for clip in ("a", "b"):
        _video(tmp_path / "v" / "ir" / f"{clip}.mkv", 4, 0)
        _video(tmp_path / "v" / "vi" / f"{clip}.mkv", 4, 0)
    real_frames_at = tool("extract_pairs").frames_at

    def interrupted_at_b(path, wanted, ir=False):
        if path.stem == "b":
            raise KeyboardInterrupt
        return real_frames_at(path, wanted, ir)

    monkeypatch.setattr(tool("extract_pairs"), "frames_at", interrupted_at_b)
    with pytest.raises(BaseException) as exc:  # on a KeyboardInterrupt that escapes, too
        tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "0", "--every", "1"])
    assert exc.type is SystemExit and exc.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["extract_pairs.py: interrupted (Ctrl-C)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_a_16_bit_grey_ir_video_is_written_on_the_clips_scale(tool, tmp_path, rng):
    """Radiometric counts (7000..9000) in a gray16le video: the pairs hold them stretched by the clip's first frame's
    range, as replay reads the clip, not their near-black top 8 bits."""
    counts = [rng.integers(lo, hi + 1, (24, 32)).astype(np.uint16) for lo, hi in ((7000, 9000), (7500, 8000))]
    counts[0][0, :2] = 7000, 9000
    path = tmp_path / "v" / "ir" / "a.mkv"
    path.parent.mkdir(parents=True)
    write_grey16(path, counts)
    _video(tmp_path / "v" / "vi" / "a.mkv", 2, 0)
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "1"])
    ir = cv2.imread(str(tmp_path / "out" / "ir" / "a_00001.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(ir, np.rint((counts[1] - 7000.0) * 255 / 2000).astype(np.uint8))


def test_a_portrait_clip_is_written_upright_as_replay_reads_it(tool, tmp_path):
    # a phone's clip stored sideways with a display matrix: replay turns it upright, and so must its pairs, or the
    # evaluation scores another picture than the one replay fuses (and an upright IR clip of its size is refused)
    path = tmp_path / "v" / "vi" / "a.mov"
    path.parent.mkdir(parents=True)
    portrait_mov(path)
    _video(tmp_path / "v" / "ir" / "a.mkv", 3, 0, size=(48, 64))
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "1"])
    vis = cv2.imread(str(tmp_path / "out" / "vi" / "a_00001.png"), cv2.IMREAD_UNCHANGED)
    assert vis.shape == (64, 48, 3) and vis[:32].mean() > 200 > 50 > vis[32:].mean()


@pytest.mark.parametrize("clip", ["cam", "[cam]"])
def test_the_visible_video_is_the_one_of_the_same_stem(clip, tool, tmp_path):
    # by glob(stem + ".*"): IR cam.mkv took vi/cam.old.mkv, and a name with [ took another clip or none
    _video(tmp_path / "v" / "ir" / f"{clip}.mkv", 2, 0)
    _video(tmp_path / "v" / "vi" / f"{clip}.old.mkv", 2, 7)  # sorts first
    _video(tmp_path / "v" / "vi" / f"{clip}.avi", 2, 1)
    _video(tmp_path / "v" / "vi" / "c.mkv", 2, 9)
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "1"])
    vis = cv2.imread(str(tmp_path / "out" / "vi" / f"{clip}_00001.png"))
    assert int(vis[0, 0, 0]) == 11


def test_a_clip_without_its_own_visible_video_is_one_line(tool, tmp_path):
    _video(tmp_path / "v" / "ir" / "cam.mkv", 2, 0)
    _video(tmp_path / "v" / "vi" / "cam.old.mkv", 2, 0)
    with pytest.raises(SystemExit, match=r"^extract_pairs.py: error: no visible video for cam.mkv under "):
        tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sub, message", [
    ("vi", r"cam.mkv has 2 visible videos under .* \(cam.avi, cam.mkv\); keep one"),
    ("ir", r"holds two videos named cam \(of different extensions\); keep one")])
def test_two_videos_of_one_name_are_refused(sub, message, tool, tmp_path):
    for folder in ("ir", "vi"):
        _video(tmp_path / "v" / folder / "cam.mkv", 2, 0)
    _video(tmp_path / "v" / sub / "cam.avi", 2, 5)
    with pytest.raises(SystemExit, match=message) as info:
        tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out")])
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_videos_of_different_sizes_are_refused_and_write_nothing(tool, tmp_path):
    _video(tmp_path / "v" / "ir" / "a.mkv", 2, 0)  # a good clip first: its pairs must not stay behind
    _video(tmp_path / "v" / "vi" / "a.mkv", 2, 0)
    _video(tmp_path / "v" / "ir" / "b.mkv", 2, 0, size=(32, 24))
    _video(tmp_path / "v" / "vi" / "b.mkv", 2, 0, size=(48, 24))
    with pytest.raises(SystemExit, match=r"b: the IR video is 32x24 and the visible 48x24; the pairs must be "):
        tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "0"])
    assert not any(p.is_file() for p in tmp_path.joinpath("out").rglob("*"))


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_works(tool, tmp_path):
    from streamfuse.output_lock import output_lock

    _video(tmp_path / "v" / "ir" / "a.mkv", 2, 0)
    _video(tmp_path / "v" / "vi" / "a.mkv", 2, 0)
    (tmp_path / "out" / "vi").mkdir(parents=True)
    with output_lock(tmp_path / "out" / "vi", inside=True), pytest.raises(SystemExit) as info:
        tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "0"])
    assert str(info.value).startswith(f"extract_pairs.py: error: output {tmp_path / 'out' / 'vi'} is being written by "
                                      "another ")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["vi"] and not any((tmp_path / "out" / "vi").iterdir())


def test_count_is_how_many_frames_each_clip_gives(tool, tmp_path):
    _video(tmp_path / "v" / "ir" / "a.mkv", 10, 0)
    _video(tmp_path / "v" / "vi" / "a.mkv", 10, 1)
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "1", "--every", "2",
                                "--count", "3"])
    assert sorted(p.name for p in (tmp_path / "out" / "vi").iterdir()) == ["a_00001.png", "a_00003.png", "a_00005.png"]


def test_frames_only_one_video_of_a_clip_reaches_are_not_pairs(tool, tmp_path):
    # the visible video stops early: its pairs end there, whatever the IR video holds after
    _video(tmp_path / "v" / "ir" / "a.mkv", 10, 0)
    _video(tmp_path / "v" / "vi" / "a.mkv", 5, 1)
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "0", "--every", "3"])
    for sub in ("ir", "vi"):
        assert sorted(p.name for p in (tmp_path / "out" / sub).iterdir()) == ["a_00000.png", "a_00003.png"]


def test_hidden_files_beside_the_videos_are_no_clips(tool, tmp_path):
    # a Mac's "._a.mkv" (its metadata, copied onto a drive beside a.mkv) failed the run as a video that cannot decode
    for sub in ("ir", "vi"):
        _video(tmp_path / "v" / sub / "a.mkv", 2, 0)
        (tmp_path / "v" / sub / "._a.mkv").write_bytes(b"Mac metadata")
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "1"])
    assert [p.name for p in (tmp_path / "out" / "ir").iterdir()] == ["a_00001.png"]


def test_a_visible_folder_that_is_the_ir_folder_is_refused(tool, tmp_path):
    # each IR video was paired with itself, and its frames written as IR/visible pairs
    _video(tmp_path / "v" / "ir" / "a.mkv", 2, 0)
    (tmp_path / "v" / "vi").symlink_to("ir")
    with pytest.raises(SystemExit, match=r"^extract_pairs.py: error: .*: ir/ and vi/ are one folder") as info:
        tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "1"])
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_a_video_whose_title_is_not_utf8_is_read(tool, tmp_path):
    # an AVI's INFO title in Latin-1 (Windows tools, older cameras), which FFmpeg plays: PyAV up to 18 refused it
    for sub in ("ir", "vi"):
        path = tmp_path / "v" / sub / "a.avi"
        path.parent.mkdir(parents=True)
        with av.open(str(path), "w") as container:
            container.metadata["title"] = "Camera 1"
            stream = container.add_stream("ffv1", rate=10)
            stream.width, stream.height, stream.pix_fmt = 32, 24, "bgr0"
            for i in range(3):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((24, 32, 3), i, np.uint8), "bgr24")))
            container.mux(stream.encode())
        path.write_bytes(path.read_bytes().replace(b"Camera 1", "Caméra 1".encode("latin-1")))
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "0", "--every", "1"])
    assert sorted(p.name for p in (tmp_path / "out" / "vi").iterdir()) == [f"a_0000{i}.png" for i in range(3)]


def test_the_ir_of_a_compressed_clip_is_the_grey_replay_reads(tool, tmp_path):
    """A yuv420p IR clip was decoded through BGR and turned grey by its luma, 1-2 levels off the grey replay reads
    (so the held-out pairs were not the frames a replay of the clip fuses)."""
    from streamfuse.capture.sources import SourceConfig, open_source

    rng = np.random.default_rng(3)
    for sub in ("ir", "vi"):
        (tmp_path / "v" / sub).mkdir(parents=True)
        with av.open(str(tmp_path / "v" / sub / "a.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=10, options={"crf": "18"})
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for _ in range(3):
                img = cv2.GaussianBlur(rng.integers(0, 256, (48, 64), np.uint8), (0, 0), 2)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.dstack([img] * 3), format="bgr24")))
            container.mux(stream.encode())
    tool("extract_pairs").main([str(tmp_path / "v"), str(tmp_path / "out"), "--start", "0", "--every", "1"])
    with open_source("ir", SourceConfig(kind="file", path=str(tmp_path / "v" / "ir" / "a.mp4"), realtime=False)) as src:
        replayed = [src.read().image for _ in range(3)]
    for i, frame in enumerate(replayed):
        extracted = cv2.imread(str(tmp_path / "out" / "ir" / f"a_{i:05d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(extracted, frame)
