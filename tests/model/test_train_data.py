"""Training batches (:class:`streamfuse.train.data.PairSampler`): square crops of every pair, whatever its size, with
the OT-aligned IR, the visible luma and the raw IR in their places."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from streamfuse.align import AlignConfig
from streamfuse.train import data
from streamfuse.train.data import PairSampler


def test_a_batch_crops_pairs_as_large_as_the_crop_or_smaller_with_the_aligned_ir_first(monkeypatch):
    lut = (np.arange(256) / 255) ** 2  # an alignment that darkens IR: IR' = raw^2, told apart from the raw IR
    monkeypatch.setattr(data, "align", lambda ir_hist, vis_hist, cfg: SimpleNamespace(lut=lut.astype(np.float32)))
    rng = np.random.default_rng(0)
    pairs = [(name, rng.integers(1, 255, size, np.uint8), rng.integers(0, 256, size, np.uint8))
             for name, size in (("as_large", (48, 64)), ("smaller", (40, 56)))]  # 40 rows: upscaled to 48
    sampler = PairSampler(pairs, AlignConfig(), crop=48, rng=np.random.default_rng(1))
    ir01, vis01, raw01 = sampler.batch(16)
    assert ir01.shape == vis01.shape == raw01.shape == (16, 1, 48, 48)
    np.testing.assert_allclose(ir01.numpy(), raw01.numpy() ** 2, atol=1e-6)
    assert 0 < float(raw01.min()) and float(raw01.max()) < 1
