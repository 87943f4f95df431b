"""The hclfuse Fuser: padding, determinism, OT cache, fixed noise, batching, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamfuse.align import AlignConfig
from streamfuse.inference import EngineConfig, HCLFuseConfig
from streamfuse.model.fuser import build_hclfuse
from streamfuse.model.net import HCLFuseNet
from streamfuse.model.weights import FORMAT_VERSION, save_weights


def test_fuser_on_cpu(tmp_path, tiny):
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(tiny))
    fuser = build_hclfuse(HCLFuseConfig(weights=str(path), steps=2), EngineConfig(device="cpu", threads=1),
                          AlignConfig())
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (37, 50), dtype=np.uint8)  # not a multiple of the stride: the engine pads
    vis = rng.integers(0, 256, (37, 50), dtype=np.uint8)
    out = fuser.fuse(ir, vis, "cam0")
    assert out.shape == (37, 50) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 255
    np.testing.assert_array_equal(fuser.fuse(ir, vis, "cam0"), out)  # static input -> identical output
    assert fuser.name == "hclfuse" and fuser.version.startswith(f"{FORMAT_VERSION}.0+")
    stats = fuser.stats()
    assert stats["ot_misses"] == 1 and stats["ot_hits"] == 1
    # the noise is the seed's and the frame size's, not the stream name's: a replay (another topic) fuses alike
    np.testing.assert_array_equal(fuser.fuse(ir, vis, "replay"), out)
    other_seed = build_hclfuse(HCLFuseConfig(weights=str(path), steps=2, seed=1), EngineConfig(device="cpu", threads=1),
                               AlignConfig())
    assert not torch.equal(fuser.noise(37, 50), other_seed.noise(37, 50))
    assert not np.array_equal(other_seed.fuse(ir, vis, "cam0"), out)  # the seed reaches the image
    batch = fuser.fuse_batch([ir, ir], [vis, vis], ["cam0", "cam0"])
    np.testing.assert_allclose(batch[0], out, atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        fuser.fuse(ir.astype(np.float32), vis)
