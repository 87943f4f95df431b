"""The shipped model on frames smaller than its latent grid: a flat frame stays at the level a large one fuses to."""

from __future__ import annotations

import numpy as np
import pytest

from streamfuse.inference import EngineConfig, HCLFuseConfig
from streamfuse.model.fuser import HCLFuser, build_hclfuse


@pytest.fixture(scope="module")
def shipped() -> HCLFuser:
    return build_hclfuse(HCLFuseConfig(), EngineConfig(device="cpu", threads=1))


def _flat(shape: tuple[int, int], level: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(shape, level, np.uint8), np.full(shape, level, np.uint8)


@pytest.mark.parametrize("side", [1, 3, 8, 9, 16])
def test_a_frame_smaller_than_the_latent_grid_keeps_black_black_and_white_white(shipped, side):
    # padded by replication to one latent pixel (or a few, in the corner of their padding), frames of 16x16 or less
    # fused black as up to 19 grey and white as 239-240, where a large white frame is 253
    black = shipped.fuse(*_flat((side, side), 0))
    white = shipped.fuse(*_flat((side, 2 * side), 255))
    large_white = shipped.fuse(*_flat((128, 128), 255))[32:-32, 32:-32].mean()
    assert black.shape == (side, side) and white.shape == (side, 2 * side)
    assert black.max() < 2.0 and np.abs(white - large_white).max() < 2.0, (black.max(), white.min(), large_white)
