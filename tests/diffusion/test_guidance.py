"""Physics guides: each operator's effect on a crafted input, weights, composition, range."""

from __future__ import annotations

import math

import pytest
import torch

from streamfuse.diffusion.guidance import ComposedGuide, PhysicsGuide, default_guides, guide_inputs, laplacian


def _step_image() -> torch.Tensor:
    x = torch.zeros(1, 1, 16, 16)
    x[..., :, 8:] = 1.0
    return x


def _cond(ir01: torch.Tensor, vis01: torch.Tensor) -> dict:
    return guide_inputs(ir01, vis01, ir01.shape[-2:])


def test_weight_decays_with_t():
    g = PhysicsGuide("heat", 0.05, gamma=5.0)
    assert g.weight(0) == pytest.approx(0.05)
    assert g.weight(1000) == pytest.approx(0.05 * math.exp(-5))


def test_heat_smooths():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = PhysicsGuide("heat", 0.2)(x, 0, {})
    assert laplacian(out).abs().mean() < laplacian(x).abs().mean()
    torch.testing.assert_close(out.mean(), x.mean(), atol=1e-2, rtol=0)  # heat flow conserves mass (approx. at borders)


def test_structure_raises_gradients_where_masked():
    ir = _step_image()
    cond = _cond(ir, torch.zeros_like(ir))
    flat = torch.zeros(1, 1, 16, 16)
    out = PhysicsGuide("structure", 0.5)(flat, 0, cond)
    m = cond["m_stru"].bool()
    assert m.any() and (out[m] > 0).all()
    torch.testing.assert_close(out[~m], flat[~m])


def test_consistency_pulls_toward_sources():
    ir = _step_image()
    cond = _cond(ir, torch.zeros_like(ir))
    x = torch.full((1, 1, 16, 16), -1.0)
    out = PhysicsGuide("consistency", 0.5)(x, 0, cond)
    target = cond["consistency"]
    assert (out - target).abs().mean() < (x - target).abs().mean()


def test_zero_weight_is_identity_and_only_image_channels_change():
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = _cond(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    torch.testing.assert_close(default_guides(scale=0.0)(x, 0, cond), x)
    out = default_guides(channels=1)(x, 0, cond)
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
    assert cond["consistency"].min() >= -1.0 and cond["consistency"].max() <= 1.0
    assert torch.isfinite(cond["g_max"]).all()
