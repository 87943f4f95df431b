"""A stop as the encoder flushes its last frames at a replay's end: the first lets it finish, a second cuts it short;
either way the stop line and the resume sidecar count the frames the partial file holds. A stop's wait for the
encoder says that a second stop ends it."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from test_replay import counted_encodes, decoded, make_cfg, write_video

import streamfuse.replay.loop
from streamfuse.atomic_write import partial_path
from streamfuse.replay import ReplayError, run_replay
from streamfuse.replay.resume import frames_held, sidecar_path
from streamfuse.signals import TERMINATE, handled, raise_interrupt, raise_terminated
from streamfuse.video import VideoWriter, decode_frames


PATIENCE_S = 60.0  # how long a test waits for what must come (a loaded machine can be slow)


@pytest.fixture
def pair(tmp_path):
    ir, vis = tmp_path / "ir.mp4", tmp_path / "vis.mp4"
    write_video(ir, 30, 25, grey=True)
    write_video(vis, 30, 25)
    return ir, vis


class _FlushStopped:
    """The encoder's stream, which sends the process ``signals`` as the writer asks it for its delayed frames."""

    def __init__(self, stream, signals: tuple[int, ...]):
        self._stream, self._signals, self.flushes = stream, signals, 0

    def encode(self, frame=None):
        if frame is None:
            self.flushes += 1
            for sig in self._signals:  # a lower number first: Python runs a stop's handlers in that order
                os.kill(os.getpid(), sig)
        return self._stream.encode(frame)


def _stopped_at_flush(monkeypatch, signals: tuple[int, ...]) -> list[_FlushStopped]:
    made = []

    class Writer(VideoWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._stream = _FlushStopped(self._stream, signals)
            made.append(self._stream)

    monkeypatch.setattr(streamfuse.replay.loop, "VideoWriter", Writer)
    return made


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_stop_as_the_encoder_flushes_keeps_every_frame_and_resume_only_writes_the_file(tmp_path, pair, monkeypatch,
                                                                                          sig):
    # the stop came between the encoder's flush and the mux of its packets: the H.264 encoder's delayed frames were
    # lost, the stop line counted only those before them, and --resume fused them again
    ir, vis = pair
    cfg, out = make_cfg(), tmp_path / "fused.mp4"
    made = _stopped_at_flush(monkeypatch, (sig,))
    with pytest.raises(ReplayError) as err:
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    assert made[0].flushes == 1
    written = err.value.summary.written
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    kept = re.escape(str(partial_path(out)))
    assert re.fullmatch(rf"replay stopped: interrupted \({name}\); {written} frames kept in {kept}; run again with "
                        r"--resume .*", str(err.value)), str(err.value)
    assert err.value.interrupted and not out.exists()
    assert len(list(decode_frames(partial_path(out)))) == frames_held(partial_path(out)) == written > 0
    assert json.loads(sidecar_path(out).read_text())["written"] == written
    monkeypatch.undo()
    encoded = counted_encodes(monkeypatch)
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.written == written and not encoded  # the file as it was: nothing fused again
    assert len(decoded(out)[1]) == written and not list(tmp_path.glob(".fused*"))


def test_a_first_stop_as_the_encoder_flushes_says_when_a_second_one_stops(tmp_path, pair, monkeypatch, caplog):
    # nothing was said until the encoder was done: on a stalled disk the user faced a silent process, never told that
    # a second Ctrl-C ends the wait; then it said "at once", though the frame in the encoder's hands is waited for
    ir, vis = pair
    made, said = _stopped_at_flush(monkeypatch, (signal.SIGINT,)), []
    real_encode = _FlushStopped.encode

    def flushed_with_a_stop(self, frame=None):
        packets = real_encode(self, frame)
        if frame is None:  # the stop has come; the encoder's delayed frames are still to write
            said.append(caplog.text)
        return packets

    monkeypatch.setattr(_FlushStopped, "encode", flushed_with_a_stop)
    with caplog.at_level(logging.WARNING), pytest.raises(ReplayError):
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=tmp_path / "fused.mp4")
    assert made[0].flushes == 1
    assert re.search(r"stopping once the encoder has written its last frames into .*; a second Ctrl-C or SIGTERM "
                     r"stops as soon as the encoder lets go of the frame in its hands$", said[0], re.M), said


def test_a_second_stop_as_the_encoder_flushes_keeps_what_it_wrote_and_says_how_many(tmp_path, pair, monkeypatch):
    """The second stop leaves the encoder's delayed frames out; the stop line and the sidecar count what is in the
    file, and --resume fuses the rest. The line said the file's frames were kept, and no more: --resume took over
    fewer, those before the gap the encoder's reordering left (shown before frames the file holds)."""
    ir, vis = pair
    cfg, out = make_cfg(), tmp_path / "fused.mp4"
    _stopped_at_flush(monkeypatch, (signal.SIGINT, signal.SIGTERM))
    with pytest.raises(ReplayError) as err:
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    held, written = len(list(decode_frames(partial_path(out)))), err.value.summary.written
    assert 0 < held < written  # H.264's delayed frames
    assert str(err.value).startswith(f"replay stopped: interrupted (SIGTERM); {held} frames kept in "
                                     f"{partial_path(out)} (of {written} fused; the rest did not reach the disk, and a "
                                     "resume takes over only the frames shown before the first one missing); ")
    assert json.loads(sidecar_path(out).read_text())["written"] == held
    shown = sorted(t for t, _ in decode_frames(partial_path(out)))
    before_gap = next((i for i, (a, b) in enumerate(zip(shown, shown[1:]), 1) if b - a > Fraction(1, 20)), held)
    monkeypatch.undo()
    summary = run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out, resume=True)
    assert summary.complete and summary.reused == before_gap and summary.written == written
    assert len(decoded(out)[1]) == written


@pytest.mark.parametrize("stops", [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGTERM)],
                         ids=["Ctrl-C, SIGTERM", "SIGTERM twice"])
def test_a_sigterm_after_the_second_stop_leaves_the_replays_partial_file_and_sidecar_whole(tmp_path, pair, monkeypatch,
                                                                                         stops):
    # a service manager's third SIGTERM, as the command counted the frames the partial file holds, cut that short: the
    # stop line said no frames kept and the sidecar was left as the run began, counting none
    ir, vis = pair
    cfg, out = make_cfg(), tmp_path / "fused.mp4"
    _stopped_at_flush(monkeypatch, stops)
    real_held, sent = streamfuse.replay.loop.frames_held, []

    def held_after_a_stop(path):
        sent.append(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        return real_held(path)

    monkeypatch.setattr(streamfuse.replay.loop, "frames_held", held_after_a_stop)
    with handled(raise_interrupt, (signal.SIGINT,)), handled(raise_terminated, TERMINATE):  # the command line's
        with pytest.raises(ReplayError) as err:
            run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    held = len(list(decode_frames(partial_path(out))))
    assert sent and held > 0 and err.value.interrupted
    assert str(err.value).startswith(f"replay stopped: interrupted (SIGTERM); {held} frames kept in "), str(err.value)
    assert json.loads(sidecar_path(out).read_text())["written"] == held


def test_a_stop_as_the_encoder_flushes_into_a_full_disk_is_still_said(tmp_path, pair, monkeypatch):
    # the full disk's error went up alone: "replay stopped: finishing ... failed", exit status 1, the stop lost
    ir, vis = pair
    cfg, out = make_cfg(), tmp_path / "fused.mp4"
    made = _stopped_at_flush(monkeypatch, (signal.SIGTERM,))
    real_encode = _FlushStopped.encode

    def full(self, frame=None):
        packets = real_encode(self, frame)
        if frame is None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return packets

    monkeypatch.setattr(_FlushStopped, "encode", full)
    with pytest.raises(ReplayError) as err:
        run_replay(cfg, ir_path=ir, vis_path=vis, out_path=out)
    assert made[0].flushes == 1 and err.value.interrupted  # the command's exit status 130
    assert str(err.value).startswith("replay stopped: interrupted (SIGTERM); "), str(err.value)
    assert json.loads(sidecar_path(out).read_text())["written"] == frames_held(partial_path(out)) > 0


def test_a_second_stop_as_the_encoder_works_through_its_queue_leaves_the_file_closed_once_abort_returns(
        tmp_path, main_watch):
    # abort() returned while the encoder thread, left to close the file, still ran: the stop line and the sidecar
    # counted the frames of a file not yet closed (its muxer's last cluster unwritten), and the process could end
    # before it was
    out = tmp_path / "fused.mkv"  # FFV1: no delayed frames, the one encoded is the file's
    w = VideoWriter(out, codec="ffv1", crf=0, time_base=Fraction(1, 25), rate=Fraction(25), width=64, height=48)
    encode, in_hand, release = w._worker._handle, threading.Event(), threading.Event()
    w._worker._handle = lambda item: (in_hand.set(), release.wait(), encode(item))
    close, closed, close_may = w._close, threading.Event(), threading.Event()
    w._close = lambda: (close(), closed.set())
    get = w._worker._queue.get  # the thread, its frame in hand encoded, held off the CPU until abort() waits for it
    w._worker._queue.get = lambda *args, **kwargs: (not release.is_set() or close_may.wait()) and get(*args, **kwargs)
    for pts in range(4):  # one in the encoder's hands, the rest queued behind it
        w.write(np.full((48, 64, 3), 40 * pts, np.uint8), pts)
    assert in_hand.wait(60)

    def two_stops() -> None:
        main_watch.when_waits_in("join", threading.Event())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # the first waits for the file
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        release.set()

    threading.Thread(target=two_stops, daemon=True).start()
    with handled(raise_terminated, (signal.SIGTERM,)), pytest.raises(KeyboardInterrupt):
        w.seal()
    # the thread let go as abort() waits for it (for room in its queue first), told by the wait itself: the watch sees
    # nothing after a stop's handler has raised inside its hook, and the test waited out its patience
    join = w._worker.join
    w._worker.join = lambda: (close_may.set(), join())
    w.abort()
    held = frames_held(partial_path(out))  # as the stop line and the sidecar count them
    close_may.set()
    assert closed.wait(60)
    assert held == len(list(decode_frames(partial_path(out)))) == 1


class _Said(logging.Handler):
    """Sets ``event`` once a record's message matches ``pattern``."""

    def __init__(self, pattern: str, event: threading.Event) -> None:
        super().__init__(logging.WARNING)
        self._pattern, self.event = pattern, event

    def emit(self, record: logging.LogRecord) -> None:
        if re.search(self._pattern, record.getMessage()):
            self.event.set()


def _replay_stopped(tmp_path, pair, monkeypatch, writer: type, stops, said: threading.Event,
                    then: str = "second") -> ReplayError:
    """The ReplayError of a replay of ``pair`` encoding with ``writer`` that ``stops`` (run on a thread of its own)
    stops; ``said`` is set as the line comes saying that a ``then`` stop ends the wait for the encoder."""
    monkeypatch.setattr(streamfuse.replay.loop, "VideoWriter", writer)
    when = "at once" if then == "third" else "as soon as the encoder lets go of the frame in its hands"
    telling = _Said(rf"^stopping once the encoder has written the frames it holds into .*; a {then} Ctrl-C or "
                    rf"SIGTERM stops {when}$", said)
    logging.getLogger("streamfuse").addHandler(telling)
    threading.Thread(target=stops, daemon=True).start()
    try:
        with pytest.raises(ReplayError) as err:
            run_replay(make_cfg(), ir_path=pair[0], vis_path=pair[1], out_path=tmp_path / "fused.mp4")
    finally:
        logging.getLogger("streamfuse").removeHandler(telling)
    return err.value


def test_a_stop_whose_wait_for_the_encoder_lasts_says_that_a_second_one_ends_it(tmp_path, pair, monkeypatch):
    # a disk that stalled as the user stopped the run: the encoder's queue was waited for without a word, and only
    # the stop line, after the wait, said anything
    stalled, release, said = threading.Event(), threading.Event(), threading.Event()

    class Writer(VideoWriter):
        def _encode(self, item):
            if self.count > 6 and not stalled.is_set():  # the stop comes while this frame is in the encoder's hands
                stalled.set()
                release.wait(PATIENCE_S)
            super()._encode(item)

    def stop_as_the_disk_stalls() -> None:
        stalled.wait(PATIENCE_S)
        os.kill(os.getpid(), signal.SIGINT)
        said.wait(PATIENCE_S)  # the wait goes on until told (or, unsaid, the patience ends)
        release.set()

    try:
        err = _replay_stopped(tmp_path, pair, monkeypatch, Writer, stop_as_the_disk_stalls, said)
    finally:
        release.set()
    assert err.interrupted and said.is_set()


def test_a_second_sigterm_ends_the_wait_for_the_encoder_as_its_line_says(tmp_path, pair, monkeypatch):
    # the first SIGTERM left the next ones ignored: the line said a second one stopped at once, yet it did nothing
    stalled, release, held, said, ended = (threading.Event() for _ in range(5))
    writers: list[VideoWriter] = []

    class Writer(VideoWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            writers.append(self)

        def _encode(self, item):
            if self.count > 6:  # the stop comes while this frame is in the encoder's hands; the next ones stall too
                first = not stalled.is_set()
                stalled.set()
                (release if first else held).wait(3 * PATIENCE_S)
            super()._encode(item)

    def two_stops_as_the_disk_stalls() -> None:
        stalled.wait(PATIENCE_S)
        os.kill(os.getpid(), signal.SIGTERM)
        if said.wait(PATIENCE_S):
            os.kill(os.getpid(), signal.SIGTERM)
        # the frame in hand is let through once the stop gives up the queue behind it (or, never, the patience)
        deadline = time.monotonic() + PATIENCE_S
        while not (writers and writers[0]._worker.abandoned) and time.monotonic() < deadline:
            ended.wait(0.005)
        release.set()
        ended.wait(PATIENCE_S)  # the queue stays stalled until the run has ended (or, never ended, the patience)
        held.set()

    try:
        err = _replay_stopped(tmp_path, pair, monkeypatch, Writer, two_stops_as_the_disk_stalls, said)
        ended_while_stalled = not held.is_set()
    finally:
        ended.set()
        release.set()
        held.set()
    assert err.interrupted and said.is_set() and ended_while_stalled, str(err)


def test_a_wait_after_a_second_stop_says_that_a_third_one_ends_it(tmp_path, pair, monkeypatch, main_watch):
    # a second stop cut the encoder's last frame short, and the wait for its thread to close the file (a stalled disk)
    # said "a second Ctrl-C or SIGTERM stops at once", though two had come
    in_hand, release, said = threading.Event(), threading.Event(), threading.Event()
    writers: list[VideoWriter] = []

    class Writer(VideoWriter):
        handled = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            writers.append(self)
            get = self._worker._queue.get  # past the last frame the thread's end is held, as a stalled disk holds it
            self._worker._queue.get = lambda *a, **kw: (not release.is_set() or said.wait(PATIENCE_S)) and get(*a, **kw)

        def _encode(self, item):
            self.handled += 1
            if self.handled == 30:  # the last frame, in the encoder's hands as the writer is sealed
                in_hand.set()
                release.wait(PATIENCE_S)
            super()._encode(item)

    def two_stops() -> None:
        in_hand.wait(PATIENCE_S)
        main_watch.when_waits_in("join", threading.Event())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # the first lets the encoder finish
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)  # the second cuts it short
        deadline = time.monotonic() + PATIENCE_S  # missed: the run goes on, and the checks below fail
        while not writers[0]._worker.abandoned and time.monotonic() < deadline:  # its lock: for the frame in hand,
            time.sleep(0.005)  # then the thread closes the file
        release.set()

    with handled(raise_interrupt, (signal.SIGINT,)), handled(raise_terminated, TERMINATE):  # the command line's
        try:
            err = _replay_stopped(tmp_path, pair, monkeypatch, Writer, two_stops, said, then="third")
            told = said.is_set()
        finally:
            release.set()
            said.set()
    assert err.interrupted and in_hand.is_set() and told, str(err)


def test_two_stops_before_the_encoders_first_packet_say_that_nothing_was_encoded_yet(tmp_path, monkeypatch):
    # x264 held the first frames for its look-ahead, so the partial file was never made; the line said it "is gone
    # (its folder removed or renamed)", and its sidecar stayed, naming a file that never was
    ir, vis, out = tmp_path / "ir.mp4", tmp_path / "vis.mp4", tmp_path / "fused.mp4"
    write_video(ir, 3, 25, grey=True)
    write_video(vis, 3, 25)
    _stopped_at_flush(monkeypatch, (signal.SIGINT, signal.SIGTERM))
    with pytest.raises(ReplayError) as err:
        run_replay(make_cfg(), ir_path=ir, vis_path=vis, out_path=out)
    assert str(err.value) == ("replay stopped: interrupted (SIGTERM); nothing kept: none of the 3 frames fused had "
                              "left the encoder yet"), str(err.value)
    assert err.value.interrupted and sorted(p.name for p in tmp_path.iterdir()) == ["ir.mp4", "vis.mp4"]
