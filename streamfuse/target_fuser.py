"""The training's fusion target (:func:`streamfuse.model.losses.fusion_target`) behind the Fuser interface, and its
scores at several detail gains: the quality ceiling the net is trained toward (``tools/target_sweep.py`` is its
command line).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamfuse.align import AlignConfig, align, histogram
from streamfuse.config import load_config
from streamfuse.configs import resolve
from streamfuse.evaluation import EvalResult, Method, evaluate_dir
from streamfuse.imageops.tensors import gaussian_blur
from streamfuse.model.losses import LossConfig, fusion_target

__all__ = ["TargetFuser", "sweep"]


class TargetFuser:
    """``fusion_target`` behind the Fuser interface (0..255 in, 0..255 out); with ``align_cfg`` its base is from IR'."""

    version = "target"

    def __init__(self, cfg: LossConfig, align_cfg: AlignConfig | None = None):
        self.cfg, self.align_cfg = cfg, align_cfg
        self.name = f"target gain {cfg.detail_gain:g}" + (" (IR' base)" if align_cfg else "")

    def fuse(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
        def t(img: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(img.astype(np.float32) / 255.0)[None, None]

        ir8, vis, ir01 = ir.astype(np.uint8), t(vis_y), t(ir)
        with torch.no_grad():
            out = fusion_target(ir01, vis, self.cfg)
            if self.align_cfg is not None:  # the base from IR' instead of the raw IR
                ir_aligned = torch.from_numpy(align(histogram(ir8), histogram(vis_y.astype(np.uint8)),
                                                    self.align_cfg).lut[ir8])[None, None]
                low = [gaussian_blur(x, self.cfg.base_sigma) for x in (ir01, ir_aligned, vis)]
                out = out - torch.maximum(low[0], low[2]) + torch.maximum(low[1], low[2])
            return (out.clamp(0, 1)[0, 0] * 255.0).numpy()

    def stats(self) -> dict[str, float]:
        return {}


def sweep(dir_ir: str | Path, dir_vis: str | Path, gains: list[float], out: str | Path, *, aligned: bool = False,
          overrides: list[str] | None = None) -> EvalResult:
    """Score the target at each detail gain on the pairs of two folders into ``out`` (as :func:`evaluate_dir`); with
    ``aligned`` its base is from IR' of the eval config's align section, with ``overrides`` of it."""
    align_cfg = load_config(resolve("eval"), overrides or []).align if aligned else None
    rows = [Method(f.name, fuser=f) for f in (TargetFuser(LossConfig(detail_gain=g), align_cfg) for g in gains)]
    return evaluate_dir(dir_ir, dir_vis, rows, out)
