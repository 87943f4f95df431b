"""tools/temporal.py on generated clips: the flicker ratio it prints, the denoiser's effect and the static check."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="module")
def temporal(tool):
    return tool("temporal").main


def _clip(root: Path, rng: np.random.Generator, n: int = 6) -> None:
    """A still scene with independent sensor noise in each frame: all frame-to-frame change is flicker."""
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (40, 56)), (0, 0), 3)
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            frame = np.clip(scene + rng.normal(0, 3, scene.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / sub / f"{i:04d}.png"), frame)


def _mean_ratio(out: str, method: str) -> float:
    row = next(line for line in out.splitlines() if line.startswith(f"| {method} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-1] == "yes"  # a static input gives identical outputs
    return float(cells[-4])


def _flow_warp(out: str, method: str) -> float:
    row = next(line for line in out.splitlines() if line.startswith(f"| {method} |"))
    return float([c.strip() for c in row.strip("|").split("|")][-3])


def test_flicker_ratio_and_denoiser(temporal, tmp_path, rng, monkeypatch, capsys):
    _clip(tmp_path / "a", rng)
    _clip(tmp_path / "b", rng)
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "average", "--static", "3"])
    temporal()
    out = capsys.readouterr().out
    plain, warp = _mean_ratio(out, "average"), _flow_warp(out, "average")
    assert 0.5 < plain < 1.0  # averaging two independently noisy frames: about 1/sqrt(2) of the noise
    assert "visible input: flow warp error" in out and warp > 0
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "average", "--static", "3",
                                     "--denoise", "0.85"])
    temporal()
    out = capsys.readouterr().out
    assert _mean_ratio(out, "average") < 0.6 * plain and _flow_warp(out, "average") < warp


def test_no_clips_is_one_line(temporal, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path)])
    with pytest.raises(SystemExit, match="no clips"):
        temporal()
