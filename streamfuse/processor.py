"""The frame processor: one stream's per-frame stages in order, with their state; and building the configured fuser.

    pair -> 0. IR on the visible pixels (:mod:`streamfuse.register`) -> 1. stabilise (:mod:`streamfuse.stabilize`)
         -> 2. align and fuse (the fuser; ``hclfuse`` aligns IR to the visible histogram with its OT cache,
            :mod:`streamfuse.align`) -> 3. temporal filter and 4. colour and format (:mod:`streamfuse.postprocess`)
         -> the image to publish or write

The live loop (:mod:`streamfuse.pipeline`), offline replay (:mod:`streamfuse.replay`), evaluation
(:mod:`streamfuse.evaluation`), ``tools/temporal.py`` and the benchmarks all run pairs through
:class:`FrameProcessor`, so "live and replay give the same frames for the same pairs" holds by construction; what
differs between them is which pairs they feed it (live fuses only the newest pair) and the OT refresh (replay solves
synchronously). :func:`build_fuser` is the one place that knows which sections configure which fuser.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from streamfuse.align import AlignConfig
from streamfuse.config import PipelineConfig
from streamfuse.frames import Frame, FramePair
from streamfuse.fusers import BaselineConfig, FuseConfig, Fuser, build_baseline
from streamfuse.inference import EngineConfig, HCLFuseConfig
from streamfuse.postprocess import PostConfig, TemporalDenoiser, output_shape, restore_colour, vis_luma
from streamfuse.register import Registration
from streamfuse.stabilize import LevelStabilizer, StabilizeConfig

__all__ = ["FrameProcessor", "Processed", "build_fuser", "config_fuser", "still_pair"]


def build_fuser(fuse: FuseConfig, *, baseline: BaselineConfig = BaselineConfig(),
                hclfuse: HCLFuseConfig = HCLFuseConfig(), engine: EngineConfig = EngineConfig(),
                align: AlignConfig = AlignConfig()) -> Fuser:
    """The fuser ``fuse.name`` names, with the sections that configure it (the others are ignored)."""
    if fuse.name != "hclfuse":
        return build_baseline(fuse.name, baseline)
    from streamfuse.model.fuser import build_hclfuse  # torch is imported only when the model is used

    return build_hclfuse(hclfuse, engine, align)


def config_fuser(cfg: PipelineConfig) -> Fuser:
    """The fuser of a pipeline config."""
    return build_fuser(cfg.fuse, baseline=cfg.baseline, hclfuse=cfg.hclfuse, engine=cfg.engine, align=cfg.align)


def still_pair(ir: np.ndarray, vis: np.ndarray, seq: int = 0) -> FramePair:
    """Two registered still images (no capture time) as a pair for :class:`FrameProcessor`."""
    return FramePair(Frame("ir", seq, 0, ir), Frame("vis", seq, 0, vis))


@dataclass(frozen=True)
class Processed:
    """One pair through the processor.

    Attributes:
        image: what is published or written: ``(H, W, 3)`` BGR or ``(H, W)`` uint8, per ``post.encoding``.
        fused_y: the fuser's output, ``(H, W)`` float32 on 0..255 (unclipped).
        filtered_y: ``fused_y`` after the temporal filter (``fused_y``'s values when the filter is off).
        timings: milliseconds of ``fuse`` (stages 0-2) and ``postprocess`` (stages 3-4).
    """

    image: np.ndarray
    fused_y: np.ndarray
    filtered_y: np.ndarray
    timings: dict[str, float]


class FrameProcessor:
    """The per-frame stages of one stream, in order, with the state they keep between frames (the stabilizer's
    moving averages, the temporal filter's last output, and inside the fuser the stream's OT plan and noise).

    Args:
        fuser: any :class:`~streamfuse.fusers.Fuser`.
        stream: the stream's name, which keys the fuser's per-stream state (the live loop uses the publish topic).
        stabilize: the IR level stabilizer's settings (off by default).
        post: the temporal filter's and the output format's settings (filter off by default).
        register: how the IR frame gets onto the visible frame's pixels (resized by default).
    """

    def __init__(self, fuser: Fuser, *, stream: str = "default", stabilize: StabilizeConfig = StabilizeConfig(),
                 post: PostConfig = PostConfig(), register: Registration | None = None):
        self.fuser, self.stream, self.post = fuser, stream, post
        self.register = register or Registration()
        self.stabilize = LevelStabilizer(stabilize)
        self.denoise = TemporalDenoiser(post)

    @classmethod
    def from_config(cls, cfg: PipelineConfig, fuser: Fuser | None = None, *,
                    stream: str | None = None) -> FrameProcessor:
        """The processor of a pipeline config: its fuser (built unless given) on stream ``publish.topic`` (unless
        given), with its ``register`` (and ``ir.resize``), ``stabilize`` and ``post`` settings."""
        fuser = config_fuser(cfg) if fuser is None else fuser
        return cls(fuser, stream=cfg.publish.topic if stream is None else stream, stabilize=cfg.stabilize,
                   post=cfg.post, register=Registration(cfg.register, cfg.ir.resize))

    def output_shape(self, pair: FramePair) -> tuple[int, ...]:
        """The shape of the image this processor makes of ``pair`` (for a buffer to build it in)."""
        return output_shape(pair.vis.image, self.post)

    def __call__(self, pair: FramePair, out: np.ndarray | None = None) -> Processed:
        """Run the stages on one pair (the visible image BGR or grey, IR grey), in the order of the module diagram;
        the image is written into ``out`` when given (uint8 of :meth:`output_shape`, e.g. a loaned shared-memory
        slot of the publisher)."""
        t0 = time.perf_counter_ns()
        vis = pair.vis.image
        ir = self.stabilize(self.register(pair))  # 0., 1.
        fused_y = self.fuser.fuse(ir, vis_luma(vis), stream=self.stream)  # 2.
        t1 = time.perf_counter_ns()
        filtered_y = self.denoise(fused_y)  # 3.
        image = restore_colour(filtered_y, vis, self.post, out)  # 4.
        t2 = time.perf_counter_ns()
        return Processed(image, fused_y, filtered_y, {"fuse": (t1 - t0) / 1e6, "postprocess": (t2 - t1) / 1e6})
