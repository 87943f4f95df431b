"""Frame sources: SourceConfig, the Source protocol and BaseSource, which every kind builds on.

Kinds (registry kind ``"source"``): ``synthetic`` (a registered IR/visible pair of a moving night scene,
``synthetic``); ``camera`` (``camera``); ``stream``, ``file`` (``video_sources``); ``folder`` (``image_folder``);
``mcap`` (a recording, ``mcap_source``).

Every source yields :class:`~streamfuse.frames.Frame` objects: the section ``"ir"`` gives ``(H, W)`` uint8 grey;
any other section gives ``(H, W, 3)`` uint8 BGR, or ``(H, W)`` when the input is grey. Capture times
(``t_capture_ns``): live sources stamp ``time.time_ns()`` right after the grab, and ``time.monotonic_ns()``
(``t_mono_ns``, which latency is measured on); the others use their recorded or virtual clock (non-realtime
synthetic: ``index / fps`` seconds) and have no monotonic stamp; see each kind.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import cv2
import numpy as np

from streamfuse.bitdepth import To8Bit
from streamfuse.capture import palette
from streamfuse.capture.loop_spans import PassStarts
from streamfuse.capture.time_line import anchored, claimed, held
from streamfuse.capture.timestamps import FileClock
from streamfuse.checks import check, shown
from streamfuse.errors import redact
from streamfuse.frames import FAR_NS, MAX_FRAME_ID, Frame, optical_frame
from streamfuse.registry import available, build

__all__ = ["SourceConfig", "Source", "BaseSource", "SourceError", "open_source", "CAPTURE_CLOCKS"]

log = logging.getLogger(__name__)

#: What capture times count (``SourceConfig.capture_clock``; the wire's ``t_capture_clock``): two sources pair only on
#: one clock, as their times are compared.
CAPTURE_CLOCKS = {"epoch": "the wall clock at capture", "recorded": "the recording's times",
                  "media": "times from their own start (0)"}

# Largest frame accepted: 8192 px a side and no more pixels than DCI 8K (8192 x 4320); more is a typo, not a camera.
MAX_SIDE, MAX_PIXELS = 8192, 8192 * 4320


class SourceError(RuntimeError):
    """A source that cannot open or keep reading; the message is one line naming the source and the cause (a URL's
    secrets masked: :func:`~streamfuse.errors.redact`). ``unreachable``: a camera or sender that is not there
    (refused, timed out, no route; a device not plugged in): not a wrong setting, so the producer waits for it even
    before a first frame.
    """

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(redact(message))
        self.unreachable = unreachable


@dataclass(frozen=True)
class SourceConfig:
    """One input (section ``ir`` or ``vis``).

    Args:
        kind: ``synthetic | camera | stream | file | folder | mcap``.
        path: camera index or device path; URL; video file; image folder; recording file.
        fps: frame rate of synthetic, camera and folder sources, and of a stream without timestamps (Motion JPEG over
            HTTP), frames/s (files use their own timestamps; a looped recording of one frame steps by it).
        width: synthetic width / camera request, pixels.
        height: synthetic height / camera request, pixels.
        realtime: files, folders, recordings: pace at the recorded rate; False = as fast as possible
            (synthetic: False renders on a virtual clock ``seq / fps`` instead of the wall clock).
        loop: files and folders: start again at the end, times kept increasing.
        restart: reopen with back-off when the source fails or ends (see ``producer.start_producers``).
        frame_id: optical frame name; empty = ``"<section>_optical_frame"``.
        seed: synthetic scene seed (use the same seed for ``ir`` and ``vis`` to get a registered pair).
        resize: replay, IR size != visible size: ``resize`` to the visible size or ``error``.
        stall_factor: a producer silent for its frame interval (``1 / fps``; a video's own rate) times this, and
            at least ``stall.STALL_FLOOR_S``, is reported, counted as a stall, killed and restarted; 0 = never (a
            first frame: see ``producer``).
        decode_threads: files and streams: FFmpeg decoder threads; 0 = FFmpeg's choice (about one per core).
        ffmpeg: files and streams: FFmpeg options, ``NAME=VALUE`` (``rtsp_transport=udp``, ``fflags=nobuffer``); an
            RTSP URL gets ``rtsp_transport=tcp`` unless told (FFmpeg's UDP default loses packets on a busy link), a
            file no ``nobuffer`` flag (a stream's lower latency, which on a file loses the frames probed).
        topic: recordings: the topic this stream is read from (empty: our recorder's; a ``ros2 bag``'s camera).
        clock: streams: ``arrival`` (the sender's pts on this machine's clock, never later than arrival) or ``sender``
            (an RTSP camera's own capture times, from its RTCP sender reports: cameras whose clocks are NTP-synced
            with this machine pair by when they captured, whatever their encoding latency).
        palette: IR: the false-colour palette of a thermal camera's 8-bit frames, mapped back to temperature order
            (:mod:`~streamfuse.capture.palette`): a palette's name or a palette file; empty = grey by luminance.
        delay_ms: live sources: how long the camera takes from capturing a frame to delivering it (a thermal
            camera's internal processing, an encoder's latency), ms, taken off every stamp (``t_capture_ns`` and
            ``t_mono_ns``), so that two cameras of different delays pair by when they captured.
    """

    kind: str = "synthetic"
    path: str = ""
    fps: float = 30.0
    width: int = 640
    height: int = 480
    realtime: bool = True
    loop: bool = False
    restart: bool = True
    frame_id: str = ""
    seed: int = 0
    resize: Literal["error", "resize"] = "resize"
    stall_factor: float = 20.0
    decode_threads: int = 0
    ffmpeg: tuple[str, ...] = ()
    topic: str = ""
    clock: Literal["arrival", "sender"] = "arrival"
    palette: str = ""
    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        kinds = sorted(available("source"))
        check(self.kind in kinds, "kind", self.kind, " | ".join(kinds))
        if self.kind == "camera" and "://" in self.path:  # OpenCV would play it without timeouts, over UDP
            raise ValueError(f"path={redact(self.path)!r} is a network camera's URL: give it with kind: stream")
        check(0.1 <= self.fps <= 1000.0, "fps", self.fps, "0.1 <= fps <= 1000")
        check(16 <= self.width <= MAX_SIDE, "width", self.width, f"16 <= width <= {MAX_SIDE}")
        check(16 <= self.height <= MAX_SIDE, "height", self.height, f"16 <= height <= {MAX_SIDE}")
        check(self.width * self.height <= MAX_PIXELS, "width", self.width,
              f"width x height <= {MAX_PIXELS} pixels (8192 x 4320); {self.width} x {self.height} would need "
              f"{self.ring_bytes(1) / 2**20:.0f} MiB of shared memory for each frame of a capture ring")
        check(self.stall_factor == 0 or 2 <= self.stall_factor <= 1000, "stall_factor", self.stall_factor,
              "0 (off) or 2 .. 1000 frame intervals")
        check(self.seed >= 0, "seed", self.seed, "seed >= 0")
        check(self.resize in ("error", "resize"), "resize", self.resize, "error | resize")
        check(0 <= self.decode_threads <= 256, "decode_threads", self.decode_threads, "0 (FFmpeg's choice) .. 256")
        check(all("=" in o[1:] for o in self.ffmpeg), "ffmpeg", self.ffmpeg, "NAME=VALUE options: [fflags=nobuffer]")
        if cut := next((o for o in self.ffmpeg if "\0" in o), None):  # FFmpeg's C strings end there: the rest unsaid
            raise ValueError(f"ffmpeg option {shown(cut)} holds a NUL character: FFmpeg would read it only up to there")
        check(self.clock in ("arrival", "sender"), "clock", self.clock, "arrival | sender")
        check(len(self.frame_id) <= MAX_FRAME_ID, "frame_id", self.frame_id, f"at most {MAX_FRAME_ID} characters (the "
              "fused frames' and previews' headers hold it: consumers refuse one over 64 KiB)")
        if self.clock == "sender" and self.kind != "stream":
            raise ValueError(f"clock='sender' needs kind: stream (an RTSP camera's RTCP sender reports); this source "
                             f"is kind: {self.kind}")
        check(0.0 <= self.delay_ms <= 5000.0, "delay_ms", self.delay_ms, "0 <= delay_ms <= 5000")
        if self.delay_ms and self.replayable:
            what = "a virtual-clock synthetic source" if self.kind == "synthetic" else f"a {self.kind}"
            raise ValueError(f"delay_ms={shown(self.delay_ms)}: a live source's setting (camera, stream, realtime "
                             f"synthetic); {what} keeps its own times")
        try:
            palette.check_palette(self.palette)
        except ValueError as exc:
            raise ValueError(f"palette={shown(self.palette)}: {exc}") from None

    def ring_bytes(self, slots: int) -> int:
        """Shared memory a ring of ``slots`` frames of this size takes: 3 bytes a pixel, a visible frame's, or an IR
        frame's 8-bit image with a thermal camera's 16-bit counts beside it (``Frame.counts``)."""
        return slots * self.width * self.height * 3

    @property
    def replayable(self) -> bool:
        """Reopening gives the same frames again (files, folders, recordings, virtual-clock synthetic); their capture
        times are on the recording's clock, not this machine's wall clock."""
        return self.kind in ("file", "folder", "mcap") or (self.kind == "synthetic" and not self.realtime)

    @property
    def capture_clock(self) -> str:
        """What this source's capture times count (:data:`CAPTURE_CLOCKS`): ``recorded`` for recordings, ``media``
        for files, folders and virtual-clock synthetic, ``epoch`` for live sources."""
        return "recorded" if self.kind == "mcap" else "media" if self.replayable else "epoch"


@runtime_checkable
class Source(Protocol):
    """What every source kind provides. ``live`` sources stamp wall-clock times and cannot be re-read; the others
    (files, folders, virtual-clock synthetic) give the same frames again when reopened. Optional: ``skip(n)``
    (discard n frames unpaced, as :class:`BaseSource` has), ``stop_event``, ``warn`` (takes one line on what was
    corrected), ``frame_interval_ns`` (the expected time between frames once open; default ``1 / cfg.fps``),
    ``progress`` (called by an open that takes long in steps of its own, as a synthetic scene's build)."""

    section: str
    frame_id: str
    live: bool

    def open(self) -> None:
        """Open the device/file; raises SourceError (one line: what and where)."""

    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream; raises SourceError when the device is lost."""

    def close(self) -> None:
        """Release the device/file (idempotent)."""

    def __enter__(self) -> Source: ...

    def __exit__(self, *exc: object) -> None: ...


def open_source(section: str, cfg: SourceConfig) -> Source:
    """The Source of ``cfg.kind`` (a section's config) for ``section`` (``"ir"``, whose frames come grey, or
    ``"vis"``: the frames' ``stream``), not yet opened: ``with open_source("ir", cfg) as src: ...``."""
    return build("source", cfg.kind, section=section, cfg=cfg)


def _log_warning(line: str) -> None:
    log.warning("%s", redact(line))


class BaseSource:
    """Shared plumbing for Source kinds: lazy open, context manager, sequence numbers, colour conversion, pacing,
    ``skip``. A kind subclasses it, implements ``_open``/``_read`` (and ``_close``), and registers the class:
    ``register("source", "mcap")(McapSource)``; the factory is called as ``cls(section=..., cfg=...)``."""

    live = False
    warn: Callable[[str], None] = staticmethod(_log_warning)  # one line on what the source corrects and goes on with
    pace_origin: Any = None  # where realtime pacing began, shared (capture.time_line.TimeLine)
    pace_shift_ns = 0  # what the producer adds to this process's frame times (a resumed pass's offset)
    passed = 0  # frames passed over, never given: a late source's of the time gone on the time line it joined
    progress: Callable[[], None] = staticmethod(lambda: None)  # a step of a long open done: the producer's sign of life

    def __init__(self, section: str, cfg: SourceConfig) -> None:
        self.section, self.cfg = section, cfg
        self.frame_id = optical_frame(section, cfg.frame_id)
        self.stop_event: Any = None  # Event-like (``wait(s)``) from the producer: pacing sleeps end on stop
        self._is_ir = section == "ir"
        self._depth = To8Bit(self._is_ir)  # 16-bit frames: IR by the sequence's held range (streamfuse.bitdepth)
        self._counts: np.ndarray | None = None  # the 16-bit IR counts of the frame being made (Frame.counts)
        self._seq, self._opened = 0, False
        self._pace_anchor: tuple[int, int, FileClock] | None = None  # perf_counter_ns, time, time line (_pace)
        self._skipping = False
        self._joining = self._passing = False  # joining its time line late (_pace); this frame's time gone on it
        self._lap = 0  # passes begun: a looping kind counts one at each pass's first frame (``skip`` steps over them)
        self._passes = PassStarts()  # a looped input's passes kept in step with another's (``_begin_pass``)
        self._period_ns = round(1e9 / cfg.fps)  # a kind with its own rate (a video) sets it when it opens
        self._delay_ns = round(cfg.delay_ms * 1e6)

    def open(self) -> None:
        if not self._opened:
            self._open()
            self._opened = True

    def read(self) -> Frame | None:
        self.open()
        frame = self._read()
        while frame is not None and self._passing:  # a late source's frame of a time already gone on its time line
            self._passing, self.passed = False, self.passed + 1
            self.progress()  # a sign of life to the stall watch, as no frame is written meanwhile
            frame = self._read()
        if frame is not None:
            frame.t_capture_ns += self._passes.held_ns
        if frame is not None and abs(frame.t_capture_ns) >= FAR_NS:
            raise SourceError(f"{self.section}: {self.cfg.path}: frame {frame.seq} is timed "
                              f"{frame.t_capture_ns / 1e9:.0f} s from its clock's origin, over 146 years: a damaged "
                              f"timestamp")
        return frame

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    @property
    def frame_interval_ns(self) -> int:
        """Expected time between frames, ns: ``1 / fps`` (a video source uses its own rate once open)."""
        return self._period_ns

    def skip(self, n: int) -> int:
        """Read and discard up to ``n`` frames without pacing (to resume a replayable source); returns how many.

        A looping source is read for about one or two passes at most, however many it has looped: once a pass begins
        in the state the pass before began in (the same 8-bit conversion state), every later pass repeats it, shifted
        by one pass's seq and time steps, so the whole passes left are stepped over unread (``_skip_passes``)."""
        self._skipping = True
        try:
            done, begun = 0, None  # begun: (frames done, seq, time, state) at the first frame of the last pass begun
            while done < n:
                lap = self._lap
                if (frame := self.read()) is None:
                    return done
                done += 1
                if self._lap == lap:
                    continue
                mark = (done, frame.seq, frame.t_capture_ns, self._depth.state)
                if begun is not None and begun[3] == mark[3]:  # the passes from here on repeat the one before
                    length = done - begun[0]
                    passes = (n - done) // length
                    self._skip_passes(passes, frame.seq - begun[1], frame.t_capture_ns - begun[2])
                    self._lap, done = self._lap + passes, done + passes * length
                begun = mark
            return n
        finally:
            self._skipping = False

    def _begin_pass(self, t_ns: int) -> None:
        """A looping kind's pass begins with its frame at ``t_ns`` (its own times): counted, and where every input
        loops, its times from here on moved so that it starts with the other inputs' passes (:mod:`~.loop_spans`)."""
        self._lap += 1
        wait = self.stop_event.wait if self.stop_event is not None else lambda s: time.sleep(s) or False
        self._passes.begin(self._lap, t_ns, getattr(self.pace_origin, "loop_spans", None),
                           self.section, f"{self.section}: {self.cfg.path}", wait, self.warn)

    def _skip_passes(self, passes: int, seq_step: int, t_step_ns: int) -> None:
        """Go on ``passes`` whole passes later, the next frame's seq ``seq_step`` and time ``t_step_ns`` on per pass
        (a kind whose times follow ``_seq`` needs nothing more, but for a looped input's wait: see the folder's)."""
        self._seq += passes * seq_step

    def __enter__(self) -> BaseSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        raise NotImplementedError

    def _read(self) -> Frame | None:
        raise NotImplementedError

    def _close(self) -> None:
        """Nothing to release by default."""

    def _frame(self, t_ns: int, image: np.ndarray, mono_ns: int = 0) -> Frame:
        height, width = image.shape[:2]
        if self.cfg.kind in ("camera", "stream") and (max(height, width) > MAX_SIDE or height * width > MAX_PIXELS):
            # a camera gone wrong (or hostile): the rings grew to hold it and each frame held up the live loop for
            # seconds (20 GB at 48 MP); a file or folder the user chose (a replay of large stills) is taken
            raise SourceError(f"{self.section}: {self.cfg.path}: a {width}x{height} frame, larger than a camera's "
                              f"(at most {MAX_SIDE} a side and {MAX_PIXELS} pixels): refused")
        if self._delay_ns:  # a live source's: back to when the camera captured the frame
            t_ns, mono_ns = t_ns - self._delay_ns, mono_ns and mono_ns - self._delay_ns
        frame = Frame(self.section, self._seq, int(t_ns), image, mono_ns, self._counts)
        self._seq, self._counts = self._seq + 1, None
        return frame

    def _8bit(self, image: np.ndarray) -> np.ndarray:
        """16-bit and float frames to 8 bits (:mod:`~streamfuse.bitdepth`); ValueError where a palette is named for
        them (counts are in temperature order already)."""
        if self._is_ir:
            palette.check_depth(image, self.cfg.palette)
            if image.dtype == np.uint16 and image.ndim == 2:  # a thermal camera's counts: kept for a recording
                self._counts = image
        return self._depth(image)

    def _convert(self, image: np.ndarray) -> np.ndarray:
        """IR -> (H, W) grey in temperature order (``palette``); visible -> (H, W, 3) BGR, grey stays (H, W); 16-bit:
        :mod:`~streamfuse.bitdepth`."""
        try:
            image = self._8bit(image)
        except ValueError as exc:
            raise SourceError(f"{self.section}: {exc}") from None
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        if self._is_ir:
            if self._seq == 0 and (note := palette.first_note(image, self.cfg.palette)):
                self.warn(f"{self.section}: {self.cfg.path}: {note}")
            try:
                image = palette.ir_grey(image, self.cfg.palette)
            except ValueError as exc:
                raise SourceError(f"{self.section}: {self.cfg.path}: {exc}") from None
        return np.ascontiguousarray(image)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            (self.stop_event.wait if self.stop_event is not None else time.sleep)(seconds)

    def _anchor(self, t_ns: int) -> bool:
        """Where pacing the frame at ``t_ns`` begins: the time line (``pace_origin``, :mod:`~.time_line`) this frame
        starts (True: due now), or the one a restarted producer's predecessor or the other source began."""
        clock = FileClock(self._period_ns)
        wall0, t0, begins, self._joining = anchored(self.pace_origin, self.section, clock.stamp(t_ns),
                                                    self.pace_shift_ns, time.perf_counter_ns(),
                                                    lambda text: self.warn(f"{self.section}: {self.cfg.path}: {text}"))
        self._pace_anchor = (wall0, t0, clock)
        return begins

    def _pace(self, t_ns: int) -> None:
        """Realtime pacing: return when the wall clock has advanced as far as t_ns since the first frame, on a time
        line with a stepped clock's steps shifted out (a recording made across one neither races nor sleeps)."""
        if not self.cfg.realtime or self._skipping:
            return
        t_ns += self._passes.held_ns
        if self._pace_anchor is None:  # a shared time line begins once every source on it has its first frame
            held(self.pace_origin, self.section, self.stop_event, self.warn)
            with claimed(self.pace_origin):
                if self._anchor(t_ns):
                    return
        wall0, t0, line = self._pace_anchor
        wait_ns = wall0 + (line.stamp(t_ns) - t0) - time.perf_counter_ns()
        if self._joining and wait_ns < -self._period_ns:  # its time is gone on the line it joins late: passed over
            self._passing = True
            return
        if self._joining and self.passed:
            self.warn(f"{self.section}: {self.cfg.path}: ready after its time line began: its first {self.passed} "
                      f"frames, of a time already gone on it, are passed over, not sent at once")
        self._joining = False
        self._sleep(wait_ns / 1e9)
