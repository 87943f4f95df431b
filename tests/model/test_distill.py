"""Stage 2's losses (:func:`streamfuse.train.distill.distill_losses`): the one-step student against the guided
K-step teacher from the same noise, MSE on the latents plus IMAGE_WEIGHT times L1 on the decoded images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamfuse.model.net import HCLFuseNet
from streamfuse.train.config import TrainConfig
from streamfuse.train.distill import IMAGE_WEIGHT, distill_losses


def test_the_student_is_measured_against_the_guided_teacher(tiny, pair):
    torch.manual_seed(0)
    net = HCLFuseNet(tiny).eval()
    ir, vis = pair()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((1, tiny.latent_channels, 32 // HCLFuseNet.stride, 48 // HCLFuseNet.stride), generator=g)
    cfg = TrainConfig(teacher_steps=4, guidance_scale=3.0)
    with torch.no_grad():
        terms = distill_losses(net, ir, vis, ir, noise, cfg)
        mu, _, skips = net.encoder(torch.cat([ir, vis], dim=1))
        net.set_sampling(4, True, 3.0)
        z_teacher = net.sample_latent(mu, ir, vis, noise)
        net.set_sampling(1, True, 3.0, student=True)
        z_student = net.sample_latent(mu, ir, vis, noise)
        image = F.l1_loss(net.decoder(z_student, skips, ir, vis), net.decoder(z_teacher, skips, ir, vis))
    torch.testing.assert_close(terms["latent"], F.mse_loss(z_student, z_teacher))
    torch.testing.assert_close(terms["image"], image)
    torch.testing.assert_close(terms["total"], terms["latent"] + IMAGE_WEIGHT * terms["image"])
    assert IMAGE_WEIGHT == 10.0 and terms["latent"] > 0 and terms["image"] > 0
