"""The replay's inputs: a folder of frames counts its images (:func:`streamfuse.replay.inputs.resolve`), the span
check (:func:`~streamfuse.replay.inputs.outside`) counts a frame outside the other input's time span, so unpaired
before or after it, only beyond the pairing tolerance, and inputs without a pair say their times
(:func:`~streamfuse.replay.inputs.no_pairs`)."""

from __future__ import annotations

import errno
from fractions import Fraction
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest
from test_replay import make_cfg, write_video

from streamfuse.capture.sources import SourceConfig
from streamfuse.frames import Frame
from streamfuse.replay import run_replay
from streamfuse.replay.inputs import Reader, merged, no_pairs, outside, resolve
from streamfuse.video import decode_frames

MS = 1_000_000


def test_a_frame_within_the_tolerance_of_the_other_inputs_ends_is_not_outside_its_span():
    other = SimpleNamespace(first_ns=100 * MS, last_ns=200 * MS, ended=True)  # a Reader's span, its input ended
    tolerance = 20 * MS
    assert outside(80 * MS, other, tolerance) == "" and outside(80 * MS - 1, other, tolerance) == "before"
    assert outside(220 * MS, other, tolerance) == "" and outside(220 * MS + 1, other, tolerance) == "after"
    assert outside(0, SimpleNamespace(first_ns=None, last_ns=None, ended=True), tolerance) == "before"
    # while the other input goes on, its last frame so far is no end of its span
    assert outside(300 * MS, SimpleNamespace(first_ns=100 * MS, last_ns=200 * MS, ended=False), tolerance) == ""


def test_a_folder_input_counts_its_image_files_only(tmp_path):
    folder = tmp_path / "ir"
    folder.mkdir()
    (folder / "notes.txt").write_text("camera 2, night run\n")
    with pytest.raises(ValueError, match=r"ir input folder .*ir holds no image files \(.*\.png"):
        resolve("ir", SourceConfig(), folder)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.zeros((4, 4), np.uint8))
        (folder / f"._{i:03d}.png").write_bytes(b"\0\5\26\7")  # a Mac's metadata beside each frame: no frames
    inp = resolve("ir", SourceConfig(), folder)
    assert inp.cfg.kind == "folder" and inp.expected == 3  # the progress bar's total: frames, not the notes


def test_a_symlink_loop_met_in_an_input_folder_or_as_the_input_names_the_input_before_any_work(tmp_path):
    # "[Errno 40] Too many levels of symbolic links: '.../ir/003.png'" after the checks, and "Symlink loop from
    # '.../ir'" for the input itself: neither said which input, nor that it was one
    for name in ("ir", "vis"):
        (tmp_path / name).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / name / f"{i:03d}.png"), np.full((48, 64), 30 * i, np.uint8))
    (tmp_path / "ir" / "notes.txt").symlink_to("notes.txt")  # no frame: none of the replay's business
    out = tmp_path / "o.mp4"
    assert run_replay(make_cfg(), ir_path=tmp_path / "ir", vis_path=tmp_path / "vis", out_path=out).complete
    (tmp_path / "ir" / "003.png").symlink_to("003.png")
    with pytest.raises(ValueError, match=rf"^ir input folder {tmp_path / 'ir'}: 003.png cannot be read \(Too many "
                                         rf"levels of symbolic links\)$"):
        run_replay(make_cfg(), ir_path=tmp_path / "ir", vis_path=tmp_path / "vis", out_path=tmp_path / "p.mp4")
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(FileNotFoundError, match=rf"^vis input not found \(Too many levels of symbolic links\): "
                                                rf"{tmp_path / 'loop'}$"):
        run_replay(make_cfg(), ir_path=out, vis_path=tmp_path / "loop", out_path=tmp_path / "p.mp4")
    assert not any(tmp_path.glob("*p.mp4*"))


def test_a_folder_of_bag_files_without_metadata_yaml_is_said_to_be_one(tmp_path):
    """A ros2 bag's folder whose recorder was killed before writing metadata.yaml: not a frame folder to the user."""
    (tmp_path / "robot_0.db3").write_bytes(b"SQLite format 3\0")
    with pytest.raises(ValueError, match=r"holds no image files \(.*\); its robot_0.db3: a ros2 bag without its "
                                         r"metadata.yaml \(`ros2 bag reindex` writes it\)"):
        resolve("ir", SourceConfig(), tmp_path)


def test_inputs_without_a_pair_say_a_videos_own_times_and_a_recordings_from_its_first_frame():
    sync = SimpleNamespace(mode="nearest", slop_ms=20.0, hold_ms=50.0)
    first, last = {"ir": 10_000 * MS, "vis": 100_000 * MS}, {"ir": 20_000 * MS, "vis": 110_500 * MS}
    videos = tuple(SimpleNamespace(cfg=SimpleNamespace(kind="file")) for _ in range(2))
    assert no_pairs(videos, first, last, sync) == ("no pairs formed: the IR and visible times do not overlap (IR "
                                                   "10.000-20.000 s, visible 100.000-110.500 s)")
    recording = tuple(SimpleNamespace(cfg=SimpleNamespace(kind="mcap")) for _ in range(2))
    assert no_pairs(recording, first, last, sync).endswith("(IR 0.000-10.000 s, visible 90.000-100.500 s)")


def test_a_video_input_is_the_path_given_over_the_configs_with_its_own_rate_count_and_threads(tmp_path):
    """``--ir`` names the input over ``ir.path``; the container's rate and frame count (the progress bar's total) are
    used, not ``ir.fps``; ``replay.codec_threads`` sets the decoder's threads over ``ir.decode_threads``."""
    given, configured = tmp_path / "given.mp4", tmp_path / "configured.mp4"
    write_video(given, 6, 25)
    write_video(configured, 3, 30)
    inp = resolve("ir", SourceConfig(path=str(configured), fps=30.0, decode_threads=2), given, decode_threads=3)
    assert (inp.cfg.path, inp.cfg.kind, inp.rate, inp.expected) == (str(given), "file", 25, 6)
    assert inp.cfg.decode_threads == 3
    assert resolve("ir", SourceConfig(path=str(configured), decode_threads=2), None).cfg.decode_threads == 2


class _FailingSource:
    """Two frames, then an error FFmpeg raised that the source did not word (a frame's conversion, say)."""

    def __init__(self):
        self.frames = [Frame("ir", seq, seq * 40 * MS, np.zeros((4, 4), np.uint8)) for seq in range(2)]

    def read(self):
        if self.frames:
            return self.frames.pop(0)
        raise av.error.InvalidDataError(errno.EINVAL, "Invalid data found when processing input")


@pytest.mark.parametrize("threaded", [True, False])
def test_a_decoder_error_the_source_did_not_word_ends_the_input_early_not_at_its_end(threaded):
    """Taken for the input's end, the replay was complete without the rest of the video."""
    reader = Reader("ir", _FailingSource(), "ir.mp4", [], [], {"ir": 40 * MS}, threaded=threaded)
    reader.start()
    try:
        assert [f.seq for f in iter(reader.next, None)] == [0, 1]
    finally:
        reader.stop()
    assert reader.error == "ir: ir.mp4: decoding failed: Invalid data found when processing input"


def test_a_recordings_frames_are_each_given_the_next_frame_of_their_own_stream_only():
    """A recording is one reader of both streams: the frame after an IR frame may be visible; taken for the next IR
    frame, it would have paced replay drop an IR frame whose next IR frame is not due (newest wins, as live)."""
    times = [("ir", 0), ("vis", 10), ("vis", 50), ("ir", 60)]
    frames = iter([Frame(stream, seq, t * MS, np.zeros((4, 4), np.uint8)) for seq, (stream, t) in enumerate(times)])
    recording = Reader("recording", SimpleNamespace(read=lambda: next(frames, None)), "rig.mcap", [], [],
                       {"ir": 40 * MS, "vis": 40 * MS}, threaded=False)
    assert [(f.stream, t, after) for f, t, after in merged([recording])] == [
        ("ir", 0, None), ("vis", 10 * MS, 50 * MS), ("vis", 50 * MS, None), ("ir", 60 * MS, None)]


def test_inputs_without_a_pair_of_which_one_is_no_video_say_times_from_the_earlier_first_frame():
    """A video's own times only when both inputs are videos: beside a folder or a recording they count from the
    earlier input's first frame, as the other input's do."""
    sync = SimpleNamespace(mode="latest", slop_ms=20.0, hold_ms=50.0)
    first, last = {"ir": 10_000 * MS, "vis": 100_000 * MS}, {"ir": 20_000 * MS, "vis": 110_500 * MS}
    mixed = (SimpleNamespace(cfg=SimpleNamespace(kind="file")), SimpleNamespace(cfg=SimpleNamespace(kind="folder")))
    assert no_pairs(mixed, first, last, sync).endswith("(IR 0.000-10.000 s, visible 90.000-100.500 s)")


@pytest.mark.parametrize("mode, named", [("slop", "sync.slop_ms = 20"), ("latest", "sync.hold_ms = 50")])
def test_inputs_that_overlap_without_a_pair_name_the_tolerance_of_the_sync_mode(mode, named):
    """Latest mode pairs within ``hold_ms``, not ``slop_ms``: the setting to change is the one the mode uses."""
    sync = SimpleNamespace(mode=mode, slop_ms=20.0, hold_ms=50.0)
    first, last = {"ir": 0, "vis": 5 * MS}, {"ir": 1_000 * MS, "vis": 1_005 * MS}
    videos = tuple(SimpleNamespace(cfg=SimpleNamespace(kind="file")) for _ in range(2))
    assert no_pairs(videos, first, last, sync).endswith(f"no IR and visible frames there are within {named} ms of "
                                                        f"each other")


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_one_video_or_folder_given_as_both_inputs_is_refused_before_any_work(tmp_path, kind):
    # each frame was fused with itself into a complete-looking output; evaluate refuses one folder given twice
    src = tmp_path / "ir.mp4"
    if kind == "folder":
        (src := tmp_path / "ir").mkdir()
        for i in range(2):
            cv2.imwrite(str(src / f"{i:03d}.png"), np.zeros((48, 64), np.uint8))
    else:
        write_video(src, 2, 10)
    with pytest.raises(ValueError, match=rf"the IR and visible inputs are one {kind} .*: give each its own"):
        run_replay(make_cfg(), ir_path=src, vis_path=tmp_path / "." / src.name, out_path=tmp_path / "o.mkv")
    assert not list(tmp_path.glob("*o.mkv*"))  # nothing written


def test_a_video_with_non_square_pixels_is_said_with_what_the_output_shows(tmp_path, caplog):
    # an anamorphic visible video (pixels twice as wide as high) was fused and written pixel for pixel without a word:
    # the output, with square pixels, showed half as wide as the input did in its players
    path = tmp_path / "vis.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8))),
                       *stream.encode(None)]:
            container.mux(packet)
    square = tmp_path / "ir.mp4"
    write_video(square, 2, 25, grey=True)
    with caplog.at_level("WARNING", "streamfuse"):
        resolve("ir", SourceConfig(), square)
        assert not caplog.records
        resolve("vis", SourceConfig(), path)
    assert (f"vis input {path} has non-square pixels (sample aspect ratio 2:1): they are fused and written as stored, "
            f"so the output shows 64x48 where its players show 128x48" in caplog.text)


def test_inputs_of_one_frame_each_give_a_complete_output_of_that_pair(tmp_path):
    """A single pair is a replay's whole work, not a sign that the inputs' times never met."""
    write_video(tmp_path / "ir.mp4", 1, 25)
    write_video(tmp_path / "vis.mp4", 1, 25)
    out = tmp_path / "out.mp4"
    summary = run_replay(make_cfg(), ir_path=tmp_path / "ir.mp4", vis_path=tmp_path / "vis.mp4", out_path=out)
    assert summary.complete and summary.written == 1 and not summary.stopped
    assert len(list(decode_frames(out))) == 1
