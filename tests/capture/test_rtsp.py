"""An RTSP stream read by the ``stream`` source over TCP, end to end through FFmpeg's RTSP code: played from a camera's
RTSP server (tests/helpers_rtsp.py: DESCRIBE, SETUP, PLAY, H.264 over interleaved TCP; a password, a wrong path, a
camera that goes silent or is unplugged), and received from a publisher that pushes to the source listening
(``rtsp_flags=listen``, an FFmpeg option passed through ``vis.ffmpeg``)."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import time

import av
import pytest
from helpers_rtsp import FPS, HEIGHT, WIDTH, HangingUp, RtspCamera, grey
from helpers_zmq import held_port
from test_producer import assert_stopped, collect

from streamfuse.capture import video_sources
from streamfuse.capture.producer import start_producers
from streamfuse.capture.sender_clock import SENDER_BEHIND_NS
from streamfuse.capture.sources import SourceConfig, SourceError, open_source
from streamfuse.checks import ConfigError
from streamfuse.config import config_from_dict

SECRET = "cam-Pa55"

# 64x48 frames of rising grey at 25 frames/s, from when the listener takes the connection (refused until it listens)
PUBLISHER = """
import sys, time
import av, numpy as np
deadline = time.monotonic() + 60
while True:
    try:
        out = av.open(sys.argv[1], "w", format="rtsp", options={"rtsp_transport": "tcp"})
        break
    except ConnectionRefusedError:
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.05)
stream = out.add_stream("mpeg4", rate=25)
stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
for i in range(1500):
    frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 + i % 150, np.uint8), format="rgb24")
    for packet in stream.encode(frame):
        out.mux(packet)
    time.sleep(0.04)
"""


def _listen(port: int) -> list:
    """Ten frames read by a source listening on ``port``, pushed to it by a publisher started alongside."""
    url = f"rtsp://127.0.0.1:{port}/live"
    cfg = SourceConfig(kind="stream", path=url, ffmpeg=("rtsp_flags=listen", "listen_timeout=60"))
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, url])
    try:
        with open_source("vis", cfg) as src:  # opening waits for the publisher, as a player waits for its camera
            return [src.read() for _ in range(10)]
    finally:
        publisher.kill()
        publisher.wait(30)


@pytest.mark.timeout(90)
def test_an_rtsp_stream_is_read_over_tcp_as_a_live_source():
    with held_port(shared=True) as port:  # FFmpeg's listen mode needs its port given
        frames = _listen(port)
    assert all(f is not None and f.image.shape == (48, 64, 3) for f in frames)
    times = [f.t_capture_ns for f in frames]
    assert times == sorted(times) and all(f.t_mono_ns > 0 for f in frames)  # a live source's stamps
    assert frames[-1].image.mean() > frames[0].image.mean()  # the grey rises frame by frame: these are its frames


# -- a camera's own RTSP server (tests/helpers_rtsp.py): the source plays it as a player does -----------------------


def _read(url: str, n: int) -> list:
    with open_source("vis", SourceConfig(kind="stream", path=url)) as src:
        return [src.read() for _ in range(n)]


@pytest.mark.timeout(90)
def test_a_cameras_rtsp_server_is_played_over_interleaved_tcp():
    with RtspCamera(then="loop") as camera:
        frames = _read(camera.url, 40)
    assert camera.plays == 1 and camera.transports == ["RTP/AVP/TCP;unicast;interleaved=0-1"]
    assert all(f is not None and f.image.shape == (HEIGHT, WIDTH, 3) and f.t_mono_ns > 0 for f in frames)
    levels = [float(f.image.mean()) for f in frames]  # the clip's ramp, every frame, in order (H.264 within 3)
    assert all(abs(level - grey(i)) <= 3 for i, level in enumerate(levels))
    times = [f.t_capture_ns for f in frames]
    assert times == sorted(times)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("digest", [False, True], ids=["basic", "digest"])
def test_a_camera_with_a_password_plays_with_it_and_a_wrong_one_or_path_is_one_line(digest):
    with RtspCamera(password=SECRET, then="loop", digest=digest) as camera:
        with_password = camera.url.replace("rtsp://", f"rtsp://admin:{SECRET}@")
        assert all(f is not None for f in _read(with_password, 5))
        for url, words in [(camera.url.replace("rtsp://", "rtsp://admin:wrong@"), "401 Unauthorized"),
                           (camera.url, "401 Unauthorized"),
                           (with_password.replace("stream1", "stream9"), "404 Not Found")]:
            with pytest.raises(SourceError) as caught:
                _read(url, 1)
            message = str(caught.value)
            assert message.startswith("vis: cannot open rtsp://") and words in message and "\n" not in message
            assert SECRET not in message and "wrong" not in message
    assert camera.plays == 1


@pytest.mark.timeout(90)
def test_a_camera_that_goes_silent_is_a_read_timeout_and_one_unplugged_ends_its_stream(monkeypatch):
    monkeypatch.setattr(video_sources.AvSource, "_READ_TIMEOUT_S", 2.0)  # well past a busy machine's gaps
    with RtspCamera(frames_per_session=60, then="hang") as camera:  # past FFmpeg's probing (about a second)
        with open_source("vis", SourceConfig(kind="stream", path=camera.url)) as src:
            with pytest.raises(SourceError, match=r"after frame 60 .*: no stream data for 2 s \(read timeout\)"):
                while src.read() is not None:
                    pass
    with RtspCamera(frames_per_session=60, then="close") as camera:
        with open_source("vis", SourceConfig(kind="stream", path=camera.url)) as src:
            frames = []
            while (frame := src.read()) is not None:
                frames.append(frame)
    assert len(frames) == 60


@pytest.mark.timeout(120)
def test_an_unplugged_camera_is_reported_and_played_again_while_the_other_goes_on(caplog):
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")  # a camera's end is a fault, not news
    with RtspCamera(frames_per_session=30, then="close") as camera:
        vis = SourceConfig(kind="synthetic", width=WIDTH, height=HEIGHT, stall_factor=0)
        prod = start_producers(SourceConfig(kind="stream", path=camera.url, stall_factor=0), vis, backoff_s=0.1)
        names = prod.shm_names()
        try:
            at = []  # how many frames had come when the camera was reported

            def played_again(f, e) -> bool:
                at.extend([len(f)] if e and not at else [])
                return bool(at) and any(x.stream == "ir" for x in f[at[0]:])

            frames, events = collect(prod, played_again, timeout=60)
            names += prod.shm_names()
        finally:
            assert_stopped(prod, names)
    assert camera.plays >= 2 and events[0].stream == "ir" and events[0].kind == "eos" and events[0].restarting
    assert events[0].message == f"ir: end of stream (stream {camera.url})"
    assert f"{events[0].message}; restarting in 0.1 s" in [r.getMessage() for r in caplog.records]
    assert any(f.stream == "vis" for f in frames[:at[0]]) and any(f.stream == "vis" for f in frames[at[0]:])


@pytest.mark.timeout(120)
def test_a_camera_not_up_at_the_start_is_waited_for_and_one_that_refuses_the_password_is_not(caplog):
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    booting = socket.socket()  # our port, bound and not listening: connections are refused, as a booting camera's
    booting.bind(("127.0.0.1", 0))
    url = f"rtsp://127.0.0.1:{booting.getsockname()[1]}/stream1"
    vis = SourceConfig(kind="synthetic", width=WIDTH, height=HEIGHT, stall_factor=0)
    prod = start_producers(SourceConfig(kind="stream", path=url, stall_factor=0), vis, backoff_s=0.1)
    names = prod.shm_names()
    try:
        _, refused = collect(prod, lambda f, e: len(e) >= 2, timeout=60)  # tried again, not given up
        with RtspCamera(server=booting, then="loop") as camera:  # up now
            frames, _ = collect(prod, lambda f, e: any(x.stream == "ir" for x in f), timeout=60)
        names += prod.shm_names()
    finally:
        assert_stopped(prod, names)
        booting.close()
    assert all(e.stream == "ir" and e.restarting and e.message == f"ir: cannot open {url}: Connection refused"
               for e in refused)
    assert f"{refused[0].message}; restarting in 0.1 s" in [r.getMessage() for r in caplog.records]
    assert camera.plays == 1 and any(f.stream == "ir" for f in frames)
    with RtspCamera(password=SECRET, then="loop") as camera:  # a wrong password is a setting: the source ends
        wrong = SourceConfig(kind="stream", path=camera.url.replace("rtsp://", "rtsp://admin:wrong@"))
        prod = start_producers(wrong, vis, backoff_s=0.1)
        names = prod.shm_names()
        try:
            _, events = collect(prod, lambda f, e: bool(e), timeout=60)
        finally:
            assert_stopped(prod, names)
    assert len(events) == 1 and not events[0].restarting and "401 Unauthorized" in events[0].message


@pytest.mark.timeout(120)
def test_a_camera_that_hangs_up_at_once_is_tried_again_until_it_plays(caplog):
    # a camera restarting (or whose sessions a previous run still holds) that takes the connection and closes it at
    # once ended the run in one line ("not a readable video (Invalid data found ...)") instead of being waited for
    caplog.set_level(logging.WARNING, logger="streamfuse.capture.producer")
    vis = SourceConfig(kind="synthetic", width=WIDTH, height=HEIGHT, stall_factor=0)
    port = socket.create_server(("127.0.0.1", 0))  # the camera's, held from its restart to its play
    restarting = HangingUp(server=port)
    url = f"rtsp://127.0.0.1:{restarting.port}/stream1"
    prod = start_producers(SourceConfig(kind="stream", path=url, stall_factor=0), vis, backoff_s=0.1)
    names = prod.shm_names()
    try:
        with restarting:
            _, events = collect(prod, lambda f, e: len(e) >= 2, timeout=60)  # tried again, not given up
        with RtspCamera(server=port, then="loop") as camera:
            frames, _ = collect(prod, lambda f, e: any(x.stream == "ir" for x in f), timeout=60)
        names += prod.shm_names()
    finally:
        assert_stopped(prod, names)
        port.close()
    said = f"ir: cannot open {url}: it took the connection and closed it at once (restarting, or its sessions all " \
        "taken?)"
    assert restarting.taken >= 2 and all(e.stream == "ir" and e.restarting and e.message == said for e in events)
    assert f"{said}; restarting in 0.1 s" in [r.getMessage() for r in caplog.records]
    assert camera.plays == 1 and any(f.stream == "ir" for f in frames)


@pytest.mark.timeout(90)
def test_a_password_with_at_colon_and_slash_from_the_environment_plays(monkeypatch):
    password = "p@ss:w/rd#1"
    monkeypatch.setenv("STREAMFUSE_TEST_RTSP_PASSWORD", password)
    with RtspCamera(password=password, then="loop", digest=True) as camera:  # as most IP cameras ask
        template = camera.url.replace("rtsp://", "rtsp://admin:${STREAMFUSE_TEST_RTSP_PASSWORD}@")
        cfg = config_from_dict({"vis": {"kind": "stream", "path": template}}).vis
        assert cfg.path == camera.url.replace("rtsp://", "rtsp://admin:p%40ss%3Aw%2Frd%231@")  # as URLs spell it
        with open_source("vis", cfg) as src:
            assert src.read() is not None
        raw = SourceConfig(kind="stream", path=camera.url.replace("rtsp://", f"rtsp://admin:{password}@"))
        with pytest.raises(SourceError) as caught:  # written into the URL as it is, it breaks the URL: still masked
            open_source("vis", raw).open()
    masked = camera.url.replace("rtsp://", "rtsp://admin:***@")
    assert str(caught.value) == f"vis: cannot open {masked}: Invalid argument"


@pytest.mark.timeout(90)
def test_a_camera_that_refuses_tcp_is_one_line_saying_so_and_plays_over_udp_when_told():
    with RtspCamera(then="loop", transport="udp") as camera:
        with pytest.raises(SourceError, match=r"cannot open rtsp://.*: Protocol not supported \(the camera refuses "
                                              r"RTSP over TCP: give it ffmpeg: \[rtsp_transport=udp\]\)"):
            _read(camera.url, 1)
        with open_source("vis", SourceConfig(kind="stream", path=camera.url, ffmpeg=("rtsp_transport=udp",))) as src:
            frames = [src.read() for _ in range(10)]
    assert all(f is not None and f.image.shape == (HEIGHT, WIDTH, 3) for f in frames)
    assert "interleaved" in camera.transports[0] and "client_port=" in camera.transports[-1]


def _stamps(camera: RtspCamera, clock: str, n: int = 40, *, in_time: bool = False) -> tuple[list[int], list[str]]:
    """The capture times of a session's first ``n`` frames, less the camera's capture time of each, ns; the warnings.
    ``in_time``: from the first frame read within the 5 s a sender's clock may be behind and captured after the frames
    before it were read, and the warnings from it on: a busy machine's decoder may give the first frames later, stamped
    by arrival as of a clock that far behind, and the frames captured before their arrival just after them."""
    lines = []
    with open_source("vis", SourceConfig(kind="stream", path=camera.url, clock=clock)) as src:
        src.warn = lines.append
        frames, late_until = [src.read()], 0
        while in_time and ((late := time.time_ns() - _captured(camera, len(frames) - 1) > SENDER_BEHIND_NS)
                           or _captured(camera, len(frames) - 1) <= late_until):
            late_until = time.time_ns() if late else late_until
            frames, lines[:] = [*frames, src.read()], []
        first = len(frames) - 1
        frames = frames[first:] + [src.read() for _ in range(n - 1)]
    assert all(f.t_mono_ns > 0 for f in frames)
    return [f.t_capture_ns - _captured(camera, first + k) for k, f in enumerate(frames)], lines


def _captured(camera: RtspCamera, k: int) -> int:
    """The camera's capture time of its session's frame ``k``."""
    return camera.captured_ns + k * 10**9 // FPS


SENDER_TIMES = hasattr(av.container.InputContainer, "start_time_realtime")  # PyAV 18 and later


@pytest.mark.timeout(120)
def test_cameras_of_different_latency_stamp_their_capture_times_from_their_sender_reports():
    with RtspCamera(then="loop", latency_s=0.3) as slow, RtspCamera(then="loop", latency_s=0.05) as fast:
        if not SENDER_TIMES:  # PyAV 17 (Python 3.10) does not give them: one line, before any frame
            with pytest.raises(SourceError, match=r"clock: sender needs PyAV 18 or later"):
                _stamps(slow, "sender")
            return
        slow_sent, slow_lines = _stamps(slow, "sender", in_time=True)
        fast_sent, fast_lines = _stamps(fast, "sender", in_time=True)
        slow_arrived, _ = _stamps(slow, "arrival")
    assert slow_lines == fast_lines == []
    # each frame at the camera's own capture time (the report's NTP time, to its microseconds), whatever its delay
    assert all(abs(error) < 10**6 for error in slow_sent + fast_sent)
    assert all(error >= 0.3e9 - 10**6 for error in slow_arrived)  # by arrival: at least the encoder's delay late


@pytest.mark.timeout(120)
@pytest.mark.skipif(not SENDER_TIMES, reason=f"PyAV {av.__version__} has no start_time_realtime (PyAV 17: Python 3.10)")
def test_a_sender_clock_that_is_not_ours_or_without_reports_is_told_once_and_stamped_by_arrival():
    with RtspCamera(then="loop", latency_s=0.3, clock_offset_s=3600.0) as ahead:
        late, lines = _stamps(ahead, "sender")
    assert len(lines) == 1 and re.search(r"clock: sender: the sender's clock is \+359\d\.\d{3} s off this machine's "
                                         r".*: stamped by arrival", lines[0])
    assert all(0.3e9 - 10**6 <= error < 3600e9 for error in late)
    with RtspCamera(then="loop", latency_s=0.3, sender_reports=False) as silent:
        late, lines = _stamps(silent, "sender")
    assert lines == [f"vis: {silent.url}: clock: sender: no RTCP sender report (yet): stamped by arrival"]
    assert all(error >= 0.3e9 - 10**6 for error in late)
    with pytest.raises(ConfigError, match=r"ir: clock='sender' needs kind: stream \(an RTSP camera's RTCP sender "
                                          r"reports\); this source is kind: file$"):
        config_from_dict({"ir": {"kind": "file", "path": "ir.mp4", "clock": "sender"}})


# The IR camera's delay, 1 s beyond the visible one's 0.05 s: half the clip's 50-frame ramp, where its levels are the
# farthest apart. By arrival the cameras pair frames 1 s apart; 0.25 s apart (0.3 s against 0.05 s), a visible
# producer that a busy machine held back as long paired some with the same moment after all.
IR_LATENCY_S = 1.05


def _nearest_levels(clock: str, vis_latency_s: float = 0.05) -> list[tuple[float, float]]:
    """(IR level, level of the visible frame nearest it in capture time) for an IR camera IR_LATENCY_S behind its
    capture and a visible one ``vis_latency_s`` behind, filming the same scene (the clip, from the same moment on),
    read by two producers."""
    epoch = time.time_ns()
    with RtspCamera(then="loop", latency_s=IR_LATENCY_S, epoch_ns=epoch) as ir_camera, \
            RtspCamera(then="loop", latency_s=vis_latency_s, epoch_ns=epoch) as vis_camera:
        ir, vis = (SourceConfig(kind="stream", path=c.url, clock=clock, stall_factor=0)
                   for c in (ir_camera, vis_camera))
        prod = start_producers(ir, vis, slots=64)  # rings that keep every frame: the pairs are what is looked at
        names = prod.shm_names()
        try:  # and until 30 IR frames fall within the visible ones: 60 of each alone gave 29 on a busy machine
            frames, _ = collect(prod, lambda f, e: min(sum(x.stream == s for x in f) for s in ("ir", "vis")) >= 60
                                and len(_filmed_by_both(f)) >= 30, timeout=120)
        finally:
            assert_stopped(prod, names)
    both = _filmed_by_both(frames)
    assert len(both) >= 30
    vis = [(f.t_capture_ns, float(f.image.mean())) for f in frames if f.stream == "vis"]
    return [(float(f.image.mean()), min(vis, key=lambda v: abs(v[0] - f.t_capture_ns))[1]) for f in both]


def _filmed_by_both(frames: list) -> list:
    """The IR frames among ``frames`` captured while the visible camera filmed (between its first and last frame)."""
    vis = [f.t_capture_ns for f in frames if f.stream == "vis"]
    return [f for f in frames if f.stream == "ir" and vis and vis[0] <= f.t_capture_ns <= vis[-1]]


@pytest.mark.timeout(300)
@pytest.mark.skipif(not SENDER_TIMES, reason=f"PyAV {av.__version__} has no start_time_realtime (PyAV 17: Python 3.10)")
def test_with_sender_times_two_cameras_of_different_delay_pair_the_same_moment():
    # the clip's frames rise by 3 grey levels each: a frame the other camera captured 1 s apart is 75 levels off
    assert all(abs(ir - vis) <= 3 for ir, vis in _nearest_levels("sender"))
    assert sum(abs(ir - vis) > 9 for ir, vis in _nearest_levels("arrival")) > 20  # by arrival: another moment
