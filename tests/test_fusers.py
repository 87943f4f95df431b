import re

import cv2
import numpy as np
import pytest

from streamfuse.checks import parse_section
from streamfuse.fusers import BaselineConfig, FuseConfig
from streamfuse.inference import EngineConfig, HCLFuseConfig
from streamfuse.processor import build_fuser


@pytest.fixture
def pair(rng):
    ir = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    vis = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    return ir, vis


def test_max_and_average(pair):
    ir, vis = pair
    np.testing.assert_array_equal(build_fuser(FuseConfig(name="max")).fuse(ir, vis), np.maximum(ir, vis))
    np.testing.assert_allclose(build_fuser(FuseConfig(name="average")).fuse(ir, vis), (ir / 2.0 + vis / 2.0), atol=1e-4)


def test_laplacian_keeps_strongest_detail_and_identity(pair):
    ir, _ = pair
    lap = build_fuser(FuseConfig(name="laplacian"))
    np.testing.assert_allclose(lap.fuse(ir, ir), ir.astype(np.float32), atol=1e-3)  # same input -> same image
    flat = np.full_like(ir, 100)
    out = lap.fuse(ir, flat)
    assert np.corrcoef(out.ravel(), ir.ravel())[0, 1] > 0.9  # the textured source's detail wins


def test_sharpen_raises_gradients(pair):
    ir, vis = pair
    plain = build_fuser(FuseConfig(name="max")).fuse(ir, vis)
    sharp = build_fuser(FuseConfig(name="max"), baseline=BaselineConfig(sharpen=1.0))
    assert sharp.name == "max+unsharp1"
    assert np.abs(np.diff(sharp.fuse(ir, vis), axis=1)).mean() > np.abs(np.diff(plain, axis=1)).mean()


def test_contrast_stretches_around_the_mean(pair):
    ir, vis = pair
    plain = build_fuser(FuseConfig(name="max")).fuse(ir, vis)
    stretched = build_fuser(FuseConfig(name="max"), baseline=BaselineConfig(contrast=1.5))
    assert stretched.name == "max+contrast1.5"
    out = stretched.fuse(ir, vis)
    assert out.mean() == pytest.approx(plain.mean(), abs=1e-3)
    np.testing.assert_allclose(out - out.mean(), 1.5 * (plain - plain.mean()), atol=1e-3)
    with pytest.raises(ValueError, match="contrast"):
        BaselineConfig(contrast=0.0)


def test_unknown_fuser_and_bad_ranges():
    allowed = "hclfuse | average | laplacian | max | rule"
    with pytest.raises(ValueError, match=re.escape(f"name='nope' is out of range; allowed: {allowed}")):
        FuseConfig(name="nope")
    with pytest.raises(ValueError, match="hclfuse: steps=0 is out of range; allowed: 1..20"):
        parse_section(HCLFuseConfig, {"steps": 0}, "hclfuse")
    with pytest.raises(ValueError, match="device='gpu'"):
        parse_section(EngineConfig, {"device": "gpu"}, "engine")


@pytest.mark.parametrize("shape", [(120, 160), (20, 30)])  # the small one is narrower than the base blur's radius
def test_rule_matches_the_training_target(rng, shape):
    torch = pytest.importorskip("torch")
    from streamfuse.model.losses import LossConfig, fusion_target

    scene = cv2.GaussianBlur(rng.uniform(0, 255, shape), (0, 0), 2.0)
    ir = np.clip(scene * 1.5 - 60 + rng.normal(0, 4, shape), 0, 255).astype(np.uint8)
    vis = np.clip(255 - scene + rng.normal(0, 8, shape), 0, 255).astype(np.uint8)
    to01 = [torch.from_numpy(x / 255.0).float().view(1, 1, *shape) for x in (ir, vis)]
    target = fusion_target(*to01, LossConfig())[0, 0].numpy() * 255  # the training's own settings, as the rule's
    rule = build_fuser(FuseConfig(name="rule"))
    out = rule.fuse(ir, vis)
    assert rule.name == "rule" and out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(out, target, atol=0.01)  # same kernels and borders: float32 rounding only


def test_rule_keeps_the_brighter_base_and_the_stronger_detail():
    flat = np.full((64, 64), 60, np.uint8)
    textured = flat.copy()
    textured[::4] = 200  # stripes: all the gradient energy is in this source
    out = build_fuser(FuseConfig(name="rule")).fuse(textured, flat)
    blurred = cv2.GaussianBlur(textured.astype(np.float32), (49, 49), 8.0)
    detail = textured - blurred
    inner = (slice(16, -16), slice(16, -16))  # away from the border, where the blur reflects
    np.testing.assert_allclose(out[inner], (blurred + 1.2 * detail)[inner], atol=0.5)
    same = build_fuser(FuseConfig(name="rule")).fuse(textured, textured)
    np.testing.assert_allclose(same, blurred + 1.2 * detail, atol=0.5)  # one source: its base and detail x 1.2


@pytest.mark.parametrize("name", ["max", "average", "laplacian", "rule"])
def test_a_baseline_refuses_what_is_not_two_uint8_images_of_one_size_in_one_line(pair, name):
    """As hclfuse does: 16-bit IR counts fused as they were came out white, floats on 0..1 black, a colour IR image
    a numpy broadcasting error."""
    ir, vis = pair
    fuser = build_fuser(FuseConfig(name=name))
    for bad_ir, bad_vis in [(ir.astype(np.uint16) * 200, vis), (ir / 255.0, vis), (np.dstack([ir] * 3), vis),
                            (ir, vis[:40]), (ir, vis / 255.0), (ir, vis.astype(np.uint16) * 200)]:
        with pytest.raises(ValueError, match=rf"^{name} needs two \(H, W\) uint8 images of one size, got IR "):
            fuser.fuse(bad_ir, bad_vis)


def test_laplacian_keeps_the_brighter_base_of_two_flat_sources():
    # without it, a base averaged instead of maxed: a hot IR target on a dark scene is dimmed by half in the baseline
    ir, vis = np.full((64, 96), 200, np.uint8), np.full((64, 96), 50, np.uint8)
    np.testing.assert_allclose(build_fuser(FuseConfig(name="laplacian")).fuse(ir, vis), 200.0, atol=1e-3)


def test_laplacian_is_the_documented_five_level_pyramid_rule(pair):
    # without it, a pyramid of another depth (or another selection rule) is published as the Laplacian baseline
    ir, vis = (x.astype(np.float32) for x in pair)

    def pyramid(img):
        gauss = [img]
        for _ in range(4):
            gauss.append(cv2.pyrDown(gauss[-1]))
        return [g - cv2.pyrUp(n, dstsize=g.shape[::-1]) for g, n in zip(gauss, gauss[1:])] + [gauss[-1]]
    pa, pb = pyramid(ir), pyramid(vis)
    assert len(pa) == 5 and pa[-1].shape == (3, 4)
    out = np.maximum(pa[-1], pb[-1])
    for a, b in reversed(list(zip(pa[:-1], pb[:-1]))):
        out = cv2.pyrUp(out, dstsize=a.shape[::-1]) + np.where(np.abs(a) >= np.abs(b), a, b)
    np.testing.assert_allclose(build_fuser(FuseConfig(name="laplacian")).fuse(*pair), out, atol=1e-3)


def test_contrast_below_one_flattens_around_the_mean(pair):
    # without it, contrast=0.75 (allowed: 0.5 .. 3) would be ignored and the row would be the plain baseline's
    ir, vis = pair
    plain = build_fuser(FuseConfig(name="max")).fuse(ir, vis)
    flattened = build_fuser(FuseConfig(name="max"), baseline=BaselineConfig(contrast=0.75))
    assert flattened.name == "max+contrast0.75"  # the name the published frames and the evaluation rows carry
    out = flattened.fuse(ir, vis)
    np.testing.assert_allclose(out - out.mean(), 0.75 * (plain - plain.mean()), atol=1e-3)


def test_sharpen_is_an_unsharp_mask_of_sigma_1_5(pair):
    # without it, "sharpen: unsharp-mask amount (sigma 1.5)" would be a different filter from the one documented
    ir, _ = pair
    y = ir.astype(np.float32)
    sharp = build_fuser(FuseConfig(name="max"), baseline=BaselineConfig(sharpen=0.5))
    assert sharp.name == "max+unsharp0.5"  # the amount as given, not rounded to a whole one
    np.testing.assert_allclose(sharp.fuse(ir, ir), y + 0.5 * (y - cv2.GaussianBlur(y, (0, 0), 1.5)), atol=1e-3)


def test_sharpen_and_contrast_together_stretch_the_sharpened_output(pair):
    # both knobs set: the contrast stretch acts on the sharpened image, around its mean; without it one of the two
    # would be dropped (or the stretch applied first, around the mean of an image the output is not)
    ir, vis = pair
    sharp = build_fuser(FuseConfig(name="max"), baseline=BaselineConfig(sharpen=1.0)).fuse(ir, vis)
    both = build_fuser(FuseConfig(name="max"), baseline=BaselineConfig(sharpen=1.0, contrast=1.5))
    assert both.name == "max+unsharp1+contrast1.5"
    out = both.fuse(ir, vis)
    np.testing.assert_allclose(out, 1.5 * (sharp - sharp.mean()) + sharp.mean(), atol=1e-3)


@pytest.mark.parametrize("name", ["max", "average", "laplacian", "rule"])
def test_a_baseline_is_announced_under_the_name_it_is_configured_by(name):
    # the publisher announces fuser.name and the evaluation tables list it: it must be the fuse.name a user sets
    assert build_fuser(FuseConfig(name=name)).name == name


def test_the_baseline_settings_accept_their_limits_and_refuse_past_them():
    # the limits themselves are allowed (sharpen 0..10, contrast 0.5..3), a negative sharpen is a blur and refused
    for limits in ({"sharpen": 10, "contrast": 3.0}, {"sharpen": 0, "contrast": 0.5}):
        BaselineConfig(**limits)
    for bad in ({"sharpen": -0.5}, {"sharpen": 10.5}, {"contrast": 0.49}, {"contrast": 3.01}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BaselineConfig(**bad)
