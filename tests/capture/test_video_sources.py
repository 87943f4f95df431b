"""PyAV sources as a live rig uses them: a network stream is never paced and never stamped in the future or adrift,
hands over every frame as soon as it decodes, survives an undecodable packet (counted in the run's telemetry) and
names its timeouts; a file whose timestamps jump or repeat keeps its times increasing and says so in one line
(through the producer to the log), and one paced across a gap in its timestamps is not taken for a hung source; a
folder image that vanished is one line without OpenCV's own warnings."""

from __future__ import annotations

import errno
import io
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers_rtsp import HangingUp
from helpers_video import portrait_mov, write_still_times

import streamfuse.capture.video_sources as video_sources
from streamfuse.capture.producer import ProducerEvent, Producers, start_producers
from streamfuse.capture.sources import BaseSource, SourceConfig, SourceError, open_source
from streamfuse.frames import Frame

pytestmark = pytest.mark.timeout(90)
MS = 1_000_000
REPO = Path(__file__).resolve().parents[2]


def write_ffv1(path: Path, n: int, fps: int = 25, gap_after: int | None = None, gap_frames: int = 0) -> None:
    """n lossless 64x48 frames at ``fps``, pts = i / fps; ``gap_frames`` missing after frame ``gap_after``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "bgr0"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 256, np.uint8), format="bgr24")
            frame.pts = i + (gap_frames if gap_after is not None and i > gap_after else 0)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def ts_segment(first_pts_s: float, n: int, fps: int = 25) -> bytes:
    """An MPEG-TS recording of n frames whose pts start at ``first_pts_s``: concatenated segments are what a camera
    restart or ``cat a.ts b.ts`` leaves, timestamps jumping."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * i, np.uint8), format="bgr24")
            frame.pts = round(first_pts_s * fps) + i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def read_all(src) -> list[Frame]:
    frames = []
    with src:
        while (frame := src.read()) is not None:
            frames.append(frame)
    return frames


# -- live streams ------------------------------------------------------------------------------------------------


def test_live_stream_is_never_paced_so_buffered_frames_do_not_become_a_constant_delay(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    path = tmp_path / "clip.mkv"
    write_ffv1(path, 10)
    asked = []
    monkeypatch.setattr(BaseSource, "_sleep", lambda self, seconds: asked.append(seconds))
    frames = read_all(open_source("vis", SourceConfig(kind="stream", path=str(path), realtime=True)))
    assert len(frames) == 10
    assert max(asked, default=0.0) <= 0.0  # FFmpeg's probing backlog comes out at once, the ring keeps the newest


def test_live_stream_times_are_on_the_wall_clock_never_after_arrival_and_increasing(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    write_ffv1(path, 10)
    src = open_source("vis", SourceConfig(kind="stream", path=str(path), realtime=False))
    before, stamps, mono_before, monos = time.time_ns(), [], time.monotonic_ns(), []
    with src:
        while (frame := src.read()) is not None:
            stamps.append((frame.t_capture_ns, time.time_ns()))
            monos.append((frame.t_mono_ns, time.monotonic_ns()))
    assert len(stamps) == 10
    assert all(before <= t <= arrived for t, arrived in stamps)  # a burst is not stamped into the future
    assert all(mono_before <= t <= arrived for t, arrived in monos)  # nor on the monotonic clock latency is taken on
    assert all(b[0] > a[0] for a, b in zip(stamps, stamps[1:]))


class _Reported:
    """A container whose RTCP sender reports put its pts 0 at ``real_us`` on the sender's clock (an RTSP camera's,
    for a file read as a stream)."""

    def __init__(self, container, real_us: int) -> None:
        self._container, self.start_time_realtime = container, real_us

    def __getattr__(self, name: str):
        return getattr(self._container, name)

    def __enter__(self) -> _Reported:
        return self

    def __exit__(self, *exc: object) -> None:
        self._container.close()


def test_live_stream_whose_sender_clock_is_a_little_ahead_is_never_stamped_after_arrival(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    """clock: sender, a sender clock 0.2 s ahead of ours (within what is taken for the same clock, NTP-synced): its
    capture times, never later than the frames' arrival."""
    path = tmp_path / "clip.mkv"
    write_ffv1(path, 5)
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: _Reported(real_open(*args, **kwargs),
                                                                      (time.time_ns() + 200 * MS) // 1000))
    src = open_source("vis", SourceConfig(kind="stream", path=str(path), clock="sender"))
    lines: list[str] = []
    src.warn = lines.append
    before, stamps = time.time_ns(), []
    with src:
        while (frame := src.read()) is not None:
            stamps.append((frame.t_capture_ns, time.time_ns()))
    assert len(stamps) == 5 and lines == []
    assert all(before <= t <= arrived for t, arrived in stamps)


def test_live_stream_whose_sender_clock_is_slow_does_not_drift_from_the_wall_clock(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    path = tmp_path / "clip.mkv"
    write_ffv1(path, 250)  # pts 40 ms apart ...
    ticks, now = iter(range(0, 10**17, 42 * MS)), [0]  # ... frames arrive every 42 ms

    def arrive() -> int:
        now[0] = next(ticks)
        return now[0]

    monkeypatch.setattr(video_sources, "time", types.SimpleNamespace(
        monotonic_ns=arrive, time_ns=lambda: 1_700_000_000 * 10**9 + now[0], monotonic=time.monotonic))
    frames = read_all(open_source("vis", SourceConfig(kind="stream", path=str(path), realtime=False)))
    arrivals = range(1_700_000_000 * 10**9, 1_800_000_000 * 10**9, 42 * MS)
    lag_ms = [(arrived - f.t_capture_ns) / MS for f, arrived in zip(frames, arrivals)]
    assert len(frames) == 250
    assert max(lag_ms) < 150  # the drift over one 2 s window; pts from the first frame on would lag 500 ms by now


_H264_SERVER = """
import socket, sys
import av
import numpy as np
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
with conn.makefile("wb", buffering=0) as sink, av.open(sink, "w", format="mpegts") as out:
    stream = out.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.options = {"tune": "zerolatency", "preset": "ultrafast"}
    for i in range(int(sys.argv[1])):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * i, np.uint8), format="bgr24")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    sink.flush()
    sys.stdin.readline()  # the camera goes quiet, the connection stays up
"""


def test_live_stream_hands_over_every_frame_sent_without_waiting_for_later_ones(monkeypatch) -> None:
    # The sender sends its frames, then goes quiet, the connection up: a frame held back until the next one came would
    # come only with the read timeout (60 s), so the frames are read on a thread and waited for with a deadline of
    # their own (they take well under a second), and the sender's close then ends a read still waiting
    monkeypatch.setattr(video_sources.AvSource, "_READ_TIMEOUT_S", 60.0)
    sent, frames, failed, all_read = 40, [], [], threading.Event()
    server = subprocess.Popen([sys.executable, "-c", _H264_SERVER, str(sent)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def read() -> None:
        try:
            port = int(server.stdout.readline())
            with open_source("vis", SourceConfig(kind="stream", path=f"tcp://127.0.0.1:{port}")) as src:
                # MPEG-TS and the H.264 parser hold the last two frames until the next packet starts; frame-threaded
                # decoding would hold one more per extra thread (here until the read timeout: the camera went quiet)
                while len(frames) < sent - 2 and (frame := src.read()) is not None:
                    frames.append(frame)
            all_read.set()
        except Exception as exc:  # noqa: BLE001  said by the test's own check
            failed.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        handed_over = all_read.wait(30)
    finally:
        server.communicate("\n", timeout=30)  # a read still waiting for a frame held back ends with the connection
    reader.join(30)
    assert handed_over, f"{len(frames)} of {sent - 2} frames handed over within 30 s, the sender quiet: {failed}"
    assert [f.seq for f in frames] == list(range(sent - 2)) and not failed and not reader.is_alive()


def mjpeg_with_broken_frames(path: Path, n: int, broken: range) -> None:
    """An MJPEG stream (IP cameras serve it over HTTP) whose frames ``broken`` have a corrupt header (height 0)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mjpeg") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        for i in range(n):
            image = np.full((48, 64, 3), 4 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuvj420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
    data = bytearray(buf.getvalue())
    sofs = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xc0"]  # start of frame markers,
    for sof in (sofs[i] for i in broken):
        data[sof + 5:sof + 7] = b"\x00\x00"  # each followed by length (2 bytes), precision (1), height (2): 0
    path.write_bytes(bytes(data))


def test_live_stream_skips_an_undecodable_packet_reports_it_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "camera.mjpeg"
    mjpeg_with_broken_frames(path, 30, broken=range(15, 17))
    src = open_source("vis", SourceConfig(kind="stream", path=str(path)))
    lines: list[str] = []
    src.warn = lines.append
    frames = read_all(src)
    assert len(frames) == 28  # every frame but the broken ones, without reconnecting; said once, not per packet
    assert len(lines) == 1 and "skipped 1 undecodable packet" in lines[0] and str(path) in lines[0]
    with pytest.raises(SourceError, match="decoding stopped after frame 15"):  # a file: corrupt, said once
        read_all(open_source("vis", SourceConfig(kind="file", path=str(path))))
    mjpeg_with_broken_frames(path, 30, broken=range(3))  # joined mid-stream: its first packets undecodable
    assert len(read_all(open_source("vis", SourceConfig(kind="stream", path=str(path))))) == 27
    mjpeg_with_broken_frames(path, 60, broken=range(60))  # not one decodable frame: an error, not skipped for ever
    with pytest.raises(SourceError, match="decoding stopped before the first frame: .*Invalid data"):
        read_all(open_source("vis", SourceConfig(kind="stream", path=str(path))))


def test_skipped_packets_of_a_live_stream_are_counted_in_the_run_telemetry(tmp_path: Path) -> None:
    from streamfuse.config import load_config
    from streamfuse.pipeline import run_live
    from streamfuse.telemetry import format_stats

    path = tmp_path / "camera.mjpeg"
    mjpeg_with_broken_frames(path, 30, broken=range(10, 13))
    sources = [f"{s}.{key}" for s in ("ir", "vis")
               for key in ("kind=stream", f"path={path}", "restart=false", "width=64", "height=48")]
    cfg = load_config(REPO / "streamfuse/configs/demo.yaml", [
        *sources, "fuse.name=max", "engine.device=cpu", "publish.endpoint=tcp://127.0.0.1:*"])
    snap = run_live(cfg, duration_s=60.0)  # ends with its two streams; the duration only bounds a failure
    assert snap["counters"]["capture_skipped.ir"] == snap["counters"]["capture_skipped.vis"] == 3
    assert "capture_skipped.ir=3" in format_stats(snap)  # the summary line shows them with the other drops


@pytest.mark.parametrize("scheme, path", [("tcp", ""), ("rtsp", "/stream1")])
def test_stream_that_never_sends_names_the_open_timeout_and_is_waited_for(monkeypatch, scheme, path) -> None:
    # FFmpeg's RTSP demuxer reports its open timeout as "Invalid data found": such a camera (still booting: its port
    # takes the connection, no RTSP answer yet) ended the run as "not a readable video"
    monkeypatch.setattr(video_sources.AvSource, "_OPEN_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts connections (backlog) and never sends a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"{scheme}://127.0.0.1:{silent.getsockname()[1]}{path}"
        with pytest.raises(SourceError) as info:
            open_source("ir", SourceConfig(kind="stream", path=url)).open()
    assert str(info.value) == f"ir: cannot open {url}: no readable video within 0.5 s (open timeout: nothing sent, " \
        "or no video)"  # a sender of bytes that are no video ends the same way: not "no stream data"
    assert info.value.unreachable  # waited for with back-off, as a camera that refuses the connection is


def test_a_stream_that_answers_at_once_with_no_video_is_not_waited_for(monkeypatch) -> None:
    # "Invalid data found" is an open timeout only once the timeout has passed: a URL serving something else (a web
    # page, another protocol) says so at once, is no camera still booting, and ends the run in its own words
    def fails(path, **kwargs):
        raise av.error.InvalidDataError(errno.EINVAL, "Invalid data found when processing input", path)

    monkeypatch.setattr(av, "open", fails)
    with HangingUp(answer=b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>") as page:
        url = f"http://127.0.0.1:{page.port}/index.html"  # ours: asked again whether it hangs up at once
        with pytest.raises(SourceError) as info:
            open_source("ir", SourceConfig(kind="stream", path=url)).open()
    assert page.taken == 1
    assert str(info.value).startswith(f"ir: cannot open {url}: not a readable video (")
    assert not info.value.unreachable


@pytest.mark.parametrize("scheme, path", [("rtsp", "/stream1"), ("http", "/video.mjpg"), ("tcp", "")])
def test_a_camera_that_takes_the_connection_and_closes_it_at_once_is_waited_for(scheme, path) -> None:
    # FFmpeg says "Invalid data found" (RTSP) or "End of file" (HTTP): a camera restarting, or whose sessions are all
    # taken, ended the run as a source that is no video, where it is a camera not there (yet), as one answering 503
    with HangingUp() as camera:
        url = f"{scheme}://127.0.0.1:{camera.port}{path}"
        with pytest.raises(SourceError) as info:
            open_source("ir", SourceConfig(kind="stream", path=url)).open()
    assert str(info.value) == f"ir: cannot open {url}: it took the connection and closed it at once (restarting, or " \
        "its sessions all taken?)"
    assert info.value.unreachable


@pytest.mark.parametrize("status, waited", [("503 Service Unavailable", True), ("500 Internal Server Error", True),
                                            ("429 Too Many Requests", True), ("404 Not Found", False)])
def test_a_camera_that_answers_busy_is_waited_for_and_a_wrong_path_is_not(status, waited) -> None:
    # A camera whose sessions a previous run still holds (or still booting its server) answers 503 or 429: that
    # ended a restarted robot's run at once, where the camera serves again within its session timeout
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"http://127.0.0.1:{server.getsockname()[1]}/video.mjpg"

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(f"HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n".encode())

        camera = threading.Thread(target=answer, daemon=True)
        camera.start()
        with pytest.raises(SourceError) as info:
            open_source("ir", SourceConfig(kind="stream", path=url)).open()
        camera.join(10)
    assert str(info.value).startswith(f"ir: cannot open {url}: ")
    assert info.value.unreachable is waited


@pytest.mark.parametrize("resolves", [False, True])
def test_a_camera_whose_host_name_does_not_resolve_yet_is_waited_for(monkeypatch, resolves) -> None:
    # FFmpeg says only "Input/output error" for a name that does not resolve: a camera named by mDNS (cam.local)
    # before the robot's resolver was up ended the run; an I/O error from a camera that resolves still ends it
    import streamfuse.capture.open_failure

    def getaddrinfo(host, port):
        if not resolves:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 0))]

    def fails(path, **kwargs):
        raise av.error.OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(streamfuse.capture.open_failure.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(av, "open", fails)
    url = "rtsp://ir-cam.local/stream1"
    with pytest.raises(SourceError) as info:
        open_source("ir", SourceConfig(kind="stream", path=url)).open()
    why = "Input/output error" if resolves else "its host name ir-cam.local does not resolve (yet)"
    assert str(info.value) == f"ir: cannot open {url}: {why}"
    assert info.value.unreachable is not resolves


def test_a_host_name_with_an_empty_label_is_said_not_to_resolve(monkeypatch) -> None:
    # the resolver's IDNA encoding refuses "cam..local" with a UnicodeError, not a lookup failure
    def fails(path, **kwargs):
        raise av.error.OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(av, "open", fails)
    url = "rtsp://cam..local/live"
    with pytest.raises(SourceError) as info:
        open_source("ir", SourceConfig(kind="stream", path=url)).open()
    assert str(info.value) == f"ir: cannot open {url}: its host name cam..local does not resolve (yet)"
    assert info.value.unreachable


# -- files whose timestamps jump or repeat -----------------------------------------------------------------------


def paced_times(path: Path, monkeypatch) -> tuple[list[int], list[float], list[str]]:
    """A file played paced (sleeps recorded, not taken) as a live file source: its frame times, sleeps and lines."""
    asked: list[float] = []
    monkeypatch.setattr(BaseSource, "_sleep", lambda self, seconds: asked.append(seconds))
    src = open_source("ir", SourceConfig(kind="file", path=str(path), realtime=True))
    lines: list[str] = []
    src.warn = lines.append
    return [f.t_capture_ns for f in read_all(src)], asked, lines


@pytest.mark.parametrize("case, second_start_s, step_ns", [
    ("back", 7.0, 40 * MS),  # concatenated recordings: back 3.96 s, shifted to one frame after the last
    ("ahead", 3611.0, 40 * MS),  # an hour ahead: a discontinuity, not an hour of pacing
    ("repeat", 10.96, 1),  # the second segment starts on the first one's last pts: 1 ns after it
])
def test_file_whose_timestamps_jump_or_repeat_keeps_times_increasing_and_says_so(
        tmp_path: Path, monkeypatch, case: str, second_start_s: float, step_ns: int) -> None:
    path = tmp_path / f"{case}.ts"
    path.write_bytes(ts_segment(10.0, 25) + ts_segment(second_start_s, 25))
    t, asked, lines = paced_times(path, monkeypatch)
    assert len(t) == 50  # every frame, no "truncated" error at the end
    assert all(b > a for a, b in zip(t, t[1:]))
    assert t[24] - t[0] == 24 * 40 * MS and t[25] - t[24] == step_ns  # each segment keeps its own spacing
    assert t[-1] - t[26] == 23 * 40 * MS
    assert max(asked) <= 2.0  # (sleeps asked for, not taken, add up) paced by the frames' spacing, not the jump
    word = {"back": "jump back", "ahead": "jump ahead", "repeat": "repeats"}[case]
    assert len(lines) == 1 and word in lines[0] and "after frame 25" in lines[0] and str(path) in lines[0]


def test_a_looped_file_says_its_timestamp_jump_once_not_on_every_pass(tmp_path: Path) -> None:
    path = tmp_path / "back.ts"
    path.write_bytes(ts_segment(10.0, 4) + ts_segment(7.0, 4))
    src = open_source("ir", SourceConfig(kind="file", path=str(path), realtime=False, loop=True))
    lines: list[str] = []
    src.warn = lines.append
    with src:
        t = [src.read().t_capture_ns for _ in range(24)]  # three passes
    assert all(b > a for a, b in zip(t, t[1:]))
    assert len(lines) == 1 and "jump back" in lines[0]


def test_a_file_whose_frame_times_stand_still_goes_at_its_declared_rate_and_says_so_once(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    # its average rate (taken from the times) made the stall watch expect a frame every 0.5 ms, and its frames went
    # out at once: the producer was killed or restarted over and over; then its first frames went 1 ns apart, with a
    # line saying a timestamp repeats before the one saying the times stand still
    path = tmp_path / "still.mp4"
    write_still_times(path, 40)
    t, asked, lines = paced_times(path, monkeypatch)
    assert len(t) == 40
    assert {b - a for a, b in zip(t, t[1:])} == {round(1e9 / 30)}  # from the first frame on
    assert sum(asked) > 1.0  # paced (sleeps asked for, not taken): about a second for 40 frames at 30 fps
    assert len(lines) == 1 and "do not advance" in lines[0] and str(path) in lines[0] and "30 fps" in lines[0]


def _ir_until_its_end(prod: Producers) -> tuple[list[Frame], list[ProducerEvent]]:
    """The IR frames and the events the producers hand over until the IR source's event (its end)."""
    ir_frames, events = [], []
    deadline = time.monotonic() + 60
    while not any(e.stream == "ir" for e in events):
        assert time.monotonic() < deadline, f"timed out with {len(ir_frames)} IR frames, events {events}"
        item = prod.get(timeout=0.5)
        if isinstance(item, ProducerEvent):
            events.append(item)
        elif isinstance(item, Frame) and item.stream == "ir":
            ir_frames.append(item)
    return ir_frames, events


def test_a_timestamp_jump_in_a_live_file_is_one_line_in_the_log_and_the_frames_go_on(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="streamfuse.capture.producer")
    path = tmp_path / "ir.ts"
    path.write_bytes(ts_segment(10.0, 25) + ts_segment(7.0, 25))
    ir = SourceConfig(kind="file", path=str(path), realtime=False, restart=False)
    vis = SourceConfig(kind="synthetic", width=64, height=48, realtime=False, restart=False)
    with start_producers(ir, vis) as prod:
        ir_frames, events = _ir_until_its_end(prod)
    assert [e.kind for e in events if e.stream == "ir"] == ["eos"]
    assert len(ir_frames) + prod.stats()["ir"]["dropped"] == 50
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "timestamps jump back 3.960 s after frame 25" in warnings[0]


def test_a_recording_paced_across_a_gap_in_its_timestamps_is_not_taken_for_a_hung_source(tmp_path: Path) -> None:
    path = tmp_path / "ir.mkv"
    write_ffv1(path, 20, gap_after=9, gap_frames=60)  # the camera lost 2.4 s of frames; stalls count after 1 s
    ir = SourceConfig(kind="file", path=str(path), restart=False, stall_factor=25)
    vis = SourceConfig(kind="synthetic", width=64, height=48)
    with start_producers(ir, vis) as prod:
        ir_frames, events = _ir_until_its_end(prod)
        stalls = prod.stats()["ir"]["stalls"]
    assert [(e.kind, e.message) for e in events if e.stream == "ir"] == [("eos", f"ir: end of stream (file {path})")]
    assert stalls == 0 and [f.seq for f in ir_frames] == list(range(20))
    assert ir_frames[10].t_capture_ns - ir_frames[9].t_capture_ns == 61 * 40 * MS  # the gap kept, not shifted out


# -- folders -----------------------------------------------------------------------------------------------------


def test_folder_image_that_vanished_is_one_line_without_opencv_warnings(tmp_path: Path, capfd) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"frame_{i}.png"), np.full((8, 8), i, np.uint8))
    src = open_source("ir", SourceConfig(kind="folder", path=str(tmp_path), realtime=False))
    with src:
        src.read()
        (tmp_path / "frame_1.png").unlink()
        with pytest.raises(SourceError) as info:
            src.read()
    assert str(info.value) == f"ir: cannot read image {tmp_path / 'frame_1.png'}: the file is gone"
    assert capfd.readouterr().err == ""


def test_ffmpeg_options_reach_the_demuxer(tmp_path: Path, monkeypatch) -> None:
    clip = tmp_path / "clip.mkv"
    write_ffv1(clip, 5)
    seen, real_open = [], av.open
    monkeypatch.setattr(av, "open", lambda path, **kw: (seen.append(kw["options"]), real_open(path, **kw))[1])
    cfg = SourceConfig(kind="file", path=str(clip), realtime=False, ffmpeg=("fflags=+genpts", "probesize=65536"))
    assert len(read_all(open_source("vis", cfg))) == 5
    assert seen == [{"fflags": "+genpts", "probesize": "65536"}]


@pytest.mark.parametrize("ffmpeg, left", [(("fflags=nobuffer",), {}),
                                          (("fflags=+genpts+nobuffer",), {"fflags": "+genpts"})])
def test_a_network_streams_nobuffer_flag_costs_a_file_no_frame(tmp_path: Path, monkeypatch, ffmpeg, left) -> None:
    # the frame FFmpeg read while probing was lost: 49 of 50, then "truncated or corrupt video"
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("mpeg4", rate=25, options={"g": "12"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(50):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5, np.uint8), format="rgb24")))
        out.mux(stream.encode())
    seen, real_open = [], av.open
    monkeypatch.setattr(av, "open", lambda path, **kw: (seen.append(kw["options"]), real_open(path, **kw))[1])
    frames = read_all(open_source("ir", SourceConfig(kind="file", path=str(clip), realtime=False, ffmpeg=ffmpeg)))
    assert [frame.seq for frame in frames] == list(range(50)) and seen == [left]


@pytest.mark.parametrize("ffmpeg, transport", [((), "tcp"), (("rtsp_transport=udp",), "udp")])
def test_an_rtsp_camera_is_read_over_tcp_unless_told(monkeypatch, ffmpeg, transport) -> None:
    seen = []

    def refused(path, **kwargs):
        seen.append(kwargs["options"])
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(av, "open", refused)
    with pytest.raises(SourceError, match="cannot open rtsp://192.0.2.10/ir"):
        open_source("ir", SourceConfig(kind="stream", path="rtsp://192.0.2.10/ir", ffmpeg=ffmpeg)).open()
    assert seen == [{"rtsp_transport": transport}]


def test_frames_without_pts_follow_each_other_by_one_frame_period(tmp_path: Path) -> None:
    # a raw H.264 elementary stream (.h264, as many cameras dump it) has no timestamps: stamped all alike, its
    # frames would sit 1 ns apart, pair with one visible frame and replay as fast as they decode
    from fractions import Fraction

    path = tmp_path / "v.h264"
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=25, options={"bf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    src = open_source("vis", SourceConfig(kind="file", path=str(path), realtime=False))
    src.warn = lambda line: None
    with src:
        times = []
        while (frame := src.read()) is not None:
            times.append(frame.t_capture_ns)
        period = src.frame_interval_ns
    assert len(times) == 5 and period == 40_000_000  # its own rate (25 fps); fps (30) is for a live stream's
    assert [b - a for a, b in zip(times, times[1:])] == [period] * 4


def test_a_video_with_a_display_matrix_is_read_upright_as_players_show_it(tmp_path: Path) -> None:
    # read as stored, a portrait visible video fused sideways (or with an upright IR camera's frames squeezed into it)
    path = tmp_path / "portrait.mov"
    portrait_mov(path)
    frames = read_all(open_source("vis", SourceConfig(kind="file", path=str(path), realtime=False)))
    assert len(frames) == 3 and frames[0].image.shape[:2] == (64, 48)
    assert frames[0].image[:32].mean() > 200 > 50 > frames[0].image[32:].mean()


@pytest.mark.parametrize("name, codec, n", [("v.mp4", "mpeg4", 10), ("v.mkv", "ffv1", 10), ("b.mkv", "libx264", 9)])
def test_a_complete_variable_rate_file_whose_last_frame_lasts_long_is_read_whole(tmp_path: Path, name, codec,
                                                                                  n) -> None:
    # its container's end is its last frame's end, 0.5 s after that frame's pts: not a sign of frames cut off (with
    # B-frames that frame's packet is not the last one: of x264's 9 frames, three shown before it are decoded after)
    from fractions import Fraction

    path, tb = tmp_path / name, Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = tb
        packets = []
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="bgr24")
            frame.pts, frame.time_base = 40 * i, tb
            packets += stream.encode(frame)
        packets += stream.encode(None)
        for packet in packets:
            packet.time_base, packet.duration = tb, 500 if packet.pts == 40 * (n - 1) else 40
            container.mux(packet)
    frames = read_all(open_source("vis", SourceConfig(kind="file", path=str(path), realtime=False)))
    assert [f.t_capture_ns for f in frames] == [40 * i * MS for i in range(n)]


def write_noise(path: Path, n: int, seed: int, fps: int = 25, codec: str = "ffv1") -> list[np.ndarray]:
    """n lossless 64x48 frames of noise (too large for FFmpeg to hold the file in its read buffer); returns them.
    ``codec="rawvideo"`` (in an AVI): uncompressed, so files of one ``n`` are of one size."""
    images = list(np.random.default_rng(seed).integers(0, 256, (n, 48, 64, 3), np.uint8))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "bgr0" if codec == "ffv1" else "bgr24"
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return images


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])  # the frames lost told by the container's end, by its frame count
def test_a_looped_file_copied_over_while_it_plays_goes_on_with_the_new_file(tmp_path: Path, ext: str) -> None:
    # `cp new.mkv clip.mkv` while a looped clip.mkv plays rewrites the open file in place: the container read the
    # new bytes through the old index and the run ended ("decoding stopped ... Invalid data", as a truncated file)
    clip, new = tmp_path / f"clip{ext}", tmp_path / f"new{ext}"
    write_noise(clip, 60, seed=1)
    fresh = write_noise(new, 40, seed=2)
    src = open_source("vis", SourceConfig(kind="file", path=str(clip), realtime=False, loop=True))
    said: list[str] = []
    src.warn = said.append
    with src:
        before = [src.read() for _ in range(10)]
        shutil.copyfile(new, clip)  # as cp does: the same file, truncated and written again
        after = [src.read() for _ in range(45)]
    assert said == [f"vis: {clip}: the file changed while it played (copied over?) after frame 10 (t=0.360 s): its "
                    f"last 50 frames are lost; its next pass plays the new file"]
    assert src.skipped == 50  # counted into the run's telemetry (capture_skipped) with the other losses
    assert all(np.array_equal(f.image, fresh[i % 40]) for i, f in enumerate(after))  # the new file, from its start
    times = [f.t_capture_ns for f in before + after]
    assert times[10] == 60 * 40 * MS and all(b - a == 40 * MS for a, b in zip(times[10:], times[11:]))  # its next pass
    assert [f.seq for f in before + after] == list(range(55))


def test_a_looped_file_copied_over_with_a_corrupt_one_still_ends_in_one_line(tmp_path: Path) -> None:
    clip, new = tmp_path / "clip.mkv", tmp_path / "new.mkv"
    write_noise(clip, 60, seed=1)
    write_noise(new, 40, seed=2)
    new.write_bytes(new.read_bytes()[:len(new.read_bytes()) // 2])  # cut inside its frames
    src = open_source("vis", SourceConfig(kind="file", path=str(clip), realtime=False, loop=True))
    src.warn = lambda line: None
    with src, pytest.raises(SourceError) as info:
        src.read()
        shutil.copyfile(new, clip)
        for _ in range(100):
            src.read()
    assert str(info.value).startswith(f"vis: {clip}: truncated or corrupt video: decoding stopped after frame ")
