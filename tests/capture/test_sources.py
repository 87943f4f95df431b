"""Sources: config validation, the registered synthetic pair, PyAV files (pts times, loop, bad files), folders,
cameras that do not exist."""

from __future__ import annotations

import contextlib
import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers_clock import SleptClock

from streamfuse.capture.sources import SourceConfig, SourceError, open_source
from streamfuse.capture.synthetic import SyntheticScene
from streamfuse.registry import available

TB = Fraction(1, 1000)


def write_video(path: Path, n: int, *, fps: int = 25, size: tuple[int, int] = (64, 48), codec: str = "ffv1",
                pts_step: int = 40) -> list[int]:
    """Write n frames whose brightness encodes the index, with pts = i * pts_step in a 1/1000 time base."""
    w, h = size
    pts = [i * pts_step for i in range(n)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        stream.time_base = TB
        for i, p in enumerate(pts):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, :, 2] = 8 * i  # red ramp: the visible source keeps colour, the IR source turns it grey
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts, frame.time_base = p, TB
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return pts


def read_all(section: str, cfg: SourceConfig, limit: int = 1000) -> list:
    with open_source(section, cfg) as src:
        out = []
        while len(out) < limit and (f := src.read()) is not None:
            out.append(f)
    return out


def test_config_rejects_unknown_kind_listing_the_kinds_and_bad_ranges() -> None:
    with pytest.raises(ValueError, match="kind='webcam'.*camera.*file.*folder.*mcap.*stream.*synthetic"):
        SourceConfig(kind="webcam")
    with pytest.raises(ValueError, match="fps"):
        SourceConfig(fps=0)
    assert {"synthetic", "camera", "stream", "file", "folder"} <= set(available("source"))


@pytest.mark.parametrize(("size", "why"), [((16384, 16384), "16 <= width <= 8192"),
                                           ((8192, 8192), "width x height <= 35389440 pixels")])
def test_config_rejects_sizes_beyond_the_documented_maximum_in_one_line(size: tuple[int, int], why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        SourceConfig(width=size[0], height=size[1])
    assert "\n" not in str(info.value)
    SourceConfig(width=8192, height=4320)  # the maximum itself is fine


@pytest.mark.parametrize("setting", [{"fps": 0.1}, {"fps": 1000.0}, {"width": 16, "height": 16}, {"stall_factor": 2},
                                     {"decode_threads": 256}, {"delay_ms": 5000.0}])
def test_config_accepts_the_ends_of_each_documented_range(setting: dict) -> None:
    """The bounds the messages name (``0.1 <= fps <= 1000``, ``2 .. 1000 frame intervals``...) are allowed values."""
    cfg = SourceConfig(**setting)
    assert all(getattr(cfg, name) == value for name, value in setting.items())


@pytest.mark.parametrize(("kind", "realtime", "clock"), [("mcap", True, "recorded"), ("file", True, "media"),
                                                         ("folder", False, "media"), ("synthetic", False, "media"),
                                                         ("synthetic", True, "epoch"), ("camera", True, "epoch"),
                                                         ("stream", True, "epoch")])
def test_each_kind_says_which_clock_its_capture_times_count(kind: str, realtime: bool, clock: str) -> None:
    """Two sources pair only on one clock: a recording's own times, times from the start, or the wall clock."""
    assert SourceConfig(kind=kind, path="x" if kind != "synthetic" else "", realtime=realtime).capture_clock == clock


def test_an_ffmpeg_option_needs_a_name_before_its_value() -> None:
    assert SourceConfig(kind="file", path="v.ts", ffmpeg=("fflags=+genpts",)).ffmpeg == ("fflags=+genpts",)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        SourceConfig(kind="file", path="v.ts", ffmpeg=("=nobuffer",))


def test_only_a_stream_takes_the_sender_clock() -> None:
    assert SourceConfig(kind="stream", path="rtsp://cam/1", clock="sender").clock == "sender"
    # not "out of range; allowed: arrival | sender", which named the value refused as allowed
    with pytest.raises(ValueError, match=r"^clock='sender' needs kind: stream \(an RTSP camera's RTCP sender "
                                         r"reports\); this source is kind: file$"):
        SourceConfig(kind="file", path="v.mp4", clock="sender")
    with pytest.raises(ValueError, match=r"^clock='camera' is out of range; allowed: arrival \| sender$"):
        SourceConfig(kind="stream", path="rtsp://cam/1", clock="camera")


def test_config_stall_factor_is_off_or_at_least_two_intervals() -> None:
    assert SourceConfig(stall_factor=0).stall_factor == 0
    with pytest.raises(ValueError, match="stall_factor"):
        SourceConfig(stall_factor=1.5)


def test_a_live_source_s_delay_is_taken_off_its_stamps_and_a_file_refuses_one() -> None:
    """A thermal camera that delivers each frame tens of ms after it captured it was paired by arrival with the
    visible frame of that later instant; ``delay_ms`` puts its stamps back to the capture."""
    import time

    delay_ns = 250 * 10**6
    with open_source("ir", SourceConfig(fps=50, width=64, height=48, delay_ms=250)) as src:
        for _ in range(3):
            before, before_mono = time.time_ns(), time.monotonic_ns()
            frame = src.read()
            after, after_mono = time.time_ns(), time.monotonic_ns()
            assert before - delay_ns <= frame.t_capture_ns <= after - delay_ns
            assert before_mono - delay_ns <= frame.t_mono_ns <= after_mono - delay_ns
    for kind, why in (("file", "a file keeps its own times"), ("synthetic", "a virtual-clock synthetic source")):
        with pytest.raises(ValueError, match=f"delay_ms=30: a live source's setting .*; {why}"):
            SourceConfig(kind=kind, path="v.mp4" if kind == "file" else "", realtime=False, delay_ms=30)
    with pytest.raises(ValueError, match="0 <= delay_ms <= 5000"):
        SourceConfig(delay_ms=-5)


def test_synthetic_ir_and_visible_are_registered_and_warm_bodies_are_hot() -> None:
    cfg = SourceConfig(kind="synthetic", realtime=False, seed=3)
    period = round(1e9 / cfg.fps)
    with open_source("ir", cfg) as ir_src, open_source("vis", cfg) as vis_src:
        ir = [ir_src.read() for _ in range(5)][-1]
        vis_frames = [vis_src.read() for _ in range(45)]
    vis, vis_later = vis_frames[4], vis_frames[44]  # 40 periods apart: same sensor-noise frame, bodies moved away
    assert ir.t_capture_ns == vis.t_capture_ns == 4 * period
    assert ir.image.shape == (480, 640) and vis.image.shape == (480, 640, 3)
    scene = SyntheticScene(640, 480, seed=3)
    hot = ir.image > 175
    n_labels, labels, st, centroids = cv2.connectedComponentsWithStats(hot.astype(np.uint8))
    people = [b for b in scene.objects(ir.t_capture_ns) if b[3] > b[2] and b[0] >= 0 and b[0] + b[2] <= 640]
    assert people, "seed 3 should have a person fully in view at t=4 frames"
    for x, y, w, h in people:  # every person in view is a hot blob where the scene says (cars are hot in parts)
        d = np.hypot(centroids[1:, 0] - (x + w / 2), centroids[1:, 1] - (y + h / 2))
        assert d.min() < 0.25 * h, (x, y, w, h)
    # The visible image changes exactly where IR is hot (bodies move, background does not): registered.
    changed = np.abs(vis.image.astype(int) - vis_later.image.astype(int)).max(axis=2) > 0
    assert changed[hot].mean() > 0.9 and changed[~hot].mean() < 0.1
    # ...and bodies are hard to see in the dark visible image but bright in IR.
    assert vis.image.mean() < 60 and ir.image[hot].mean() > 190


def test_synthetic_is_deterministic_per_seed_and_time() -> None:
    a, b, c = SyntheticScene(160, 120, 1), SyntheticScene(160, 120, 1), SyntheticScene(160, 120, 2)
    np.testing.assert_array_equal(a.render_vis(10**9), b.render_vis(10**9))
    assert not np.array_equal(a.render_ir(10**9), c.render_ir(10**9))


def test_synthetic_sensor_noise_changes_from_one_frame_to_the_next() -> None:
    """A still background is not frozen: each frame at 30 frames/s has sensor noise of its own (of four)."""
    scene, next_ns = SyntheticScene(64, 48, 3), 33_333_334
    still = np.ones((48, 64), bool)  # away from every body at both times
    for t_ns in (0, next_ns):
        for x, y, w, h in scene.objects(t_ns):
            still[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = False
    for render in (scene.render_ir, scene.render_vis):
        assert still.any() and (render(0)[still] != render(next_ns)[still]).any()


def test_live_synthetic_frames_are_captured_on_the_ticks_of_the_epoch_clock(monkeypatch) -> None:
    """Separate IR and visible processes at one fps capture at the same instants: each frame waits for the next tick
    of the epoch clock and is stamped when it comes (here a fake clock that the source's sleeps advance)."""
    from types import SimpleNamespace

    from streamfuse.capture import synthetic

    clock = [1_700_000_000_012_345_678]
    monkeypatch.setattr(synthetic, "time", SimpleNamespace(time_ns=lambda: clock[0], monotonic_ns=lambda: 1))
    src = open_source("ir", SourceConfig(kind="synthetic", width=64, height=48, fps=30, realtime=True))
    period = round(1e9 / 30)

    def sleep(seconds: float) -> None:
        clock[0] += round(seconds * 1e9)

    monkeypatch.setattr(src, "_sleep", sleep)
    with src:
        times = [src.read().t_capture_ns for _ in range(3)]
    first = (1_700_000_000_012_345_678 // period + 1) * period
    assert times == [first, first + period, first + 2 * period]


def test_a_video_file_named_as_a_camera_is_read_to_its_end(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    write_video(path, 5)
    frames = read_all("vis", SourceConfig(kind="camera", path=str(path)))
    assert len(frames) == 5 and [f.seq for f in frames] == list(range(5))
    with pytest.raises(SourceError, match="cannot open camera") as info:  # a file, unlike a device, is not waited for
        open_source("vis", SourceConfig(kind="camera", path=str(tmp_path / "missing.mkv"))).open()
    assert not info.value.unreachable


def test_file_source_times_come_from_pts_and_ir_is_grey(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    pts = write_video(path, 12, pts_step=40)
    cfg = SourceConfig(kind="file", path=str(path), realtime=False)
    ir, vis = read_all("ir", cfg), read_all("vis", cfg)
    assert [f.t_capture_ns for f in ir] == [round(p * TB * 10**9) for p in pts]  # 0, 40 ms, 80 ms, ...
    assert [f.seq for f in vis] == list(range(12))
    assert ir[0].image.shape == (48, 64) and vis[0].image.shape == (48, 64, 3)
    assert vis[5].image[0, 0].tolist() == [0, 0, 40]  # BGR kept (lossless codec)
    assert 0 < ir[5].image[0, 0] < 40  # red turned into grey luma


def test_the_frames_of_a_video_whose_rows_ffmpeg_pads_are_one_block_of_pixels(tmp_path: Path) -> None:
    """50 pixels a row: FFmpeg pads each row to its alignment, and the frames are handed on without the padding
    (the rings and the shared-memory pool copy an image as one block)."""
    write_video(tmp_path / "clip.mkv", 2, size=(50, 48))
    for section, shape in (("ir", (48, 50)), ("vis", (48, 50, 3))):
        image = read_all(section, SourceConfig(kind="file", path=str(tmp_path / "clip.mkv"), realtime=False))[1].image
        assert image.shape == shape and image.flags.c_contiguous


def test_a_video_whose_title_is_not_utf8_is_read(tmp_path: Path) -> None:
    """Windows tools and older cameras write an AVI's INFO title in Latin-1: FFmpeg plays it, and so does a file
    source (PyAV up to 18 decodes the tags as strict UTF-8: it said 'not a readable video ('utf-8' codec ...)')."""
    path = tmp_path / "clip.avi"
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "Camera 1"
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="bgr24")))
        out.mux(stream.encode())
    path.write_bytes(path.read_bytes().replace(b"Camera 1", "Caméra 1".encode("latin-1")))
    assert len(read_all("vis", SourceConfig(kind="file", path=str(path), realtime=False))) == 3


def test_file_loop_keeps_times_increasing(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    write_video(path, 4, pts_step=40)
    frames = read_all("vis", SourceConfig(kind="file", path=str(path), realtime=False, loop=True), limit=10)
    assert [f.t_capture_ns // 1_000_000 for f in frames] == [40 * i for i in range(10)]


def test_a_looped_video_of_one_frame_steps_by_its_frame_period(tmp_path: Path) -> None:
    """Each pass starts one period after the last: a still's pass is no repeated timestamp placed 1 ns on (paced in
    real time, it would go out without pause)."""
    write_video(tmp_path / "still.mkv", 1)
    frames = read_all("vis", SourceConfig(kind="file", path=str(tmp_path / "still.mkv"), realtime=False, loop=True),
                      limit=4)
    assert [f.t_capture_ns for f in frames] == [0, 40_000_000, 80_000_000, 120_000_000]


def test_realtime_file_is_paced_at_the_recorded_rate(tmp_path: Path, monkeypatch) -> None:
    import streamfuse.capture.sources

    path = tmp_path / "clip.mkv"
    write_video(path, 6, pts_step=40)
    clock = SleptClock()  # moves as the source sleeps: the waits add up to the file's span exactly
    monkeypatch.setattr(streamfuse.capture.sources, "time", clock)
    assert len(read_all("ir", SourceConfig(kind="file", path=str(path), realtime=True))) == 6
    assert clock.ns == 5 * 40_000_000  # 5 gaps of 40 ms


def test_skip_reads_unpaced_and_the_frames_after_it_are_paced_again(tmp_path: Path, monkeypatch) -> None:
    """A resumed realtime source discards what was delivered at once, then keeps the recorded rate; ``skip`` says how
    many frames it discarded (fewer at the end of the file)."""
    from streamfuse.capture.sources import BaseSource

    path = tmp_path / "clip.mkv"
    write_video(path, 6, pts_step=40)
    asked: list[float] = []
    monkeypatch.setattr(BaseSource, "_sleep", lambda self, seconds: asked.append(seconds))
    with open_source("ir", SourceConfig(kind="file", path=str(path), realtime=True)) as src:
        assert src.skip(3) == 3 and asked == []
        assert [src.read().seq for _ in range(2)] == [3, 4]
        assert len(asked) == 1 and asked[0] <= 0.04  # the second frame after the skip waits for its time (40 ms on)
        assert src.skip(10) == 1


def test_a_file_not_in_realtime_is_never_paced(tmp_path: Path, monkeypatch) -> None:
    from streamfuse.capture.sources import BaseSource

    path = tmp_path / "clip.mkv"
    write_video(path, 4, pts_step=40)
    monkeypatch.setattr(BaseSource, "_sleep", lambda self, seconds: pytest.fail(f"paced: asked {seconds} s"))
    assert len(read_all("ir", SourceConfig(kind="file", path=str(path), realtime=False))) == 4


def test_truncated_video_yields_what_decodes_then_says_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    write_video(path, 30, pts_step=40)
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(SourceError) as info, open_source("vis", SourceConfig(kind="file", path=str(cut))) as src:
        while (f := src.read()) is not None:
            got.append(f)
    msg = str(info.value)
    assert 0 < len(got) < 30 and "\n" not in msg
    assert str(cut) in msg and f"after frame {len(got)}" in msg and "truncated" in msg


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="a process's open files are listed in /proc")
def test_a_file_source_lets_go_of_its_file_when_closed_and_when_it_has_no_video(tmp_path: Path) -> None:
    """Replay opens its inputs again at each restart or resume: a file each open left open would add up."""
    import wave

    video, sound = tmp_path / "clip.mkv", tmp_path / "sound.wav"
    write_video(video, 3)
    with wave.open(str(sound), "wb") as out:  # a container without a video stream
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(bytes(1600))
    assert len(read_all("vis", SourceConfig(kind="file", path=str(video)))) == 3
    with pytest.raises(SourceError, match="has no video stream"):
        open_source("vis", SourceConfig(kind="file", path=str(sound))).open()
    held = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            held.add(os.readlink(fd))
    assert not held & {str(video), str(sound)}


def test_closing_a_source_whose_open_failed_or_that_is_closed_already_is_quiet(tmp_path: Path) -> None:
    """``close`` is idempotent and safe after a failed open (a replay closes every input it started)."""
    src = open_source("ir", SourceConfig(kind="file", path=str(tmp_path / "missing.mkv")))
    with pytest.raises(SourceError, match="video file not found"):
        src.open()
    src.close()
    write_video(tmp_path / "clip.mkv", 2)
    with open_source("ir", SourceConfig(kind="file", path=str(tmp_path / "clip.mkv"), realtime=False)) as src:
        assert src.read().seq == 0
    src.close()


@pytest.mark.parametrize("kind", ["file", "stream"])
def test_a_file_or_stream_without_a_path_is_one_line(kind: str) -> None:
    with pytest.raises(SourceError, match=f"^ir: no path given for a {kind} source$"):
        open_source("ir", SourceConfig(kind=kind)).open()


@pytest.mark.parametrize("content", [None, "fifo", b"this is not a video\n" * 50])
def test_missing_or_non_video_file_is_one_clear_line(tmp_path: Path, content: bytes | str | None) -> None:
    path = tmp_path / "clip.mp4"
    if content == "fifo":
        os.mkfifo(path)  # exists, but opening it would wait for a writer for ever
    elif content is not None:
        path.write_bytes(content)
    expected = {None: "video file not found", "fifo": "not a regular file"}.get(content, "not a readable video")
    with pytest.raises(SourceError, match=expected) as info:
        open_source("ir", SourceConfig(kind="file", path=str(path))).open()
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_nonexistent_camera_index_is_one_clear_line(capfd: pytest.CaptureFixture) -> None:
    with pytest.raises(SourceError, match="camera '57'") as info:
        open_source("vis", SourceConfig(kind="camera", path="57")).open()
    assert "\n" not in str(info.value)
    assert info.value.unreachable == sys.platform.startswith("linux")  # a device not there yet is waited for
    if sys.platform.startswith("linux"):  # the device an index stands for, named
        assert "(/dev/video57 missing; found: " in str(info.value)
    assert capfd.readouterr().err == ""  # no OpenCV warning lines on top of ours


@pytest.mark.parametrize("what", ["a FIFO", "a folder"])
def test_a_camera_path_that_is_no_camera_nor_video_is_one_line(tmp_path: Path, what: str) -> None:
    path = tmp_path / "cam"
    os.mkfifo(path) if what == "a FIFO" else path.mkdir()  # OpenCV waited on the FIFO for a writer, silently
    with pytest.raises(SourceError) as info:
        open_source("vis", SourceConfig(kind="camera", path=str(path))).open()
    assert str(info.value) == f"vis: camera {str(path)!r} is {what}, not a camera device or a video file"
    assert not info.value.unreachable  # not waited for: nothing will turn it into a camera


class _FakeCapture:
    """cv2.VideoCapture of a camera that delivers ``frames`` (None: a retrieve that comes back empty)."""

    def __init__(self, frames: list) -> None:
        self.frames, self.props, self.released = list(frames), {}, False

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def grab(self) -> bool:
        return bool(self.frames)

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        image = self.frames.pop(0)
        return image is not None, image

    def release(self) -> None:
        self.released = True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/null: a character device, as a camera's is")
def test_a_camera_device_is_asked_for_its_size_and_rate_stamped_at_grab_and_released(monkeypatch) -> None:
    """A device camera (a character device, /dev/null standing in for /dev/video0) gets the configured width, height
    and rate and a one-frame driver buffer; each frame is stamped on both clocks between the read's start and end; an
    empty frame is one line, and closing releases the device."""
    import time

    cap = _FakeCapture([np.full((48, 64, 3), 7, np.uint8), None])
    monkeypatch.setattr(cv2, "VideoCapture", lambda target: cap)
    with open_source("vis", SourceConfig(kind="camera", path="/dev/null", width=64, height=48, fps=15)) as src:
        assert cap.props == {cv2.CAP_PROP_FRAME_WIDTH: 64, cv2.CAP_PROP_FRAME_HEIGHT: 48, cv2.CAP_PROP_FPS: 15,
                             cv2.CAP_PROP_BUFFERSIZE: 1}
        before, before_mono = time.time_ns(), time.monotonic_ns()
        frame = src.read()
        assert before <= frame.t_capture_ns <= time.time_ns()
        assert before_mono <= frame.t_mono_ns <= time.monotonic_ns()
        assert frame.image.shape == (48, 64, 3) and frame.seq == 0
        with pytest.raises(SourceError, match="^vis: camera '/dev/null' returned an empty frame$"):
            src.read()
    assert cap.released


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/null: a character device, as a camera's is")
def test_a_cameras_bgra_frame_is_bgr_and_one_of_more_pixels_than_8k_is_refused_though_no_side_is_too_long(
        monkeypatch) -> None:
    bgra = np.dstack([np.full((48, 64, 3), (1, 2, 3), np.uint8), np.full((48, 64), 255, np.uint8)])
    too_many = np.zeros((4400, 8192, 3), np.uint8)  # 36 MP: each side within 8192, more pixels than 8192 x 4320
    cap = _FakeCapture([bgra, too_many])
    monkeypatch.setattr(cv2, "VideoCapture", lambda target: cap)
    with open_source("vis", SourceConfig(kind="camera", path="/dev/null")) as src:
        image = src.read().image
        assert image.shape == (48, 64, 3) and image[0, 0].tolist() == [1, 2, 3]
        with pytest.raises(SourceError, match=r"^vis: /dev/null: a 8192x4400 frame, larger than a camera's"):
            src.read()


def test_folder_is_sorted_numerically_with_times_from_fps(tmp_path: Path) -> None:
    for i in (1, 2, 10, 11, 3):  # a suffix in capitals is an image too
        cv2.imwrite(str(tmp_path / f"frame_{i}.{'PNG' if i == 10 else 'png'}"), np.full((8, 8, 3), i, np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    frames = read_all("ir", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=False))
    assert [int(f.image[0, 0]) for f in frames] == [1, 2, 3, 10, 11]
    assert [f.t_capture_ns for f in frames] == [i * 100_000_000 for i in (1, 2, 3, 10, 11)]  # frame n at n / fps


@pytest.mark.parametrize("names", [["a.png", "b.png", "c.png"], ["1700000000100.png", "1700000000133.png",
                                   "1700000000167.png"], ["x_1.png", "y_1.png", "z_2.png"],
                                   ["0000.png", "0005.png", "0010.png"], ["cover.png", "5.png", "6.png"]])
def test_a_folder_not_numbered_as_frames_are_is_timed_by_position(tmp_path, names):
    # no numbers, time stamps (steps of 33), a number repeated, steps past the most a folder of frames may lose (4),
    # a name without a number among numbered ones
    for i, name in enumerate(names):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), i, np.uint8))
    frames = read_all("ir", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=False, loop=False))
    assert [f.t_capture_ns for f in frames] == [0, 100_000_000, 200_000_000]


def test_a_macs_hidden_metadata_file_in_a_folder_is_no_frame(tmp_path):
    # a Mac copying onto a FAT or exFAT drive writes "._NAME" beside each file: read as a frame, it stopped the replay
    for n in (0, 1, 2):
        cv2.imwrite(str(tmp_path / f"{n:04d}.png"), np.full((8, 8, 3), n, np.uint8))
    (tmp_path / "._0001.png").write_bytes(b"\0\5\x16\7" + bytes(100))
    frames = read_all("ir", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=False, loop=False))
    assert [(int(f.image[0, 0]), f.t_capture_ns) for f in frames] == [(n, n * 100_000_000) for n in (0, 1, 2)]


@pytest.mark.parametrize("names", [["1700000000.966667.png", "1700000001.000000.png", "1700000001.033333.png"],
                                   ["1700000000.25.png", "1700000000.5.png", "1700000001.png"]])
def test_a_folder_named_by_decimal_time_stamps_is_read_in_their_order(tmp_path, names):
    # by the last number in the name alone, the fraction, a second's first frames came before the last second's
    for i, name in enumerate(names):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), i, np.uint8))
    frames = read_all("ir", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=False, loop=False))
    assert [int(f.image[0, 0]) for f in frames] == [0, 1, 2]


@pytest.mark.parametrize("names, numbers", [
    # three frames of every four lost (the most a folder of frames may lose): still timed by their numbers
    (["0000.png", "0004.png", "0008.png", "0012.png"], [0, 4, 8, 12]),
    # a camera's number before the frame number: the frame number is the last one in the name
    (["cam2_0000.png", "cam2_0001.png", "cam2_0003.png"], [0, 1, 3]),
    # a folder of one frame: its number, not position 0, so it pairs with the other stream's frame of that number
    (["0007.png"], [7])])
def test_a_folder_of_numbered_frames_is_timed_by_each_frames_own_number(tmp_path, names, numbers):
    # timed by position instead, each frame after a lost one moves onto the other stream's earlier frame
    for i, name in enumerate(names):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), i, np.uint8))
    frames = read_all("ir", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=False, loop=False))
    assert [f.t_capture_ns for f in frames] == [n * 100_000_000 for n in numbers]


def test_a_frame_larger_than_any_camera_is_refused_in_one_line_from_a_camera_not_from_a_folder(tmp_path):
    # a camera's frames were taken at any size: an 8000x6000 network camera made the rings and the live loop's
    # queues grow to 20 GB, and held every turn of the loop for seconds; a folder of large stills is the user's choice
    wide = np.zeros((16, 8200, 3), np.uint8)  # wider than 8192
    writer = cv2.VideoWriter(str(tmp_path / "wide.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (8200, 16))
    writer.write(wide)
    writer.release()
    with open_source("ir", SourceConfig(kind="camera", path=str(tmp_path / "wide.avi"))) as src, \
            pytest.raises(SourceError, match=r"^ir: .*wide\.avi: a 8200x16 frame, larger than a camera's \(at most "):
        src.read()
    cv2.imwrite(str(tmp_path / "0000.png"), wide)
    with open_source("ir", SourceConfig(kind="folder", path=str(tmp_path), realtime=False)) as src:
        assert src.read().image.shape == (16, 8200)


def test_a_looped_folder_goes_on_after_its_last_frame(tmp_path):
    for n in (1, 2, 3):
        cv2.imwrite(str(tmp_path / f"{n:04d}.png"), np.full((8, 8, 3), n, np.uint8))
    frames = read_all("ir", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=False, loop=True), limit=7)
    assert [f.t_capture_ns // 100_000_000 for f in frames] == [1, 2, 3, 4, 5, 6, 7]
    assert [int(f.image[0, 0]) for f in frames] == [1, 2, 3, 1, 2, 3, 1]
    assert frames[0].image.shape == (8, 8)
    for path in (tmp_path / "nope", tmp_path / "0001.png"):  # a file is no folder either
        with pytest.raises(SourceError, match="image folder not found"):
            open_source("ir", SourceConfig(kind="folder", path=str(path))).open()


def test_a_folder_source_without_a_path_or_without_images_is_one_line(tmp_path, monkeypatch):
    """An empty path is no folder (not the working folder's images); a folder of no images says so, not IndexError."""
    cv2.imwrite(str(tmp_path / "0000.png"), np.full((8, 8, 3), 1, np.uint8))
    monkeypatch.chdir(tmp_path)  # a folder of images, where an empty path would read them
    with pytest.raises(SourceError, match=r"^ir: image folder not found: ''$"):
        open_source("ir", SourceConfig(kind="folder", path="")).open()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frame")
    with pytest.raises(SourceError, match=r"^vis: no image files \(.*\.png.*\) in .*empty$"):
        open_source("vis", SourceConfig(kind="folder", path=str(tmp_path / "empty"))).open()


def test_a_folder_source_holding_a_symlink_loop_is_refused_as_it_opens_naming_the_source(tmp_path):
    # it failed at that frame's turn, after the frames before it, with the OS's line alone
    cv2.imwrite(str(tmp_path / "0000.png"), np.full((8, 8, 3), 1, np.uint8))
    (tmp_path / "0001.png").symlink_to("0001.png")
    with pytest.raises(SourceError, match=rf"^ir: image folder {tmp_path}: 0001.png cannot be read \(Too many levels "
                                          rf"of symbolic links\)$"):
        open_source("ir", SourceConfig(kind="folder", path=str(tmp_path), realtime=False)).open()


def test_a_looped_folder_that_lost_frames_starts_its_next_lap_after_its_last_frame_number(tmp_path):
    """Frames 0, 1 and 3 of 4 (frame 2 lost): the second lap starts at 4, not at 3, the last frame's own time."""
    for n in (0, 1, 3):
        cv2.imwrite(str(tmp_path / f"{n:04d}.png"), np.full((8, 8, 3), n, np.uint8))
    frames = read_all("ir", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=False, loop=True), limit=6)
    assert [f.t_capture_ns // 100_000_000 for f in frames] == [0, 1, 3, 4, 5, 7]


def test_a_frames_counts_are_its_own_and_an_8_bit_frame_after_a_16_bit_one_has_none(tmp_path):
    """Frame.counts is the 16-bit frame's own; a folder's 8-bit image after a 16-bit one carries no counts of the
    frame before."""
    cv2.imwrite(str(tmp_path / "0000.png"), np.full((8, 8), 9000, np.uint16))
    cv2.imwrite(str(tmp_path / "0001.png"), np.full((8, 8), 7, np.uint8))
    frames = read_all("ir", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=False, loop=False))
    assert int(frames[0].counts[0, 0]) == 9000 and frames[1].counts is None


def test_only_a_16_bit_grey_ir_frame_keeps_its_counts(tmp_path):
    """Counts are a thermal camera's (H, W) grey; a 16-bit colour image is brought to 8 bits and keeps none."""
    cv2.imwrite(str(tmp_path / "0000.png"), np.full((8, 8, 3), 9000, np.uint16))
    frames = read_all("ir", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=False, loop=False))
    assert frames[0].image.shape == (8, 8) and frames[0].counts is None


def test_a_visible_frame_is_bgr_whatever_its_channels_and_one_channel_is_grey(tmp_path):
    """A BGRA image loses its alpha; an (H, W, 1) image is (H, W) grey."""
    cv2.imwrite(str(tmp_path / "0000.png"), np.full((8, 8, 4), 200, np.uint8))
    with open_source("vis", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=False)) as src:
        assert src.read().image.shape == (8, 8, 3)
        assert src._convert(np.full((8, 8, 1), 5, np.uint8)).shape == (8, 8)


def test_a_realtime_source_does_not_sleep_through_a_jump_in_its_recorded_times(tmp_path, monkeypatch):
    """Frames 0-3 then frame 1000 (100 s later at 10 fps): pacing takes the jump out of its time line, so frame 1000
    is paced one frame interval after frame 3, not 100 s."""
    from streamfuse.capture.sources import BaseSource

    for n in (0, 1, 2, 3, 1000):
        cv2.imwrite(str(tmp_path / f"{n:04d}.png"), np.full((8, 8, 3), 1, np.uint8))
    asked: list[float] = []
    monkeypatch.setattr(BaseSource, "_sleep", lambda self, seconds: asked.append(seconds))
    frames = read_all("ir", SourceConfig(kind="folder", path=str(tmp_path), fps=10, realtime=True, loop=False))
    assert frames[-1].t_capture_ns == 100_000_000_000  # the frame keeps its own time; only the pacing skips the jump
    assert len(asked) == 4 and max(asked) <= 0.4


def _looped_source(kind: str, folder: Path, frames: int) -> SourceConfig:
    """A looped source of ``frames`` frames of distinct pixels (a 16-bit IR folder's ranges vary: its 8-bit
    conversion state changes from pass to pass at first)."""
    if kind == "file":
        write_video(folder / "clip.mkv", frames, pts_step=40)
        return SourceConfig(kind="file", path=str(folder / "clip.mkv"), realtime=False, loop=True)
    if kind == "mcap":
        from streamfuse.frames import Frame
        from streamfuse.recording import RecordConfig, Recorder

        with Recorder(RecordConfig(path=str(folder / "rig.mcap"))) as rec:
            for i in range(frames):
                rec.write(Frame("ir", i, 10**18 + i * 40_000_000, np.full((8, 8), 20 * i, np.uint8)))
        return SourceConfig(kind="mcap", path=str(folder / "rig.mcap"), realtime=False, loop=True)
    for i in range(frames):
        image = np.arange(64, dtype=np.uint16).reshape(8, 8) * (100 + 900 * i) if kind == "folder16" else \
            np.full((8, 8, 3), 20 * i, np.uint8)
        cv2.imwrite(str(folder / f"{i:04d}.png"), image)
    return SourceConfig(kind="folder", path=str(folder), fps=10, realtime=False, loop=True)


def test_a_virtual_clock_synthetic_source_skips_unrendered_and_goes_on_as_if_it_had_rendered(monkeypatch):
    """Its frames are a function of their seq: a restarted producer rendered every frame delivered since the run began
    before its first new one (an hour at 30 frames/s: 108,000)."""
    cfg = SourceConfig(kind="synthetic", width=32, height=24, realtime=False, seed=5)
    with open_source("vis", cfg) as src:
        expected = [src.read() for _ in range(41)][-1]
    monkeypatch.setattr(SyntheticScene, "render_vis", lambda *args: pytest.fail("rendered while skipping"))
    with open_source("vis", cfg) as src:
        assert src.skip(40) == 40
        monkeypatch.undo()
        got = src.read()
    assert (got.seq, got.t_capture_ns) == (expected.seq, expected.t_capture_ns)
    np.testing.assert_array_equal(got.image, expected.image)


@pytest.mark.parametrize("kind", ["file", "folder", "folder16", "mcap"])
@pytest.mark.parametrize("n", [3, 5 * 12, 5 * 12 + 2])
def test_a_looped_source_skips_whole_passes_unread_and_goes_on_as_if_it_had_read_them(tmp_path, monkeypatch, kind, n):
    """A restarted producer skips every frame delivered since its pass began: a loop inside one process is one pass
    to it, so that grew with the run (100,000 frames decoded after an hour at 30 frames/s). The frame after the skip
    is the one reading gives (seq, time, pixels), and at most about two passes are read, whatever the passes skipped."""
    cfg, per_pass = _looped_source(kind, tmp_path, 5), 5
    with open_source("ir", cfg) as src:
        expected = [src.read() for _ in range(n + 1)][-1]
    src = open_source("ir", cfg)
    reads = []
    kind_read = type(src)._read
    monkeypatch.setattr(type(src), "_read", lambda self: reads.append(1) or kind_read(self))
    with src:
        assert src.skip(n) == n
        skipped = len(reads)
        got = src.read()
    assert (got.seq, got.t_capture_ns) == (expected.seq, expected.t_capture_ns)
    np.testing.assert_array_equal(got.image, expected.image)
    assert skipped <= 3 * per_pass  # a pass read, maybe a second (a conversion state settling), then what is left
    if kind == "folder":  # 8-bit frames, no state to settle: the second pass's first frame starts the step over
        assert skipped <= 2 * per_pass
