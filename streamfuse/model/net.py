"""HCLFuseNet: encode -> K-step physics-guided DDIM on the latent -> decode, and its architecture config.

Two denoisers share the encoder and decoder: the *teacher*, sampled with K = 1..20 guided DDIM steps, and the
*student*, distilled from the teacher's guided K-step samples to ``student_steps`` steps (the live default).

``HCLFuseNet.forward(ir01, vis01, noise, ir_raw01)`` is pure tensor code without host synchronisation, so the engine
can capture it in a CUDA graph. Channel order is ``[IR', VIS]`` everywhere, in training and inference: the encoder
and the guides see the OT-aligned IR', the decoder takes its fine IR detail from the raw IR (the alignment's lookup
table rescales local contrast, which the fused image should not inherit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from streamfuse.checks import check
from streamfuse.diffusion.guidance import (IMAGE_LAMBDA, ComposedGuide, default_guides, guide_decoded, guide_inputs,
                                           structure_inputs)
from streamfuse.diffusion.sampling import sample_ddim
from streamfuse.diffusion.schedules import alphas_cumprod, ddim_timesteps, eps_to_x0, linear_betas
from streamfuse.model.denoiser import Denoiser
from streamfuse.model.vbe import LATENT_SCALE, Decoder, Encoder

__all__ = ["HCLFuseNet", "ModelConfig"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of HCLFuseNet (stored in the weights file).

    Args:
        widths: VBE channels at H/4 and H/8.
        latent_channels: latent channels C at H/8.
        band_sigma: blur (latent pixels) of the band the latent's base carries: a smoother base leaves the middle
            frequencies to the sources' energy-weighted detail (measured on msrs/test with the same weights: 1.0
            against 0, VIF 1.021 vs 1.002, Qabf 0.699 vs 0.692; model card).
        image_channels: latent channels trained to be image-like (the physics guides act on them).
        denoiser_width: denoiser channels at H/8 (twice that at H/16), teacher and student alike.
        student_steps: DDIM steps of the distilled student.
        num_train_timesteps: T of the linear beta schedule.
        beta_start: first beta.
        beta_end: last beta.
    """

    widths: tuple[int, int] = (16, 24)
    latent_channels: int = 4
    band_sigma: float = 1.0
    image_channels: int = 1
    denoiser_width: int = 16
    student_steps: int = 1
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        # upper bounds: far above the shipped sizes (16, 24, 4, 16); beyond them a typo's net does not fit in memory
        check(len(self.widths) == 2 and 1 <= min(self.widths) and max(self.widths) <= 1024, "widths", self.widths,
              "2 ints in 1 .. 1024")
        check(1 <= self.latent_channels <= 256, "latent_channels", self.latent_channels, "1 .. 256")
        check(1 <= self.image_channels <= self.latent_channels, "image_channels", self.image_channels,
              "1..latent_channels")
        check(1 <= self.denoiser_width <= 1024, "denoiser_width", self.denoiser_width, "1 .. 1024")
        check(0 <= self.band_sigma <= 64, "band_sigma", self.band_sigma, "0 .. 64 latent pixels")
        check(20 <= self.num_train_timesteps <= 100_000, "num_train_timesteps", self.num_train_timesteps,
              "20 (the teacher's most steps) .. 100000")
        check(1 <= self.student_steps <= 4, "student_steps", self.student_steps, "1..4")
        check(0 < self.beta_start < 1, "beta_start", self.beta_start, "0 < beta_start < 1")
        check(self.beta_start < self.beta_end < 1, "beta_end", self.beta_end, "beta_start < beta_end < 1")


class HCLFuseNet(nn.Module):
    """``(ir01, vis01, noise (B,C,H/8,W/8), ir_raw01) -> fused01 (B,1,H,W)`` in [0, 1]; images are (B,1,H,W) 0..1.

    Args:
        cfg: architecture.
        steps: DDIM steps K of the teacher at inference (ignored with ``student``).
        guidance: apply the physics guides during sampling.
        guidance_scale: multiplies the method's guide weights.
        student: sample with the distilled student (``cfg.student_steps`` steps) instead of the K-step teacher.
        image_steps: gradient steps of the structure guide on the decoded image after sampling
            (:func:`~streamfuse.diffusion.guidance.guide_decoded`; with ``guidance`` only, 0 = none).
    """

    stride = LATENT_SCALE  # the latent is (H/stride, W/stride): the engine pads frames to a multiple of it
    # and to at least 8 latent pixels a side: with fewer, every convolution reads mostly its zero padding (a black frame
    # of 8x8 or less, one latent pixel, fused to 19 grey, a white one to 240)
    min_size = 8 * LATENT_SCALE

    def __init__(self, cfg: ModelConfig, *, steps: int = 4, guidance: bool = True, guidance_scale: float = 1.0,
                 student: bool = False, image_steps: int = 0):
        super().__init__()
        self.cfg = cfg
        self.latent_channels = cfg.latent_channels
        self.encoder = Encoder(cfg.widths, cfg.latent_channels)
        self.decoder = Decoder(cfg.widths, cfg.latent_channels, cfg.band_sigma)
        abar = alphas_cumprod(linear_betas(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end))
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.denoiser = Denoiser(cfg.latent_channels, cfg.denoiser_width, abar)
        self.student = Denoiser(cfg.latent_channels, cfg.denoiser_width, abar)
        self.guide: ComposedGuide | None = None
        self.set_sampling(steps, guidance, guidance_scale, student, image_steps)

    def set_sampling(self, steps: int, guidance: bool = True, guidance_scale: float = 1.0, student: bool = False,
                     image_steps: int = 0) -> None:
        """Choose the sampler (teacher with K steps, or the student) and the guides (no weights change)."""
        self.steps = self.cfg.student_steps if student else steps
        self.timesteps = ddim_timesteps(self.steps, self.cfg.num_train_timesteps)
        self.use_student = student
        self.guide = (default_guides(self.timesteps, guidance_scale, channels=self.cfg.image_channels) if guidance
                      else None)
        self.image_steps = image_steps if guidance else 0
        self.image_lambda = IMAGE_LAMBDA * guidance_scale

    def _eps(self, x: torch.Tensor, t: torch.Tensor, *, mu: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return (self.student if self.use_student else self.denoiser)(x, t, mu)

    def forward(self, ir01: torch.Tensor, vis01: torch.Tensor, noise: torch.Tensor,
                ir_raw01: torch.Tensor) -> torch.Tensor:
        z, skips = self.sample(ir01, vis01, noise)
        return self.decode(z, skips, ir_raw01, vis01)

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor], ir_raw01: torch.Tensor,
               vis01: torch.Tensor) -> torch.Tensor:
        """The fused Y (B, 1, H, W) in [0, 1] from a latent and the pair's skips and sources, after the structure
        guide's steps on the decoded image (against the raw IR, the source of its IR edges, and the visible); the
        sources' detail and the decoder's gate are computed once for all of it."""
        detail, gate = self.decoder.sources(skips, ir_raw01, vis01)
        if self.image_steps:
            # plain tensors (autograd may keep them for the backward, inference ones not), constant for every step
            with torch.inference_mode(False), torch.no_grad():
                plain = detail.clone(), gate.clone()
            z = guide_decoded(z, lambda zz: self.decoder.compose(zz, *plain), structure_inputs(ir_raw01, vis01),
                              self.image_steps, self.image_lambda)
        return self.decoder.compose(z, detail, gate).clamp(0.0, 1.0)

    def sample(self, ir01: torch.Tensor, vis01: torch.Tensor,
               noise: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode the pair and run the sampler: the latent (B, C, H/8, W/8) and the encoder's skips."""
        mu, _, skips = self.encoder(torch.cat([ir01, vis01], dim=1))  # (B, C, H/8, W/8)
        return self.sample_latent(mu, ir01, vis01, noise), skips

    def sample_latent(self, mu: torch.Tensor, ir01: torch.Tensor, vis01: torch.Tensor, noise: torch.Tensor, *,
                      callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """Guided DDIM from ``noise`` conditioned on the posterior mean ``mu`` (B, C, H/8, W/8)."""
        cond = {"mu": mu}
        if self.guide is not None:
            cond.update(guide_inputs(ir01, vis01, mu.shape[-2:]))
        # the schedule stays float32 under a half-precision autocast: there 1 - abar_T rounds to 1, an error that the
        # first step's x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) multiplies by 1 / sqrt(abar_T) = 157
        return sample_ddim(self._eps, noise.to(mu.dtype), self.timesteps, self.alphas_cumprod,
                           cond=cond, guide=self.guide, callback=callback)

    def train_outputs(self, ir01: torch.Tensor, vis01: torch.Tensor, ir_raw01: torch.Tensor, t: torch.Tensor,
                      eps: torch.Tensor, e0: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the training losses need for one batch.

        Args:
            ir01, vis01, ir_raw01: (B, 1, H, W) in 0..1 (aligned IR', visible, raw IR).
            t: (B,) timesteps.
            eps: (B, C, H/8, W/8) diffusion noise added to the latent.
            e0: (B, C, H/8, W/8) reparameterisation noise of the posterior sample.

        Returns:
            ``mu``, ``logvar``, ``z`` (posterior sample), ``eps_pred`` and ``fused`` (2B, 1, H, W): the decoded
            posterior sample, then the decoded one-step prediction ``x0_pred`` of the noisy latent.
        """
        mu, logvar, skips = self.encoder(torch.cat([ir01, vis01], dim=1))
        z = mu + (0.5 * logvar).exp() * e0  # posterior sample
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * z + (1.0 - abar).sqrt() * eps
        eps_pred = self.denoiser(x_t, t, mu.detach())
        # what a one-step sampler at t produces: the decoder is trained on it as well as on the posterior sample
        x0_pred = eps_to_x0(x_t, eps_pred, abar).clamp(-1.0, 1.0)
        twice = [x.repeat(2, 1, 1, 1) for x in (*skips, ir_raw01, vis01)]
        fused = self.decoder(torch.cat([z, x0_pred]), twice[:-2], *twice[-2:])
        return {"mu": mu, "logvar": logvar, "z": z, "eps_pred": eps_pred, "fused": fused}

    @torch.no_grad()
    def fold_gates(self) -> None:
        """Fold the VBE gates into the convolutions (inference only)."""
        self.encoder.fold_gates()
