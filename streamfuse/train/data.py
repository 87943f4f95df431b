"""Training data: registered IR/visible pairs from the training sets, OT-aligned, and random crops of them.

Reads every pair under the data folder's training sets (``SETS``), never msrs/test, which is kept for evaluation; a
folder of one's own pairs (``ir/`` and ``vi/`` in it, as ``evaluate`` takes them) is read as one set.
Each IR image is aligned to its visible image with the same OT lookup table as at inference (:mod:`streamfuse.align`,
computed on the whole frame), then random crops and flips feed the net.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from streamfuse.align import AlignConfig, align, histogram, identity_lut
from streamfuse.bitdepth import To8Bit, is_image_name, read_8bit
from streamfuse.capture.palette import grey_first, warn_noted_stills
from streamfuse.eval_pairs import read_grey
from streamfuse.postprocess import vis_luma

__all__ = ["SETS", "DIGEST_VERSION", "PairSampler", "load_pairs", "data_digest", "data_record", "check_digest_version"]

log = logging.getLogger("train")

SETS = ("msrs/train", "roadscene", "llvip/train", "llvip/test", "sequences/*")  # msrs/test is for evaluation only
# how the pairs are read, kept beside the data digest: 1 (not kept) turned colour IR grey by OpenCV's decoder; 2 by the
# BT.601 luma that replay and evaluate take, so the net meets colour IR as it is trained on it (the shipped weights'
# data, LLVIP's three alike channels, reads the same pixels both ways)
DIGEST_VERSION = 2


def load_pairs(data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """All (name, IR grey uint8, visible Y uint8) pairs of the training sets under ``data``, or of ``data`` itself
    when it holds ``ir/`` and ``vi/``.

    Raises:
        FileNotFoundError: ``data`` is not a folder, or holds no pair.
        ValueError: one line naming the image that cannot be read, or the pair whose sizes differ.
    """
    if not data.is_dir():
        raise FileNotFoundError(f"no training pairs: the data folder {data} "
                                f"{'is not a folder' if data.exists() else 'does not exist'} (give another with "
                                "--data DIR or the STREAMFUSE_DATA environment variable)")
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    deep: list[Path] = []  # 16-bit images, reported once
    colour: list[tuple[Path, str]] = []  # colour IR images, reported once
    own = (data / "ir").is_dir() and (data / "vi").is_dir()
    for root in [data] if own else [root for pattern in SETS for root in sorted(data.glob(pattern))]:
        pairs += _set_pairs(root, data, deep, colour)
    warn_noted_stills(log, colour, len(pairs))
    if deep:
        log.warning("%d 16-bit images (first %s): brought to 8 bits as every reader does (IR stretched by its own "
                    "range, visible by its top 8 bits: streamfuse.bitdepth)", len(deep), deep[0])
    if not pairs:
        raise FileNotFoundError(f"no training pairs under {data}: training reads ir/<name> with vi/<name> there, "
                                f"or <set>/ir/<name> with <set>/vi/<name> for the sets {', '.join(SETS)}")
    return pairs


def data_digest(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """A short hash of the pairs' names and pixels: a resumed run is refused when its data changed."""
    digest = hashlib.sha1()
    for name, ir, vis in pairs:
        digest.update(f"{name}:{ir.shape}".encode())
        digest.update(ir.tobytes())
        digest.update(vis.tobytes())
    return digest.hexdigest()[:16]


def data_record(data: Path, pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> dict:
    """The data section of a run's settings: the folder, the pairs' count and their digest, with how they were read."""
    return {"folder": str(data), "pairs": len(pairs), "digest": data_digest(pairs), "digest_version": DIGEST_VERSION}


def check_digest_version(record: dict, now: dict) -> None:
    """ValueError (one line) where a run's settings ``record`` has a data digest of version 1 (no
    ``data.digest_version``) that differs from the one now (``now``: the settings of the resume): colour IR that
    the two lumas read apart, or data that changed; the two are told apart no further."""
    data, digest = record.get("data"), now["data"]["digest"]
    if not isinstance(data, dict) or "digest_version" in data or data.get("digest") in (None, digest):
        return
    raise ValueError(f"cannot resume: the run's pairs were read by an earlier version (data.digest {data['digest']!r}, "
                     f"colour IR turned grey by OpenCV's decoder, where this version takes the luma that replay and "
                     f"evaluate take) and read otherwise now (colour IR, or the data changed): resume with that "
                     f"version, or start another --out")


def _set_pairs(root: Path, data: Path, deep: list[Path],
               colour: list[tuple[Path, str]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The pairs of one set, by file name; names in only one of ir/ and vi/ are skipped with a warning; ``deep`` and
    ``colour`` gather the 16-bit images and the colour IR images."""
    ir_names, vis_names = _image_names(root / "ir"), _image_names(root / "vi")
    if alone := sorted(ir_names ^ vis_names):
        log.warning("%s: skipped the names in only one of ir/ and vi/: %d (first %s)", root, len(alone), alone[0])
    pairs = []
    for name in sorted(ir_names & vis_names):  # the order of the sorted ir/ listing: the batches depend on it
        ir_path, vis_path = root / "ir" / name, root / "vi" / name
        ir = _read_ir(ir_path, deep, colour)
        vis = _read_vis(vis_path, deep)
        if ir.shape != vis.shape[:2]:
            raise ValueError(f"pair {root}/{{ir,vi}}/{name} has different sizes: IR {ir.shape[1]}x{ir.shape[0]}, "
                             f"visible {vis.shape[1]}x{vis.shape[0]}; training needs registered pairs of one size")
        pairs.append((str(ir_path.relative_to(data)), ir, vis_luma(vis)))
    return pairs


def _image_names(folder: Path) -> set[str]:
    """File names with an image suffix in ``folder`` (none when it is missing), hidden ones (a Mac's ``._NAME``) not."""
    return {p.name for p in folder.glob("*") if is_image_name(p)}


def _read_vis(path: Path, deep: list[Path]) -> np.ndarray:
    """A visible image as BGR, as ``cv2.imread(path, cv2.IMREAD_COLOR)`` decodes an 8-bit one (a 16-bit one brought to
    8 bits as a still, :mod:`streamfuse.bitdepth`, and noted in ``deep``), or ValueError naming the file."""
    depth = To8Bit(ir=False)
    img = read_8bit(path, depth, cv2.IMREAD_COLOR)
    if depth.converted:
        deep.append(path)
    return img


def _read_ir(path: Path, deep: list[Path], colour: list[tuple[Path, str]]) -> np.ndarray:
    """An IR image as grey, read once as evaluate reads it: one in colour (LLVIP's three alike channels, or a
    false-colour palette, then noted in ``colour`` with the line that live capture and evaluate give) by the luma that
    replay and evaluate take (:data:`DIGEST_VERSION`)."""
    depth = To8Bit(ir=True)
    img = read_grey(path, depth, colour, grey_first("training"))
    if depth.converted:
        deep.append(path)
    return img


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
        # (IR uint8, visible uint8, OT table): crops are made float as they are drawn. Float planes of every pair
        # (12 bytes a pixel) took a training run on the full data to 2.2 GB; it peaks at 0.8 GB.
        self.items = []
        for _, ir, vis in pairs:
            scale = max(1.0, crop / min(ir.shape))
            if scale > 1.0:
                size = (math.ceil(ir.shape[1] * scale), math.ceil(ir.shape[0] * scale))
                ir, vis = cv2.resize(ir, size), cv2.resize(vis, size)
            lut = align(histogram(ir), histogram(vis), align_cfg).lut if align_cfg.enabled else identity_lut()
            self.items.append((ir, vis, lut))

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ir01, vis01, ir_raw01)``, each (n, 1, crop, crop) float32; ``ir01`` is the aligned IR'."""
        crops = []
        for i in self.rng.integers(len(self.items), size=n):
            ir, vis, lut = self.items[i]
            y = self.rng.integers(ir.shape[0] - self.crop + 1)
            x = self.rng.integers(ir.shape[1] - self.crop + 1)
            c = np.stack([ir[y:y + self.crop, x:x + self.crop], vis[y:y + self.crop, x:x + self.crop]])
            if self.rng.random() < 0.5:
                c = c[:, :, ::-1]
            if self.rng.random() < 0.2:
                c = c[:, ::-1]
            crops.append(np.stack([lut[c[0]], c[1] / np.float32(255), c[0] / np.float32(255)]))
        b = torch.from_numpy(np.stack(crops))  # (n, 3, crop, crop): IR', VIS, raw IR
        return b[:, 0:1], b[:, 1:2], b[:, 2:3]
