"""FuseConfig, the Fuser interface and the simple baseline fusers (max, average, Laplacian pyramid, the hand rule).

Every fuser maps an IR image and the visible Y channel, both ``(H, W)`` uint8 on 0..255, to the fused Y as
``(H, W)`` float32 on 0..255 (postprocess clips and restores colour). Baselines exist so users can compare,
and so that a quality claim can be checked against them (see the model card).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np

from streamfuse.config import check
from streamfuse.imageops.arrays import gaussian_blur, sobel
from streamfuse.registry import available, build, register

__all__ = ["FuseConfig", "Fuser", "build_fuser", "unsharp"]


@dataclass(frozen=True)
class FuseConfig:
    """The fusion stage.

    Args:
        name: registered fuser (``hclfuse``, ``max``, ``average``, ``laplacian``, ``rule``: the hand-made fusion rule
            of the training target, see :class:`RuleFuser`).
        sharpen: unsharp-mask amount applied by the baselines (sigma 1.5); 0 disables it.
        contrast: global contrast stretch of the baselines' output around its mean, ``c (F - mean F) + mean F``;
            1 disables it (with max it is a strong baseline on VIF, Qabf, AG and SF at once, see the model card).
        weights: HCLFuse weights file; empty means the weights shipped with the package.
        sampler: ``student`` (the distilled few-step sampler, the live default) or ``teacher`` (K-step DDIM).
        steps: DDIM steps K of the teacher (1..20).
        guidance: apply the physics guides during sampling.
        guidance_scale: multiplies the physics guides' weights (1 = the method's).
        seed: seed of the per-stream noise.
        device: ``auto`` (a GPU when torch sees one), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, or ``fp16``/``bf16`` autocast on the GPU.
        threads: torch CPU threads; 0 means all cores.
        max_batch: pairs fused in one batch when several wait (GPU).
        cuda_graphs: capture the fixed-shape forward in a CUDA graph.
    """

    name: str = "hclfuse"
    sharpen: float = 0.0
    contrast: float = 1.0
    weights: str = ""
    sampler: Literal["student", "teacher"] = "student"
    steps: int = 20
    guidance: bool = True
    guidance_scale: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    threads: int = 0
    max_batch: int = 1
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        names = ["hclfuse", *available("fuser")]  # the baselines below are registered when this module loads
        check(self.name in names, "name", self.name, " | ".join(names))
        check(self.sharpen >= 0, "sharpen", self.sharpen, ">= 0")
        check(0.5 <= self.contrast <= 3.0, "contrast", self.contrast, "0.5 .. 3 (1 = off)")
        check(self.sampler in ("student", "teacher"), "sampler", self.sampler, "student | teacher")
        check(1 <= self.steps <= 20, "steps", self.steps, "1..20")
        check(0.0 <= self.guidance_scale <= 10.0, "guidance_scale", self.guidance_scale, "0 .. 10")
        check(self.threads >= 0, "threads", self.threads, ">= 0 (0 = all cores)")
        check(1 <= self.max_batch <= 64, "max_batch", self.max_batch, "1..64")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", self.device,
              "auto | cpu | cuda | cuda:N")


class Fuser(Protocol):
    """What the pipeline needs of a fuser."""

    name: str
    version: str

    def fuse(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
        """Fuse ``(H, W)`` uint8 IR and visible Y into ``(H, W)`` float32 Y on 0..255."""
        ...

    def stats(self) -> dict[str, float]:
        """Counters for telemetry (e.g. OT cache hits); may be empty."""
        ...


def build_fuser(fuse: FuseConfig, align: object | None = None) -> Fuser:
    """Build the configured fuser; ``hclfuse`` also takes the AlignConfig."""
    if fuse.name == "hclfuse":
        from streamfuse.model.fuser import build_hclfuse  # torch is imported only when the model is used

        return build_hclfuse(fuse, align)
    return build("fuser", fuse.name, sharpen=fuse.sharpen, contrast=fuse.contrast)


def unsharp(y: np.ndarray, amount: float, sigma: float = 1.5) -> np.ndarray:
    """Unsharp mask ``y + amount * (y - blur(y))`` on float32."""
    if amount == 0:
        return y
    return y + amount * (y - cv2.GaussianBlur(y, (0, 0), sigma))


class _Baseline:
    version = "1"

    def __init__(self, name: str, sharpen: float = 0.0, contrast: float = 1.0):
        self.name = (name + (f"+unsharp{sharpen:g}" if sharpen else "")
                     + (f"+contrast{contrast:g}" if contrast != 1 else ""))
        self.sharpen, self.contrast = sharpen, contrast

    def fuse(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
        y = unsharp(self._fuse(ir.astype(np.float32), vis_y.astype(np.float32)), self.sharpen)
        if self.contrast != 1:
            mean = float(y.mean())
            y = self.contrast * (y - mean) + mean
        return y

    def stats(self) -> dict[str, float]:
        return {}


@register("fuser", "max")
class MaxFuser(_Baseline):
    """Pixel-wise maximum: a strong baseline on VIF, Qabf, MI and SSIM."""

    def __init__(self, sharpen: float = 0.0, contrast: float = 1.0):
        super().__init__("max", sharpen, contrast)

    def _fuse(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        return np.maximum(ir, vis)


@register("fuser", "average")
class AverageFuser(_Baseline):
    """Pixel-wise mean."""

    def __init__(self, sharpen: float = 0.0, contrast: float = 1.0):
        super().__init__("average", sharpen, contrast)

    def _fuse(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        return 0.5 * (ir + vis)


@register("fuser", "laplacian")
class LaplacianFuser(_Baseline):
    """Laplacian pyramid: max-abs detail on 4 detail levels, max of the coarsest base (5 pyramid levels in all)."""

    def __init__(self, sharpen: float = 0.0, contrast: float = 1.0, levels: int = 5):
        super().__init__("laplacian", sharpen, contrast)
        self.levels = levels

    def _pyramid(self, img: np.ndarray) -> list[np.ndarray]:
        gauss = [img]
        for _ in range(self.levels - 1):
            gauss.append(cv2.pyrDown(gauss[-1]))
        lap = [g - cv2.pyrUp(gn, dstsize=g.shape[::-1]) for g, gn in zip(gauss[:-1], gauss[1:])]
        return lap + [gauss[-1]]

    def _fuse(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        pa, pb = self._pyramid(ir), self._pyramid(vis)
        fused = [np.where(np.abs(a) >= np.abs(b), a, b) for a, b in zip(pa[:-1], pb[:-1])]
        out = np.maximum(pa[-1], pb[-1])
        for detail in reversed(fused):
            out = cv2.pyrUp(out, dstsize=detail.shape[::-1]) + detail
        return out


@register("fuser", "rule")
class RuleFuser(_Baseline):
    """The hand rule: the brighter blurred source as base, plus the detail of whichever source has more local
    gradient energy there, amplified by ``gain``. On IR and visible Y in 0..1:

        base  = max(G_8 * IR, G_8 * VIS)             G_s: Gaussian blur, sigma s px
        E     = G_3 * (Sx^2 + Sy^2)                  S: Sobel, per source
        w     = E_ir^2 / (E_ir^2 + E_vis^2)
        fused = base + gain (w (IR - G_8 * IR) + (1 - w) (VIS - G_8 * VIS))

    It is :func:`streamfuse.model.losses.fusion_target` on the raw IR with the numpy operators of
    :mod:`streamfuse.imageops` (the same kernels and borders), so that the model can be compared with the rule it was
    trained towards. ``gain`` stays at that target's 1.2 (no config knob); ``sharpen`` and ``contrast`` act on its
    output as on the other baselines.
    """

    def __init__(self, sharpen: float = 0.0, contrast: float = 1.0, gain: float = 1.2, base_sigma: float = 8.0,
                 energy_sigma: float = 3.0):
        super().__init__("rule", sharpen, contrast)
        self.gain, self.base_sigma, self.energy_sigma = gain, base_sigma, energy_sigma

    def _fuse(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        ir, vis = ir / 255.0, vis / 255.0  # the target's 0..1 scale, where its energy floor of 1e-8 is defined
        low_ir, low_vis = gaussian_blur(ir, self.base_sigma), gaussian_blur(vis, self.base_sigma)
        e_ir, e_vis = (np.square(gaussian_blur(gx * gx + gy * gy, self.energy_sigma) + 1e-8)
                       for gx, gy in (sobel(ir), sobel(vis)))
        w = e_ir / (e_ir + e_vis)
        detail = w * (ir - low_ir) + (1.0 - w) * (vis - low_vis)
        return 255.0 * (np.maximum(low_ir, low_vis) + self.gain * detail)
