"""Temporal stability of fusion methods on clips (``tools/temporal.py`` is its command line): each method's flicker
ratio, flow warp error, AG and filter lag per clip, the static-input check, and the two markdown tables they are
printed in.

A fuser method runs over each clip's frames in order as one stream, through the frame processor the pipeline runs
(:class:`streamfuse.processor.FrameProcessor`: the IR level stabilizer before it, the temporal denoiser after it);
another method's fused frames (:func:`streamfuse.eval_clips.fused_frames`) are scored with the same measures. The
clips and how they are read: :mod:`streamfuse.eval_clips`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamfuse.eval_clips import clip_frames, clip_pairs, find_clips, fused_frames
from streamfuse.evaluation import Method, config_method, fused_dir_method, fuser_method
from streamfuse.metrics import average_gradient, flow_warp_error, temporal_ratio
from streamfuse.postprocess import PostConfig
from streamfuse.processor import FrameProcessor, still_pair
from streamfuse.stabilize import StabilizeConfig

__all__ = ["Clips", "Measures", "fuser_measures", "load", "output_measures", "report", "static_identical"]

Clips = dict[str, list[tuple[np.ndarray, np.ndarray]]]  # each clip's (IR, visible Y) frames in order, by its name


@dataclass
class Measures:
    """One method's figures: flicker ratio and flow warp error per clip, the AG of every frame and, for a fuser, the
    filter lag (|filtered - unfiltered fused| of every pixel after each clip's first frame)."""

    ratios: list[float]
    warp: list[float]
    sharpness: list[float]
    lag: np.ndarray | None = None


def load(seq_root: str | Path, *, fusers: list[str], configs: list[str], fused: list[str], overrides: list[str],
         stabilize: float = 0.0, denoise: float = 0.0, denoise_threshold: float = PostConfig.denoise_threshold,
         ) -> tuple[Clips, dict, list[Method], PostConfig, StabilizeConfig]:
    """Every clip's frames (read once, fused by every method), the ``fused`` methods' frames (``[NAME=]DIR`` each,
    ``DIR/<clip>/<frame>``), the fuser methods (``fusers``, ``configs``; hclfuse when no method is named), and the
    post and stabilize settings of ``fusers`` methods. Raises ValueError or FileNotFoundError (one line)."""
    clips = find_clips(seq_root)
    default = [] if configs or fused else ["hclfuse"]  # hclfuse only when no method is named
    fuser_post = PostConfig(denoise=denoise, denoise_threshold=denoise_threshold)
    fuser_level = StabilizeConfig(stabilize)
    others = [fused_dir_method(s) for s in fused]
    methods = [fuser_method(s, overrides) for s in fusers or default]
    methods += [config_method(c, overrides) for c in configs]
    names = [m.name for m in others + methods]
    if twice := sorted({n for n in names if names.count(n) > 1}):  # their rows would be one (--fused) or two alike
        raise ValueError(f"two methods named {twice[0]}: name them apart (NAME=DIR for --fused, a config file's name)")
    listed = {clip.name: clip_pairs(clip) for clip in clips}  # (stem, IR, vi)
    frames = {name: clip_frames(pairs) for name, pairs in listed.items()}
    outputs = {m.name: {name: fused_frames(m.fused_dir / name, m.name, [s for s, _, _ in listed[name]],
                                           pairs[0][1].shape) for name, pairs in frames.items()} for m in others}
    return frames, outputs, methods, fuser_post, fuser_level


def _processor(method: Method, stream: str, level: StabilizeConfig, post: PostConfig) -> FrameProcessor:
    """The frame processor of a method on ``stream``: a config method's own (its registration too), else the fuser
    with ``level`` and ``post``."""
    if method.config is not None:
        return FrameProcessor.from_config(method.config, method.fuser, stream=stream)
    return FrameProcessor(method.fuser, stream=stream, stabilize=level, post=post)


def output_measures(outputs: dict[str, list[np.ndarray]], frames: Clips) -> Measures:
    """The figures of another method's fused frames, ``outputs`` by clip name (every clip of ``frames``)."""
    visible = [[vi for _, vi in pairs] for pairs in frames.values()]
    return Measures([temporal_ratio(outputs[c], v) for c, v in zip(frames, visible, strict=True)],
                    [flow_warp_error(outputs[c], v) for c, v in zip(frames, visible, strict=True)],
                    [average_gradient(f) for out in outputs.values() for f in out])


def fuser_measures(method: Method, frames: Clips, level: StabilizeConfig, post: PostConfig) -> Measures:
    """The figures of a fuser method run over each clip as one stream (named after the clip), as it runs live."""
    measures = Measures([], [], [])
    lag = []
    for name, pairs in frames.items():
        processor = _processor(method, name, level, post)
        outs = [processor(still_pair(ir, vi, k)) for k, (ir, vi) in enumerate(pairs)]
        fused = [o.filtered_y for o in outs]
        vis = [vi for _, vi in pairs]
        measures.ratios.append(temporal_ratio(fused, vis))
        measures.warp.append(flow_warp_error(fused, vis))
        measures.sharpness += [average_gradient(f) for f in fused]
        lag += [np.abs(o.filtered_y - o.fused_y).ravel() for o in outs[1:]]
    measures.lag = np.concatenate(lag)
    return measures


def static_identical(method: Method, pair: tuple[np.ndarray, np.ndarray], level: StabilizeConfig, post: PostConfig,
                     repeats: int) -> bool:
    """Whether ``repeats`` frames of one still ``pair``, in one stream, all come out identical."""
    processor = _processor(method, "static", level, post)
    outs = [processor(still_pair(*pair, k)).filtered_y for k in range(repeats)]
    return all(np.array_equal(outs[0], o) for o in outs[1:])


def table_row(name: str, levels: str, m: Measures, rest: str) -> str:
    """One table row: per-clip flicker ratios, their mean, the mean flow warp error and AG, then ``rest``."""
    cells = " | ".join(f"{r:.3f}" for r in m.ratios)
    return (f"| {name} | {levels} | {cells} | {np.mean(m.ratios):.3f} | {np.mean(m.warp):.2f} | "
            f"{np.mean(m.sharpness):.2f} | {rest} |")


def report(frames: Clips, outputs: dict, methods: list[Method], fuser_post: PostConfig,
           fuser_level: StabilizeConfig, static_repeats: int) -> None:
    """Print the flicker table (the fused folders' rows, then each method's, each as soon as it is measured) and the
    per-clip flow warp table, the visible input's figures first for scale."""
    visible = [[vi for _, vi in pairs] for pairs in frames.values()]
    warps = {"visible input": [flow_warp_error(v, v) for v in visible]}  # per clip, printed after the main table
    print(f"visible input: flow warp error {np.mean(warps['visible input']):.2f} grey levels, AG"
          f" {np.mean([average_gradient(f) for v in visible for f in v]):.2f} (means over clips, frames)")
    print(f"| method | stabilize / denoise | {' | '.join(frames)} | mean | flow warp | AG | filter lag mean / p99.9"
          " | static identical |")
    print(f"|---|---|{'---|' * len(frames)}---|---|---|---|---|")
    for name, clip_outputs in outputs.items():
        measures = output_measures(clip_outputs, frames)
        warps[name] = measures.warp
        print(table_row(name, "-", measures, "- | -"), flush=True)
    for method in methods:
        post = method.config.post if method.config is not None else fuser_post
        level = method.config.stabilize if method.config is not None else fuser_level
        measures = fuser_measures(method, frames, level, post)
        warps[method.name] = measures.warp
        # the last clip's first pair
        static = static_identical(method, list(frames.values())[-1][0], level, post, static_repeats)
        lag = measures.lag
        print(table_row(method.name, f"{level.strength:g} / {post.denoise:g}, {post.denoise_threshold:g}", measures,
                   f"{lag.mean():.2f} / {np.percentile(lag, 99.9):.1f} | {'yes' if static else 'NO'}"), flush=True)
    print(f"\nflow warp error per clip (grey levels)\n| method | {' | '.join(frames)} | mean |\n"
          f"|---|{'---|' * len(frames)}---|")
    for name, warp in warps.items():
        print(f"| {name} | {' | '.join(f'{w:.2f}' for w in warp)} | {np.mean(warp):.2f} |")
