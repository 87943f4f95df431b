"""The sources of recorded and streamed video: PyAV files and network streams (``file``, ``stream``); image folders
are :mod:`~streamfuse.capture.image_folder`'s, device cameras :mod:`~streamfuse.capture.camera`'s.

Capture times (``t_capture_ns``):

- ``file``: ``round(pts * time_base * 1e9)``, converted once here; relative to the file's time origin, so the IR
  and visible files of one recording stay comparable (with ``loop`` later passes are shifted to stay increasing, and
  a timestamp discontinuity is shifted out, reported in one line: ``timestamps.FileClock``);
- ``stream``: the stream's pts on the ``time.time_ns()`` clock, never later than the frame's arrival (so a network
  stream pairs with a live camera while keeping the sender's frame spacing, without drifting away from the wall
  clock: ``timestamps.StreamClock``; a format without timestamps, Motion JPEG over HTTP, its arrival time).

16-bit images, grey video deeper than 8 bits (IR) and 16-bit camera frames come to 8 bits by the sequence rule of
:mod:`streamfuse.bitdepth` (IR: a range held while the frames fit it, re-taken when they clearly do not).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from streamfuse.bitdepth import deep_grey
from streamfuse.capture import palette
from streamfuse.capture.container_end import finalised, missing_end
from streamfuse.capture.copied_over import CopiedOver, file_mark
from streamfuse.capture.ffmpeg_options import file_options, unread_by_demuxer
from streamfuse.capture.look_ahead import LookAhead
from streamfuse.capture.open_failure import open_failure
from streamfuse.capture.sender_clock import SenderClock
from streamfuse.capture.sources import BaseSource, SourceError
from streamfuse.capture.timestamps import STILL_REPEATS, FileClock, StreamClock
from streamfuse.errors import io_reason, one_line
from streamfuse.frames import Frame
from streamfuse.registry import register

__all__ = ["AvSource"]


# Codecs whose every packet is one picture although FFmpeg does not mark them intra-only (FFV1 may carry its context
# model from frame to frame; an APNG frame may be blended onto the one before, and PNG shares that decoder).
_ONE_PICTURE_PER_PACKET = ("ffv1", "png", "apng")


# -- PyAV file / stream ------------------------------------------------------------------------------------------


class AvSource(CopiedOver, BaseSource):
    """A video file or network stream decoded with PyAV; see the module docstring for its capture times.

    A live stream is never paced (it arrives in real time; pacing would keep the frames FFmpeg buffered while it
    probed the stream as a constant delay), decodes with slice threads only (frame threads hold frames back, one per
    thread) and skips packets its decoder rejects (lost or corrupt data), reporting them, instead of reconnecting
    (before its first frame only a few: a stream that never decodes fails as a file does). A looped file copied over
    while it plays goes on with the new file (:mod:`~streamfuse.capture.copied_over`).

    Attributes:
        time_base: the video stream's ``time_base`` (``Fraction``), so a writer can turn a file's ``t_capture_ns``
            back into integer pts: ``round(t_ns * time_base.denominator / (time_base.numerator * 1e9))`` (the input's
            own pts unless they had a discontinuity, see ``timestamps``).
        warn: (:class:`BaseSource`'s) called with one line for what the source corrects and goes on (timestamp
            discontinuities, skipped packets); the producer sends it to the pipeline's log.
        skipped: packets skipped so far because the decoder rejected them; the producer counts them into the run's
            telemetry (``capture_skipped``).
    """

    _OPEN_TIMEOUT_S, _READ_TIMEOUT_S = 10.0, 5.0  # network streams: open and per-read timeouts (a dead sender)
    _SKIP_REPORT_S = 10.0  # skipped packets of a live stream: at most one line per this many seconds
    _SKIP_FIRST_MAX = 50  # undecodable packets a live stream may start with (joined mid-stream) before that's an error

    def _open(self) -> None:
        self.live = self.cfg.kind == "stream"
        self._first_t_ns: int | None = None  # of the current pass
        self._last_t_ns: int | None = None
        self._last_pts_ns: int | None = None
        self._last_step_ns = 0  # the last forward pts step: a frame's real duration where the rate is a tick rate
        self.skipped, self._skip_report_at = 0, 0.0
        self._sender, self._sender_note = SenderClock(), ""  # clock: sender: its judge, the last note said
        self._open_container()
        demuxer = self._container.format.name  # said once, not at each pass of a looped file
        if unread := unread_by_demuxer(demuxer, self.cfg.ffmpeg, stream=self.live):
            self.warn(f"{self.section}.ffmpeg: {', '.join(unread)}: not an option of the {demuxer} demuxer that reads "
                      f"{self.cfg.path}, nor of what it reads through (another format's): left unused")
        # A forward jump is shifted out only where pacing would sleep through it: unpaced (replay) times stay the pts.
        self._times = StreamClock() if self.live else FileClock(self._period_ns, rebase_ahead=self.cfg.realtime,
                                                                 still_ns=self._still_ns)
        self._repeated = self._looped = self._still = False  # a repeat, times standing still reported; a loop begun

    def _open_container(self) -> None:
        import av

        from streamfuse.video import LENIENT_TAGS, announced_frames  # PyAV's import: only video sources pay it

        path = self.cfg.path
        if not path:
            raise SourceError(f"{self.section}: no path given for a {self.cfg.kind} source")
        if self.cfg.kind == "file" and not Path(path).is_file():
            what = "not found" if not Path(path).exists() else "not a regular file (a pipe or a device?)"
            raise SourceError(f"{self.section}: video file {what}: {path}")
        # before it opens: a copy since shows
        self._mark = self._mark_at_open = file_mark(path) if self.cfg.loop and not self.live else None
        self._stack = contextlib.ExitStack()
        timeout = (self._OPEN_TIMEOUT_S, self._READ_TIMEOUT_S) if self.live else None
        options = self._options()
        tcp_chosen = path.startswith(("rtsp://", "rtsps://")) and "rtsp_transport" not in options
        if tcp_chosen:  # FFmpeg's UDP default loses packets on a busy link
            options["rtsp_transport"] = "tcp"
        opening = time.monotonic()
        try:
            container = self._stack.enter_context(av.open(path, timeout=timeout, options=options, **LENIENT_TAGS))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise open_failure(self.section, path, exc, live=self.live, tcp_chosen=tcp_chosen,
                               waited_s=time.monotonic() - opening, timeout_s=self._OPEN_TIMEOUT_S) from None
        if self.cfg.clock == "sender" and not hasattr(container, "start_time_realtime"):  # PyAV 18 added it
            self._stack.close()
            raise SourceError(f"{self.section}: clock: sender needs PyAV 18 or later (this is {av.__version__}; "
                              f"Python 3.11 and later install it): give clock: arrival")
        if not container.streams.video:
            self._stack.close()
            raise SourceError(f"{self.section}: {path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE" if self.live else "AUTO"
        if not self.live and stream.codec_context is not None:  # a damaged picture is an error, not concealed
            stream.codec_context.options = {"err_detect": "explode"}  # into a frame passed off as the file's
        # FFmpeg conceals a damaged FFV1 slice (the previous frame's pixels) and only logs it: checked here instead
        self._checksums = not self.live and stream.codec_context is not None and stream.codec_context.name == "ffv1"
        if self.cfg.decode_threads:
            stream.thread_count = self.cfg.decode_threads
        self.time_base: Fraction = stream.time_base or Fraction(1, 90_000)
        self._arrival = self.live and bool(int(container.format.flags) & 0x80)  # AVFMT_NOTIMESTAMPS: HTTP MJPEG
        rate = None if self._arrival else stream.average_rate or stream.guessed_rate  # then expected at cfg.fps
        self._period_ns = round(1e9 / float(rate)) if rate else round(1e9 / self.cfg.fps)
        # the average rate comes from the times: where they stand still, the frames go at the declared one
        declared = (stream.codec_context and stream.codec_context.framerate) or stream.guessed_rate
        self._still_ns = round(1e9 / float(declared)) if declared else round(1e9 / self.cfg.fps)
        self._expected = announced_frames(container, stream)  # 0 when the container does not say (e.g. Matroska)
        self._container, self._stream = container, stream  # for the announced end, at the end of the pass
        # this pass's first and last video packets' dts, and where its last one ends
        self._first_dts = self._last_dts = self._end_dts = self._end_pts = None  # _end_pts: where the frames end
        self._decoded = self._pass_jumps = 0  # frames and timestamps that jumped back in this pass
        self._packets = 0  # video packets with data in this pass
        self._failed = None  # the packet its decoder failed on, and its number (see copied_over)
        self._frames = LookAhead(self._decode(container, stream))

    def _options(self) -> dict[str, str]:
        """The FFmpeg options it opens with: the ``ffmpeg`` setting's (a file's without a stream's ``nobuffer``)."""
        options = dict(o.split("=", 1) for o in self.cfg.ffmpeg)
        return options if self.live else file_options(options)

    def _decode(self, container, stream) -> Iterator:
        """The stream's frames (``container.decode``, packet by packet, so a live stream can skip a bad packet)."""
        import av

        from streamfuse.ffv1_crc import ffv1_checked

        if stream.codec_context is None:  # a codec this FFmpeg cannot decode: PyAV 17 would crash decoding it
            raise OSError("FFmpeg has no decoder for its codec")
        packets = container.demux(stream)
        for packet, intact in ffv1_checked(packets) if self._checksums else ((p, True) for p in packets):
            self._packets += packet.size > 0
            if packet.size and packet.dts is not None:
                self._first_dts = packet.dts if self._first_dts is None else self._first_dts
                # An AVI packet lasts one slot, and a frame spans several where the time base is finer than the
                # frame rate (1/600 s): the step from the packet before is its length then.
                step = 0 if self._last_dts is None else packet.dts - self._last_dts
                self._last_dts, self._end_dts = packet.dts, packet.dts + max(packet.duration, step)
            if packet.size and packet.pts is not None and packet.duration:  # a variable-rate file's last may be long
                self._end_pts = max(self._end_pts or packet.pts, packet.pts + packet.duration)
            if not intact:
                self._failed = packet, self._packets
                yield from stream.codec_context.decode(None)  # the whole pictures before it, held by frame threads
                raise self._truncated(f"picture {self._packets} fails its slice checksums (FFV1 CRC)")
            try:
                yield from packet.decode()
            except av.FFmpegError as exc:
                # A file is corrupt (it would fail at the same frame again); a stream that never decodes is not video.
                if not isinstance(exc, av.InvalidDataError) or not self.live or \
                        (self._decoded == 0 and self.skipped >= self._SKIP_FIRST_MAX):
                    self._failed = packet, self._packets
                    raise
                self.skipped += 1
                if time.monotonic() >= self._skip_report_at:
                    self._skip_report_at = time.monotonic() + self._SKIP_REPORT_S
                    self.warn(f"{self.section}: {self.cfg.path}: skipped {self.skipped} undecodable packet(s) so far "
                              f"(lost or corrupt data: {one_line(exc)}); decoding goes on")

    def _next_frame(self) -> Frame | None:
        import av

        from streamfuse.video import upright

        try:
            frame = next(self._frames, None)
        except (av.FFmpegError, OSError) as exc:
            why = io_reason(exc)
            if isinstance(exc, av.ExitError) and self.live:
                why = f"no stream data for {self._READ_TIMEOUT_S:g} s (read timeout)"
            if not self.live and (cut := self._read_end(missing_end)) and cut.certain and not cut.after_frames:
                raise self._truncated(cut.what) from None  # a decoder that fails on a cut file's last packet (PyAV 17)
            raise SourceError(f"{self.section}: {self.cfg.path}: decoding stopped {self._where()}: {why}") from None
        if frame is None:
            return self._end_of_pass()
        pts_ns = self._pts_ns(frame)
        if pts_ns is None:  # a frame without pts follows the previous one by one period
            pts_ns = 0 if self._last_pts_ns is None else self._last_pts_ns + self._period_ns
        # a repeated pts: the frames coming with it too say whether the times stand still from this frame on
        ahead = 0 if self.live or pts_ns != self._last_pts_ns else self._frames.count(
            lambda f: self._pts_ns(f) == pts_ns, STILL_REPEATS)
        t_ns = self._stamp(pts_ns, ahead)
        if self._first_t_ns is None:
            self._first_t_ns = t_ns
            self._begin_pass(t_ns)
        elif pts_ns > self._last_pts_ns:
            self._last_step_ns = pts_ns - self._last_pts_ns
        self._last_pts_ns, self._last_t_ns = pts_ns, t_ns
        self._decoded += 1
        colour = not frame.format.name.startswith("gray")
        if self._is_ir and colour and not self.cfg.palette and self._seq == 0:  # decoded grey below: said here, once
            if note := palette.first_note(frame.to_ndarray(format="bgr24"), ""):
                self.warn(f"{self.section}: {self.cfg.path}: {note}")
        grey = not colour or (self._is_ir and self.cfg.palette in ("", "black_hot"))  # a colour map takes colour
        deep = self._is_ir and deep_grey(frame.format)  # IR counts: 16 bits here, 8 from _convert
        image = upright(frame, frame.to_ndarray(format="gray16le" if deep else "gray" if grey else "bgr24"))
        if not self.live:
            self._pace(t_ns)
        return self._frame(t_ns, self._convert(image), self._times.mono_ns if self.live else 0)

    def _pts_ns(self, frame: Any) -> int | None:
        """A decoded frame's pts in ns (converted once, here at the edge), or None."""
        return None if frame.pts is None else round(frame.pts * (frame.time_base or self.time_base) * 1_000_000_000)

    def _stamp(self, pts_ns: int, repeats_ahead: int) -> int:
        """The capture time of the frame with this pts, followed by ``repeats_ahead`` frames repeating it (as far as
        looked); reports a timestamp discontinuity or the first repeat."""
        if self.live:
            mono_ns, wall_ns = time.monotonic_ns(), time.time_ns()
            t_ns = self._times.stamp(mono_ns if self._arrival else pts_ns, mono_ns, wall_ns)  # guessed pts: arrival
            if self._times.restarted:
                self.warn(f"{self.section}: {self.cfg.path}: timestamps went back {self._where()} (the sender "
                          f"restarted?); times follow the wall clock again")
            if self.cfg.clock == "sender" and (sent := self._sent_ns(pts_ns, wall_ns, mono_ns)) is not None:
                t_ns = max(sent, (self._last_t_ns or 0) + 1)  # increasing, also across a change of clock
                self._times.mono_ns = t_ns - (wall_ns - mono_ns)
            return t_ns
        t_ns = self._times.stamp(pts_ns, repeats_ahead)
        fix, step_s = self._times.fix, self._times.step_ns / 1e9
        self._pass_jumps += fix == "rebased" and step_s < 0
        if fix == "frozen" and not self._still:
            self._still, self._period_ns = True, self._still_ns  # the producer's stall watch expects frames at it
            self.warn(f"{self.section}: {self.cfg.path}: its frame times do not advance {self._where()}; the frames "
                      f"go at its declared rate, {1e9 / self._still_ns:g} fps")
        if self._looped or fix == "frozen" or (fix == "nudged" and self._repeated):
            return t_ns  # said once: a loop's next passes meet the same timestamps again
        if fix == "rebased":
            self.warn(f"{self.section}: {self.cfg.path}: timestamps jump {'back' if step_s < 0 else 'ahead'} "
                      f"{abs(step_s):.3f} s {self._where()}; times go on one frame after the previous frame")
        elif fix == "nudged":
            self._repeated = True
            self.warn(f"{self.section}: {self.cfg.path}: a timestamp repeats {self._where()}; such frames are "
                      f"placed 1 ns after the previous one")
        return t_ns

    def _truncated(self, what: str) -> SourceError:
        return SourceError(f"{self.section}: {self.cfg.path}: truncated or corrupt video: decoding stopped "
                           f"{self._where()}; {what}")

    def _end_of_pass(self) -> Frame | None:
        """The stream ended: a truncated file is an error; else None, or a new pass when looping."""
        if 0 < self._decoded < self._expected:
            raise self._truncated(f"the container announces {self._expected} frames")
        self._check_end()
        if not self.cfg.loop or self._decoded == 0:
            return None
        return self._new_pass()

    def _new_pass(self) -> Frame | None:
        # the next pass starts one frame period after this one ended, so times keep increasing
        self._times.new_pass()
        self._looped = True
        self._first_t_ns = self._last_t_ns = self._last_pts_ns = None
        self._stack.close()
        self._open_container()
        return self._read()

    def _skip_passes(self, passes: int, seq_step: int, t_step_ns: int) -> None:
        super()._skip_passes(passes, seq_step, t_step_ns)
        shift = passes * t_step_ns  # a pass's times repeat, shifted (timestamps.FileClock)
        self._times.shift(shift)
        self._first_t_ns, self._last_t_ns = self._first_t_ns + shift, self._last_t_ns + shift

    def _check_end(self) -> None:
        """A file read to its last frame that ends before its container's announced end, or whose decoder gave
        fewer frames than it has pictures, is truncated or corrupt."""
        from streamfuse.video import announced_end_s

        self._check_lost()
        end_s = announced_end_s(self._container, self._stream, self._first_dts) if self._finalised() else None
        if self._decoded and end_s is not None and self._ends_before(end_s):
            raise self._truncated(f"the container announces {end_s:.3f} s")
        # Its announced frame count, or its announced length to within half a frame (a single frame's is not known)
        whole = self._decoded == self._expected > 0 or (self._decoded > 1 and end_s is not None
                                                        and not self._ends_before(end_s, steps=1.5))
        self._check_container_end(whole)

    def _finalised(self) -> bool:
        """Whether the lengths the container's header states are the file's: an AVI written where its writer could
        not seek back (a pipe; a live AVI stream always is) holds placeholders there (FFmpeg's 2^30 frames)."""
        if self.live:
            return "avi" not in self._container.format.name.split(",")
        return self._read_end(finalised)

    def _ends_before(self, end_s: float, steps: float = 2) -> bool:
        """Whether this pass's frames end before ``end_s``, the container's announced end, their last lasting up to
        ``steps`` frame steps (2: what a complete file's rounding can leave; 1.5: its last frame was read)."""
        if "avi" in self._container.format.name.split(","):  # frame slots: exact (see announced_end_s)
            # as a float, as end_s is: 40 slots of 1/25 s are exactly 8/5, under the float 1.6 (1.6000000000000000888)
            return self._end_dts is not None and float(self._end_dts * self.time_base) < end_s
        # After a jump back the last pts says nothing about where the file ends (after a gap it still does). The
        # last frame lasts its step: a variable-rate file's nominal rate can be its time base's (1/600 s ticks), and
        # a single frame's length is not known (a cut leaving one frame shows in the container's end, see below).
        if self._decoded < 2:
            return False
        end_ns = round(self._end_pts * self.time_base * 1_000_000_000) if self._end_pts is not None else 0
        last_ns = max(self._last_pts_ns + round(steps * max(self._period_ns, self._last_step_ns)), end_ns)
        return not self._pass_jumps and last_ns < round(end_s * 1e9)

    def _check_container_end(self, whole: bool) -> None:
        """A cut the checks above miss (Matroska or FLV without their last frames, a NUT, MPEG-TS or MPEG-PS file,
        which announce no length, an AVI cut inside its last frame) shows in what the container wrote at its end
        (``container_end``): an error, or a warning where a complete file can look the same or where the cut is in
        the index or metadata written after the frames (``whole``: the frames the container announces were read)."""
        if self.live or self._looped:
            return
        cut = self._read_end(missing_end)
        if cut is None:
            return
        if cut.certain and not cut.after_frames:
            raise self._truncated(cut.what)
        where = f"{self.section}: {self.cfg.path}: {cut.what}"
        if cut.after_frames and whole:
            self.warn(f"{where}: cut in its index or metadata, after the frames: all {self._decoded} frames it "
                      f"announces were read")
        else:
            self.warn(f"{where}: frames after frame {self._decoded} may be missing")

    def _read_end(self, check: Callable[[str, str], Any]) -> Any:
        """``check(path, format name)``, a ``container_end`` check on the file's own bytes; an error one line."""
        try:
            return check(self.cfg.path, self._container.format.name)
        except OSError as exc:
            raise SourceError(f"{self.section}: {self.cfg.path}: cannot read it to check its container: "
                              f"{io_reason(exc)}") from None

    def _check_lost(self) -> None:
        """A frame-threaded decoder drops a picture that fails to decode while it drains (FFmpeg ignores errors
        there), so a damaged packet among a file's last ``thread_count`` ones ends it early without an error, and an
        H.264 decoder may drop a damaged picture anywhere: fewer frames than packets tell. Where every packet is one
        picture that is an error; elsewhere it is reported (a codec may have packets it never shows, VP8's
        alternate reference frames say)."""
        lost = self._packets - self._decoded
        if self.live or lost <= 0 or self._looped:
            return
        codec = self._stream.codec_context.codec
        if codec.intra_only or codec.name in _ONE_PICTURE_PER_PACKET:
            raise self._truncated(f"the file holds {self._packets} frames")
        self.warn(f"{self.section}: {self.cfg.path}: {lost} of its {self._packets} packets decoded to no frame "
                  f"(damaged data, or a stream cut before a keyframe); their frames are missing")

    def _sent_ns(self, pts_ns: int, wall_ns: int, mono_ns: int) -> int | None:
        """The sender's capture time of this frame (``clock: sender``): its RTCP sender reports' NTP time of pts 0
        plus the pts; None, said once, without a report yet or where the sender's clock is not ours (it would pair
        the frames with others seconds away: ``sender_clock``)."""
        sent = self._sender.sent_ns(self._container.start_time_realtime, pts_ns, wall_ns, mono_ns)
        if sent is not None:
            self._sender_note = ""
            return min(sent, wall_ns)  # a clock a little ahead: never later than the frame's arrival
        if self._sender.kind != self._sender_note:  # said when it starts, not at every frame
            self._sender_note = self._sender.kind
            self.warn(f"{self.section}: {self.cfg.path}: clock: sender: {self._sender.note}")
        return None

    def _where(self) -> str:
        if self._last_t_ns is None:
            return "before the first frame"
        return f"after frame {self._decoded} (t={(self._last_t_ns - self._first_t_ns) / 1e9:.3f} s)"

    def _close(self) -> None:
        self._stack.close()


register("source", "file")(AvSource)
register("source", "stream")(AvSource)
