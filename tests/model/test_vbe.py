"""VBE encoder/decoder: shapes, posterior range and floor, KL, gate folding, where the decoder takes base and detail."""

from __future__ import annotations

import math

import pytest
import torch

from streamfuse.model.vbe import SIGMA_MIN, Decoder, Encoder, Gate, grid_up, kl_standard_normal, lowpass


def _inputs(b=2, h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def test_encoder_shapes_latent_range_and_sigma_floor():
    enc = Encoder((8, 12), 4)
    with torch.no_grad():
        enc.head.bias[4:].fill_(-50.0)  # a posterior that wants to be deterministic
    ir, vis = _inputs()
    mu, logvar, skips = enc(torch.cat([ir, vis], 1))
    assert mu.shape == logvar.shape == (2, 4, 4, 6)
    assert [s.shape for s in skips] == [(2, 8, 8, 12)]
    assert mu.abs().max() <= 1.0 and torch.isfinite(logvar).all()
    torch.testing.assert_close((0.5 * logvar).exp().min(), torch.tensor(SIGMA_MIN))
    with torch.no_grad():
        enc.head.bias[4:].fill_(50.0)  # and one that wants to be all noise: the posterior sample stays bounded
    assert enc(torch.cat([ir, vis], 1))[1].max() == 4.0  # sigma at most e^2, about 7.4 latent ranges


def test_decoder_starts_as_image_channel_plus_detail_leaning_to_the_stronger_source():
    enc, dec = Encoder((8, 12), 4), Decoder((8, 12), 4, 1.0)
    ir, _ = _inputs()
    mu, _, skips = enc(torch.cat([ir, ir], 1))
    base = grid_up((mu[:, :1] + 1) / 2, 1.0)  # the latent's grid brought to full size once, as lowpass does
    detail = ir - lowpass(ir, 1.0)  # equal detail in both sources: unit gains
    torch.testing.assert_close(dec(mu, skips, ir, ir), base + 2 * detail, atol=1e-5, rtol=1e-5)
    stronger_ir = torch.cat([detail, 0.1 * detail], 1)  # IR's detail ten times stronger
    _, gains = dec.fields(mu, dec.gate(skips[0], stronger_ir))
    assert (gains[:, 0] > 1.5).all() and (gains[:, 1] < 0.5).all()


def test_base_comes_from_the_latent_and_detail_from_the_sources():
    torch.manual_seed(0)  # the weights below: the test must not depend on which tests ran before
    enc, dec = Encoder((8, 12), 4), Decoder((8, 12), 4, 1.0)
    for conv in (dec.head, dec.skip, dec.cue):
        torch.nn.init.normal_(conv.weight, std=0.3)
    ir, vis = _inputs(seed=1)
    mu, _, skips = enc(torch.cat([ir, vis], 1))
    out = dec(mu, skips, ir, vis)
    # sources without fine detail (flat): the output is the base, which reads only the latent
    smooth = dec(mu, skips, torch.full_like(ir, 0.2), torch.full_like(vis, 0.7))
    base, _ = dec.fields(mu, dec.gate(skips[0], torch.zeros(2, 2, 32, 48)))
    torch.testing.assert_close(smooth, grid_up(base, 1.0), atol=1e-5, rtol=1e-5)
    # another latent moves the base; the sources' detail term stays as it was
    other = dec(torch.zeros_like(mu), skips, ir, vis)
    assert (other - out).abs().mean() > 1e-2


def test_lowpass_keeps_constants_and_removes_a_checkerboard():
    flat = torch.full((1, 1, 16, 16), 0.4)
    torch.testing.assert_close(lowpass(flat, 1.0), flat)
    checker = (torch.arange(16).view(1, 1, 16, 1) + torch.arange(16).view(1, 1, 1, 16)) % 2 * 1.0
    torch.testing.assert_close(lowpass(checker, 1.0), torch.full_like(checker, 0.5))


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
    torch.testing.assert_close(torch.sigmoid(g.logit), torch.full((3,), 0.8808), atol=1e-4, rtol=0)  # starts open
    with torch.no_grad():
        g.logit.copy_(torch.tensor([0.0, 100.0, -100.0]))
    out = g(torch.ones(1, 3, 2, 2))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.5, 1.0, 0.0]))


def test_kl_zero_for_standard_normal_and_positive_otherwise():
    z = torch.zeros(2, 3, 4, 4)
    assert kl_standard_normal(z, z).item() == 0.0
    assert kl_standard_normal(z + 0.5, z - 1.0).item() > 0.0


def test_kl_is_the_closed_form_per_element_mean():
    # 1/2 (mu^2 + sigma^2 - 1 - log sigma^2), averaged: its scale is what the kl weight (1e-3) was tuned against
    mu, logvar = torch.tensor([0.5, -2.0]).view(1, 2, 1, 1), torch.tensor([-1.0, 0.5]).view(1, 2, 1, 1)
    want = 0.5 * ((0.25 + math.exp(-1.0) - 1.0 + 1.0) + (4.0 + math.exp(0.5) - 1.0 - 0.5)) / 2
    assert kl_standard_normal(mu, logvar).item() == pytest.approx(want)
    assert kl_standard_normal(mu.expand(2, 2, 3, 3), logvar.expand(2, 2, 3, 3)).item() == pytest.approx(want)


def test_the_band_is_smoother_than_the_block_means():
    # a wave of 32 px (4 latent pixels) stays in the block means but belongs to the detail: a base that keeps it
    # scored Qabf 0.692 against 0.699 on msrs/test with the same weights (model card)
    x = torch.sin(torch.arange(128.0) * (2 * torch.pi / 32)).expand(1, 1, 64, 128).contiguous()
    assert lowpass(x, 1.0).std() < 0.6 * lowpass(x, 0.0).std()


def test_a_latent_of_block_means_decodes_to_exactly_the_band_lowpass_keeps():
    # the base and the detail must split the image at one place: a base upsampled in stages loses middle frequencies
    # that no detail path carries
    enc, dec = Encoder((8, 12), 4), Decoder((8, 12), 4, 1.0)
    image, _ = _inputs(seed=2)
    z = torch.zeros(2, 4, 4, 6)
    z[:, :1] = 2 * torch.nn.functional.avg_pool2d(image, 8) - 1
    skips = enc(torch.cat([image, image], 1))[2]
    flat = torch.full_like(image, 0.5)  # sources without fine detail: the output is the base alone
    torch.testing.assert_close(dec(z, skips, flat, flat), lowpass(image, 1.0), atol=1e-5, rtol=1e-5)
