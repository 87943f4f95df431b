"""Training data: registered IR/visible pairs from the training sets, OT-aligned, and random crops of them.

Reads every pair under the data folder's training sets (``SETS``), never msrs/test, which is kept for evaluation.
Each IR image is aligned to its visible image with the same OT lookup table as at inference (:mod:`streamfuse.align`,
computed on the whole frame), then random crops and flips feed the net.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from streamfuse.align import AlignConfig, align, histogram, identity_lut

__all__ = ["DEFAULT_DATA", "SETS", "PairSampler", "load_pairs"]

#: The shared data folder: ``STREAMFUSE_DATA``, else ``../shared/data`` from the working directory.
DEFAULT_DATA = Path(os.environ.get("STREAMFUSE_DATA", Path("..") / "shared" / "data"))
SETS = ("msrs/train", "roadscene", "llvip/train", "llvip/test", "sequences/*")  # msrs/test is for evaluation only
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp")


def load_pairs(data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """All (name, IR grey uint8, visible Y uint8) pairs of the training sets under ``data``."""
    pairs = []
    for pattern in SETS:
        for root in sorted(data.glob(pattern)):
            for ir_path in sorted((root / "ir").glob("*")):
                vis_path = root / "vi" / ir_path.name
                if ir_path.suffix.lower() not in IMAGE_EXT or not vis_path.exists():
                    continue
                ir = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE)  # LLVIP IR is 3-channel: read as grey
                vis = cv2.imread(str(vis_path), cv2.IMREAD_COLOR)
                if ir is None or vis is None or ir.shape != vis.shape[:2]:
                    raise ValueError(f"unreadable or mismatched pair: {ir_path} / {vis_path}")
                pairs.append((str(ir_path.relative_to(data)), ir, cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb)[..., 0]))
    if not pairs:
        raise FileNotFoundError(f"no training pairs (<set>/ir/<name> + <set>/vi/<name>) under {data}")
    return pairs


class PairSampler:
    """Random crops and flips of OT-aligned pairs; every image weighs the same, whatever its size.

    Args:
        pairs: from :func:`load_pairs`.
        align_cfg: OT settings (the same as at inference).
        crop: square crop side (px); smaller images are upscaled to fit.
        rng: numpy random generator.
    """

    def __init__(self, pairs: list[tuple[str, np.ndarray, np.ndarray]], align_cfg: AlignConfig, crop: int,
                 rng: np.random.Generator):
        self.crop, self.rng = crop, rng
        self.items = []
        for _, ir, vis in pairs:
            scale = max(1.0, crop / min(ir.shape))
            if scale > 1.0:
                size = (math.ceil(ir.shape[1] * scale), math.ceil(ir.shape[0] * scale))
                ir, vis = cv2.resize(ir, size), cv2.resize(vis, size)
            lut = align(histogram(ir), histogram(vis), align_cfg).lut if align_cfg.enabled else identity_lut()
            self.items.append(np.stack([lut[ir], vis / np.float32(255), ir / np.float32(255)]))

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ir01, vis01, ir_raw01)``, each (n, 1, crop, crop) float32; ``ir01`` is the aligned IR'."""
        crops = []
        for i in self.rng.integers(len(self.items), size=n):
            item = self.items[i]  # (3, H, W): IR', VIS, raw IR
            y = self.rng.integers(item.shape[1] - self.crop + 1)
            x = self.rng.integers(item.shape[2] - self.crop + 1)
            c = item[:, y:y + self.crop, x:x + self.crop]
            if self.rng.random() < 0.5:
                c = c[:, :, ::-1]
            if self.rng.random() < 0.2:
                c = c[:, ::-1]
            crops.append(c)
        b = torch.from_numpy(np.ascontiguousarray(np.stack(crops)))  # (n, 3, crop, crop)
        return b[:, 0:1], b[:, 1:2], b[:, 2:3]
