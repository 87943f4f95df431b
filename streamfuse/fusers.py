"""FuseConfig, BaselineConfig, the Fuser interface and the baselines (max, average, Laplacian pyramid, the hand rule).

Every fuser maps an IR image and the visible Y channel, both ``(H, W)`` uint8 on 0..255, to the fused Y as
``(H, W)`` float32 on 0..255 (postprocess clips and restores colour). Baselines exist so users can compare,
and so that a quality claim can be checked against them (see the model card). The ``hclfuse`` fuser is
:mod:`streamfuse.model.fuser`; :func:`streamfuse.processor.build_fuser` builds whichever ``fuse.name`` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from streamfuse.checks import check
from streamfuse.imageops.arrays import gaussian_blur, sobel
from streamfuse.registry import available, build, register

__all__ = ["BaselineConfig", "FuseConfig", "Fuser", "build_baseline", "unsharp"]


@dataclass(frozen=True)
class FuseConfig:
    """The ``fuse`` section: which fuser runs.

    Args:
        name: registered fuser: ``hclfuse`` (the model; the ``hclfuse`` and ``engine`` sections configure it) or a
            baseline (``max``, ``average``, ``laplacian``, ``rule``: the hand-made fusion rule of the training target,
            see :class:`RuleFuser`; the ``baseline`` section configures them).
    """

    name: str = "hclfuse"

    def __post_init__(self) -> None:
        names = ["hclfuse", *available("fuser")]  # the baselines below are registered when this module loads
        check(self.name in names, "name", self.name, " | ".join(names))


@dataclass(frozen=True)
class BaselineConfig:
    """The ``baseline`` section: what every baseline fuser does to its output.

    Args:
        sharpen: unsharp-mask amount (sigma 1.5); 0 disables it.
        contrast: global contrast stretch around the output's mean, ``c (F - mean F) + mean F``; 1 disables it
            (with max it is a strong baseline on VIF, Qabf, AG and SF at once, see the model card).
    """

    sharpen: float = 0.0
    contrast: float = 1.0

    def __post_init__(self) -> None:
        check(0 <= self.sharpen <= 10, "sharpen", self.sharpen, "0 (off) .. 10")
        check(0.5 <= self.contrast <= 3.0, "contrast", self.contrast, "0.5 .. 3 (1 = off)")


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

    def warm_up(self, height: int, width: int) -> None:
        """Make ready for frames of this size before the first one comes (a live run calls it before its capture
        starts); may do nothing."""
        ...


def build_baseline(name: str, cfg: BaselineConfig = BaselineConfig()) -> Fuser:
    """The registered baseline fuser ``name`` with the ``baseline`` section's settings."""
    return build("fuser", name, sharpen=cfg.sharpen, contrast=cfg.contrast)


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
        if ir.dtype != np.uint8 or vis_y.dtype != np.uint8 or ir.ndim != 2 or ir.shape != vis_y.shape:
            raise ValueError(f"{self.name} needs two (H, W) uint8 images of one size, got IR {ir.shape} {ir.dtype} "
                             f"and visible Y {vis_y.shape} {vis_y.dtype}")
        y = unsharp(self._fuse(ir.astype(np.float32), vis_y.astype(np.float32)), self.sharpen)
        if self.contrast != 1:
            mean = float(y.mean())
            y = self.contrast * (y - mean) + mean
        return y

    def stats(self) -> dict[str, float]:
        return {}

    def warm_up(self, height: int, width: int) -> None:
        """Nothing to make ready: a rule of a few array operations."""


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

    levels = 5

    def __init__(self, sharpen: float = 0.0, contrast: float = 1.0):
        super().__init__("laplacian", sharpen, contrast)

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
    trained towards: ``gain``, ``base_sigma`` and ``energy_sigma`` are that target's (``LossConfig``'s
    ``detail_gain``, ``base_sigma``, ``energy_sigma``; no config knob); ``sharpen`` and ``contrast`` act on its output
    as on the other baselines.
    """

    gain, base_sigma, energy_sigma = 1.2, 8.0, 3.0

    def __init__(self, sharpen: float = 0.0, contrast: float = 1.0):
        super().__init__("rule", sharpen, contrast)

    def _fuse(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        ir, vis = ir / 255.0, vis / 255.0  # the target's 0..1 scale, where its energy floor of 1e-8 is defined
        low_ir, low_vis = gaussian_blur(ir, self.base_sigma), gaussian_blur(vis, self.base_sigma)
        e_ir, e_vis = (np.square(gaussian_blur(gx * gx + gy * gy, self.energy_sigma) + 1e-8)
                       for gx, gy in (sobel(ir), sobel(vis)))
        w = e_ir / (e_ir + e_vis)
        detail = w * (ir - low_ir) + (1.0 - w) * (vis - low_vis)
        return 255.0 * (np.maximum(low_ir, low_vis) + self.gain * detail)
