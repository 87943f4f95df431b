"""A bag whose driver published a camera's frames out of order replays them in the order of their header stamps;
in-order bags, our own recordings and a clock stepped back are read as they were logged."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_ros import ROS1_COMPRESSED, ROS1_IMAGE, compressed, raw, ros1, write_bag1
from test_replay_bags import CAMERA, MS, PERIOD, T0, THERMAL, _cfg, _frames, _write_ros2

from streamfuse.capture.mcap_source import read_recording
from streamfuse.capture.sources import SourceConfig, open_source
from streamfuse.capture.stamp_order import WINDOW, in_stamp_order
from streamfuse.frames import Frame
from streamfuse.recording import RecordConfig, Recorder
from streamfuse.replay import run_replay
from streamfuse.sync import CLOCK_STEP_NS

N = 40
ORDERS = {"swapped two by two": lambda i: i ^ 1, "reversed four by four": lambda i: i - i % 4 + 3 - i % 4}


def _bag(path, order) -> None:
    """N frames of each camera, logged in capture order, the thermal ones stamped ``order(i)`` frames on."""
    messages = []
    for i in range(N):
        counts, jpeg = _frames(i % 20)
        t, stamp = T0 + i * PERIOD, T0 + order(i) * PERIOD
        if path.suffix == ".bag":
            ir = ros1(ROS1_IMAGE, stamp, height=48, width=64, encoding="mono16", is_bigendian=0, step=128,
                      data=counts.tobytes())
            vis = ros1(ROS1_COMPRESSED, t + 2 * MS, format="jpeg", data=jpeg)
        else:
            ir, vis = raw("mono16", counts, stamp_ns=stamp), compressed("jpeg", jpeg, stamp_ns=t + 2 * MS)
        messages += [(CAMERA, t + 40 * MS, vis), (THERMAL, t + 41 * MS, ir)]
    if path.suffix == ".bag":
        write_bag1(path, {THERMAL: ROS1_IMAGE, CAMERA: ROS1_COMPRESSED}, messages)
    else:
        _write_ros2(path, messages)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("storage", ["mcap", "db3", "bag"])
def test_a_bag_whose_thermal_stamps_go_back_pairs_every_frame(tmp_path, storage, order):
    # the thermal frames were paired in the order they were logged: 20 of the 40 pairs were lost, either way
    path = tmp_path / f"robot.{storage}"
    _bag(path, ORDERS[order])
    summary = run_replay(_cfg(), ir_path=path, out_path=tmp_path / "fused.mkv")
    assert summary.complete and summary.written == N
    assert summary.unpaired == {"ir": 0, "vis": 0} and summary.dropped == {"ir": 0, "vis": 0}
    # a realtime or live run's source reads the thermal topic alone: in stamp order, numbered by place
    source = open_source("ir", SourceConfig(kind="mcap", path=str(path), topic=THERMAL, realtime=False))
    with source:
        got = [source.read() for _ in range(N)]
    assert [(f.seq, f.t_capture_ns) for f in got] == [(i, T0 + i * PERIOD) for i in range(N)]
    assert [int(f.counts[0, 0]) for f in got] == [20_000 + 100 * (ORDERS[order](i) % 20) for i in range(N)]  # images


def test_a_bags_frames_are_moved_only_within_their_stream_and_its_window():
    img = np.zeros((1, 1), np.uint8)
    # the frame stamped 1.5 belongs after the one stamped 1, WINDOW places before where it was logged: past the
    # window's reach, so it comes WINDOW - 1 places back, after the one stamped 2, as near as the window lets it
    stamps = [1, 0, *range(2, 2 + WINDOW), 1.5, 100]
    bag = [Frame("ir", i, round(t * 10 * MS), img) for i, t in enumerate(stamps)]
    bag.insert(3, Frame("vis", 0, 5 * MS, img))
    got = list(in_stamp_order((f, True) for f in bag))
    assert [f.stream for f in got] == [f.stream for f in bag]  # which stream comes next is kept
    assert [f.t_capture_ns / (10 * MS) for f in got if f.stream == "ir"] == [0, 1, 2, 1.5, 3, 4, 5, 100]
    assert [f.seq for f in got if f.stream == "ir"] == list(range(len(stamps)))


def test_a_clock_stepped_back_and_our_own_recording_are_read_as_logged(tmp_path):
    img = np.zeros((1, 1), np.uint8)
    stepped = [Frame("ir", i, t, img) for i, t in enumerate((CLOCK_STEP_NS + 10, CLOCK_STEP_NS + 20, 0, 10))]
    assert [f.t_capture_ns for f in in_stamp_order((f, True) for f in stepped)] == [f.t_capture_ns for f in stepped]
    # the live run paired our recording's frames in this order: a replay reproduces its pairs
    path, times = tmp_path / "rig.mcap", (T0, T0 + 40 * MS, T0 + 30 * MS, T0 + 80 * MS)
    with Recorder(RecordConfig(path=str(path)), queue_size=16) as rec:
        for i, t in enumerate(times):
            rec.write(Frame("ir", i, t, np.full((8, 8), i, np.uint8)))
    assert [(f.seq, f.t_capture_ns) for f in read_recording(path)] == list(enumerate(times))


def test_an_error_met_reading_ahead_comes_after_the_frames_before_it():
    img = np.zeros((1, 1), np.uint8)

    def frames():
        yield Frame("ir", 0, 10, img), True
        yield Frame("ir", 1, 0, img), True
        raise ValueError("damaged")

    got = in_stamp_order(frames())
    assert [next(got).t_capture_ns, next(got).t_capture_ns] == [0, 10]
    with pytest.raises(ValueError, match="damaged"):
        next(got)



def _rare_thermal(n: int, every: int, order=lambda i: i) -> list[Frame]:
    """A raw 1080p camera's frames (their images broadcast, 6 MB each as a bag holds them) and a thermal camera's at
    one in ``every``, stamped ``order(i)`` thermal frames on, in the order a bag logs them."""
    big, small = np.broadcast_to(np.uint8(0), (1080, 1920, 3)), np.zeros((2, 2), np.uint8)
    frames = []
    for i in range(n):
        if i % every == 0:
            frames.append(Frame("ir", i // every, T0 + order(i // every) * every * PERIOD, small))
        frames.append(Frame("vis", i, T0 + i * PERIOD, big))
    return frames


def test_a_rare_streams_look_ahead_holds_the_other_streams_raw_images_up_to_its_budget():
    # looking for the next 4 frames of a thermal camera 32 times rarer, the look-ahead held 63 of a raw 1080p camera's
    # messages: 390 MB
    from streamfuse.capture.stamp_order import BUDGET

    bag, held, most = _rare_thermal(8 * 32, 32), [], [0]

    def read():
        for frame in bag:
            held.append(frame)
            most[0] = max(most[0], sum(f.image.nbytes for f in held if f.stream == "vis"))
            yield frame, True

    got = []
    for frame in in_stamp_order(read()):
        got.append(frame)
        held.remove(frame)
    assert got == bag  # stamps that rise come out as logged
    assert BUDGET <= most[0] < BUDGET + 2 * bag[1].image.nbytes


def test_frames_left_out_of_stamp_order_where_the_budget_cut_the_look_short_are_said(caplog, monkeypatch):
    # a thermal camera at 10 fps swapped two by two: its next frame lies 3 raw 1080p messages on, past a budget of 2,
    # so each second frame comes after the one stamped after it (the pairer leaves it unpaired), and this is said
    from streamfuse.capture import stamp_order

    monkeypatch.setattr(stamp_order, "BUDGET", 2 * 1080 * 1920 * 3)
    bag = _rare_thermal(8 * 3, 3, lambda i: i ^ 1)
    with caplog.at_level("WARNING"):
        got = [f.t_capture_ns for f in in_stamp_order(((f, True) for f in bag), name="bag.mcap") if f.stream == "ir"]
    assert got == [f.t_capture_ns for f in bag if f.stream == "ir"]
    assert "bag.mcap: 4 IR frames came after a later-stamped one and were left there, unpaired" in caplog.text
    monkeypatch.setattr(stamp_order, "BUDGET", 4 * 1080 * 1920 * 3)  # within it, they are put back
    assert [f.t_capture_ns for f in in_stamp_order((f, True) for f in bag) if f.stream == "ir"] == sorted(got)
