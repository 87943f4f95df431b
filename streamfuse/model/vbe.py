"""Variational bottleneck encoder (VBE) and decoder of HCLFuse, made thin for real-time use.

The encoder takes the stacked ``[IR', VIS]`` Y channels in 0..1 (that order everywhere), folds 4x4 pixel blocks into
channels (space-to-depth, so no convolution runs at full resolution), and has two levels (H/4 and H/8), each ending in
a per-channel learnable sigmoid gate ``M_s = sigmoid(w_s)`` (the paper's multi-scale masks). It predicts a *spatial*
posterior: per-pixel ``mu`` and ``logvar`` of ``latent_channels`` at H/8; ``mu = tanh(.)`` keeps the latent in
[-1, 1], and its first ``image_channels`` channels are trained to look like the fused image (``2 avgpool8(F) - 1``),
so the physics guides and the latent share one value range.

The decoder goes back up from the latent with the gated skips to H/4 and predicts there, per pixel, the
coefficients of a full-resolution basis (the raw IR and the visible, their maximum, and a fine high-pass band of
each; the raw IR rather than IR', because the alignment's lookup table rescales local contrast); the coefficients
are upsampled bilinearly and the fused Y is their weighted sum. Full-resolution work is therefore a few
element-wise operations, while every decision (which source, how much detail) is made by the network.

Gates sit right after a LeakyReLU, which is positively homogeneous (``g relu(z) = relu(g z)`` for ``g > 0``), so
:meth:`Encoder.fold_gates` folds them into the producing convolution at load time and inference pays nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BASIS", "Decoder", "Encoder", "Gate", "basis", "kl_standard_normal"]

BASIS = ("ir", "vis", "max", "ir_hp", "vis_hp", "one")
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
    """``[IR', VIS]`` (B, 2, H, W) in 0..1 -> ``mu, logvar`` (B, C, H/8, W/8) and skips at H/4 and H/8.

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
        h = self.act(self.proj(F.pixel_unshuffle(x, _SCALE)))  # (B, c1, H/4, W/4)
        s1 = self.gate1(self.act(self.conv1(h)))
        s2 = self.gate2(self.act(self.conv2(self.act(self.down(s1)))))  # (B, c2, H/8, W/8)
        mu, logvar = self.head(s2).chunk(2, dim=1)
        return torch.tanh(mu), logvar.clamp(-12.0, 4.0), [s1, s2]

    @torch.no_grad()
    def fold_gates(self) -> None:
        """Fold both gates into the convolutions that produce their inputs (inference only)."""
        self.gate1.fold_into(self.conv1)
        self.gate2.fold_into(self.conv2)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean, border pixels averaged over the window inside the image."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def basis(ir01: torch.Tensor, vis01: torch.Tensor) -> torch.Tensor:
    """Full-resolution basis (B, 6, H, W) in the order of :data:`BASIS`; ``hp`` is the detail above a 3x3 mean.

    The decoder never builds this tensor (it folds the sum, see :meth:`Decoder.forward`); it documents the model and
    serves as the test oracle.
    """
    x = torch.cat([ir01, vis01], dim=1)  # (B, 2, H, W)
    return torch.cat([x, torch.maximum(ir01, vis01), x - _box3(x), torch.ones_like(ir01)], dim=1)


class Decoder(nn.Module):
    """Latent (B, C, H/8, W/8) + skips + full-resolution sources -> fused Y (B, 1, H, W) (about 0..1, unclamped).

    Args:
        widths: the encoder's widths (H/4, H/8).
        latent_channels: latent channels C.
    """

    def __init__(self, widths: tuple[int, int], latent_channels: int):
        super().__init__()
        c1, c2 = widths
        self.inp = nn.Conv2d(latent_channels, c2, 3, padding=1)
        self.conv2 = nn.Conv2d(c2, c2, 3, padding=1)
        self.expand = nn.Conv2d(c2, 4 * c1, 1)
        self.conv1 = nn.Conv2d(c1, c1, 3, padding=1)
        self.coef = nn.Conv2d(c1, len(BASIS), 1)
        self.act = _act()
        with torch.no_grad():  # start as the pixel-wise maximum
            self.coef.weight.zero_()
            self.coef.bias.copy_(torch.tensor([float(b == "max") for b in BASIS]))

    def coefficients(self, z: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Basis coefficients at H/4, (B, 6, H/4, W/4)."""
        s1, s2 = skips
        h = self.act(self.conv2(self.act(self.inp(z)) + s2))  # (B, c2, H/8, W/8)
        h = self.act(F.pixel_shuffle(self.expand(h), 2))  # (B, c1, H/4, W/4)
        return self.coef(self.act(self.conv1(h + s1)))

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor], ir01: torch.Tensor,
                vis01: torch.Tensor) -> torch.Tensor:
        c = F.interpolate(self.coefficients(z, skips), scale_factor=_SCALE, mode="bilinear", align_corners=False)
        x = torch.cat([ir01, vis01], dim=1)  # (B, 2, H, W)
        # sum_k c_k basis_k with x - box3(x) expanded, so no (B, 6, H, W) basis is materialised
        src = ((c[:, 0:2] + c[:, 3:5]) * x - c[:, 3:5] * _box3(x)).sum(dim=1, keepdim=True)
        return src + c[:, 2:3] * torch.maximum(ir01, vis01) + c[:, 5:6]  # (B, 1, H, W)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean per-element KL(N(mu, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).mean()
