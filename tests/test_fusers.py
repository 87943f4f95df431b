import numpy as np
import pytest

from streamfuse.config import parse_section
from streamfuse.fusers import FuseConfig, build_fuser


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
    sharp = build_fuser(FuseConfig(name="max", sharpen=1.0))
    assert sharp.name == "max+unsharp1"
    assert np.abs(np.diff(sharp.fuse(ir, vis), axis=1)).mean() > np.abs(np.diff(plain, axis=1)).mean()


def test_contrast_stretches_around_the_mean(pair):
    ir, vis = pair
    plain = build_fuser(FuseConfig(name="max")).fuse(ir, vis)
    stretched = build_fuser(FuseConfig(name="max", contrast=1.5))
    assert stretched.name == "max+contrast1.5"
    out = stretched.fuse(ir, vis)
    assert out.mean() == pytest.approx(plain.mean(), abs=1e-3)
    np.testing.assert_allclose(out - out.mean(), 1.5 * (plain - plain.mean()), atol=1e-3)
    with pytest.raises(ValueError, match="contrast"):
        FuseConfig(name="max", contrast=0.0)


def test_unknown_fuser_and_bad_ranges():
    with pytest.raises(ValueError, match="name='nope' is out of range; allowed: hclfuse | average | laplacian | max"):
        FuseConfig(name="nope")
    with pytest.raises(ValueError, match="fuse: steps=0 is out of range; allowed: 1..20"):
        parse_section(FuseConfig, {"steps": 0}, "fuse")
    with pytest.raises(ValueError, match="device='gpu'"):
        parse_section(FuseConfig, {"device": "gpu"}, "fuse")
