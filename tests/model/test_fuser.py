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


def test_warm_up_runs_the_engine_once_outside_every_stream(tmp_path, tiny, monkeypatch):
    # a live run warms the fuser up before capture starts: the engine's first call (a CUDA graph's capture) must not
    # fall on a camera's first frame, and must leave no stream's OT plan behind
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(tiny))
    made = [build_hclfuse(HCLFuseConfig(weights=str(path), steps=2), EngineConfig(device="cpu", threads=1),
                          AlignConfig()) for _ in range(2)]
    shapes, run = [], made[0].engine.run
    monkeypatch.setattr(made[0].engine, "run", lambda ir, *a: shapes.append(ir.shape) or run(ir, *a))
    made[0].warm_up(37, 50)
    assert shapes == [(1, 37, 50)] and made[0].stats()["ot_misses"] == 0
    rng = np.random.default_rng(0)
    ir, vis = (rng.integers(0, 256, (37, 50), dtype=np.uint8) for _ in range(2))
    np.testing.assert_array_equal(made[0].fuse(ir, vis, "cam0"), made[1].fuse(ir, vis, "cam0"))
