"""VBE encoder/decoder: shapes, posterior range, KL, gate folding, the decoder's basis sum."""

from __future__ import annotations

import torch

from streamfuse.model.vbe import BASIS, Decoder, Encoder, Gate, basis, kl_standard_normal


def _inputs(b=2, h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def test_encoder_shapes_and_latent_range():
    enc = Encoder((8, 12), 4)
    ir, vis = _inputs()
    mu, logvar, skips = enc(torch.cat([ir, vis], 1))
    assert mu.shape == logvar.shape == (2, 4, 4, 6)
    assert [s.shape for s in skips] == [(2, 8, 8, 12), (2, 12, 4, 6)]
    assert mu.abs().max() <= 1.0 and torch.isfinite(logvar).all()


def test_decoder_starts_as_pixelwise_max():
    enc, dec = Encoder((8, 12), 4), Decoder((8, 12), 4)
    ir, vis = _inputs()
    mu, _, skips = enc(torch.cat([ir, vis], 1))
    torch.testing.assert_close(dec(mu, skips, ir, vis), torch.maximum(ir, vis))


def test_decoder_sum_equals_explicit_basis():
    enc, dec = Encoder((8, 12), 4), Decoder((8, 12), 4)
    torch.nn.init.normal_(dec.coef.weight, std=0.1)
    ir, vis = _inputs(seed=1)
    mu, _, skips = enc(torch.cat([ir, vis], 1))
    coef = torch.nn.functional.interpolate(dec.coefficients(mu, skips), scale_factor=4, mode="bilinear")
    expected = (coef * basis(ir, vis)).sum(1, keepdim=True)
    assert basis(ir, vis).shape[1] == len(BASIS)
    torch.testing.assert_close(dec(mu, skips, ir, vis), expected, atol=1e-5, rtol=1e-5)


def test_fold_gates_keeps_outputs():
    enc = Encoder((8, 12), 4)
    with torch.no_grad():
        enc.gate1.logit.uniform_(-2, 2)
        enc.gate2.logit.uniform_(-2, 2)
    x = torch.cat(_inputs(), 1)
    before = enc(x)
    enc.fold_gates()
    after = enc(x)
    assert torch.sigmoid(enc.gate1.logit).eq(1).all()
    for a, b in zip(before[:2] + tuple(before[2]), after[:2] + tuple(after[2])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gate_is_per_channel_sigmoid():
    g = Gate(3)
    with torch.no_grad():
        g.logit.copy_(torch.tensor([0.0, 100.0, -100.0]))
    out = g(torch.ones(1, 3, 2, 2))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.5, 1.0, 0.0]))


def test_kl_zero_for_standard_normal_and_positive_otherwise():
    z = torch.zeros(2, 3, 4, 4)
    assert kl_standard_normal(z, z).item() == 0.0
    assert kl_standard_normal(z + 0.5, z - 1.0).item() > 0.0
