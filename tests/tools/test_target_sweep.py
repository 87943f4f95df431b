"""tools/target_sweep.py on generated pairs: one row per gain, and the gain really sharpens the target."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from streamfuse import target_fuser


def test_rows_per_gain_and_sharper_with_more_gain(tool, tmp_path, rng):
    for sub in ("ir", "vi"):
        (tmp_path / "set" / sub).mkdir(parents=True)
    for i in range(2):
        scene = cv2.GaussianBlur(rng.uniform(0, 255, (48, 64)), (0, 0), 2)
        cv2.imwrite(str(tmp_path / "set" / "ir" / f"{i}.png"), np.clip(scene * 0.6 + 20, 0, 255).astype(np.uint8))
        cv2.imwrite(str(tmp_path / "set" / "vi" / f"{i}.png"), np.clip(scene[::-1] + 10, 0, 255).astype(np.uint8))
    out = tmp_path / "out"
    tool("target_sweep").main(["--data", str(tmp_path), "--dataset", "set", "--gains", "1.0,1.5", "--out", str(out)])
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    ag = {g: np.mean([float(r["AG"]) for r in rows if r["method"] == f"target gain {g}"]) for g in ("1", "1.5")}
    assert len(rows) == 4 and ag["1.5"] > ag["1"] * 1.1


def test_missing_dataset_is_one_line(tool, tmp_path):
    with pytest.raises(SystemExit, match="^target_sweep.py: error: "):
        tool("target_sweep").main(["--data", str(tmp_path), "--dataset", "nothing", "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("gains, words", [("abc", "'abc' is not a number"), ("1.0,0", "must be a finite number > 0, "
                                                                                    "got 0")])
def test_a_bad_gain_is_refused_naming_the_option(tool, tmp_path, capsys, gains, words):
    with pytest.raises(SystemExit) as exc:
        tool("target_sweep").main(["--data", str(tmp_path), "--gains", gains, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(f"argument --gains: {words}")


def test_data_defaults_to_streamfuse_data(tool, tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMFUSE_DATA", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        tool("target_sweep").main(["--dataset", "nothing", "--out", str(tmp_path / "o")])
    assert str(exc.value.code) == f"target_sweep.py: error: IR folder not found: {tmp_path / 'nothing' / 'ir'}"


def test_ctrl_c_is_one_line_and_exit_130(tool, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target_fuser, "evaluate_dir", interrupted)
    with pytest.raises(BaseException) as exc:  # on a KeyboardInterrupt that escapes, too
        tool("target_sweep").main(["--data", str(tmp_path), "--dataset", "set", "--out", str(tmp_path / "o")])
    assert exc.type is SystemExit and exc.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["target_sweep.py: interrupted (Ctrl-C)"]


def test_the_aligned_base_takes_the_blend_it_is_given(tool, tmp_path, rng):
    # the model card's IR' rows were measured at blend 0.3, which no option of the tool could give
    for sub in ("ir", "vi"):
        (tmp_path / "set" / sub).mkdir(parents=True)
    ys, xs = np.mgrid[0:48, 0:64]
    ir = 60 + 140 * ((ys - 24) ** 2 + (xs - 32) ** 2 < 120)  # a warm disc over a dark visible frame, as at night
    cv2.imwrite(str(tmp_path / "set" / "ir" / "0.png"), ir.astype(np.uint8))
    vis = np.clip(10 + 0.2 * xs + rng.normal(0, 3, xs.shape), 0, 255)
    cv2.imwrite(str(tmp_path / "set" / "vi" / "0.png"), vis.astype(np.uint8))
    ag = {}
    for blend in ("0.15", "0.9"):
        out = tmp_path / f"out{blend}"
        tool("target_sweep").main(["--data", str(tmp_path), "--dataset", "set", "--gains", "1.0", "--base", "aligned",
                                   "--set", f"align.blend={blend}", "--out", str(out)])
        with (out / "metrics.csv").open() as f:
            [row] = list(csv.DictReader(f))
        ag[blend] = float(row["AG"])
    assert ag["0.15"] != pytest.approx(ag["0.9"], rel=1e-3)


@pytest.mark.parametrize("args, words", [
    (["--base", "aligned", "--set", "hclfuse.steps=4"], "--set hclfuse.steps=4: only the aligned base's IR'"),
    (["--set", "align.blend=0.3"], "--set align.blend=0.3: only the aligned base's IR'")])
def test_an_override_the_targets_do_not_read_is_refused(tool, tmp_path, capsys, args, words):
    with pytest.raises(SystemExit) as exc:
        tool("target_sweep").main(["--data", str(tmp_path), *args, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and words in capsys.readouterr().err.splitlines()[-1]


def test_a_bad_align_value_is_one_config_line(tool, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        tool("target_sweep").main(["--data", str(tmp_path), "--base", "aligned", "--set", "align.blend=7",
                                   "--out", str(tmp_path / "o")])
    [line] = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and line.startswith("target_sweep.py: config error: ") and "blend" in line
