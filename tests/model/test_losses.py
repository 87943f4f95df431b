"""Training losses: fusion target properties, finite gradients on flat images, the eps term, the range term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamfuse.imageops.tensors import gradient_magnitude, sobel
from streamfuse.model.losses import LossConfig, fusion_target, hclfuse_losses, local_range
from streamfuse.model.net import HCLFuseNet, ModelConfig

TINY = ModelConfig(widths=(4, 8), latent_channels=2, denoiser_width=4)


def test_target_of_identical_sources_is_the_source_with_unit_gain():
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fusion_target(x, x, LossConfig(detail_gain=1.0)), x, atol=1e-5, rtol=0)


def test_target_takes_the_brighter_base_and_amplifies_detail():
    dark, bright = torch.full((1, 1, 32, 32), 0.2), torch.full((1, 1, 32, 32), 0.7)
    torch.testing.assert_close(fusion_target(dark, bright, LossConfig()), bright)
    textured = bright.clone()
    textured[..., ::2, :] += 0.05
    t1 = fusion_target(dark, textured, LossConfig(detail_gain=1.0))
    t2 = fusion_target(dark, textured, LossConfig(detail_gain=1.5))
    assert gradient_magnitude(t2, 0.0).mean() > 1.4 * gradient_magnitude(t1, 0.0).mean()


def test_losses_finite_with_flat_inputs_and_eps_term_uses_true_noise():
    net = HCLFuseNet(TINY)
    flat = torch.full((2, 1, 32, 32), 0.5)  # Sobel magnitude 0: the +eps inside the sqrt keeps gradients finite
    eps, e0 = torch.randn(2, 2, 4, 4), torch.zeros(2, 2, 4, 4)
    out = net.train_outputs(flat, flat, flat, torch.tensor([10, 900]), eps, e0)
    losses = hclfuse_losses(out, flat, flat, flat, eps, LossConfig(), TINY.image_channels)
    losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    perfect = {**out, "eps_pred": eps}
    assert hclfuse_losses(perfect, flat, flat, flat, eps, LossConfig(), 1)["noise"].item() == 0.0
    off = {**out, "eps_pred": eps + 2.0}  # SmoothL1: |d| - 0.5 beyond 1 (the squared error would say 4)
    assert hclfuse_losses(off, flat, flat, flat, eps, LossConfig(), 1)["noise"].item() == pytest.approx(1.5)
    assert out["fused"].shape == (4, 1, 32, 32)  # the posterior sample and the one-step prediction, both decoded


def test_gradient_term_follows_the_stronger_source_with_its_sign():
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    flat = torch.full_like(ramp, 0.5)
    out = {"mu": torch.zeros(1, 1, 4, 4), "logvar": torch.zeros(1, 1, 4, 4), "eps_pred": torch.zeros(1, 1, 4, 4)}
    inverted = hclfuse_losses({**out, "fused": 1 - ramp}, flat, flat, ramp, out["mu"], LossConfig(), 1)
    same = hclfuse_losses({**out, "fused": ramp.clone()}, flat, flat, ramp, out["mu"], LossConfig(), 1)
    assert same["gradient"].item() < 1e-6 < inverted["gradient"].item()


def test_range_term_counts_only_what_leaves_the_sources_local_range_by_more_than_the_margin():
    dark, bright = torch.full((1, 1, 32, 32), 0.2), torch.full((1, 1, 32, 32), 0.7)
    out = {"mu": torch.zeros(1, 1, 4, 4), "logvar": torch.zeros(1, 1, 4, 4), "eps_pred": torch.zeros(1, 1, 4, 4)}
    cfg = LossConfig(range_margin=0.05)

    def term(fused: torch.Tensor) -> float:
        return hclfuse_losses({**out, "fused": fused}, dark, bright, dark, out["mu"], cfg, 1)["range"].item()

    assert term(bright + 0.05) == 0.0 and term(dark - 0.05) == 0.0  # inside the margin
    rim = bright.clone()
    rim[..., 10:12, :] = 0.95  # a rim 0.25 above both sources on 2 of 32 rows: 0.2 beyond the margin
    assert term(rim) == pytest.approx(0.2 * 2 / 32)
    lo, hi = local_range(torch.cat([dark, rim], dim=1), 3)
    assert lo.max().item() == pytest.approx(0.2) and hi[..., 9:13, :].min().item() == pytest.approx(0.95)
    assert hi[..., :8, :].max().item() == pytest.approx(0.7)  # the window reaches one row beyond the rim, no further


def test_target_weighs_the_detail_sources_by_their_squared_gradient_energy():
    # w = E_ir^2 / (E_ir^2 + E_vis^2): with E (not squared) the stronger source's detail was diluted by the weaker's,
    # so the target the model learns from kept less of the more textured source than the method says
    stripes = torch.ones(1, 1, 64, 64)
    stripes[..., 2::4, :] = stripes[..., 3::4, :] = -1.0  # period 4: Sobel sees nothing in period-2 stripes
    vis = 0.5 + 0.05 * stripes
    ir = 0.5 + 0.05 * 2 ** 0.5 * stripes  # twice vis's squared gradient magnitude, so E_ir = 2 E_vis
    cfg = LossConfig(detail_gain=1.0)
    inner = (..., slice(24, 40), slice(24, 40))
    detail = [(fusion_target(a, vis, cfg) - 0.5)[inner].abs().mean() for a in (ir, vis)]
    ratio = detail[0] / detail[1]
    assert ratio == pytest.approx(0.8 * 2 ** 0.5 + 0.2, abs=0.02)  # w_ir = 4 / 5


def _random_batch(b=2, h=32, w=32):
    g = torch.Generator().manual_seed(7)
    ir01, vis01, ir_raw = (torch.rand(b, 1, h, w, generator=g) for _ in range(3))  # three different sources
    fused = torch.rand(2 * b, 1, h, w, generator=g).requires_grad_(True)
    out = {"mu": torch.rand(b, 2, h // 8, w // 8, generator=g) * 2 - 1, "logvar": torch.zeros(b, 2, h // 8, w // 8),
           "eps_pred": torch.randn(b, 2, h // 8, w // 8, generator=g), "fused": fused}
    return out, ir01, vis01, ir_raw


def test_each_fusion_term_reads_the_sources_its_definition_names():
    out, ir01, vis01, ir_raw = _random_batch()
    cfg = LossConfig(range=5.0, range_margin=0.0)
    terms = hclfuse_losses(out, ir01, vis01, ir_raw, torch.zeros_like(out["eps_pred"]), cfg, 1)
    fused = out["fused"]
    twice = lambda x: x.repeat(2, 1, 1, 1)  # noqa: E731 - the posterior sample's images, then the one-step's
    torch.testing.assert_close(terms["intensity"], F.l1_loss(fused, twice(torch.maximum(ir01, vis01))))
    torch.testing.assert_close(terms["rule"], F.l1_loss(fused, twice(fusion_target(ir_raw, vis01, cfg))))
    # the stronger of the raw IR's and the visible's gradients, picked by the raw IR's magnitude (not the aligned IR's)
    ir_stronger = gradient_magnitude(ir_raw) >= gradient_magnitude(vis01)
    g_target = torch.where(ir_stronger, torch.cat(sobel(ir_raw), dim=1), torch.cat(sobel(vis01), dim=1))
    torch.testing.assert_close(terms["gradient"], F.l1_loss(torch.cat(sobel(fused), dim=1), twice(g_target)))
    lo, hi = (twice(x) for x in local_range(torch.cat([ir_raw, ir01, vis01], dim=1), cfg.range_window))
    torch.testing.assert_close(terms["range"], (F.relu(fused - hi) + F.relu(lo - fused)).mean())
    assert terms["range"] > 0  # the three sources' range, not two: a random image leaves it somewhere
    target = F.avg_pool2d(fused[:2], 8) * 2 - 1  # the decoded posterior sample's block means, in the latent's range
    torch.testing.assert_close(terms["latent_image"], F.mse_loss(out["mu"][:, :1], target))
    weighted = sum(getattr(cfg, k) * v for k, v in terms.items() if k != "total")
    torch.testing.assert_close(terms["total"], weighted)


def test_the_latent_image_term_moves_the_encoder_not_the_decoded_image():
    out, ir01, vis01, ir_raw = _random_batch()
    out["mu"].requires_grad_(True)
    terms = hclfuse_losses(out, ir01, vis01, ir_raw, torch.zeros_like(out["eps_pred"]), LossConfig(), 1)
    to_mu, to_fused = torch.autograd.grad(terms["latent_image"], [out["mu"], out["fused"]], allow_unused=True)
    assert to_fused is None and to_mu.abs().sum() > 0


def test_the_latent_image_target_stays_in_the_latents_range():
    # the decoder is not clamped in training: a decoded image above 1 asked mu, a tanh, for values beyond 1
    out, ir01, vis01, ir_raw = _random_batch()
    out["fused"] = torch.full_like(out["fused"], 1.3)
    out["mu"][:, :1] = 1.0
    terms = hclfuse_losses(out, ir01, vis01, ir_raw, torch.zeros_like(out["eps_pred"]), LossConfig(), 1)
    assert terms["latent_image"].item() == 0.0


def test_the_target_separates_base_and_detail_at_base_sigma():
    step = torch.zeros(1, 1, 48, 48)
    step[..., 24:] = 1.0
    dark = torch.full_like(step, 0.1)
    wide, narrow = (fusion_target(dark, step, LossConfig(base_sigma=s, energy_sigma=3.0)) for s in (8.0, 2.0))
    assert (wide - narrow).abs().max() > 0.05
