"""Physics guides: each operator lowers its energy on a crafted input, weights by step position, composition, and the
structure guide through a decoder."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from streamfuse.diffusion.guidance import (LAMBDAS, ComposedGuide, PhysicsGuide, default_guides, energies, g_max_torch,
                                          guide_decoded, guide_inputs, structure_energy, structure_grad_torch,
                                          structure_inputs)
from streamfuse.imageops.tensors import box_filter, laplacian


def _step_image() -> torch.Tensor:
    x = torch.zeros(1, 1, 16, 16)
    x[..., :, 8:] = 1.0
    return x


def _cond(ir01: torch.Tensor, vis01: torch.Tensor) -> dict:
    return guide_inputs(ir01, vis01, ir01.shape[-2:])


def test_weight_is_defined_on_the_steps_that_run():
    one = PhysicsGuide("heat", 0.05, timesteps=(999,))
    assert one.weight(999) == pytest.approx(0.05)  # a one-step sampler is guided at full weight
    four = PhysicsGuide("heat", 0.05, timesteps=(999, 749, 499, 249), gamma=5.0)
    assert four.weight(249) == pytest.approx(0.05)
    assert four.weight(999) == pytest.approx(0.05 * math.exp(-5 * 3 / 4))


def test_heat_smooths():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = PhysicsGuide("heat", 0.2, timesteps=(0,))(x, 0, {})
    assert laplacian(out).abs().mean() < laplacian(x).abs().mean()
    torch.testing.assert_close(out.mean(), x.mean(), atol=1e-2, rtol=0)  # heat flow conserves mass (approx. at borders)


@pytest.mark.parametrize("kind", ["heat", "structure", "consistency"])
def test_each_step_lowers_its_energy(kind):
    ir = _step_image() * 2 - 1
    vis = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.2
    cond = _cond((ir + 1) / 2, vis)
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.4 - 0.2
    out = PhysicsGuide(kind, 0.2, timesteps=(0,))(x, 0, cond)
    assert energies(out, cond)[kind] < energies(x, cond)[kind]


def test_structure_steepens_a_weak_edge_where_a_source_has_a_strong_one():
    ir = _step_image()
    cond = _cond(ir, torch.zeros_like(ir))
    weak = (_step_image() * 2 - 1) * 0.1
    out = PhysicsGuide("structure", 0.5, timesteps=(0,))(weak, 0, cond)
    jump = lambda x: (x[..., 8] - x[..., 7]).mean()  # noqa: E731
    assert jump(out) > jump(weak)
    far = ~cond["m_stru"].bool()  # away from the edge nothing moves (up to the 3x3 support of the adjoint)
    far[..., 5:11] = False
    torch.testing.assert_close(out[far], weak[far])


def test_consistency_pulls_warm_regions_toward_ir():
    ir = _step_image()
    cond = _cond(ir, torch.zeros_like(ir))
    x = torch.full((1, 1, 16, 16), -1.0)
    out = PhysicsGuide("consistency", 0.5, timesteps=(0,))(x, 0, cond)
    warm = cond["m_heat"].bool()
    assert warm.any() and (out[warm] > x[warm]).all()


def test_zero_weight_is_identity_and_only_image_channels_change():
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = _cond(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    torch.testing.assert_close(default_guides((0,), scale=0.0)(x, 0, cond), x)
    out = default_guides((0,), channels=1)(x, 0, cond)
    torch.testing.assert_close(out[:, 1:], x[:, 1:])
    assert not torch.equal(out[:, :1], x[:, :1])


def test_composition_order_and_unknown_kind():
    guides = default_guides()
    assert isinstance(guides, ComposedGuide)
    assert [g.kind for g in guides.guides] == ["heat", "structure", "consistency"]
    with pytest.raises(ValueError, match="unknown guide kind"):
        PhysicsGuide("magic", 0.1)


def test_guide_inputs_in_latent_range():
    cond = _cond(torch.ones(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    assert cond["ir"].min() >= -1.0 and cond["vis"].max() <= 1.0
    assert torch.isfinite(cond["g_max"]).all()


def test_decoded_guide_lowers_the_structure_energy_of_the_image_even_in_inference_mode():
    ir = _step_image()  # a strong edge in IR at full resolution, none in the visible
    cond = _cond(ir, torch.zeros_like(ir))
    weights = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(4)) * 0.3

    def decode(z: torch.Tensor) -> torch.Tensor:  # a small differentiable decoder: conv, then x4 upsampling
        up = torch.nn.functional.conv2d(z, weights[:1], padding=1)
        return torch.sigmoid(torch.nn.functional.interpolate(up, scale_factor=4, mode="bilinear"))

    z = torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(5)) * 0.2 - 0.1
    image_energy = lambda zz: energies(2 * decode(zz) - 1, cond)["structure"]  # noqa: E731
    with torch.inference_mode():  # as the engine runs it
        assert torch.equal(guide_decoded(z, decode, cond, steps=0), z)
        out = guide_decoded(z, decode, cond, steps=3)
        assert image_energy(out) < image_energy(z)
        assert out.abs().max() <= 1.0


@pytest.mark.parametrize("shape", [(2, 1, 13, 17), (1, 1, 2, 3), (1, 1, 48, 64)])
def test_cpu_kernels_match_the_torch_definitions(shape):
    gen = torch.Generator().manual_seed(6)
    ir01, vis01 = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
    with torch.inference_mode():  # as the engine runs them
        cond = structure_inputs(ir01, vis01)
        torch.testing.assert_close(cond["g_max"], g_max_torch(ir01, vis01), atol=1e-6, rtol=1e-5)
        cond["m_stru"] = (torch.rand(shape, generator=gen) > 0.3).float()  # every kind of pixel, at any size
        x = torch.rand(shape[0], 2, *shape[2:], generator=gen) * 2 - 1  # two image channels against one g_max
        grad = PhysicsGuide("structure", 1.0, timesteps=(0,), channels=2)(x, 0, cond) - x
    torch.testing.assert_close(grad, (-structure_grad_torch(x, cond)).clamp(-1 - x, 1 - x), atol=1e-6, rtol=1e-5)
    assert grad.abs().max() > 0.01  # the energy has a gradient here: the comparison is not of two zeros


def test_guide_inputs_of_a_batch_are_those_of_each_pair():
    gen = torch.Generator().manual_seed(8)
    ir01, vis01 = torch.rand(2, 1, 16, 24, generator=gen), torch.rand(2, 1, 16, 24, generator=gen)
    ir01[1] *= 0.3  # a dark pair beside a bright one: means and masks are per image
    batch = guide_inputs(ir01, vis01, (4, 6))
    for b in range(2):
        alone = guide_inputs(ir01[b:b + 1], vis01[b:b + 1], (4, 6))
        for key, value in alone.items():
            torch.testing.assert_close(batch[key][b:b + 1], value, msg=key)


def test_the_heat_energy_counts_both_directions():
    rows = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 1, 8, 8) * 0.1  # varies down the image only
    assert energies(rows, {"m_heat": 0, "ir": 0, "vis": 0, "m_vis": 0, **structure_inputs(rows, rows)})["heat"] \
        == pytest.approx(0.5 * 0.01)
    cols = rows.transpose(-1, -2)
    assert energies(cols, {"m_heat": 0, "ir": 0, "vis": 0, "m_vis": 0, **structure_inputs(cols, cols)})["heat"] \
        == pytest.approx(0.5 * 0.01)


def _tiny_decoder(seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable stand-in for the decoder: a 2-channel latent at H/4 to an image in [0, 1] at H."""
    weights = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(seed)) * 0.3

    def decode(z: torch.Tensor) -> torch.Tensor:
        up = torch.nn.functional.conv2d(z, weights, padding=1)
        return torch.sigmoid(torch.nn.functional.interpolate(up, scale_factor=4, mode="bilinear"))

    return decode


def test_a_decoded_guide_step_is_the_gradient_of_the_image_energy_and_stays_in_range():
    ir = _step_image()
    cond = structure_inputs(ir, torch.zeros_like(ir))
    decode = _tiny_decoder(4)
    z = torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(5)) * 0.2 - 0.1
    zg = z.clone().requires_grad_(True)
    x = 2 * decode(zg) - 1  # the energy is measured on the image in the guides' range
    step = torch.autograd.grad(x, zg, structure_grad_torch(x.detach(), cond))[0]  # dE/dx (closed form) back to z
    torch.testing.assert_close(guide_decoded(z, decode, cond, steps=1, lam=0.1), z - 0.1 * step, atol=1e-5, rtol=1e-4)
    far = guide_decoded(z, decode, cond, steps=1, lam=1e3)  # a step far beyond the latent's range is clamped to it
    assert far.abs().max() == 1.0 and (z - 1e3 * step).abs().max() > 1


def test_the_structure_energy_counts_only_the_masked_pixels():
    x = _step_image() * 2 - 1
    cond = {"g_max": torch.zeros_like(x), "m_stru": torch.zeros_like(x)}
    assert structure_energy(x, cond) == 0.0  # the edge is strong, but nowhere the mask looks
    cond["m_stru"][..., 3, 8] = 1.0  # one pixel on the edge: G = sqrt((2 / 8 * 4)^2 + 1e-6) there
    assert structure_energy(x, cond) == pytest.approx(0.5 * (1.0 + 1e-6) / 256)


def test_the_masks_are_the_documented_thresholds():
    """``M_stru = [G_max > 1.5 mean(G_max)]``, ``M_heat = [box3(IR') > mean(IR')]``, ``M_vis = [|lap(VIS)| > mean]``,
    each per image (module docstring)."""
    gen = torch.Generator().manual_seed(10)
    ir01, vis01 = torch.rand(1, 1, 24, 32, generator=gen), torch.rand(1, 1, 24, 32, generator=gen)
    cond = guide_inputs(ir01, vis01, (24, 32))
    g_max = g_max_torch(ir01, vis01)
    lap_vis = laplacian(vis01 * 2 - 1).abs()
    for key, expected in (("m_stru", g_max > 1.5 * g_max.mean()),
                          ("m_heat", box_filter(cond["ir"], 3) > cond["ir"].mean()),
                          ("m_vis", lap_vis > lap_vis.mean())):
        assert 0 < int(expected.sum()) < expected.numel(), key  # both kinds of pixel: the threshold matters
        torch.testing.assert_close(cond[key], expected.float(), msg=key)


def test_sources_are_averaged_down_to_the_latent_size():
    checker = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2  # finest texture: mean 0.5 per 2x2
    cond = guide_inputs(checker.view(1, 1, 8, 8).float(), torch.zeros(1, 1, 8, 8), (4, 4))
    torch.testing.assert_close(cond["ir"], torch.zeros(1, 1, 4, 4))  # 0.5 in 0..1 is 0 in the latent's range
    torch.testing.assert_close(cond["vis"], torch.full((1, 1, 4, 4), -1.0))


def test_sources_reach_the_guides_as_the_means_of_each_latent_pixels_eight_pixel_block():
    """The latent is H/8: a source sampled near each block's centre (bilinear) drops a warm spot or an edge that does
    not cover it, and the consistency guide then pulls that latent pixel toward a cold one."""
    ir = torch.zeros(1, 1, 16, 24)
    ir[..., 1:3, 9:11] = 1.0  # a 2x2 hot spot in the latent pixel (0, 1), away from its block's centre
    vis = torch.rand(1, 1, 16, 24, generator=torch.Generator().manual_seed(17))
    cond = guide_inputs(ir, vis, (2, 3))
    torch.testing.assert_close(cond["ir"][0, 0, 0, 1], torch.tensor(4 / 64 * 2 - 1))
    torch.testing.assert_close(cond["ir"], torch.nn.functional.avg_pool2d(ir, 8) * 2 - 1)
    torch.testing.assert_close(cond["vis"], torch.nn.functional.avg_pool2d(vis, 8) * 2 - 1)


@pytest.mark.parametrize(("mask", "weight"), [("m_heat", 0.6), ("m_vis", 0.4)])
def test_consistency_weighs_ir_0_6_and_the_visible_0_4(mask, weight):
    ones, zeros = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    cond = {"ir": ones, "vis": ones, "m_heat": zeros, "m_vis": zeros, mask: ones}
    out = PhysicsGuide("consistency", 0.5, timesteps=(0,))(zeros, 0, cond)
    torch.testing.assert_close(out, torch.full_like(out, 0.5 * weight))  # x - lam * w (x - 1) at x = 0
    assert energies(zeros, {**cond, **structure_inputs(zeros, zeros)})["consistency"] == pytest.approx(0.5 * weight)


@pytest.mark.parametrize("kind", ["heat", "structure", "consistency"])
def test_each_guide_step_follows_the_gradient_of_its_energy(kind):
    """The closed-form ``dE/dx`` of each operator against the energy :func:`energies` reports: a central difference
    along a random direction (exact for the quadratic heat and consistency energies) that leaves the 2-pixel border
    alone, where the structure step's adjoint is the zero-border one, not that of the replicate padding."""
    gen = torch.Generator().manual_seed(11)
    n = 12
    cond = guide_inputs(torch.rand(1, 1, n, n, generator=gen), torch.rand(1, 1, n, n, generator=gen), (n, n))
    x = torch.rand(1, 1, n, n, generator=gen) - 0.5
    v = torch.zeros(1, 1, n, n)
    v[..., 2:-2, 2:-2] = torch.randn(1, 1, n - 4, n - 4, generator=gen)
    lam = 1e-3  # small: the step is not clamped
    grad = (x - PhysicsGuide(kind, lam, timesteps=(0,))(x, 0, cond)) / lam  # dE/dx of the energy summed over pixels
    h = 1e-3
    slope = (energies(x + h * v, cond)[kind] - energies(x - h * v, cond)[kind]) / (2 * h)
    pixels = n * (n - 1) if kind == "heat" else n * n  # energies() reports means: of the n (n - 1) differences each way
    assert float((grad * v).sum()) / pixels == pytest.approx(slope, rel=1e-2)


def test_a_guide_step_keeps_the_image_channels_in_the_latent_range():
    x = torch.full((1, 2, 6, 6), 0.9)
    x[..., :, 3:] = -0.9
    cond = {"ir": torch.ones(1, 1, 6, 6), "vis": torch.ones(1, 1, 6, 6), "m_heat": torch.ones(1, 1, 6, 6),
            "m_vis": torch.ones(1, 1, 6, 6)}
    out = PhysicsGuide("consistency", 10.0, timesteps=(0,))(x, 0, cond)  # a step far past +1
    assert out[:, :1].max() == 1.0 and out[:, :1].min() >= -1.0


def test_default_guides_decay_at_the_rate_they_are_given():
    guides = default_guides((999, 499), gamma=2.0).guides
    assert [g.weight(999) for g in guides] == pytest.approx([lam * math.exp(-2.0 / 2) for lam in LAMBDAS])
    four = default_guides((999, 749, 499, 249)).guides  # by default at the method's gamma = 5
    assert [g.weight(999) for g in four] == pytest.approx([lam * math.exp(-5.0 * 3 / 4) for lam in LAMBDAS])


def test_the_energies_read_only_the_image_channels():
    gen = torch.Generator().manual_seed(12)
    cond = _cond(torch.rand(1, 1, 8, 8, generator=gen), torch.rand(1, 1, 8, 8, generator=gen))
    x = torch.rand(1, 3, 8, 8, generator=gen) * 2 - 1  # the other channels are no image: they must not count
    assert energies(x, cond) == energies(x[:, :1], cond)
    assert energies(x, cond, channels=2) != energies(x[:, :1], cond)


def test_a_composed_guide_applies_its_guides_in_the_order_given():
    """Heat then consistency is not consistency then heat: the composition runs its guides first to last (the default
    guides' order, heat, structure, consistency, is the method's)."""
    gen = torch.Generator().manual_seed(13)
    cond = _cond(torch.rand(1, 1, 12, 12, generator=gen), torch.rand(1, 1, 12, 12, generator=gen))
    x = torch.rand(1, 1, 12, 12, generator=gen) * 2 - 1
    heat, con = PhysicsGuide("heat", 0.2, timesteps=(0,)), PhysicsGuide("consistency", 0.5, timesteps=(0,))
    assert not torch.allclose(con(heat(x, 0, cond), 0, cond), heat(con(x, 0, cond), 0, cond))
    torch.testing.assert_close(ComposedGuide((heat, con))(x, 0, cond), con(heat(x, 0, cond), 0, cond))


def test_decoded_guide_steps_follow_each_other():
    """``steps=2`` is two single steps, each from where the one before left the latent."""
    ir = _step_image()
    cond = structure_inputs(ir, torch.zeros_like(ir))
    decode = _tiny_decoder(14)
    z = torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(15)) * 0.2 - 0.1
    once = guide_decoded(z, decode, cond, steps=1)
    assert not torch.allclose(once, z)
    torch.testing.assert_close(guide_decoded(z, decode, cond, steps=2), guide_decoded(once, decode, cond, steps=1))


def test_a_structure_step_keeps_the_latents_dtype():
    """The CPU kernels compute in float32; a bfloat16 latent (an autocast run) comes back bfloat16, image channels
    and the others alike."""
    gen = torch.Generator().manual_seed(16)
    cond = structure_inputs(torch.rand(1, 1, 8, 8, generator=gen), torch.rand(1, 1, 8, 8, generator=gen))
    x = (torch.rand(1, 2, 8, 8, generator=gen) * 2 - 1).to(torch.bfloat16)
    assert PhysicsGuide("structure", 1.0, timesteps=(0,))(x, 0, cond).dtype == torch.bfloat16
