"""The frame processor: its stages in order with their state, its settings from a config, and live and replay giving
bit-identical frames for one recording because both run it."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from streamfuse.capture.mcap_source import read_recording
from streamfuse.config import config_from_dict, load_config
from streamfuse.configs import resolve
from streamfuse.frames import Frame, FramePair, SizeMismatch
from streamfuse.postprocess import PostConfig, TemporalDenoiser, restore_colour
from streamfuse.processor import FrameProcessor, Processed, config_fuser, still_pair
from streamfuse.recording import RecordConfig, Recorder
from streamfuse.register import RegisterConfig, Registration
from streamfuse.stabilize import LevelStabilizer, StabilizeConfig
from streamfuse.sync import Pairer
from streamfuse.video import decode_frames
from streamfuse.wire import decode_message


class _Recording:
    """A fuser that returns its IR input and keeps what it was called with."""

    name, version = "recording", "1"

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray, str]] = []

    def fuse(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
        self.calls.append((ir, vis_y, stream))
        return ir.astype(np.float32) + 0.25

    def stats(self) -> dict[str, float]:
        return {}


def test_stages_run_in_order_with_their_state(rng):
    """Resize, stabilise, fuse, filter, colour: each output equals the stages applied by hand, frame after frame."""
    stab, post = StabilizeConfig(0.8), PostConfig(denoise=0.5)
    fuser = _Recording()
    processor = FrameProcessor(fuser, stream="cam", stabilize=stab, post=post)
    stabilize, denoise = LevelStabilizer(stab), TemporalDenoiser(post)
    for k, gain in enumerate((1.0, 1.6, 1.0)):  # IR gain jumps up and back
        ir = np.clip(rng.normal(80, 20, (12, 16)) * gain, 0, 255).astype(np.uint8)
        vis = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # IR at half size: resized to the visible size
        out = processor(still_pair(ir, vis, k))
        resized = still_pair(ir, vis).ir_at_vis_size()
        expected_ir = stabilize(resized)
        assert (k == 0) == np.array_equal(expected_ir, resized)  # the first frame passes, the jumps are held back
        np.testing.assert_array_equal(fuser.calls[-1][0], expected_ir)
        assert fuser.calls[-1][2] == "cam" and fuser.calls[-1][1].shape == (24, 32)
        np.testing.assert_array_equal(out.fused_y, expected_ir + np.float32(0.25))
        np.testing.assert_array_equal(out.filtered_y, denoise(out.fused_y))
        np.testing.assert_array_equal(out.image, restore_colour(out.filtered_y, vis, post))
        buffer = np.full(processor.output_shape(still_pair(ir, vis)), 7, np.uint8)  # e.g. a loaned pool slot
        assert processor.output_shape(still_pair(ir, vis)) == (24, 32, 3)
        assert set(out.timings) == {"fuse", "postprocess"} and min(out.timings.values()) >= 0
    again = FrameProcessor(_Recording(), stream="cam", post=post)
    pair = still_pair(ir, vis)
    into = again(pair, buffer)  # the same frame built in a given buffer: that buffer, the same pixels
    assert into.image is buffer
    np.testing.assert_array_equal(buffer, FrameProcessor(_Recording(), stream="cam", post=post)(pair).image)


def test_from_config_takes_the_stream_and_the_settings():
    cfg = config_from_dict({"fuse": {"name": "max"}, "stabilize": {"strength": 0.5}, "post": {"encoding": "mono8"},
                            "publish": {"topic": "fused/x"}, "ir": {"resize": "error"}})
    processor = FrameProcessor.from_config(cfg)
    assert processor.stream == "fused/x" and processor.fuser.name == "max" and processor.register.resize == "error"
    assert processor.stabilize.rate == pytest.approx(0.5) and processor.post.encoding == "mono8"
    recording = _Recording()
    given = FrameProcessor.from_config(cfg, recording, stream="default")
    assert given.stream == "default" and given.fuser is recording  # a fuser given (built once, shared) is the one used
    out = processor(still_pair(np.zeros((8, 8), np.uint8), np.full((8, 8, 3), 90, np.uint8)))
    assert isinstance(out, Processed) and out.image.shape == (8, 8) and out.image.dtype == np.uint8
    with pytest.raises(ValueError, match=r"IR frame 0 is 6x4 but visible frame 0 is 8x10; set resize: resize"):
        processor(still_pair(np.zeros((4, 6), np.uint8), np.zeros((10, 8, 3), np.uint8)))  # width x height, each


def test_timings_are_milliseconds_of_the_fuse_and_the_postprocess_stages(monkeypatch):
    """``fuse`` covers stages 0-2 and ``postprocess`` stages 3-4, in milliseconds: on a clock that only the fuser (3 ms)
    and the temporal filter (2.5 ms) advance, each stage gets its own time."""
    clock = [0]
    monkeypatch.setattr("streamfuse.processor.time", SimpleNamespace(perf_counter_ns=lambda: clock[0]))

    class _Slow(_Recording):
        def fuse(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
            clock[0] += 3_000_000
            return super().fuse(ir, vis_y, stream)

    processor = FrameProcessor(_Slow(), post=PostConfig(denoise=0.5))
    denoise = processor.denoise

    def slow_denoise(y: np.ndarray) -> np.ndarray:
        clock[0] += 2_500_000
        return denoise(y)

    processor.denoise = slow_denoise
    out = processor(still_pair(np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8)))
    assert out.timings == {"fuse": 3.0, "postprocess": 2.5}


def test_output_shape_follows_the_post_encoding():
    # a live publisher loans a slot of this shape: a mono8 stream's frame must fit it
    pair = still_pair(np.zeros((6, 8), np.uint8), np.zeros((12, 16, 3), np.uint8))
    mono = FrameProcessor(_Recording(), post=PostConfig(encoding="mono8"))
    assert mono.output_shape(pair) == (12, 16) and FrameProcessor(_Recording()).output_shape(pair) == (12, 16, 3)
    slot = np.zeros(mono.output_shape(pair), np.uint8)
    assert mono(pair, slot).image is slot


def test_still_pair_gives_both_frames_its_seq():
    pair = still_pair(np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint8), seq=7)
    assert (pair.ir.stream, pair.ir.seq, pair.vis.stream, pair.vis.seq) == ("ir", 7, "vis", 7)


def test_config_fuser_hands_each_fuser_its_own_sections(monkeypatch):
    """A baseline gets the ``baseline`` section; the model gets ``hclfuse``, ``engine`` and ``align`` (each changed
    from its default here, so a section left out shows)."""
    assert config_fuser(config_from_dict({"fuse": {"name": "max"}, "baseline": {"contrast": 1.5}})).name == \
        "max+contrast1.5"
    import streamfuse.model.fuser

    built = []
    monkeypatch.setattr(streamfuse.model.fuser, "build_hclfuse", lambda *args: built.append(args) or _Recording())
    cfg = config_from_dict({"fuse": {"name": "hclfuse"}, "hclfuse": {"steps": 3}, "engine": {"threads": 2},
                            "align": {"reg": 0.05}})
    assert config_fuser(cfg).name == "recording"
    assert built == [(cfg.hclfuse, cfg.engine, cfg.align)]


def _live_run(cfg, wanted: int) -> tuple[dict, dict[tuple[int, int], np.ndarray], list[int]]:
    """Run the live loop until ``wanted`` fused frames were received; its final telemetry, the frames by
    (IR seq, visible seq) and the publisher's ``seq`` of each, in order of arrival."""
    from streamfuse.pipeline import run_live

    stop, received, seqs = threading.Event(), {}, []
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVTIMEO, 200)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, cfg.publish.topic.encode())
    sock.connect(cfg.publish.endpoint)

    def watch() -> None:
        while not stop.is_set():
            try:
                header, image = decode_message(sock.recv_multipart())
            except zmq.Again:
                continue
            received[(header["seq_ir"], header["seq_vis"])] = image.copy()
            seqs.append(header["seq"])
            if len(received) >= wanted:
                stop.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        snap = run_live(cfg, duration_s=120.0, stop=stop)  # the duration only bounds a failure
    finally:
        stop.set()
        thread.join(10)
        sock.close()
        ctx.term()
    return snap, received, seqs


@pytest.mark.timeout(240)
def test_live_and_replay_give_bit_identical_frames_of_one_recording(tmp_path: Path):
    """The demo rig (synthetic cameras, IR stabilizer and temporal filter on, the max fuser) runs live, publishing
    and recording the raw frames to MCAP; replaying the recording gives, for every pair the live run published, the
    same image bit for bit. The live loop fuses only the newest pair and skips older ones when it falls behind (a
    busy machine); the stateful stages then saw only the pairs it fused, so the replay gets the frames of exactly
    those pairs (the recording filtered to them): the same history, frame for frame."""
    # The subscriber must have every frame the live loop published: one it missed (published before its subscription
    # arrived, or dropped from its queue on a busy machine) was fused too, so its pair is unknown and the replay would
    # start from another history. The publisher's seq counts every published frame: a run with a gap is run again.
    for attempt in range(3):
        recording = tmp_path / f"rig{attempt}.mcap"
        cfg = load_config(resolve("demo"), [
            "fuse.name=max", "telemetry.interval_s=60", f"publish.endpoint=ipc://{tmp_path}/fused{attempt}",
            f"record.path={recording}", "ir.width=96", "ir.height=72", "vis.width=96", "vis.height=72",
            "ir.fps=5", "vis.fps=10"])  # each IR frame pairs with every second visible one
        assert cfg.stabilize.strength > 0 and cfg.post.denoise > 0  # the stateful stages are on
        _, live, seqs = _live_run(cfg, wanted=8)
        if seqs == list(range(len(seqs))):
            break
    assert seqs == list(range(len(seqs))), f"every run missed published frames: seq {seqs}"
    assert len(live) >= 8
    fused = {("ir", a) for a, _ in live} | {("vis", b) for _, b in live}
    history = tmp_path / "fused_pairs.mcap"
    with Recorder(RecordConfig(path=str(history))) as rec:
        for frame in read_recording(recording):
            if (frame.stream, frame.seq) in fused:
                rec.write(frame)
    recording = history

    out = tmp_path / "replay.mkv"
    replay = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, codec="ffv1", progress=False))
    from streamfuse.replay import run_replay

    summary = run_replay(replay, ir_path=recording, out_path=out)
    pairer = Pairer(cfg.sync)  # the replay's pairs, in its order: the recording through the same Pairer
    keys = [(p.ir.seq, p.vis.seq) for f in read_recording(recording) for p in pairer.push(f)]
    keys += [(p.ir.seq, p.vis.seq) for p in pairer.flush()]
    frames = [image for _, image in decode_frames(out)]
    assert summary.complete and summary.written == len(keys) == len(frames)
    for key, image in live.items():
        np.testing.assert_array_equal(frames[keys.index(key)], image, err_msg=f"pair {key}")


def test_a_homography_puts_the_ir_camera_s_view_on_the_visible_pixels():
    # the IR camera, beside the visible one, sees a hot 10 x 10 block at (10, 10) of its 32 x 24 frame; the visible
    # camera at twice the resolution sees it at (25, 23): the homography (scale 2, shift 5, 3) puts it there
    cfg = config_from_dict({"fuse": {"name": "max"}, "post": {"encoding": "mono8"},
                            "register": {"homography": [2, 0, 5, 0, 2, 3, 0, 0, 1]}})
    ir = np.zeros((24, 32), np.uint8)
    ir[10:20, 10:20] = 250
    fused = FrameProcessor.from_config(cfg)(still_pair(ir, np.full((48, 64, 3), 40, np.uint8))).image
    hot = np.argwhere(fused > 200)
    assert hot.min(0).tolist() == [23, 25] and hot.max(0).tolist() == [41, 43]  # rows, columns
    assert fused[0, 0] == 40  # beyond the IR camera's view: its median (0) fills in, the visible image shows
    plain = FrameProcessor.from_config(config_from_dict({"fuse": {"name": "max"}, "post": {"encoding": "mono8"}}))
    resized = plain(still_pair(ir, np.full((48, 64, 3), 40, np.uint8))).image  # no homography: only resized
    assert np.argwhere(resized > 200).min(0).tolist() == [21, 21]


def test_where_the_warped_ir_frame_does_not_reach_it_is_filled_with_its_own_median_level():
    # filled black, the strip beyond the IR camera's view read as a cold region to the OT alignment and the fusion: a
    # dark band along the frame's edge on a warm scene
    ir = np.full((24, 32), 120, np.uint8)
    ir[10:14, 10:14] = 250
    shift = Registration(RegisterConfig(homography=(1, 0, 8, 0, 1, 0, 0, 0, 1)))  # 8 px right
    out = shift(FramePair(Frame("ir", 0, 0, ir), Frame("vis", 0, 0, np.zeros((24, 32, 3), np.uint8))))
    assert out.shape == (24, 32) and (out[:, :8] == 120).all()  # beyond the view: the IR frame's median
    assert (out[10:14, 18:22] == 250).all()  # the hot block, moved with the view


def test_beyond_the_warped_view_is_the_median_level_not_the_edge_repeated():
    # a hot strip along the IR frame's edge, repeated into the strip beyond the view, would read as a hot band
    ir = np.full((24, 32), 120, np.uint8)
    ir[:, :2] = 250
    shift = Registration(RegisterConfig(homography=(1, 0, 8, 0, 1, 0, 0, 0, 1)))  # 8 px right
    out = shift(FramePair(Frame("ir", 0, 0, ir), Frame("vis", 0, 0, np.zeros((24, 32, 3), np.uint8))))
    assert (out[:, :8] == 120).all() and (out[:, 8:10] == 250).all()


def test_the_fill_beyond_the_view_is_the_scene_s_level_not_its_coldest_or_hottest_object():
    # a cold sky patch and a hot engine in the IR frame: the strip beyond the view takes the frame's typical level,
    # not the level of either object
    ir = np.full((24, 32), 120, np.uint8)
    ir[:6, 12:] = 5
    ir[-6:, 12:] = 250
    shift = Registration(RegisterConfig(homography=(1, 0, 8, 0, 1, 0, 0, 0, 1)))  # 8 px right
    out = shift(FramePair(Frame("ir", 0, 0, ir), Frame("vis", 0, 0, np.zeros((24, 32, 3), np.uint8))))
    assert (out[:, :8] == 120).all()


@pytest.mark.parametrize("homography", [(1, 0, 10_000, 0, 1, 0, 0, 0, 1),  # far to the right of the visible frame
                                        (2, 0, 0, 0, 2, -500, 0, 0, 1)])  # for 10x larger frames: above it
def test_a_homography_that_puts_no_ir_pixel_on_the_visible_frame_is_refused_in_one_line(homography):
    # one fitted to other frame sizes, or visible -> IR: the IR frame's median filled every pixel, a fused stream
    # with no IR in it, without a word
    register = Registration(RegisterConfig(homography=homography), "error")
    with pytest.raises(ValueError, match=r"^register.homography puts no pixel of the 32x24 IR frame on the 64x48 "):
        register(FramePair(Frame("ir", 0, 0, np.full((24, 32), 200, np.uint8)),
                           Frame("vis", 0, 0, np.zeros((48, 64, 3), np.uint8))))


def _hot_edge_pair(ir_cols: slice, vis_shape: tuple[int, int]) -> FramePair:
    """An IR frame (24 x 32) at 120 with its columns ``ir_cols`` hot (250), and a black visible frame."""
    ir = np.full((24, 32), 120, np.uint8)
    ir[:, ir_cols] = 250
    return FramePair(Frame("ir", 0, 0, ir), Frame("vis", 0, 0, np.zeros((*vis_shape, 3), np.uint8)))


@pytest.mark.parametrize("shift, ir_cols, vis_cols", [(-28, slice(28, 32), slice(0, 4)),  # the IR frame's last columns
                                                      (50, slice(0, 4), slice(50, 54))])  # the visible frame's right
def test_a_homography_that_puts_a_strip_of_the_ir_frame_on_the_visible_frame_is_taken(shift, ir_cols, vis_cols):
    # the check for a view off the frame warps the IR frame's own (W x H) box onto the visible frame's (W x H): a box
    # of swapped sides, 24 wide or 48 wide, would miss these strips and refuse a homography that has a view
    register = Registration(RegisterConfig(homography=(1, 0, shift, 0, 1, 0, 0, 0, 1)), "error")
    out = register(_hot_edge_pair(ir_cols, (48, 64)))
    assert (out[:24, vis_cols] == 250).all()


def test_the_view_is_checked_again_when_the_frame_sizes_change():
    # a homography with a view on 64 x 48 visible frames has none on 32 x 24 ones: checked only for the first sizes,
    # the smaller frames were filled with the median alone, with no IR in them and no word
    register = Registration(RegisterConfig(homography=(1, 0, 40, 0, 1, 0, 0, 0, 1)), "error")  # 40 px right
    assert (register(_hot_edge_pair(slice(0, 4), (48, 64)))[:24, 40:44] == 250).all()
    with pytest.raises(ValueError, match=r"^register.homography puts no pixel of the 32x24 IR frame on the 32x24 "):
        register(_hot_edge_pair(slice(0, 4), (24, 32)))


@pytest.mark.parametrize("homography, allowed", [
    ((1, 0, 0, 0, 1, 0, 0, 0), "9 finite numbers"),  # one number short
    ((1, 0, 5, 0, 1, 3), "9 finite numbers"),  # an affine 2x3 matrix, as OpenCV's estimateAffine2D gives
    ((1, 0, 0, 0, 1, 0, 0, 0, float("nan")), "9 finite numbers"),
    ((1, 2, 0, 2, 4, 0, 0, 0, 1), "an invertible matrix"),  # the second row twice the first: onto a line
])
def test_a_homography_is_nine_finite_numbers_of_an_invertible_matrix(homography, allowed):
    with pytest.raises(ValueError, match=rf"^homography=.* is out of range; allowed: {allowed}"):
        RegisterConfig(homography=homography)


def test_an_ir_frame_is_taken_at_the_visible_size_and_one_turned_sideways_is_resized_or_refused(rng):
    # a 32x24 IR frame beside a 24x32 visible one has the same two numbers in the other order: not the same size
    vis = np.zeros((24, 32, 3), np.uint8)
    same = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    assert still_pair(same, vis).ir_at_vis_size("error") is same  # a registered pair is not refused
    turned = rng.integers(0, 256, (32, 24), dtype=np.uint8)
    with pytest.raises(SizeMismatch, match="^IR frame 3 is 24x32 but visible frame 3 is 32x24; set resize: resize"):
        still_pair(turned, vis, 3).ir_at_vis_size("error")
    assert still_pair(turned, vis).ir_at_vis_size().shape == (24, 32)
