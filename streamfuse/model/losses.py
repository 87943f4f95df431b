"""HCLFuse training losses: the method's VBE, fusion and noise terms, and the hand rule as a small regulariser.

Fusion terms, on the decoded image F (both the decoded posterior sample and the decoded one-step prediction):

    intensity = L1(F, max(IR', VIS))                        towards the brighter of the aligned IR' and the visible
    gradient  = L1(grad F, grad S)                          S per pixel the source (raw IR or VIS) with the stronger
                                                            Sobel magnitude: signed components, so edges keep their
                                                            polarity and no rim is drawn beside them
    rule      = L1(F, fusion_target(IR, VIS))               the hand rule, below; a regulariser at a small weight
    range     = mean(relu(F - hi) + relu(lo - F))           hi / lo: the sources' local max / min over a window,
                                                            widened by a margin: no halo or rim brighter (darker)
                                                            than every source around it

VBE terms: KL to N(0, I) (the posterior's sigma has a floor in the encoder) and ``latent_image``, which keeps the
latent's image channel equal to ``2 avgpool8(F) - 1`` of the decoded image (the physics guides act on it). Noise term:
SmoothL1 between the predicted eps and the eps actually added (the reference's "epsilon fix").

The hand rule keeps the brighter low-pass of the two sources and, on top of it, the detail of whichever source has
more local gradient energy there, amplified by ``detail_gain``:

    base   = max(G_s * IR, G_s * VIS)                       G_s: Gaussian blur, sigma ``base_sigma`` px
    w      = E_ir^2 / (E_ir^2 + E_vis^2)                    E: Gaussian-blurred squared Sobel magnitude
    target = base + detail_gain * (w (IR - G_s IR) + (1 - w) (VIS - G_s VIS))
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F

from streamfuse.checks import check
from streamfuse.imageops.tensors import gaussian_blur, gradient_magnitude, sobel
from streamfuse.model.vbe import kl_standard_normal

__all__ = ["LossConfig", "fusion_target", "hclfuse_losses", "local_range"]


@dataclass(frozen=True)
class LossConfig:
    """Weights of the training losses and the hand rule's parameters.

    Args:
        noise: weight of SmoothL1(eps_pred, eps).
        kl: weight of KL(q(z | x) || N(0, 1)).
        latent_image: weight of MSE between the image-like latent channels and ``2 avgpool8(F) - 1``.
        intensity: weight of L1(F, max(IR', VIS)).
        gradient: weight of L1 between the Sobel components of F and of the stronger source.
        rule: weight of L1(F, hand rule) (regulariser).
        range: weight of the output's excursion beyond the sources' local range (halos and rims; 0 = off, the
            shipped weights' last whole-model stage used 1600, model card).
        range_window: window (px) of the local range.
        range_margin: how far (0..1) the output may leave the local range before the range term counts.
        detail_gain: amplification of the selected detail in the hand rule.
        base_sigma: blur (px) that separates base and detail in the hand rule.
        energy_sigma: blur (px) of the squared gradient magnitude that selects the hand rule's detail source.
    """

    noise: float = 1.0
    kl: float = 1e-3
    latent_image: float = 1.0
    intensity: float = 10.0
    gradient: float = 40.0
    rule: float = 1.0
    range: float = 0.0
    range_window: int = 7
    range_margin: float = 0.03
    detail_gain: float = 1.2
    base_sigma: float = 8.0
    energy_sigma: float = 3.0

    def __post_init__(self) -> None:
        for key in ("noise", "kl", "latent_image", "intensity", "gradient", "rule", "range", "range_margin"):
            check(0 <= getattr(self, key) < math.inf, key, getattr(self, key), ">= 0, finite")
        check(0 < self.detail_gain < math.inf, "detail_gain", self.detail_gain, "> 0, finite")
        # at most 255: a window of 10^9 px (a typo) held every step over a minute in max_pool2d, whatever its weight
        check(1 <= self.range_window <= 255 and self.range_window % 2 == 1, "range_window", self.range_window,
              "odd, 1 .. 255")
        for key in ("base_sigma", "energy_sigma"):
            check(0 < getattr(self, key) <= 256, key, getattr(self, key), "0 < sigma <= 256 pixels")


def fusion_target(ir01: torch.Tensor, vis01: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """The hand rule's image (B, 1, H, W) from an IR and the visible (B, 1, H, W) in 0..1 (see the module docstring);
    training and ``tools/target_sweep.py`` give it the raw IR, the decoder's detail source (the ``rule`` baseline
    computes it so too)."""
    x = torch.cat([ir01, vis01], dim=1)
    low = gaussian_blur(x, cfg.base_sigma)
    gx, gy = sobel(x)
    energy = gaussian_blur(gx.square() + gy.square(), cfg.energy_sigma) + 1e-8  # (B, 2, H, W)
    w = energy.square() / energy.square().sum(dim=1, keepdim=True)
    detail = ((x - low) * w).sum(dim=1, keepdim=True)
    return low.amax(dim=1, keepdim=True) + cfg.detail_gain * detail


def local_range(x: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest and largest value (B, 1, H, W) of all channels of ``x`` (B, C, H, W) in a ``window`` square."""
    pad = window // 2
    hi = F.max_pool2d(x.amax(dim=1, keepdim=True), window, stride=1, padding=pad)
    lo = -F.max_pool2d(-x.amin(dim=1, keepdim=True), window, stride=1, padding=pad)
    return lo, hi


def hclfuse_losses(out: dict[str, torch.Tensor], ir01: torch.Tensor, vis01: torch.Tensor, ir_raw: torch.Tensor,
                   eps: torch.Tensor, cfg: LossConfig, image_channels: int) -> dict[str, torch.Tensor]:
    """All loss terms and their weighted sum ``total``.

    Args:
        out: :meth:`HCLFuseNet.train_outputs` (``mu``, ``logvar``, ``eps_pred``, ``fused`` with 2B images).
        ir01, vis01: the encoder's inputs (B, 1, H, W) in 0..1 (``ir01`` is the OT-aligned IR').
        ir_raw: the IR before alignment (B, 1, H, W): the decoder takes its detail from it, so the gradient target
            and the hand rule use it.
        eps: the noise that was added to the latent (B, C, h, w).
        cfg: weights.
        image_channels: how many latent channels are image-like.
    """
    fused = out["fused"]
    with torch.no_grad():
        n = fused.shape[0] // ir01.shape[0]
        ir_stronger = gradient_magnitude(ir_raw) >= gradient_magnitude(vis01)
        g_target = torch.where(ir_stronger, torch.cat(sobel(ir_raw), dim=1), torch.cat(sobel(vis01), dim=1))
        g_target = g_target.repeat(n, 1, 1, 1)  # (nB, 2, H, W): x, y of the stronger source
        bright = torch.maximum(ir01, vis01).repeat(n, 1, 1, 1)
        rule = fusion_target(ir_raw, vis01, cfg).repeat(n, 1, 1, 1)
        lo, hi = local_range(torch.cat([ir_raw, ir01, vis01], dim=1), cfg.range_window)
        lo, hi = (lo - cfg.range_margin).repeat(n, 1, 1, 1), (hi + cfg.range_margin).repeat(n, 1, 1, 1)
        posterior = fused[: ir01.shape[0]].detach()
        latent_target = F.adaptive_avg_pool2d(posterior, out["mu"].shape[-2:]).clamp(0, 1) * 2.0 - 1.0
    terms = {
        "noise": F.smooth_l1_loss(out["eps_pred"], eps),
        "kl": kl_standard_normal(out["mu"], out["logvar"]),
        "latent_image": F.mse_loss(out["mu"][:, :image_channels], latent_target.expand(-1, image_channels, -1, -1)),
        "intensity": F.l1_loss(fused, bright),
        "gradient": F.l1_loss(torch.cat(sobel(fused), dim=1), g_target),
        "rule": F.l1_loss(fused, rule),
        "range": (F.relu(fused - hi) + F.relu(lo - fused)).mean(),
    }
    terms["total"] = sum(getattr(cfg, k) * v for k, v in terms.items())
    return terms
