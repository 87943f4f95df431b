"""ReplayConfig: the ``replay`` section of a config (output, pacing, codec, extra outputs, resume)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streamfuse.checks import check

__all__ = ["ReplayConfig"]


@dataclass(frozen=True)
class ReplayConfig:
    """Offline replay of a recorded pair.

    Args:
        out: fused video path (``--out``); the extension picks the container (.mp4 .mkv .mov .nut .avi).
        pacing: ``fast`` (every frame, as fast as possible) or ``realtime`` (recorded rate, live drop rules).
        codec: ``h264`` (libx264 when PyAV has it, else libopenh264 or mpeg4, logged) or ``ffv1`` (lossless; .mkv).
        crf: H.264 quality, 0 (lossless) .. 51; 18 is visually lossless.
        preset: libx264 speed/size trade-off; ``ultrafast`` encodes ~3x faster into ~2x larger files.
        frames_dir: also write every fused frame as ``NNNNNN.png`` here (empty: no).
        publish: also publish every fused frame over ZeroMQ (the ``publish`` section).
        resume: continue an interrupted replay from its partial output (``--resume``).
        progress: show a progress bar (on a terminal).
        codec_threads: FFmpeg threads of each input's decoder and of the encoder; 0 = FFmpeg's choice (about one
            per core each, so a replay uses every core). A batch worker sets it to its own CPUs when 0.
        overlap: decode each input and encode the output on threads of their own, overlapping fusion (a single
            replay finishes sooner); false runs everything in the loop's thread, so the replay keeps one core busy
            and no more (what a one-CPU batch worker runs: N such workers scale on N cores).
    """

    out: str = ""
    pacing: Literal["fast", "realtime"] = "fast"
    codec: Literal["h264", "ffv1"] = "h264"
    crf: int = 18
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "veryfast"
    frames_dir: str = ""
    publish: bool = False
    resume: bool = False
    progress: bool = True
    codec_threads: int = 0
    overlap: bool = True

    def __post_init__(self) -> None:
        check(0 <= self.crf <= 51, "crf", self.crf, "0..51")
        check(0 <= self.codec_threads <= 256, "codec_threads", self.codec_threads, "0 (FFmpeg's choice) .. 256")
