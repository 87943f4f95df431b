"""tools/evaluate.py end to end on generated pairs (odd sizes, colour/grey visible, 3-channel IR, mixed file types),
and its one-line errors. Runs main() in-process: the logic lives in streamfuse.evaluation."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfuse import metrics


@pytest.fixture(scope="module")
def evaluate(tool):
    return tool("evaluate").main


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


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_fusers_and_fused_folder_side_by_side(evaluate, pairs, tmp_path, capsys):
    ir_dir, vis_dir = pairs
    out, saved = tmp_path / "out", tmp_path / "saved"
    evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(out), "--save", str(saved)])
    assert sorted(p.name for p in saved.iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert cv2.imread(str(saved / "p1.png"), cv2.IMREAD_UNCHANGED).shape == (45, 70)

    # score the saved outputs as another method's folder, next to the fuser itself and a sharpened variant
    out2 = tmp_path / "out2"
    evaluate([str(ir_dir), str(vis_dir), "--fused", f"again={saved}", "--fuser", "max",
              "--fuser", "max:sharpen=1", "--out", str(out2)])
    rows = read_csv(out2 / "metrics.csv")
    assert [(r["method"], r["image"]) for r in rows[:3]] == [("again", "p0"), ("max", "p0"), ("max:sharpen=1", "p0")]
    assert len(rows) == 9
    by = {(r["method"], r["image"]): r for r in rows}
    for stem in ("p0", "p1", "p2"):  # a fuser's saved PNG scores exactly as the fuser's output did
        assert all(by["again", stem][k] == by["max", stem][k] for k in metrics.METRICS)
    assert by["again", "p0"]["ms"] == "nan" and float(by["max", "p0"]["ms"]) > 0
    assert float(by["max:sharpen=1", "p1"]["SF"]) > float(by["max", "p1"]["SF"])

    table = (out2 / "metrics.md").read_text().splitlines()
    assert table[0].startswith("| method | n | EN |") and "QSF (rSFe)" in table[0] and table[0].endswith("ms/frame |")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["again", "max", "max:sharpen=1"]
    assert table[2].endswith("| - |") and table[3].split("|")[2].strip() == "3"
    assert "| again | 3 |" in capsys.readouterr().out

    montage = cv2.imread(str(out2 / "montage.png"))
    tile_w = round(70 * 240 / 45)
    assert montage.shape == (3 * (240 + 2), 5 * tile_w, 3)  # 3 pairs x (IR | visible | 3 methods)


def test_config_method_limit_and_resolved_config(evaluate, pairs, tmp_path):
    ir_dir, vis_dir = pairs
    cfg = tmp_path / "baseline.yaml"
    cfg.write_text("fuse:\n  name: laplacian\n  sharpen: 0.5\n")
    out = tmp_path / "out"
    evaluate([str(ir_dir), str(vis_dir), "--config", str(cfg), "--set", "fuse.sharpen=1.0", "--limit", "2",
              "--out", str(out)])
    rows = read_csv(out / "metrics.csv")
    assert [r["image"] for r in rows] == ["p0", "p1"]
    assert rows[0]["method"] == "laplacian (baseline.yaml)"
    assert "sharpen: 1.0" in (out / "baseline.resolved.yaml").read_text()


@pytest.mark.parametrize("case, message", [
    ("missing_dir", "IR folder not found"),
    ("no_pairs", "no IR/visible pairs"),
    ("unreadable", "cannot read image"),
    ("no_method", "nothing to score"),
    ("bad_fuser", "name='nope' is out of range"),
    ("size_mismatch", "differ in size"),
])
def test_errors_are_one_line(evaluate, pairs, tmp_path, case, message):
    ir_dir, vis_dir = pairs
    args = ["--fuser", "max", "--out", str(tmp_path / "out")]
    if case == "missing_dir":
        ir_dir = tmp_path / "nowhere"
    elif case == "no_pairs":
        vis_dir = tmp_path / "empty"
        vis_dir.mkdir()
    elif case == "unreadable":
        (ir_dir / "p0.png").write_bytes(b"not an image")
    elif case == "no_method":
        args = []
    elif case == "bad_fuser":
        args = ["--fuser", "nope"]
    elif case == "size_mismatch":
        cv2.imwrite(str(ir_dir / "p0.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), *args])
    assert str(exc.value.code).startswith("evaluate: ") and message in str(exc.value.code)
    assert "\n" not in str(exc.value.code)


def test_missing_fused_images_are_counted(evaluate, pairs, tmp_path, caplog):
    ir_dir, vis_dir = pairs
    partial = tmp_path / "partial"
    partial.mkdir()
    cv2.imwrite(str(partial / "p1.png"), cv2.imread(str(vis_dir / "p1.jpg")))  # colour: its Y is scored
    out = tmp_path / "out"
    evaluate([str(ir_dir), str(vis_dir), "--fused", str(partial), "--out", str(out)])
    rows = read_csv(out / "metrics.csv")
    assert [(r["method"], r["image"]) for r in rows] == [("partial", "p1")]
    assert float(rows[0]["SSIM"]) > 1.0  # fused = visible: SSIM(F, VIS) = 1 plus SSIM(F, IR)
    assert "| partial | 1 |" in (out / "metrics.md").read_text()
    assert "2 of 3 fused images missing" in caplog.text
