"""Variational bottleneck encoder (VBE) and decoder of HCLFuse, made thin for real-time use.

The encoder takes the stacked ``[IR', VIS]`` Y channels in 0..1 (that order everywhere), folds 4x4 pixel blocks into
channels (space-to-depth, run as a 4x4 stride-4 convolution, so no convolution outputs full resolution), and has
two levels (H/4 and H/8), each ending in a per-channel learnable sigmoid gate ``M_s = sigmoid(w_s)`` (the paper's
multi-scale masks). It predicts a *spatial* posterior: per-pixel ``mu`` and ``logvar`` of ``latent_channels`` at
H/8; ``mu = tanh(.)`` keeps the latent in [-1, 1], and its first ``image_channels`` channels are trained to look like
the fused image (``2 avgpool8(F) - 1``), so the physics guides and the latent share one value range.

The decoder (see :class:`Decoder`) builds the fused image's base (low and middle frequencies) from the latent
alone; the sources' fine detail (above the 8x8 band of the latent's grid) enters only through per-pixel gains, which
read the latent, a two-channel projection of the encoder's gated H/4 skip and the local energy of each source's
detail. Full-resolution work is a few element-wise operations. The raw IR supplies that detail rather than IR' (the
alignment's lookup table rescales local contrast).

The posterior's standard deviation has a floor, ``SIGMA_MIN``: the decoder is trained on posterior samples and on the
sampler's one-step predictions, so it must tolerate latent errors of the size the few-step sampler makes; without a
floor the KL weight alone let sigma fall to 0.006, a deterministic autoencoder.

Gates sit right after a LeakyReLU, which is positively homogeneous (``g relu(z) = relu(g z)`` for ``g > 0``), so
:meth:`Encoder.fold_gates` folds them into the producing convolution at load time and inference pays nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from streamfuse.imageops.tensors import gaussian_blur, upsample

__all__ = ["SIGMA_MIN", "Decoder", "Encoder", "Gate", "grid_up", "kl_standard_normal", "lowpass"]

SIGMA_MIN = 0.03  # posterior std floor in latent units (the image channel's 0.03 is about 4 grey levels of base)
LOGVAR_MIN = 2.0 * math.log(SIGMA_MIN)
LATENT_SCALE = 8  # latent grid: H/8 x W/8
_SCALE = 4  # space-to-depth factor of the encoder input, and upsampling factor of the decoder's coefficients


def _act() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


class Gate(nn.Module):
    """Per-channel learnable sigmoid gate ``x * sigmoid(w)``; ``w`` starts at 2 (gate 0.88)."""

    def __init__(self, channels: int):
        super().__init__()
        self.logit = nn.Parameter(torch.full((channels,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.logit).view(1, -1, 1, 1)

    @torch.no_grad()
    def fold_into(self, conv: nn.Conv2d) -> None:
        """Scale ``conv``'s output channels by the gate, then make the gate the identity."""
        g = torch.sigmoid(self.logit)
        conv.weight.mul_(g.view(-1, 1, 1, 1))
        if conv.bias is not None:
            conv.bias.mul_(g)
        self.logit.fill_(torch.inf)  # sigmoid(inf) == 1 exactly


class Encoder(nn.Module):
    """``[IR', VIS]`` (B, 2, H, W) in 0..1 -> ``mu, logvar`` (B, C, H/8, W/8) and the gated skip at H/4.

    Args:
        widths: channels at H/4 and H/8.
        latent_channels: posterior channels C.
    """

    def __init__(self, widths: tuple[int, int], latent_channels: int):
        super().__init__()
        c1, c2 = widths
        self.proj = nn.Conv2d(2 * _SCALE * _SCALE, c1, 1)
        self.conv1 = nn.Conv2d(c1, c1, 3, padding=1)
        self.gate1 = Gate(c1)
        self.down = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c2, c2, 3, padding=1)
        self.gate2 = Gate(c2)
        self.head = nn.Conv2d(c2, 2 * latent_channels, 1)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        # proj(pixel_unshuffle(x, 4)) written as the equivalent 4x4 stride-4 convolution: the same weights and sums
        # without the full-resolution reshuffle (3.0 -> 0.3 ms at 640x480 on one CPU thread)
        w = self.proj.weight.view(self.proj.out_channels, x.shape[1], _SCALE, _SCALE)
        h = self.act(F.conv2d(x, w, self.proj.bias, stride=_SCALE))  # (B, c1, H/4, W/4)
        s1 = self.gate1(self.act(self.conv1(h)))
        s2 = self.gate2(self.act(self.conv2(self.act(self.down(s1)))))  # (B, c2, H/8, W/8)
        mu, logvar = self.head(s2).chunk(2, dim=1)
        return torch.tanh(mu), logvar.clamp(LOGVAR_MIN, 4.0), [s1]

    @torch.no_grad()
    def fold_gates(self) -> None:
        """Fold both gates into the convolutions that produce their inputs (inference only)."""
        self.gate1.fold_into(self.conv1)
        self.gate2.fold_into(self.conv2)


def grid_up(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """A map on the latent's grid (B, C, H/8, W/8) to full resolution: blurred by ``sigma`` latent pixels (0: not
    at all), then upsampled bilinearly by 8."""
    g = gaussian_blur(g, sigma) if sigma > 0 else g
    return upsample(g, LATENT_SCALE)


def lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The band the latent carries: 8x8 block means (the latent's grid) through :func:`grid_up`, (B, C, H, W) ->
    (B, C, H, W); ``x - lowpass(x, sigma)`` is the fine detail. H and W must be multiples of 8 (the engine pads to
    8)."""
    return grid_up(F.avg_pool2d(x, LATENT_SCALE), sigma)


class Decoder(nn.Module):
    """Latent (B, C, H/8, W/8) + the H/4 skip + full-resolution sources -> fused Y (B, 1, H, W) (about 0..1).

    The image is ``base + g_ir * hp(IR_raw) + g_vis * hp(VIS)``, where ``hp(x) = x - lowpass(x)`` is the fine detail
    of each source and:

    - ``base`` comes from the latent alone: ``(z[:, 0] + 1) / 2`` (the image-like channel, on which the
      physics guides act) plus a learned correction from all latent channels, on the latent's H/8 grid, blurred there
      and upsampled once by 8 (:func:`grid_up`). Low and middle frequencies of the fused image are therefore decided by
      the sampled latent, nothing else.
    - ``g_ir, g_vis`` in (0, 2), at H/4 upsampled bilinearly, are per-pixel detail gains from the latent and two
      *narrow* paths: a 1x1 projection of the encoder's gated H/4 skip to two channels, and one of the log energy of
      each source's fine detail over
      4x4 blocks (which source has the stronger detail there). The sources' fine detail enters only there.

    Args:
        widths: the encoder's widths (H/4, H/8).
        latent_channels: latent channels C.
        band_sigma: blur (latent pixels) of the band the base carries, see :func:`lowpass`.
    """

    def __init__(self, widths: tuple[int, int], latent_channels: int, band_sigma: float):
        super().__init__()
        self.band_sigma = band_sigma
        c1, c2 = widths
        self.inp = nn.Conv2d(latent_channels, c2, 3, padding=1)
        self.conv2 = nn.Conv2d(c2, c2, 3, padding=1)
        self.expand = nn.Conv2d(c2, 4 * c1, 1)
        self.conv1 = nn.Conv2d(c1, c1, 3, padding=1)
        self.skip = nn.Conv2d(c1, 2, 1)  # the narrow detail paths: two channels from the gated skip,
        self.cue = nn.Conv2d(2, 2, 1)  # and two from the log energy of each source's fine detail at H/4
        self.head = nn.Conv2d(c1, 3, 1)  # base correction, IR gain logit, visible gain logit
        self.act = _act()
        with torch.no_grad():  # start as the image channel plus unit detail gains, leaning to the stronger detail
            for conv in (self.skip, self.head, self.cue):
                conv.weight.zero_()
                conv.bias.zero_()
            self.cue.weight[:, :, 0, 0] = torch.tensor([[0.5, -0.5], [-0.5, 0.5]])

    def fields(self, z: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``base`` (B, 1, H/8, W/8) and ``gains`` (B, 2, H/4, W/4) from a latent and :meth:`gate`.

        The base stays on the latent's grid: brought to full size once by :func:`grid_up`, it is exactly the band
        that ``lowpass`` removes from the detail (upsampling it in two bilinear stages blurs the middle frequencies
        away, which no detail path carries: 0.12 VIF and 0.04 Qabf lost by the decoder family's oracle, model card)."""
        h = self.act(self.conv2(self.act(self.inp(z))))  # (B, c2, H/8, W/8)
        h = self.act(self.conv1(self.act(F.pixel_shuffle(self.expand(h), 2))))  # (B, c1, H/4, W/4)
        out = self.head(h)
        base = (z[:, :1] + 1.0) / 2.0 + F.avg_pool2d(out[:, :1], 2)
        return base, 2.0 * torch.sigmoid(out[:, 1:] + gate)

    def detail(self, ir01: torch.Tensor, vis01: torch.Tensor) -> torch.Tensor:
        """The sources' fine detail ``hp(IR), hp(VIS)`` (B, 2, H, W): what the band of the latent leaves."""
        x = torch.cat([ir01, vis01], dim=1)
        return x - lowpass(x, self.band_sigma)

    def gate(self, skip: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """What the narrow paths add to the gain logits (B, 2, H/4, W/4): the projected H/4 ``skip`` and the log
        energy of each source's :meth:`detail` over 4x4 blocks. It reads no latent, so a decoder that decodes
        several latents of one pair (the decoded-image guide) computes it once."""
        energy = torch.log(F.avg_pool2d(detail.square(), _SCALE) + 1e-6)
        return self.skip(skip) + self.cue(energy)

    def compose(self, z: torch.Tensor, detail: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The fused Y (B, 1, H, W) from a latent, :meth:`detail` and :meth:`gate`."""
        base, gains = self.fields(z, gate)
        return grid_up(base, self.band_sigma) + (upsample(gains, _SCALE) * detail).sum(dim=1, keepdim=True)

    def sources(self, skips: list[torch.Tensor], ir01: torch.Tensor,
                vis01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`detail` and :meth:`gate` of a pair: what :meth:`compose` needs besides the latent."""
        detail = self.detail(ir01, vis01)
        return detail, self.gate(skips[0], detail)

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor], ir01: torch.Tensor,
                vis01: torch.Tensor) -> torch.Tensor:
        return self.compose(z, *self.sources(skips, ir01, vis01))


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean per-element KL(N(mu, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).mean()
