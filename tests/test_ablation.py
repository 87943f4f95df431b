"""The ablation's composition on generated pairs, with its rows and scoring stood in for: the published folders it
scores, what it hands the scoring, the JSON it writes, and the outputs it refuses before any work.
The rows themselves, with an untrained net: tests/tools/test_ablate.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfuse import ablation
from streamfuse.evaluation import EvalResult, Method

METRICS = dict.fromkeys(ablation.JSON_METRICS, 1.0)


def test_summary_gives_non_finite_means_as_null():
    """JSON has no Infinity or NaN: a row identical to the default (PSNR infinite) or a fused folder's ms says null."""
    means = {k: 1.0 for k in (*ablation.JSON_METRICS, "delta_grey", "psnr_ref", "ms")}
    result = EvalResult(means={"default": {**means, "n": 3}, "same": {**means, "psnr_ref": math.inf,
                                                                      "ms": math.nan, "n": 3}})
    summary = ablation.summary(result)
    assert summary["rows"]["same"]["psnr_ref"] is None and summary["rows"]["same"]["ms"] is None
    json.dumps(summary, allow_nan=False)


def test_published_outputs_are_those_of_msrs_test_that_have_its_folder(tmp_path):
    for method in ("b", "a", "c"):
        (tmp_path / "reference" / method / ("msrs_test" if method != "c" else "llvip")).mkdir(parents=True)
    assert ablation.published_dirs(tmp_path, "msrs/test") == [tmp_path / "reference" / m / "msrs_test"
                                                              for m in ("a", "b")]
    assert ablation.published_dirs(tmp_path, "roadscene") == []
    assert ablation.published_dirs(tmp_path / "nosuch", "msrs/test") == []


@pytest.fixture
def folders(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """Three 40x56 pairs."""
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / sub / f"f{i}.png"), rng.integers(0, 256, (40, 56), dtype=np.uint8))
    return tmp_path / "ir", tmp_path / "vi"


def test_the_rows_and_published_folders_are_scored_and_summed_up_with_the_energies(folders, tmp_path, monkeypatch):
    published = tmp_path / "reference" / "seafusion" / "msrs_test"
    published.mkdir(parents=True)
    seen = {}

    def methods(cfg, steps, pairs, baselines):
        seen.update(steps=steps, pairs=[s for s, _, _ in pairs], baselines=baselines, steps_cfg=cfg.hclfuse.steps)
        return [Method("default"), Method("rule")]

    def evaluate_dir(dir_ir, dir_vis, rows, out, **kwargs):
        seen.update(rows=[m.name for m in rows], out=out, **kwargs)
        return EvalResult(means={name: {"n": 2, **METRICS, "delta_grey": 0.5, "psnr_ref": 30.0, "ms": 1.0}
                                 for name in seen["rows"]})

    monkeypatch.setattr(ablation, "methods", methods)
    monkeypatch.setattr(ablation, "evaluate_dir", evaluate_dir)
    monkeypatch.setattr(ablation, "guidance_energies", lambda cfg, pairs: {"with": {"heat": float(len(pairs))}})
    json_file = tmp_path / "runs" / "ablation.json"
    ablation.ablate(*folders, "eval", ["hclfuse.steps=3"], [1, 4], tmp_path / "out", limit=2, baselines=False,
                    published=[published], json_file=json_file)
    assert seen == {"steps": [1, 4], "pairs": ["f0", "f1"], "baselines": False, "steps_cfg": 3,
                    "rows": ["default", "rule", "seafusion"], "out": tmp_path / "out", "limit": 2,
                    "reference": "default"}
    report = json.loads(json_file.read_text())
    assert report["n"] == 2 and report["default"] == METRICS and set(report["rows"]) == {"rule", "seafusion"}
    assert report["rows"]["rule"] == {"n": 2, **METRICS, "delta_grey": 0.5, "psnr_ref": 30.0, "ms": 1.0}
    assert report["guidance_energies"] == {"with": {"heat": 2.0}}


@pytest.mark.parametrize("where", ["vi", "published"])
def test_a_json_in_an_input_folder_is_refused_before_any_work(folders, tmp_path, monkeypatch, where):
    published = tmp_path / "reference" / "seafusion" / "msrs_test"
    published.mkdir(parents=True)
    monkeypatch.setattr(ablation, "load_config", lambda *a: pytest.fail("ran before refusing"))
    json_file = (tmp_path / "vi" if where == "vi" else published) / "s.json"
    with pytest.raises(ValueError, match=f"^--json {json_file} is or lies in the "):
        ablation.ablate(*folders, "eval", [], [1], tmp_path / "out", published=[published], json_file=json_file)
    assert not json_file.exists()
