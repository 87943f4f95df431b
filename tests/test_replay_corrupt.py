"""Offline replay of damaged or odd inputs found by seeded mutation: a damaged picture among a file's last packets,
which a frame-threaded decoder drops without an error; a resume sidecar that is JSON of the wrong shape; a visible
frame of another size; a recording holding an image without pixels or colour IR; a stop before the first frame; an
H.264 picture the decoder drops; an FFV1 slice whose damage the decoder hides (its CRC fails); a recording still
being written.
Each is one line naming what and where, or a run that goes on correctly; nothing damaged passes as complete."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_replay import _StopAt, interrupted_replay, make_cfg, write_video

import streamfuse.processor
from streamfuse.atomic_write import partial_path
from streamfuse.capture.sources import SourceConfig, open_source
from streamfuse.frames import Frame
from streamfuse.recording import RecordConfig, Recorder
from streamfuse.replay import ReplayError, run_replay
from streamfuse.replay.resume import sidecar_path

pytestmark = pytest.mark.timeout(120)

N = 24  # frames per input


def _video(path: Path, fmt: str, codec: str = "ffv1", options: dict[str, str] | None = None) -> None:
    """N moving 64x48 frames at 25 fps; FFV1 is what a lossless recording or replay output holds."""
    yy, xx = np.mgrid[0:48, 0:64]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25, options=options or {"slicecrc": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(N):
            img = ((xx * 4 + yy * 2 + 9 * i) % 256).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.dstack([img, 255 - img, img // 2]), format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _damage_packet(path: Path, index: int) -> None:
    """Flip the bits of the 10 bytes before the last 2 of video packet ``index`` (FFV1 keeps its slice sizes there,
    so that picture fails to decode); the container around it stays intact."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    pos, size = packets[index]
    data = bytearray(path.read_bytes())
    for i in range(pos + size - 12, pos + size - 2):
        data[i] ^= 0x55
    path.write_bytes(bytes(data))


# PyAV 18 and later drop a picture that fails while a frame-threaded decoder drains, as FFmpeg does; PyAV 17 (what
# pip installs for Python 3.10) raises its error there, which stops a replay at that point in one line
DRAINS_SILENTLY = int(av.__version__.split(".")[0]) >= 18


def _stopped_by_the_decoder(text: str) -> bool:
    return "decoding stopped after frame" in text and "Invalid data found when processing input" in text


@pytest.mark.parametrize("fmt, ext, index, crc", [("avi", ".avi", -1, False), ("avi", ".avi", -8, False),
                                                  ("avi", ".avi", -1, True), ("avi", ".avi", -8, True),
                                                  ("matroska", ".mkv", -1, True)])
def test_a_damaged_picture_among_the_last_packets_is_reported_not_taken_for_the_end(tmp_path, fmt, ext, index, crc):
    """16 decoder threads: the damaged picture is decoded while the decoder drains, where FFmpeg drops it and every
    later one without an error; the AVI end check counts packets and Matroska's allows one frame, so both missed it
    and the replay ended "complete", saying the visible input ended first. With slice CRCs the damage is found before
    the decoder, whatever PyAV's version."""
    ir, vis, out = tmp_path / f"ir{ext}", tmp_path / f"vis{ext}", tmp_path / "o.mkv"
    options = {"slicecrc": "1"} if crc else {"slicecrc": "0", "level": "3"}
    _video(ir, fmt, options=options)
    _video(vis, fmt, options=options)
    cfg = make_cfg(replay={"codec_threads": 16})
    whole = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=tmp_path / "whole.mkv")
    assert whole.complete and whole.frames == {"ir": N, "vis": N} and whole.written == N
    _damage_packet(vis, index)
    with pytest.raises(ReplayError) as err:
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    text = str(err.value)
    assert "\n" not in text and "vis input ended early" in text and str(vis) in text
    assert not err.value.summary.complete and not out.exists()
    assert err.value.summary.note == ""  # not "the visible input ended first", a warning before the error's line
    if crc:
        assert (f"truncated or corrupt video: decoding stopped after frame {N + index} (t={(N + index - 1) / 25:.3f} "
                f"s); picture {N + index + 1} fails its slice checksums (FFV1 CRC)") in text
        assert err.value.summary.frames["vis"] == N + index
    elif DRAINS_SILENTLY:
        assert f"truncated or corrupt video: decoding stopped after frame {N + index}" in text
        assert err.value.summary.frames["vis"] == N + index
    else:
        assert _stopped_by_the_decoder(text) and err.value.summary.frames["vis"] <= N + index


def _decodes(path: Path, explode: bool) -> int:
    """Frames a plain single-threaded FFmpeg decode of ``path`` gives; InvalidDataError where it fails."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        if explode:
            stream.codec_context.options = {"err_detect": "explode"}
        return sum(1 for _ in container.decode(stream))


def _damage_the_decoder_can_tell(path: Path, index: int, flipped: int) -> None:
    """Flip ``flipped`` bytes inside video packet ``index``, from its middle on: the first such run that FFmpeg
    conceals (a plain decode gives every frame) but can tell (``err_detect: explode`` fails). Whether a flip is told
    depends on the bytes the encoder wrote (CABAC has no redundancy: a flip may decode, silently, into another valid
    picture), and libx264's output for these tiny frames differs now and then from one encode to the next in one
    busy process (measured: 9 encodings in 200, none with its AVX-512 code or mb-tree off): no fixed offset is always
    damage FFmpeg tells (4 bytes flipped at the middle of picture 13 decoded silently in 11 of those 200 files)."""
    with av.open(str(path)) as container:
        pos, size = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size][index]
    clean = path.read_bytes()
    for start in range(pos + size // 2, pos + size - flipped):
        data = bytearray(clean)
        for i in range(start, start + flipped):
            data[i] ^= 0x55
        path.write_bytes(bytes(data))
        try:
            _decodes(path, explode=True)
        except av.InvalidDataError:
            if _decodes(path, explode=False) == N:
                return
    pytest.fail(f"no {flipped} bytes in picture {index + 1} of {path} whose damage FFmpeg both conceals and tells")


@pytest.mark.parametrize("codec, options, flipped", [("libx264", {"bf": "0"}, 4), ("mpeg4", {}, 16)])
def test_a_damaged_picture_the_decoder_would_conceal_stops_the_replay(tmp_path, codec, options, flipped):
    """Bits flipped inside a picture's data: FFmpeg's decoder conceals the damage and returns a frame without an
    error, so the replay ended "complete" with a damaged frame in it and nothing said."""
    ir, vis, out = tmp_path / "ir.mkv", tmp_path / "vis.mkv", tmp_path / "o.mkv"
    for path in (ir, vis):
        _video(path, "matroska", codec, options)
    _damage_the_decoder_can_tell(vis, 12, flipped)
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    text = str(err.value)
    assert "\n" not in text and "vis input ended early" in text and _stopped_by_the_decoder(text)
    assert err.value.summary.frames["vis"] <= 12 and not err.value.summary.complete and not out.exists()


@pytest.mark.parametrize("threads, index", [(1, 12), (16, 12), (16, 0)])
def test_a_damaged_ffv1_slice_the_decoder_conceals_stops_the_replay_after_the_whole_pictures(tmp_path, threads,
                                                                                            index):
    """Bits flipped inside an FFV1 slice (its size intact): FFmpeg's decoder logs the CRC mismatch, puts the previous
    picture's pixels in its place and returns the frame without an error, so the replay ended "complete" with the
    damage in it. The pictures before it (held by frame threads when it is found) are all fused; a damaged first
    picture is found too (its slices still end in CRC footers, so the file is not taken for one without CRCs)."""
    ir, vis, out = tmp_path / "ir.mkv", tmp_path / "vis.mkv", tmp_path / "o.mkv"
    for path in (ir, vis):
        _video(path, "matroska")
    with av.open(str(vis)) as container:
        pos, size = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size][index]
    data = bytearray(vis.read_bytes())
    for i in range(pos + size // 2, pos + size // 2 + 8):
        data[i] ^= 0xA5
    vis.write_bytes(bytes(data))
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(replay={"codec_threads": threads}), ir_path=ir, vis_path=vis, out_path=out)
    text = str(err.value)
    assert "\n" not in text and "vis input ended early" in text and str(vis) in text
    where = f"after frame {index} (t={(index - 1) / 25:.3f} s)" if index else "before the first frame"
    assert (f"truncated or corrupt video: decoding stopped {where}; picture {index + 1} fails its slice "
            "checksums (FFV1 CRC)") in text
    assert err.value.summary.frames["vis"] == index and not out.exists()


@pytest.mark.parametrize("delta", [-1, 1, 16])
def test_a_first_ffv1_picture_whose_slice_size_is_damaged_stops_the_replay(tmp_path, delta):
    """A slice's size changed a little (FFmpeg still decodes the picture, concealing it): the first picture's slices
    no longer read as ending in CRC footers, so the file was taken for one written without CRCs, and the replay
    ended "complete" with none of its pictures checked. The second picture tells that the file stores them."""
    ir, vis, out = tmp_path / "ir.mkv", tmp_path / "vis.mkv", tmp_path / "o.mkv"
    for path in (ir, vis):
        _video(path, "matroska")
    with av.open(str(vis)) as container:
        first = next(bytes(p) for p in container.demux(container.streams.video[0]) if p.size)
    data = bytearray(vis.read_bytes())
    at = data.find(first) + len(first) - 6  # the low byte of the last slice's 24-bit size (its footer's first 3)
    data[at] = (data[at] + delta) % 256
    vis.write_bytes(bytes(data))
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    assert ("truncated or corrupt video: decoding stopped before the first frame; picture 1 fails its slice "
            "checksums (FFV1 CRC)") in str(err.value)
    assert err.value.summary.frames["vis"] == 0 and not out.exists()


def test_ffv1_without_slice_checksums_is_read_whole(tmp_path):
    """An FFV1 file written without CRCs (FFmpeg's default before version 3's slicecrc) is not taken for damaged."""
    ir, vis, out = tmp_path / "ir.mkv", tmp_path / "vis.mkv", tmp_path / "o.mkv"
    for path in (ir, vis):
        _video(path, "matroska", options={"slicecrc": "0", "level": "3"})
    summary = run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    assert summary.complete and summary.frames == {"ir": N, "vis": N} and summary.written == N


def test_a_damaged_h264_picture_the_decoder_drops_is_reported(tmp_path, caplog):
    """H.264 (not one picture per packet everywhere: a field may be a packet) is not failed for it, but the count of
    packets that gave no frame is said; it went unreported, the missing frame counted only as an unpaired partner."""
    ir, vis, out = tmp_path / "ir.nut", tmp_path / "vis.nut", tmp_path / "o.mkv"
    for path in (ir, vis):
        _video(path, "nut", "libx264", {"bf": "0"})
    with av.open(str(vis)) as container:
        pos, size = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size][-1]
    data = bytearray(vis.read_bytes())
    data[pos:pos + size] = bytes(size)  # the last picture's NAL units: zeros the decoder rejects
    vis.write_bytes(bytes(data))
    if not DRAINS_SILENTLY:
        with pytest.raises(ReplayError) as err:
            run_replay(make_cfg(replay={"codec_threads": 16}), ir_path=ir, vis_path=vis, out_path=out)
        assert _stopped_by_the_decoder(str(err.value)) and str(vis) in str(err.value)
        return
    with caplog.at_level(logging.WARNING):
        summary = run_replay(make_cfg(replay={"codec_threads": 16}), ir_path=ir, vis_path=vis, out_path=out)
    assert summary.frames == {"ir": N, "vis": N - 1} and summary.written == N - 1
    assert (f"{vis}: 1 of its {N} packets decoded to no frame (damaged data, or a stream cut before a keyframe)"
            in caplog.text)


@pytest.mark.parametrize("content", ["[1]", "null", '{"fingerprint": [1]}', '"x"'])
def test_a_sidecar_that_is_json_of_another_shape_is_refused_with_the_reason(tmp_path, content):
    """It raised AttributeError (a traceback); then it started over, deleting the frames on disk, as an unreadable
    sidecar did."""
    ir, vis, out = tmp_path / "ir.mp4", tmp_path / "vis.mp4", tmp_path / "o.mp4"
    write_video(ir, 12, 25, grey=True, size=(32, 24))
    write_video(vis, 12, 25, size=(32, 24))
    interrupted_replay(make_cfg(), ir, vis, out, stop=5)
    sidecar_path(out).write_text(content)
    kept = partial_path(out).read_bytes()
    with pytest.raises(FileExistsError, match=f"its sidecar {sidecar_path(out)} is unreadable, .* the 4 frames"):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert partial_path(out).read_bytes() == kept


def test_a_visible_frame_of_another_size_names_the_input_and_gives_no_resume_hint(tmp_path):
    """A damaged or stray image in a frames folder: the stop named no input and said --resume would continue, but a
    resumed run meets the same frame again."""
    import cv2

    for name, channels in (("ir", ()), ("vis", (3,))):
        (tmp_path / name).mkdir()
        for i in range(8):
            shape = (1, 1) if name == "vis" and i == 5 else (48, 64)
            cv2.imwrite(str(tmp_path / name / f"{i:04d}.png"), np.full(shape + channels, 30 * i, np.uint8))
    out = tmp_path / "o.mkv"
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=tmp_path / "ir", vis_path=tmp_path / "vis", out_path=out)
    text = str(err.value)
    assert "\n" not in text and "--resume" not in text
    assert (f"output frame 5 is 1x1, the video's frames are 64x48 (the visible input {tmp_path / 'vis'} changes size "
            f"at its frame 5, counted from 0); 5 frames kept") in text
    assert not out.exists() and err.value.summary.written == 5


def _recording(path: Path, image: Callable[[str, int], np.ndarray]) -> None:
    """10 visible and 10 IR frames at 25 fps (IR 3 ms later) with the images ``image(stream, i)``."""
    t0 = 1_700_000_000_000_000_000
    with Recorder(RecordConfig(path=str(path))) as rec:
        for i in range(10):
            rec.write(Frame("vis", i, t0 + i * 40_000_000, image("vis", i)))
            rec.write(Frame("ir", i, t0 + i * 40_000_000 + 3_000_000, image("ir", i)))


def test_a_recorded_image_without_pixels_stops_the_replay_in_one_line(tmp_path):
    """It reached OpenCV's resize, whose assertion escaped as a traceback."""
    rec, out = tmp_path / "rig.mcap", tmp_path / "o.mkv"
    shapes = {"ir": (48, 64), "vis": (48, 64, 3)}
    _recording(rec, lambda s, i: np.zeros((0, 0) if s == "ir" and i == 4 else shapes[s], np.uint8))
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=rec, out_path=out)
    text = str(err.value)
    assert "\n" not in text and f"recording {rec} is truncated or corrupt" in text
    assert "an image of 0x0 pixels on /ir/image" in text and not out.exists()


def test_a_recording_of_colour_ir_replays_it_grey_as_live_capture_does(tmp_path):
    """A bag of a colour-mapped thermal camera: the colour IR reached the fuser, which failed on the shapes."""
    rec, out = tmp_path / "rig.mcap", tmp_path / "o.mkv"
    _recording(rec, lambda s, i: np.full((48, 64, 3), 20 * i, np.uint8))
    summary = run_replay(make_cfg(), ir_path=rec, out_path=out)
    assert summary.complete and summary.frames == {"ir": 10, "vis": 10} and summary.written == 10


def test_a_stop_before_the_first_frame_says_no_output_was_written(tmp_path, monkeypatch):
    """The partial file is created with the first encoded frame: the stop said it was "gone (its folder removed or
    renamed)" and left a sidecar vouching for a file that never existed."""
    ir, vis, out = tmp_path / "ir.mp4", tmp_path / "vis.mp4", tmp_path / "o.mkv"
    write_video(ir, 6, 25, grey=True, size=(32, 24))
    write_video(vis, 6, 25, size=(32, 24))
    monkeypatch.setattr(streamfuse.processor, "config_fuser", lambda *a: _StopAt(1, ValueError))
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    assert str(err.value) == "replay stopped: ValueError; no output written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir.mp4", "vis.mp4"]


@pytest.mark.parametrize("frames", [40, 41])
def test_a_complete_avi_whose_end_is_no_exact_float_is_read_to_its_end(tmp_path, frames):
    """AVI's announced end (frames x 1/25 s) is a float: 40 frames end at 8/5 s exactly, under the float 1.6, and the
    end of the last packet's slot, compared exactly, took a complete file for a truncated one."""
    path = tmp_path / "v.avi"
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 4 * i, np.uint8), format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with open_source("vis", SourceConfig(kind="file", path=str(path), realtime=False)) as src:
        assert sum(1 for _ in iter(src.read, None)) == frames


def test_a_recording_still_being_written_is_refused_not_called_truncated(tmp_path):
    """Its partial file read while a live run writes it ended where the writer was: "truncated or corrupt after N
    frames", and a partial output of those frames."""
    path = tmp_path / "rig.mcap"
    image = np.zeros((48, 64), np.uint8)
    with Recorder(RecordConfig(path=str(path), flush_s=0.01)) as rec:
        for i in range(4):
            rec.write(Frame("ir", i, 1_000_000 + i * 40_000_000, image))
            rec.write(Frame("vis", i, 1_000_000 + i * 40_000_000, np.dstack([image] * 3)))
        partial = tmp_path / ".rig.mcap.partial"
        with pytest.raises(ValueError, match=f"^ir input {partial} is being recorded by a running run \\(its "
                                             f"record.path\\); replay it once that run has ended and named it$"):
            run_replay(make_cfg(), ir_path=partial, out_path=tmp_path / "o.mkv")
    assert not list(tmp_path.glob("*o.mkv*"))
    assert run_replay(make_cfg(), ir_path=path, out_path=tmp_path / "o.mkv").written == 4


@pytest.mark.parametrize("kept, damaged", [(-5, "its summary or footer, after all its data,"), (0.5, "a record")])
def test_a_recording_cut_inside_a_record_says_what_is_damaged_and_that_recover_may_save_its_frames(tmp_path, kept,
                                                                                                    damaged):
    """A damaged footer said Python's "unpack requires a buffer of 8 bytes" (a cut chunk: "EndOfFile"), naming neither
    the damage nor recover, which saves the frames before it."""
    rec, out = tmp_path / "rig.mcap", tmp_path / "o.mkv"
    shapes = {"ir": (48, 64), "vis": (48, 64, 3)}
    _recording(rec, lambda s, i: np.full(shapes[s], 10 * i, np.uint8))
    data = rec.read_bytes()
    rec.write_bytes(data[:kept if kept < 0 else int(len(data) * kept)])
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=rec, out_path=out)
    assert re.search(rf"recording {re.escape(str(rec))} is truncated or corrupt after \d+ frames \({damaged} runs past "
                     rf"the file's end: the file is cut short, or a record's length is damaged\); `python -m "
                     rf"streamfuse recover {re.escape(str(rec))} --out NEW.mcap` may save the frames before the "
                     rf"damage;",
                     str(err.value)), str(err.value)
