"""The times of a replay's frames: each stream's time span as read, the verdicts on the frames the pairer left, and
the output pts of the visible frames."""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path

from streamfuse.capture.timestamps import JUMP_NS
from streamfuse.frames import Frame
from streamfuse.replay.inputs import Input
from streamfuse.replay.left_frames import LeftFrames
from streamfuse.sync import Pairer
from streamfuse.video import MP4_FINEST_TIMESCALE, container_format

__all__ = ["FrameTimes", "pts_step"]

log = logging.getLogger(__name__)

# FFmpeg's AVI muxer states a video stream's time base as its frame rate, and puts 1/600 s in place of one finer than
# 1 ms (over 1000 frames/s)
_AVI_FINEST, _AVI_FINER = Fraction(1, 1000), Fraction(1, 600)
_SPANS = 16  # read times kept (merged spans) before those no leftover can need are let go: a few, not each frame's


class FrameTimes:
    """What the replay keeps of its frames' times.

    Args:
        vis: the visible input, whose time base and shift the output pts are in.
        period_ns: the visible input's frame interval, ns: where a recording's output goes on after its clock stepped.
        tolerance_ns: the pairing tolerance (``SyncConfig.tolerance_ns``).
        step: the least pts step the output keeps as one (:func:`pts_step`), in the visible input's time base.
    """

    def __init__(self, vis: Input, period_ns: int, tolerance_ns: int, step: int = 1) -> None:
        self.vis, self.step, self.period_ns = vis, step, period_ns
        self.left = LeftFrames(tolerance_ns)  # also each stream's first and newest time line read
        # the time line of the frames held for pairing whose capture times are not it (a clock stepped back), ns
        self.line_of: dict[str, dict[int, int]] = {"ir": {}, "vis": {}}
        self.t0_vis: int | None = None  # first visible capture time (recordings, folders): its time line too
        self.last_pts: int | None = None  # of the frame written last
        self.vis_line: int | None = None  # of the visible frame read last, ns
        self.ahead: list[tuple[int, int]] = []  # a recording's clock steps ahead: (time line after, ns left out)

    def read(self, frame: Frame, t_ns: int) -> None:
        """A frame read, at ``t_ns`` on its stream's time line."""
        self.left.read(frame.stream, t_ns)
        if t_ns != frame.t_capture_ns:
            self.line_of[frame.stream][frame.t_capture_ns] = t_ns
        if frame.stream == "vis":
            self.t0_vis = frame.t_capture_ns if self.t0_vis is None else self.t0_vis
            if self.vis_line is not None and t_ns - self.vis_line > JUMP_NS and self.vis.cfg.kind == "mcap":
                self._stepped_ahead(t_ns)
            self.vis_line = t_ns

    def _stepped_ahead(self, t_ns: int) -> None:
        """The visible frame at ``t_ns`` on the time line came more than :data:`JUMP_NS` after the one before: the
        rig's clock stepped ahead (realtime pacing does not wait through it either). Its output goes on one frame
        interval after the frame before, as after a step back, rather than an hour on, say, which MP4 cannot hold
        (a frame's duration in 31 bits: 35 minutes at its us) nor AVI (a slot for each frame interval)."""
        before = self.vis_line - self.t0_vis - sum(left_out for _, left_out in self.ahead)  # its output time
        log.warning("%s: the visible frames' capture times jump %.3f s ahead after %.3f s of the fused video (the "
                    "clock was stepped?): it goes on one frame interval after the frame before", self.vis.cfg.path,
                    (t_ns - self.vis_line) / 1e9, before / 1e9)
        self.ahead.append((t_ns, t_ns - self.vis_line - self.period_ns))

    def line(self, frame: Frame) -> int:
        """The time line of a frame held for pairing, ns."""
        return self.line_of[frame.stream].get(frame.t_capture_ns, frame.t_capture_ns)

    def left_pairer(self, frame: Frame, outcome: str) -> None:
        """A frame the pairer left ``unpaired`` or ``dropped`` (``Pairer(on_left=...)``)."""
        self.left.left(frame.stream, outcome, self.line(frame))

    def forget(self, pairer: Pairer) -> None:
        """Drop what no frame still to leave ``pairer`` can need: the time line of the frames it no longer holds (so
        what stays does not grow with the frames read after a clock step), and the read times far behind them."""
        for stream, line in self.line_of.items():
            if line:
                capture = pairer.held(stream)
                for t in [t for t in line if t not in capture]:
                    del line[t]
        if self.left.spans() > _SPANS:
            self.left.forget({s: [self.line_of[s].get(t, t) for t in pairer.held(s)] for s in self.line_of})

    def ends(self) -> tuple[dict[str, int], dict[str, int]]:
        """The time line of each stream's first and last frame read, ns (both streams have frames)."""
        return dict(self.left.first), dict(self.left.newest)

    def pts(self, vis: Frame, line_ns: int) -> int:
        """Output pts of a pair in the visible input's time base (plus Input.shift), :attr:`step` or more after
        :attr:`last_pts`; ``line_ns``: the visible frame's time line (:meth:`line`, taken as the pairer gave the pair).

        A recording's pts are its time line from the first visible frame read, not its capture times: where the rig's
        clock stepped back, the frames after the step would come before the first one (a negative pts, which the
        muxer refuses) or before frames written already (the pairs the pairer left behind)."""
        t = vis.t_capture_ns if self.vis.cfg.kind == "file" else line_ns - self.t0_vis - sum(
            left_out for after, left_out in self.ahead if after <= line_ns)
        pts = round(Fraction(t, 1_000_000_000) / self.vis.time_base) + self.vis.shift
        if self.last_pts is not None and pts < self.last_pts + self.step:
            # latest mode can pair one visible frame twice, and a camera can send two frames closer than the
            # container keeps apart: keep pts increasing there
            pts = self.last_pts + self.step
        return pts


def pts_step(out: Path, time_base: Fraction) -> int:
    """The least step of pts in ``time_base`` that the output ``out``'s container keeps as a step: Matroska stores
    ms, MP4 and MOV at most us (:class:`~streamfuse.video.VideoWriter`), AVI 1/600 s where ``time_base`` is finer
    than 1 ms (FFmpeg's muxer puts that in its place); pts closer than that come out equal there, which the MP4 and
    AVI muxers refuse ("Invalid argument")."""
    finest = {"matroska": Fraction(1, 1000), "mp4": Fraction(1, MP4_FINEST_TIMESCALE),
              "mov": Fraction(1, MP4_FINEST_TIMESCALE),
              "avi": _AVI_FINER if time_base < _AVI_FINEST else None}.get(container_format(out))
    return 1 if finest is None or time_base >= finest else math.ceil(finest / time_base)
