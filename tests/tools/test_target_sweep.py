"""tools/target_sweep.py on generated pairs: one row per gain, and the gain really sharpens the target."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest


def test_rows_per_gain_and_sharper_with_more_gain(tool, tmp_path, rng):
    for sub in ("ir", "vi"):
        (tmp_path / "set" / sub).mkdir(parents=True)
    for i in range(2):
        scene = cv2.GaussianBlur(rng.uniform(0, 255, (48, 64)), (0, 0), 2)
        cv2.imwrite(str(tmp_path / "set" / "ir" / f"{i}.png"), np.clip(scene * 0.6 + 20, 0, 255).astype(np.uint8))
        cv2.imwrite(str(tmp_path / "set" / "vi" / f"{i}.png"), np.clip(scene[::-1] + 10, 0, 255).astype(np.uint8))
    out = tmp_path / "out"
    tool("target_sweep").main(["--data", str(tmp_path), "--set", "set", "--gains", "1.0,1.5", "--out", str(out)])
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    ag = {g: np.mean([float(r["AG"]) for r in rows if r["method"] == f"target gain {g}"]) for g in ("1", "1.5")}
    assert len(rows) == 4 and ag["1.5"] > ag["1"] * 1.1


def test_missing_set_is_one_line(tool, tmp_path):
    with pytest.raises(SystemExit, match="target_sweep:"):
        tool("target_sweep").main(["--data", str(tmp_path), "--set", "nothing", "--out", str(tmp_path / "o")])
