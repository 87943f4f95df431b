"""The training's fusion target as a fuser: grey levels out, and the aligned base changes the base, not the detail."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamfuse.config import load_config
from streamfuse.configs import resolve
from streamfuse.model.losses import LossConfig
from streamfuse.target_fuser import TargetFuser, sweep


def test_aligned_base_changes_the_base_not_the_detail(rng):
    ys, xs = np.mgrid[0:64, 0:80]
    vis = np.clip(10 + 0.2 * xs + rng.normal(0, 3, xs.shape), 0, 255)  # a dark visible frame, as at night
    ir = np.clip(60 + 140 * ((ys - 32) ** 2 + (xs - 40) ** 2 < 150) + rng.normal(0, 4, xs.shape), 0, 255)
    ir, vis = ir.astype(np.uint8).astype(np.float64), vis.astype(np.uint8).astype(np.float64)
    raw = TargetFuser(LossConfig()).fuse(ir, vis)
    aligned = TargetFuser(LossConfig(), load_config(resolve("eval")).align).fuse(ir, vis)
    diff = aligned - raw
    assert np.abs(diff).mean() > 2.0  # IR' differs from the raw IR here: the IR is the brighter source everywhere
    # the difference is a change of base: blurred at the base's sigma it stays almost the same
    assert np.abs(diff - cv2.GaussianBlur(diff, (0, 0), 2)).mean() < 0.1 * np.abs(diff).mean()


def test_the_aligned_base_follows_ir_prime(rng):
    ys, xs = np.mgrid[0:64, 0:80]
    vis = np.clip(10 + 0.2 * xs + rng.normal(0, 3, xs.shape), 0, 255).astype(np.uint8).astype(np.float64)
    ir = np.clip(60 + 140 * ((ys - 32) ** 2 + (xs - 40) ** 2 < 150), 0, 255).astype(np.uint8).astype(np.float64)
    raw = TargetFuser(LossConfig()).fuse(ir, vis)
    aligned = TargetFuser(LossConfig(), load_config(resolve("eval")).align).fuse(ir, vis)
    # aligned to a dark visible frame, IR' is darker than the raw IR, which is the brighter source everywhere
    assert (aligned - raw).mean() < -2.0


def test_target_frames_are_grey_levels():
    flat = np.full((48, 64), 200.0)
    np.testing.assert_allclose(TargetFuser(LossConfig()).fuse(flat, flat), 200.0, atol=0.01)
    ir, vis = np.full((64, 80), 255.0), np.full((64, 80), 255.0)
    vis[24:40, 30:50] = 0  # the visible detail around a dark patch would lift white above 255
    out = TargetFuser(LossConfig()).fuse(ir, vis)
    assert out.min() >= 0.0 and out.max() == pytest.approx(255.0)


def test_a_sweep_scores_one_row_a_gain_and_the_aligned_base_on_ir_prime(tmp_path, rng):
    ys, xs = np.mgrid[0:48, 0:64]
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
    for i in range(2):  # a warm disc over a dark visible frame, as at night
        ir = 60 + 140 * ((ys - 24) ** 2 + (xs - 32 - 4 * i) ** 2 < 120)
        cv2.imwrite(str(tmp_path / "ir" / f"{i}.png"), ir.astype(np.uint8))
        vis = np.clip(10 + 0.2 * xs + rng.normal(0, 3, xs.shape), 0, 255)
        cv2.imwrite(str(tmp_path / "vi" / f"{i}.png"), vis.astype(np.uint8))
    raw = sweep(tmp_path / "ir", tmp_path / "vi", [1.0, 1.5], tmp_path / "raw")
    assert list(raw.means) == ["target gain 1", "target gain 1.5"] and raw.means["target gain 1"]["n"] == 2
    assert raw.means["target gain 1.5"]["AG"] > raw.means["target gain 1"]["AG"]  # the gain sharpens the detail
    aligned = {blend: sweep(tmp_path / "ir", tmp_path / "vi", [1.0], tmp_path / blend, aligned=True,
                            overrides=[f"align.blend={blend}"]).means for blend in ("0.15", "0.9")}
    assert [list(means) for means in aligned.values()] == [["target gain 1 (IR' base)"]] * 2
    assert (tmp_path / "0.9" / "metrics.md").read_text().count("| target gain 1 (IR' base) | 2 |") == 1
    # IR' aligned to the dark visible frames is not the raw IR, and the blend it is solved with is the one given
    sd = [means["target gain 1 (IR' base)"]["SD"] for means in aligned.values()]
    assert sd[0] != pytest.approx(sd[1], rel=1e-3) and raw.means["target gain 1"]["SD"] not in sd
