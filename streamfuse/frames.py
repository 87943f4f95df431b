"""The messages between stages: Frame, FramePair, FusedFrame.

Times: ``t_capture_ns`` is nanoseconds. Live sources stamp epoch time (``time.time_ns()``) at acquisition, so it is
meaningful across machines; video files, image folders and virtual-clock synthetic sources count from their own
time origin (see :mod:`streamfuse.capture.sources`). Stage latencies inside one process use ``time.perf_counter_ns()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Frame", "FramePair", "FusedFrame", "SizeMismatch", "STREAM_NAMES", "FAR_NS", "MAX_FRAME_ID",
           "optical_frame"]

STREAM_NAMES = {"ir": "IR", "vis": "visible"}  # the streams as messages name them
# a capture time this far from its clock's origin (146 years) is a damaged timestamp: the 64-bit times the stages
# keep would overflow once a loop's or a discontinuity's offset is added
FAR_NS = 2**62


@dataclass
class Frame:
    """One captured image.

    Args:
        stream: source name, ``"ir"`` or ``"vis"``.
        seq: per-source sequence number, starting at 0, +1 per captured frame.
        t_capture_ns: capture time, ns: epoch for live sources; video files: pts x time_base, converted once.
        image: ``(H, W)`` uint8 grey or ``(H, W, 3)`` uint8 BGR.
        t_mono_ns: acquisition time on the machine's monotonic clock (``time.monotonic_ns()``, one clock for every
            process of the machine), ns, which latency is measured on: a wall clock stepped by NTP moves the epoch
            time, not this one; 0 for a frame not acquired live (a file, a recording).
        counts: IR read deeper than 8 bits: the ``(H, W)`` uint16 counts ``image`` was made from (a thermal
            camera's raw output, which a recording keeps beside the 8-bit image); None otherwise.
    """

    stream: str
    seq: int
    t_capture_ns: int
    image: np.ndarray
    t_mono_ns: int = 0
    counts: np.ndarray | None = None


class SizeMismatch(ValueError):
    """An IR frame of another size than its visible partner with ``resize: error``: the input's fault, which running
    again meets again."""


@dataclass
class FramePair:
    """An IR frame and a visible frame paired by capture time."""

    ir: Frame
    vis: Frame
    t_paired_ns: int = 0  # perf_counter_ns when pairing emitted it

    def ir_at_vis_size(self, policy: str = "resize") -> np.ndarray:
        """The IR image at the visible image's size: resized (``policy="resize"``) or refused with the reason."""
        ir, (h, w) = self.ir.image, self.vis.image.shape[:2]
        if ir.shape[:2] == (h, w):
            return ir
        if policy != "resize":
            raise SizeMismatch(f"IR frame {self.ir.seq} is {ir.shape[1]}x{ir.shape[0]} but visible frame "
                               f"{self.vis.seq} is {w}x{h}; set resize: resize in the IR source config to resize IR "
                               f"to the visible size")
        import cv2  # here: the consumers, whose wire format imports this module, have no IR to resize

        return cv2.resize(ir, (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass
class FusedFrame:
    """The fused output of one pair: uint8 BGR ``(H, W, 3)`` or grey ``(H, W)`` (``post.encoding``), registered to the
    visible camera."""

    pair: FramePair
    image: np.ndarray
    fuser: str
    fuser_version: str
    t_fused_ns: int  # epoch ns when fusion finished
    timings_ms: dict[str, float] = field(default_factory=dict)


#: Longest frame id a config takes: the fused frames' and previews' headers hold it, and a consumer refuses a header
#: over 64 KiB (:data:`streamfuse.wire.MAX_HEADER_BYTES`); a thousand characters are 12 KiB at most as JSON.
MAX_FRAME_ID = 1000


def optical_frame(stream: str, frame_id: str = "") -> str:
    """A stream's optical frame (ROS ``frame_id``): the one configured, else ``<stream>_optical_frame``."""
    return frame_id or f"{stream}_optical_frame"
