"""Stage 2 of training: distil the few-step student from the guided K-step teacher.

The encoder, decoder and teacher are frozen; from the same noise and posterior mean, the student's
``student_steps``-step guided sample must match the teacher's ``teacher_steps``-step guided sample: MSE on the latent
plus L1 on the decoded image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamfuse.model.net import HCLFuseNet
from streamfuse.train.config import TrainConfig

__all__ = ["IMAGE_WEIGHT", "distill_losses"]

IMAGE_WEIGHT = 10.0  # of the decoded images' L1 against the latents' MSE


def distill_losses(net: HCLFuseNet, ir01: torch.Tensor, vis01: torch.Tensor, ir_raw: torch.Tensor,
                   noise: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Student vs teacher from the same ``noise`` (B, C, h, w): MSE of the latents, L1 of the decoded images (0..1),
    and their weighted sum ``total``."""
    with torch.no_grad():
        mu, _, skips = net.encoder(torch.cat([ir01, vis01], dim=1))
        net.set_sampling(cfg.teacher_steps, True, cfg.guidance_scale)
        z_teacher = net.sample_latent(mu, ir01, vis01, noise)
        f_teacher = net.decoder(z_teacher, skips, ir_raw, vis01)
    net.set_sampling(1, True, cfg.guidance_scale, student=True)
    z_student = net.sample_latent(mu, ir01, vis01, noise)
    terms = {"latent": F.mse_loss(z_student, z_teacher),
             "image": F.l1_loss(net.decoder(z_student, skips, ir_raw, vis01), f_teacher)}
    terms["total"] = terms["latent"] + IMAGE_WEIGHT * terms["image"]
    return terms
