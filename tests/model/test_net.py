"""HCLFuseNet: forward contract, determinism, the decoder's detail source, teacher and student, guidance switch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from streamfuse.diffusion.guidance import IMAGE_LAMBDA
from streamfuse.diffusion.schedules import alphas_cumprod, linear_betas
from streamfuse.model.net import HCLFuseNet
from streamfuse.model.vbe import lowpass


@pytest.mark.parametrize("steps", [1, 3])
def test_forward_shape_range_and_attributes(steps, tiny, pair):
    net = HCLFuseNet(tiny, steps=steps).eval()
    ir, vis = pair()
    noise = torch.randn(1, net.latent_channels, 4, 6)
    with torch.inference_mode():
        out = net(ir, vis, noise, ir)
    assert out.shape == (1, 1, 32, 48) and out.min() >= 0 and out.max() <= 1
    assert (net.stride, net.latent_channels, net.steps) == (8, 2, steps)


def test_same_noise_same_output(tiny, pair):
    net = HCLFuseNet(tiny, steps=2).eval()
    ir, vis = pair()
    n1 = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = net(ir, vis, n1, ir), net(ir, vis, n1.clone(), ir)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_decoder_takes_detail_from_the_raw_ir(tiny, pair):
    net = HCLFuseNet(tiny, steps=1).eval()
    with torch.no_grad():
        net.decoder.cue.weight.zero_()  # unit gains whatever the sources' detail energy
    ir, vis = pair()
    raw = torch.rand(ir.shape, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        z, skips = net.sample(ir, vis, torch.zeros(1, 2, 4, 6))
        a, b = net.decoder(z, skips, raw, vis), net.decoder(z, skips, ir, vis)
    s = tiny.band_sigma
    torch.testing.assert_close(a - b, (raw - lowpass(raw, s)) - (ir - lowpass(ir, s)), atol=1e-5, rtol=0)  # unit gains


def test_student_and_teacher_are_separate_samplers(tiny, pair):
    net = HCLFuseNet(tiny, steps=3).eval()
    assert net.steps == 3 and not net.use_student
    with torch.no_grad():
        net.student.out.bias.fill_(0.5)
    ir, vis = pair()
    noise = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        teacher = net(ir, vis, noise, ir)
        net.set_sampling(3, student=True)
        assert net.steps == tiny.student_steps and net.use_student
        assert not torch.equal(net(ir, vis, noise, ir), teacher)
    assert any(k.startswith("student.") for k in net.state_dict())


def test_guidance_can_be_switched_off(tiny, pair):
    net = HCLFuseNet(tiny, steps=2).eval()
    assert net.guide is not None
    net.set_sampling(2, guidance=False)
    ir, vis = pair()
    with torch.inference_mode():
        assert net.guide is None and net(ir, vis, torch.zeros(1, 2, 4, 6), ir).shape == (1, 1, 32, 48)


def test_image_guidance_moves_the_output_and_follows_the_guidance_switch(tiny, pair):
    ir, vis = pair()
    noise = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    net = HCLFuseNet(tiny, steps=2).eval()
    out = {}
    with torch.inference_mode():  # as the engine runs it
        for guidance, image_steps in ((True, 0), (True, 1), (True, 2), (False, 0), (False, 2)):
            net.set_sampling(2, guidance, image_steps=image_steps)
            out[guidance, image_steps] = net(ir, vis, noise, ir)
    assert not torch.equal(out[True, 1], out[True, 0])  # the decoded-image guide acts, from one step on
    assert not torch.equal(out[True, 2], out[True, 1])
    assert torch.equal(out[False, 2], out[False, 0])  # and is one of the guides that guidance=False turns off


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_step_sample_under_half_autocast_keeps_the_schedule_precise(tiny, pair, dtype):
    """Under the engine's fp16 / bf16 autocast the sampler stays as close to fp32 as the denoiser's convolutions allow
    (measured: 3e-5 fp16, 3e-4 bf16); a half-precision schedule puts the one step from t = T 0.013 off."""
    net = HCLFuseNet(tiny, student=True).eval()
    ir, vis = pair()
    noise = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=dtype):
            mu = net.encoder(torch.cat([ir, vis], dim=1))[0]
            half = net.sample_latent(mu, ir, vis, noise)
        full = net.sample_latent(mu.float(), ir, vis, noise)  # the same posterior mean, everything in fp32
    assert (half.float() - full).abs().max() < 2e-3


def test_train_outputs_sample_the_posterior_noise_it_and_decode_both_latents(tiny, pair):
    torch.manual_seed(0)
    net = HCLFuseNet(tiny)
    with torch.no_grad():
        net.denoiser.out.bias.fill_(8.0)  # a one-step prediction beyond the latent's range: the clamp must act
    ir, vis = pair()
    raw = torch.rand(ir.shape, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(3)
    t, eps, e0 = torch.tensor([600]), torch.randn(1, 2, 4, 6, generator=g), torch.randn(1, 2, 4, 6, generator=g)
    out = net.train_outputs(ir, vis, raw, t, eps, e0)
    mu, logvar, skips = net.encoder(torch.cat([ir, vis], dim=1))
    z = mu + (0.5 * logvar).exp() * e0  # the reparameterised sample: std, not variance, times the noise
    torch.testing.assert_close(out["z"], z)
    abar = net.alphas_cumprod[600]
    x_t = abar.sqrt() * z + (1 - abar).sqrt() * eps
    eps_pred = net.denoiser(x_t, t, mu)
    torch.testing.assert_close(out["eps_pred"], eps_pred)
    x0 = (x_t - (1 - abar).sqrt() * eps_pred) / abar.sqrt()
    assert x0.max() > 1
    x0 = x0.clamp(-1, 1)
    decoded = [net.decoder(latent, skips, raw, vis) for latent in (z, x0)]  # the posterior sample, the one-step x0
    torch.testing.assert_close(out["fused"], torch.cat(decoded))


def test_the_noise_loss_reaches_the_encoder_only_through_the_sample_not_the_condition(tiny, pair):
    torch.manual_seed(0)
    net = HCLFuseNet(tiny)
    ir, vis = pair()
    g = torch.Generator().manual_seed(3)
    t, eps, e0 = torch.tensor([600]), torch.randn(1, 2, 4, 6, generator=g), torch.randn(1, 2, 4, 6, generator=g)
    out = net.train_outputs(ir, vis, ir, t, eps, e0)
    got = torch.autograd.grad(out["eps_pred"].square().sum(), net.encoder.head.bias)[0]
    mu, logvar, _ = net.encoder(torch.cat([ir, vis], dim=1))
    abar = net.alphas_cumprod[600]
    x_t = abar.sqrt() * (mu + (0.5 * logvar).exp() * e0) + (1 - abar).sqrt() * eps
    want = torch.autograd.grad(net.denoiser(x_t, t, mu.detach()).square().sum(), net.encoder.head.bias)[0]
    torch.testing.assert_close(got, want)
    assert want.abs().sum() > 0


def test_a_guidance_scale_scales_every_guide_and_zero_turns_them_all_off(tiny, pair):
    ir, vis = pair()
    noise = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    net = HCLFuseNet(tiny, steps=2).eval()
    out = {}
    with torch.inference_mode():
        for scale, guidance, image_steps in ((0.0, True, 2), (1.0, False, 0), (1.0, True, 2), (2.0, True, 2)):
            net.set_sampling(2, guidance, scale, image_steps=image_steps)
            out[scale, guidance] = net(ir, vis, noise, ir)
    assert net.image_lambda == pytest.approx(2 * IMAGE_LAMBDA)
    torch.testing.assert_close(out[0.0, True], out[1.0, False])  # the decoded-image guide's steps too
    assert not torch.equal(out[2.0, True], out[1.0, True])


def test_the_schedule_and_its_timesteps_are_the_configs(tiny, pair):
    # a config's own T and betas: with the defaults' in their place, T = 100 sampled at t = 999, past its schedule
    cfg = replace(tiny, num_train_timesteps=100, beta_end=0.03)
    net = HCLFuseNet(cfg, steps=4).eval()
    abar = alphas_cumprod(linear_betas(100, 1e-4, 0.03))
    assert net.timesteps == [99, 74, 49, 24]
    torch.testing.assert_close(net.alphas_cumprod, abar, atol=0, rtol=0)
    torch.testing.assert_close(net.denoiser.alphas_cumprod, abar, atol=0, rtol=0)
    ir, vis = pair()
    with torch.inference_mode():
        assert torch.isfinite(net(ir, vis, torch.randn(1, 2, 4, 6), ir)).all()


def test_a_student_of_more_than_four_steps_is_refused(tiny):
    assert replace(tiny, student_steps=4).student_steps == 4
    with pytest.raises(ValueError, match=r"^student_steps=5 is out of range; allowed: 1\.\.4$"):
        replace(tiny, student_steps=5)


@pytest.mark.parametrize("image_channels", [1, 2])
def test_the_guides_act_on_the_image_like_latent_channels_the_config_names(tiny, pair, image_channels):
    # one step: the sampled latent is the step's x0, which the guides correct on the image channels only
    net = HCLFuseNet(replace(tiny, image_channels=image_channels), steps=1).eval()
    ir, vis = pair()
    noise = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        mu = net.encoder(torch.cat([ir, vis], dim=1))[0]
        guided = net.sample_latent(mu, ir, vis, noise)
        net.set_sampling(1, guidance=False)
        moved = (guided - net.sample_latent(mu, ir, vis, noise)).abs().amax(dim=(0, 2, 3))
    assert (moved[:image_channels] > 1e-3).all() and (moved[image_channels:] == 0).all()
