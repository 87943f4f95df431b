"""Fixtures of the tools/ tests (``tool``, which loads a script as a module, is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HCLFuse weights of an untrained net (default architecture, seeded): the fuser's plumbing without the shipped
    file, so tools can be tested while the shipped weights change."""
    torch = pytest.importorskip("torch")
    from streamfuse.model import HCLFuseNet, ModelConfig, save_weights

    path = tmp_path_factory.mktemp("weights") / "random.pt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_weights(path, HCLFuseNet(ModelConfig()))
    return path


@pytest.fixture
def pairs(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """Three 45x70 pairs: a grey visible PNG, a colour visible JPEG, a 3-channel IR; one visible without IR."""
    ir_dir, vis_dir = tmp_path / "ir", tmp_path / "vi"
    ir_dir.mkdir()
    vis_dir.mkdir()
    for i, brightness in enumerate((20, 120, 220)):
        scene = cv2.GaussianBlur(rng.uniform(0, 255, (45, 70)), (0, 0), 1.5)
        ir = np.clip(scene * 0.8 + 30, 0, 255).astype(np.uint8)
        vis = np.clip(scene[::-1] * 0.5 + brightness - 60, 0, 255).astype(np.uint8)
        if i == 2:
            cv2.imwrite(str(ir_dir / f"p{i}.png"), cv2.merge([ir, ir, ir]))  # LLVIP-style 3-channel IR
        else:
            cv2.imwrite(str(ir_dir / f"p{i}.png"), ir)
        if i == 1:
            cv2.imwrite(str(vis_dir / f"p{i}.jpg"), cv2.merge([vis, vis // 2, vis]))  # colour, other extension
        else:
            cv2.imwrite(str(vis_dir / f"p{i}.png"), vis)
    cv2.imwrite(str(vis_dir / "orphan.png"), vis)
    return ir_dir, vis_dir
