"""``python -m streamfuse evaluate`` (and its wrapper tools/evaluate.py) end to end on generated pairs (odd sizes,
colour/grey visible, 3-channel IR, mixed file types), and its one-line errors. Runs main() in-process."""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfuse import evaluation, metrics
from streamfuse.cli.evaluate import EVAL_CONFIG, main
from streamfuse.config import load_config
from streamfuse.configs import resolve
from streamfuse.eval_pairs import find_pairs, read_grey, read_pair
from streamfuse.evaluation import Method, config_method, evaluate_dir, fused_dir_method
from streamfuse.fusers import FuseConfig
from streamfuse.postprocess import PostConfig
from streamfuse.processor import FrameProcessor, build_fuser, still_pair

EVALUATE_ERROR = "streamfuse evaluate: error: "  # how the command's error lines start


@pytest.fixture(scope="module")
def evaluate():
    return main


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
    printed = capsys.readouterr().out
    assert "| again | 3 |" in printed and f"\n3 pairs; per-image rows in {out2 / 'metrics.csv'}" in printed  # not 9

    montage = cv2.imread(str(out2 / "montage.png"))
    tile_w = round(70 * 240 / 45)
    assert montage.shape == (3 * (240 + 2), 5 * tile_w, 3)  # 3 pairs x (IR | visible | 3 methods)


def test_config_method_limit_and_resolved_config(evaluate, pairs, tmp_path):
    ir_dir, vis_dir = pairs
    cfg = tmp_path / "baseline.yaml"
    cfg.write_text("fuse:\n  name: laplacian\nbaseline:\n  sharpen: 0.5\n")
    out = tmp_path / "out"
    evaluate([str(ir_dir), str(vis_dir), "--config", str(cfg), "--set", "baseline.sharpen=1.0", "--limit", "2",
              "--out", str(out)])
    rows = read_csv(out / "metrics.csv")
    assert [r["image"] for r in rows] == ["p0", "p1"]
    assert rows[0]["method"] == "laplacian (baseline.yaml)"
    assert "sharpen: 1.0" in (out / "baseline.resolved.yaml").read_text()

    # --fuser methods take the config's settings
    cfg.write_text("fuse:\n  name: laplacian\nbaseline:\n  contrast: 1.25\n")
    evaluate([str(ir_dir), str(vis_dir), "--config", str(cfg), "--fuser", "max", "--out", str(out)])
    assert [r["method"] for r in read_csv(out / "metrics.csv")[:2]] == ["laplacian (baseline.yaml)", "max+contrast1.25"]
    other = tmp_path / "other.yaml"  # with several configs, the first gives the --fuser methods theirs
    other.write_text("fuse:\n  name: laplacian\nbaseline:\n  contrast: 1.5\n")
    evaluate([str(ir_dir), str(vis_dir), "--config", str(cfg), "--config", str(other), "--fuser", "max", "--out",
              str(out)])
    assert [r["method"] for r in read_csv(out / "metrics.csv")[:3]] == [
        "laplacian (baseline.yaml)", "laplacian (other.yaml)", "max+contrast1.25"]


@pytest.mark.parametrize("case, message", [
    ("missing_dir", "IR folder not found"),
    ("a_name_with_a_newline", r"IR folder not found: {tmp}/no\nwhere\x1b[2J"),
    ("a_file", "IR folder is a file: "),
    ("no_pairs", "no IR/visible pairs"),
    ("unreadable", "cannot read image"),
    ("size_mismatch", "differ in size"),
])
def test_errors_are_one_line(evaluate, pairs, tmp_path, case, message):
    ir_dir, vis_dir = pairs
    args = ["--fuser", "max", "--out", str(tmp_path / "out")]
    if case == "missing_dir":
        ir_dir = tmp_path / "nowhere"
    elif case == "a_name_with_a_newline":  # and a terminal's escape sequence: shown as escapes, on its one line
        ir_dir = tmp_path / "no\nwhere\x1b[2J"
    elif case == "a_file":
        ir_dir = ir_dir / "p0.png"
    elif case == "no_pairs":
        vis_dir = tmp_path / "empty"
        vis_dir.mkdir()
    elif case == "unreadable":
        (ir_dir / "p0.png").write_bytes(b"not an image")
    elif case == "size_mismatch":
        cv2.imwrite(str(ir_dir / "p0.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), *args])
    assert str(exc.value.code).startswith(f"{EVALUATE_ERROR}") and message.format(tmp=tmp_path) in str(exc.value.code)
    assert "\n" not in str(exc.value.code)


@pytest.mark.parametrize("args, message", [
    (["--config", "nosuch"], "nosuch: no such config file here, nor a shipped config of that name; shipped: demo, "),
    (["--config", "nosuch.yaml"], "nosuch.yaml: no such config file here, nor a shipped config of that name; "),
    (["--config", "{tmp}/nowhere.yaml", "--fuser", "max"], "{tmp}/nowhere.yaml: config file not found"),
    (["--fuser", "nope"], "name='nope' is out of range"),
    (["--fuser", "max:steps=2"], "--fuser max:steps=2: 'steps=2' is not key=value with a key max reads: sharpen, "),
    (["--fuser", "hclfuse:contrast=1.25"], "'contrast=1.25' is not key=value with a key hclfuse reads: weights, "),
    (["--fuser", "max:sharpen=1,sharpen=2"], "--fuser max:sharpen=1,sharpen=2: sharpen is given twice"),
    (["--fuser", "max", "--set", "fuse.name=rule"], "--set fuse.*: --fuser max names its fuser"),
    (["--fuser", "max", "--set", "record.path=x"], "--set record.*: --fuser takes overrides of hclfuse, engine, "),
    (["--fuser", "max", "--set", "bogus"], "override 'bogus' is not of the form stage.key=value"),
])
def test_config_errors_are_one_line_and_exit_2_as_in_run(evaluate, pairs, tmp_path, monkeypatch, capsys, args,
                                                         message):
    monkeypatch.chdir(tmp_path)
    ir_dir, vis_dir = pairs
    args = [a.format(tmp=tmp_path) for a in args]
    assert evaluate([str(ir_dir), str(vis_dir), *args, "--out", str(tmp_path / "out")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("streamfuse evaluate: config error: ") and message.format(tmp=tmp_path) in line


def test_a_fused_folder_whose_path_holds_an_equals_sign_is_a_folder(pairs, tmp_path):
    fused = tmp_path / "gain=1.25"
    fused.mkdir()
    for spec, name in ((str(fused), "gain=1.25"), (f"mine={fused}", "mine")):
        method = fused_dir_method(spec)
        assert (method.name, method.fused_dir) == (name, fused)


def test_a_fused_folder_named_with_an_equals_sign_in_the_working_folder_is_a_folder(tmp_path, monkeypatch):
    (tmp_path / "gain=1.25").mkdir()  # no "/" in the path: only being a folder says it is not NAME=DIR
    monkeypatch.chdir(tmp_path)
    method = fused_dir_method("gain=1.25")
    assert (method.name, method.fused_dir) == ("gain=1.25", Path("gain=1.25"))


def test_two_configs_of_one_file_name_are_refused(evaluate, pairs, tmp_path):
    ir_dir, vis_dir = pairs
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "eval.yaml").write_text(Path(resolve(EVAL_CONFIG)).read_text().replace("hclfuse\n", "max\n"))
    with pytest.raises(SystemExit, match="^streamfuse evaluate: error: two --config files named eval.yaml: rename one"):
        evaluate([str(ir_dir), str(vis_dir), "--config", "eval", "--config", str(tmp_path / "b" / "eval.yaml"),
                  "--out", str(tmp_path / "out")])


def test_images_without_a_partner_or_sharing_a_name_are_named(pairs, caplog):
    ir_dir, vis_dir = pairs
    cv2.imwrite(str(ir_dir / "p0.jpg"), np.zeros((45, 70), np.uint8))
    with caplog.at_level("WARNING", logger="streamfuse.evaluation"):
        assert [s for s, _, _ in find_pairs(ir_dir, vis_dir)] == ["p0", "p1", "p2"]
    assert f"{ir_dir}: p0.jpg and p0.png share a name; p0.jpg is used" in caplog.text
    assert f"0 IR images in {ir_dir} and 1 visible images in {vis_dir} have no partner (first: orphan)" in caplog.text


def test_a_symlink_loop_in_or_as_an_input_folder_names_the_folder(pairs, tmp_path):
    # "cannot read image .../p3.png: Too many levels of symbolic links" did not say which input; a looped folder was
    # "not found"
    ir_dir, vis_dir = pairs
    (ir_dir / "p3.png").symlink_to("p3.png")
    with pytest.raises(ValueError, match=rf"^IR folder {ir_dir}: p3.png cannot be read \(Too many levels of symbolic "
                                         rf"links\)$"):
        find_pairs(ir_dir, vis_dir)
    (ir_dir / "p3.png").unlink()
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(FileNotFoundError, match=r"^visible folder not found \(Too many levels of symbolic links\): "):
        find_pairs(ir_dir, tmp_path / "loop")


def test_a_save_folder_holding_images_is_refused_before_any_work(evaluate, pairs, tmp_path):
    """A run into an earlier run's --save folder left a mix of two methods' images, scored later as one method's."""
    ir_dir, vis_dir = pairs
    saved = tmp_path / "saved"
    evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(tmp_path / "o1"), "--save", str(saved)])
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    with pytest.raises(SystemExit, match=rf"^{EVALUATE_ERROR}save folder \(average\) {saved} already holds 3 images "
                                         r"\(p0.png, ...\); give a new or empty folder"):
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "average", "--limit", "1", "--out", str(tmp_path / "o2"),
                  "--save", str(saved)])
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before and not (tmp_path / "o2").exists()


def test_a_save_folder_an_earlier_run_of_another_number_of_fusers_filled_is_refused(evaluate, pairs, tmp_path):
    """One fuser writes into --save, several into a folder each: each check looked only where the new run writes, so
    a run of the other kind was taken, and its images mixed with the earlier run's."""
    ir_dir, vis_dir = pairs
    one, two = tmp_path / "one", tmp_path / "two"
    evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(tmp_path / "o1"), "--save", str(one)])
    evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--fuser", "average", "--out", str(tmp_path / "o2"),
              "--save", str(two)])
    with pytest.raises(SystemExit, match=rf"^{EVALUATE_ERROR}save folder {one} already holds 3 images \(p0.png, ...\)"):
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--fuser", "average", "--out", str(tmp_path / "o3"),
                  "--save", str(one)])
    with pytest.raises(SystemExit, match=rf"^{EVALUATE_ERROR}save folder {two / 'average'} already holds 3 images"):
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(tmp_path / "o4"), "--save", str(two)])
    assert sorted(p.name for p in one.iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert sorted(p.name for p in two.iterdir()) == ["average", "max"]
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()


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
    for name in ("p0.png", "p1.png"):  # none left: an empty table and exit 0 would read as a result
        (partial / name).unlink(missing_ok=True)
    cv2.imwrite(str(partial / "other.png"), cv2.imread(str(vis_dir / "p1.jpg")))
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), "--fused", str(partial), "--out", str(out)])
    assert exc.value.code == (f"{EVALUATE_ERROR}fused (partial): none of the 3 pairs has its image in {partial} "
                              "(named as its IR)")


def test_eval_config_solves_ot_afresh_for_every_still(evaluate, tmp_path, rng, random_weights, caplog):
    """Unrelated stills: with the shipped eval config (the default) each output is that of a fuser that has seen only
    this image; a background OT solve (the live configs') would fuse each image with the previous image's table."""
    ir_dir, vis_dir = tmp_path / "ir", tmp_path / "vi"
    ir_dir.mkdir()
    vis_dir.mkdir()
    sources = {}
    for i in range(5):  # scenes of different brightness and contrast, so their OT tables differ
        scene = cv2.GaussianBlur(rng.uniform(0, 255, (48, 64)), (0, 0), 2.0)
        ir = np.clip(scene * rng.uniform(0.5, 2) + rng.uniform(-80, 80), 0, 255).astype(np.uint8)
        vis = np.clip(255 - scene * rng.uniform(0.3, 1.5) + rng.uniform(-100, 50), 0, 255).astype(np.uint8)
        cv2.imwrite(str(ir_dir / f"s{i}.png"), ir)
        cv2.imwrite(str(vis_dir / f"s{i}.png"), vis)
        sources[f"s{i}"] = ir, vis
    weights = f"hclfuse.weights={random_weights}"

    def saved(*overrides: str) -> dict[str, np.ndarray]:
        out = tmp_path / f"saved{len(overrides)}"
        evaluate([str(ir_dir), str(vis_dir), "--set", weights, *(a for o in overrides for a in ("--set", o)),
                  "--save", str(out), "--out", str(tmp_path / "out")])
        return {stem: cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED) for stem in sources}

    fresh = {stem: metrics.to_8bit(config_method(EVAL_CONFIG, [weights]).fuser.fuse(ir, vis))
             for stem, (ir, vis) in sources.items()}
    for stem, out in saved().items():
        diff = np.abs(out - fresh[stem])
        assert diff.max() <= 1 and diff.mean() < 0.01, stem  # a warm-started solve may round a pixel differently
    assert "carry over" not in caplog.text
    stale = saved("align.background=true")  # the defect this config avoids: each image gets the previous table
    assert max(np.abs(stale[stem] - fresh[stem]).mean() for stem in sources) > 0.1
    assert "hclfuse (eval.yaml): OT tables carry over from one image to the next (align.background=True" in caplog.text


def test_delta_grey_against_a_reference_method(pairs, tmp_path):
    ir_dir, vis_dir = pairs
    rows = [Method(name, fuser=build_fuser(FuseConfig(name=kind))) for name, kind in
            (("same", "max"), ("ref", "max"), ("average", "average"))]
    result = evaluate_dir(ir_dir, vis_dir, rows, tmp_path / "out", reference="ref")
    assert result.means["same"]["delta_grey"] == result.means["ref"]["delta_grey"] == 0
    expected = []
    for stem in ("p0", "p1", "p2"):
        ir = read_grey(ir_dir / f"{stem}.png").astype(np.float64)
        vis = read_grey(next(vis_dir.glob(f"{stem}.*"))).astype(np.float64)
        # .5 rounds up, as published
        expected.append(np.abs(np.floor((ir + vis) / 2 + 0.5) - np.maximum(ir, vis)).mean())
    assert result.means["average"]["delta_grey"] == pytest.approx(np.mean(expected))  # equal sizes: a plain mean
    assert read_csv(tmp_path / "out" / "metrics.csv")[0]["delta_grey"] == "0"
    assert (tmp_path / "out" / "metrics.md").read_text().splitlines()[0].endswith("| ms/frame | delta grey |")
    with pytest.raises(ValueError, match="reference 'nope' is not one of the methods"):
        evaluate_dir(ir_dir, vis_dir, rows, tmp_path / "out", reference="nope")


def _two_sizes(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Two pairs of two sizes (30x40 and 60x80), and a fused image for each, textured on 60..180."""
    ir_dir, vis_dir = tmp_path / "ir", tmp_path / "vi"
    ir_dir.mkdir()
    vis_dir.mkdir()
    fused = {}
    for stem, shape in (("a", (30, 40)), ("b", (60, 80))):
        cv2.imwrite(str(ir_dir / f"{stem}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
        cv2.imwrite(str(vis_dir / f"{stem}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
        fused[stem] = rng.integers(60, 180, shape, dtype=np.uint8)
    return ir_dir, vis_dir, fused


def _fused_folder(folder: Path, images: dict[str, np.ndarray]) -> Path:
    folder.mkdir()
    for stem, img in images.items():
        cv2.imwrite(str(folder / f"{stem}.png"), img)
    return folder


def test_delta_grey_and_psnr_ref_weigh_every_pixel_alike_over_pairs_of_two_sizes(tmp_path, rng):
    # without it, a 30x40 pair would count as much as a 60x80 one, and psnr_ref would not be the PSNR in dB
    ir_dir, vis_dir, ref = _two_sizes(tmp_path, rng)
    off = {"a": ref["a"] + 2, "b": ref["b"] + 10}  # 2 grey levels off on 1200 pixels, 10 on 4800
    methods = [Method("ref", fused_dir=_fused_folder(tmp_path / "ref", ref)),
               Method("off", fused_dir=_fused_folder(tmp_path / "off", off))]
    means = evaluate_dir(ir_dir, vis_dir, methods, tmp_path / "out", reference="ref").means["off"]
    assert means["delta_grey"] == pytest.approx((2 * 1200 + 10 * 4800) / 6000)
    assert means["psnr_ref"] == pytest.approx(10 * math.log10(255**2 / ((4 * 1200 + 100 * 4800) / 6000)))


def test_a_method_missing_an_image_is_compared_with_the_reference_where_it_has_one(tmp_path, rng):
    # without it, the rows of the pair before are compared with this pair's outputs (or the run fails on a KeyError)
    ir_dir, vis_dir, ref = _two_sizes(tmp_path, rng)
    methods = [Method("ref", fused_dir=_fused_folder(tmp_path / "ref", ref)),
               Method("partial", fused_dir=_fused_folder(tmp_path / "partial", {"a": ref["a"] + 3}))]
    result = evaluate_dir(ir_dir, vis_dir, methods, tmp_path / "out", reference="ref")
    assert [(r["method"], r["image"], r["delta_grey"]) for r in result.rows] == [
        ("ref", "a", 0.0), ("partial", "a", 3.0), ("ref", "b", 0.0)]
    assert (result.missing["partial"], result.means["partial"]["delta_grey"]) == (1, 3.0)


def test_a_pair_the_reference_has_no_output_for_is_left_out_of_the_comparison(tmp_path, rng):
    # the reference's missing image made every method's mean delta NaN and its PSNR infinite (identical to it)
    ir_dir, vis_dir, ref = _two_sizes(tmp_path, rng)
    methods = [Method("ref", fused_dir=_fused_folder(tmp_path / "ref", {"a": ref["a"]})),
               Method("off", fused_dir=_fused_folder(tmp_path / "off", {"a": ref["a"] + 5, "b": ref["b"]}))]
    means = evaluate_dir(ir_dir, vis_dir, methods, tmp_path / "out", reference="ref").means["off"]
    assert means["n"] == 2 and means["delta_grey"] == 5.0
    assert means["psnr_ref"] == pytest.approx(10 * math.log10(255**2 / 25))


def test_ms_per_frame_is_the_median_over_the_pairs(pairs, tmp_path, monkeypatch):
    # without it, one slow first frame (a warm-up, a cache fill) would set the table's ms/frame
    ir_dir, vis_dir = pairs
    real_score = evaluation._score
    times = {"p0": 400.0, "p1": 2.0, "p2": 3.0}

    def timed(*args):
        fused, row = real_score(*args)
        return fused, {**row, "ms": times[row["image"]]}

    monkeypatch.setattr("streamfuse.evaluation._score", timed)
    result = evaluate_dir(ir_dir, vis_dir, [Method("max", fuser=build_fuser(FuseConfig(name="max")))],
                          tmp_path / "out")
    assert result.means["max"]["ms"] == 3.0
    assert "| 3.0 |" in (tmp_path / "out" / "metrics.md").read_text()


@pytest.mark.parametrize("case", ["save_ir", "save_vis", "save_link_to_ir", "save_fused", "out_in_ir"])
def test_outputs_never_go_into_an_input_folder(evaluate, pairs, tmp_path, case):
    """--save or --out that is, or lies in, an IR, visible or fused folder (symlinks resolved) is refused before any
    file is written: the inputs stay byte for byte."""
    ir_dir, vis_dir = pairs
    fused = tmp_path / "fused"
    fused.mkdir()
    cv2.imwrite(str(fused / "p0.png"), np.zeros((45, 70), np.uint8))
    (tmp_path / "link").symlink_to(ir_dir)
    args = ["--fuser", "max", "--fused", f"prior={fused}", "--out", str(tmp_path / "out")]
    args += {"save_ir": ["--save", str(ir_dir)], "save_vis": ["--save", str(vis_dir)],
             "save_link_to_ir": ["--save", str(tmp_path / "link")], "save_fused": ["--save", str(fused)],
             "out_in_ir": ["--out", str(ir_dir / "scores")]}[case]
    before = {p: p.read_bytes() for d in (ir_dir, vis_dir, fused) for p in d.iterdir()}
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), *args])
    message = str(exc.value.code)
    assert message.startswith("streamfuse evaluate: error: ") and "\n" not in message and "is or lies in the" in message
    assert {p: p.read_bytes() for d in (ir_dir, vis_dir, fused) for p in d.iterdir()} == before
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_one_line(evaluate, pairs, tmp_path):
    ir_dir, vis_dir = pairs
    (afile := tmp_path / "afile").write_text("kept")
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(afile)])
    assert str(exc.value.code) == f"streamfuse evaluate: error: output folder {afile} exists and is not a folder"
    assert afile.read_text() == "kept"


def test_negative_limit_is_refused(evaluate, pairs, tmp_path, capsys):
    ir_dir, vis_dir = pairs
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--limit", "-1", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "error: argument --limit: must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_rows_sets_how_many_pairs_the_montage_shows(evaluate, pairs, tmp_path):
    """--rows 2 of three pairs: two rows of tiles (the darkest and the brightest visible image's pairs)."""
    ir_dir, vis_dir = pairs
    evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--rows", "2", "--out", str(tmp_path / "out")])
    assert cv2.imread(str(tmp_path / "out" / "montage.png")).shape[0] == 2 * (240 + 2)


@pytest.mark.parametrize("rows", ["0", "-1"])
def test_montage_rows_below_one_are_refused(evaluate, pairs, tmp_path, capsys, rows):
    ir_dir, vis_dir = pairs
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--rows", rows, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and f"argument --rows: must be >= 1, got {rows}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_refused_before_any_work(evaluate, pairs, tmp_path, monkeypatch):
    """A read-only folder (found by os.access: a read-only mount refuses even root) fails at the start, not after
    every pair is fused."""
    ir_dir, vis_dir = pairs
    (read_only := tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only and real_access(path, mode))
    monkeypatch.setattr("streamfuse.evaluation._score", lambda *a: pytest.fail("fused before refusing"))
    out = read_only / "scores"
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(out)])
    assert str(exc.value.code) == f"{EVALUATE_ERROR}output folder {out} cannot be written: {read_only} is not writable"
    assert not out.exists()


def test_a_damaged_image_is_one_line_without_opencv_warnings(evaluate, pairs, tmp_path, capfd):
    ir_dir, vis_dir = pairs
    (ir_dir / "p0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 100)  # a PNG signature, then garbage
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(tmp_path / "out")])
    assert str(exc.value.code) == f"{EVALUATE_ERROR}cannot read image {ir_dir / 'p0.png'}: corrupt, or not an image"
    err = capfd.readouterr().err
    assert "WARN" not in err and "ERROR" not in err, err


@pytest.mark.parametrize("ir_size, vis_size, why", [
    ((20, 30), (20, 30), "are smaller than the 25 pixels a side the metrics need"),
    ((45, 70), (40, 70), "differ in size (register them first)"),
])
def test_a_pair_too_small_or_of_two_sizes_is_one_line_naming_both_files(evaluate, pairs, tmp_path, ir_size, vis_size,
                                                                        why):
    """Below 25 pixels a side VIF's four scales have nothing left to filter: one line, not OpenCV's assertion."""
    ir_dir, vis_dir = pairs
    cv2.imwrite(str(ir_dir / "p0.png"), np.full(ir_size, 90, np.uint8))
    cv2.imwrite(str(vis_dir / "p0.png"), np.full(vis_size, 60, np.uint8))
    with pytest.raises(SystemExit) as exc:
        evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(tmp_path / "out")])
    (h, w), (vh, vw) = ir_size, vis_size
    assert str(exc.value.code) == (f"{EVALUATE_ERROR}p0: IR {ir_dir / 'p0.png'} ({w}x{h}) and visible "
                                   f"{vis_dir / 'p0.png'} ({vw}x{vh}) {why}")


def test_a_flat_pair_does_not_poison_the_means(pairs, tmp_path, caplog):
    """A pair with flat sources: Nabf is finite there (the textured fused image's edges are artifacts), not NaN, and
    QSF, infinite for a textured fused image, is left out of the method's mean with a warning that counts it."""
    ir_dir, vis_dir = pairs
    texture = read_grey(ir_dir / "p0.png") // 2 + 60
    (vis_dir / "p1.jpg").unlink()
    cv2.imwrite(str(ir_dir / "p1.png"), np.full((45, 70), 90, np.uint8))  # not the first pair: the one named
    cv2.imwrite(str(vis_dir / "p1.png"), np.full((45, 70), 40, np.uint8))
    fused = tmp_path / "fused"
    fused.mkdir()
    for stem in ("p0", "p1", "p2"):  # textured everywhere
        cv2.imwrite(str(fused / f"{stem}.png"), texture)
    result = evaluate_dir(ir_dir, vis_dir, [Method("half", fused_dir=fused)], tmp_path / "out")
    rows = {r["image"]: r for r in result.rows}
    assert 0.0 < rows["p1"]["Nabf"] <= 1.0 and rows["p1"]["QSF"] == math.inf
    means = result.means["half"]
    assert all(math.isfinite(means[k]) for k in metrics.METRICS), means
    assert means["QSF"] == pytest.approx((rows["p0"]["QSF"] + rows["p2"]["QSF"]) / 2)
    assert "half: QSF is not finite on 1 of 3 pairs (first p1), left out of its mean" in caplog.text


def test_a_16_bit_ir_pair_is_scored_as_its_stretched_8_bit_copy(evaluate, pairs, tmp_path):
    """Radiometric 16-bit IR (counts 7000..9000) is scored as the same image stretched to 0..255 by hand (from its
    range without the outer 0.1% of its pixels)."""
    ir_dir, vis_dir = pairs
    deep_dir, flat_dir = tmp_path / "ir16", tmp_path / "ir8"
    deep_dir.mkdir()
    flat_dir.mkdir()
    for stem in ("p0", "p1", "p2"):
        ir = read_grey(ir_dir / f"{stem}.png").astype(np.float64)
        counts = np.rint(7000 + ir * 2000 / 255).astype(np.uint16)
        cv2.imwrite(str(deep_dir / f"{stem}.png"), counts)
        k = counts.size // 1000  # the range leaves out 0.1% of the pixels at each end
        lo, hi = (int(v) for v in np.sort(counts, axis=None)[[k, -1 - k]])
        cv2.imwrite(str(flat_dir / f"{stem}.png"),
                    np.clip(np.rint((counts - float(lo)) * (255 / (hi - lo))), 0, 255).astype(np.uint8))
    scores = []
    for folder in (deep_dir, flat_dir):
        out = tmp_path / f"scores_{folder.name}"
        evaluate([str(folder), str(vis_dir), "--fuser", "max", "--out", str(out)])
        scores.append([{k: r[k] for k in ("image", *metrics.METRICS)} for r in read_csv(out / "metrics.csv")])
    assert scores[0] == scores[1]


def test_a_16_bit_visible_or_fused_image_is_scored_by_its_top_8_bits(pairs, tmp_path, rng):
    """Visible and fused images are display-referred: a 16-bit one is its 8-bit copy times 256 plus lower bits, read
    back as that copy (not stretched from its own range as IR counts are)."""
    ir_dir, vis_dir = pairs
    vis = read_grey(vis_dir / "p0.png")  # spans only part of 0..255: a stretch would move it
    deep = vis.astype(np.uint16) * 256 + rng.integers(0, 256, vis.shape, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "p0.png"), deep)
    _, vis_y = read_pair("p0", ir_dir / "p0.png", tmp_path / "p0.png")
    np.testing.assert_array_equal(vis_y, vis)
    np.testing.assert_array_equal(read_grey(tmp_path / "p0.png"), vis)  # a fused image, as --fused reads it


def test_the_first_config_takes_the_fusing_overrides_as_run_does(evaluate, pairs, tmp_path, random_weights,
                                                                  monkeypatch):
    # its ${VAR} that a --set replaced was still read: "environment variable ... is not set", where run went ahead
    ir_dir, vis_dir = pairs
    monkeypatch.delenv("STREAMFUSE_TEST_WEIGHTS", raising=False)
    (tmp_path / "mine.yaml").write_text("hclfuse:\n  weights: ${STREAMFUSE_TEST_WEIGHTS}\nengine:\n  device: cpu\n")
    assert evaluate([str(ir_dir), str(vis_dir), "--config", str(tmp_path / "mine.yaml"), "--fuser", "max",
                     "--set", f"hclfuse.weights={random_weights}", "--out", str(tmp_path / "out")]) == 0


def test_a_bgra_visible_image_is_scored_by_the_y_of_its_colour(pairs, tmp_path):
    """A visible PNG with an alpha channel: its Y is that of the BGR image, whatever the alpha."""
    _, vis_dir = pairs
    bgr = cv2.imread(str(vis_dir / "p1.jpg"))
    cv2.imwrite(str(tmp_path / "bgra.png"), cv2.merge([*cv2.split(bgr), np.full(bgr.shape[:2], 7, np.uint8)]))
    cv2.imwrite(str(tmp_path / "bgr.png"), bgr)
    np.testing.assert_array_equal(read_grey(tmp_path / "bgra.png"), read_grey(tmp_path / "bgr.png"))


def test_image_suffixes_are_matched_in_any_case(pairs):
    """``P3.PNG`` (as cameras and Windows tools name them) is an image like ``p3.png``."""
    ir_dir, vis_dir = pairs
    cv2.imwrite(str(ir_dir / "p3.PNG"), cv2.imread(str(ir_dir / "p0.png")))
    cv2.imwrite(str(vis_dir / "p3.JPG"), cv2.imread(str(vis_dir / "p0.png")))
    assert [s for s, _, _ in find_pairs(ir_dir, vis_dir)] == ["p0", "p1", "p2", "p3"]


def test_the_first_image_without_a_partner_is_named(pairs, caplog):
    ir_dir, vis_dir = pairs
    cv2.imwrite(str(ir_dir / "zz.png"), np.zeros((45, 70), np.uint8))
    cv2.imwrite(str(vis_dir / "aa.png"), np.zeros((45, 70), np.uint8))
    with caplog.at_level("WARNING", logger="streamfuse.eval_pairs"):
        find_pairs(ir_dir, vis_dir)
    assert f"1 IR images in {ir_dir} and 2 visible images in {vis_dir} have no partner (first: aa)" in caplog.text


def test_a_macs_hidden_metadata_files_are_no_images(evaluate, pairs, tmp_path):
    """A Mac copying onto a FAT or exFAT drive writes "._NAME" beside each file: read as an image, it stopped the
    run."""
    ir_dir, vis_dir = pairs
    for folder in (ir_dir, vis_dir):
        (folder / "._p0.png").write_bytes(b"\0\5\x16\7" + bytes(100))
    assert [s for s, _, _ in find_pairs(ir_dir, vis_dir)] == ["p0", "p1", "p2"]
    assert evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(tmp_path / "out")]) == 0


def test_a_pair_of_exactly_the_metrics_minimum_side_is_read(pairs):
    """25 pixels a side is what the metrics need (``metrics.MIN_SIDE``): such a pair is read, not refused."""
    ir_dir, vis_dir = pairs
    side = metrics.MIN_SIDE
    cv2.imwrite(str(ir_dir / "p0.png"), np.full((side, side + 3), 90, np.uint8))
    cv2.imwrite(str(vis_dir / "p0.png"), np.full((side, side + 3), 60, np.uint8))
    ir, vis = read_pair("p0", ir_dir / "p0.png", vis_dir / "p0.png")
    assert ir.shape == vis.shape == (side, side + 3)


def test_a_fused_spec_whose_name_part_holds_a_slash_is_a_folder(tmp_path):
    """``NAME`` is a plain name: in ``a/b=c`` the ``=`` belongs to the folder's path, named whole in the error."""
    spec = str(tmp_path / "runs" / "gain=1.25")
    with pytest.raises(FileNotFoundError, match=f"fused folder not found: {spec}$"):
        fused_dir_method(spec)


def test_only_hclfuse_fusers_are_warned_of_ot_tables_carried_over(caplog):
    """A baseline fuser has no OT stage: the defaults' cached tables (refresh 300) are no reason to warn."""
    evaluation._check_methods([evaluation.fuser_method("max")], None)
    assert "carry over" not in caplog.text
    evaluation._check_methods([evaluation.fuser_method("hclfuse")], None)
    assert "hclfuse: OT tables carry over from one image to the next" in caplog.text


def test_a_fuser_takes_the_base_configs_ot_settings(caplog):
    """``--fuser hclfuse`` starts from the shipped eval config, as the command passes it: its synchronous solve per
    still (refresh 1, no background solve) is the fuser's, and no carry-over is warned of."""
    base = load_config(resolve(EVAL_CONFIG))
    method = evaluation.fuser_method("hclfuse", base=base)
    assert method.align == base.align and (base.align.refresh, base.align.background) == (1, False)
    evaluation._check_methods([method], None)
    assert "carry over" not in caplog.text


def test_the_montage_shows_only_the_pairs_picked_for_it(pairs, tmp_path, monkeypatch):
    """One montage row of three pairs: the darkest visible image's pair alone, not a row for every pair."""
    shown = []
    monkeypatch.setattr(evaluation, "write_montage", lambda path, tiles: shown.extend(tiles))
    ir_dir, vis_dir = pairs
    evaluate_dir(ir_dir, vis_dir, [Method("max", fuser=build_fuser(FuseConfig(name="max")))], tmp_path / "out",
                 montage_rows=1)
    assert shown == ["p0"]


def test_a_config_method_runs_its_temporal_filter_as_the_pipeline_would(pairs, tmp_path):
    """A config whose post.denoise keeps most of the previous output is scored as its pipeline makes it (warned of):
    the second pair's output carries the first's, unlike max of the second pair alone."""
    ir_dir, vis_dir = pairs
    (cfg := tmp_path / "blend.yaml").write_text("fuse: {name: max}\npost: {denoise: 0.9, denoise_threshold: 255}\n")
    evaluate_dir(ir_dir, vis_dir, [config_method(cfg)], tmp_path / "out", save_dir=tmp_path / "saved")
    ir, vis_y = read_pair("p1", ir_dir / "p1.png", vis_dir / "p1.jpg")
    alone = np.maximum(ir, vis_y).astype(np.float64)
    assert np.abs(read_grey(tmp_path / "saved" / "p1.png") - alone).mean() > 5


@pytest.mark.parametrize("section", ["stabilize: {strength: 0.5}", "post: {denoise: 0.5}"])
def test_either_temporal_stage_of_a_config_is_warned_of_alone(tmp_path, caplog, section):
    (cfg := tmp_path / "live.yaml").write_text(f"fuse: {{name: max}}\n{section}\n")
    evaluation._check_methods([config_method(cfg)], None)
    assert "max (live.yaml): the IR stabilizer and the temporal filter carry over from one image" in caplog.text


def test_montage_rows_spread_over_the_visible_brightness(tmp_path):
    """Stems sorted by their visible image's mean (not the IR's), picked evenly from the darkest to the brightest;
    all of them when they fit."""
    pairs = []
    for stem, level in zip("cadeb", (90, 10, 130, 170, 50)):  # visible levels; the IR runs the other way
        cv2.imwrite(str(vis := tmp_path / f"{stem}_vi.png"), np.full((30, 30), level, np.uint8))
        cv2.imwrite(str(ir := tmp_path / f"{stem}_ir.png"), np.full((30, 30), 255 - level, np.uint8))
        pairs.append((stem, ir, vis))
    assert evaluation._montage_stems(pairs, 4) == ["a", "b", "d", "e"]  # indices 0, 1.33, 2.67, 4 rounded
    assert evaluation._montage_stems(pairs, 2) == ["a", "e"]
    assert sorted(evaluation._montage_stems(pairs, 5)) == sorted(evaluation._montage_stems(pairs, 9)) == list("abcde")


def test_method_names_must_be_unique(pairs, tmp_path):
    ir_dir, vis_dir = pairs
    rows = [Method("max", fuser=build_fuser(FuseConfig(name=kind))) for kind in ("max", "average")]
    with pytest.raises(ValueError, match=r"method names must be unique, got \['max', 'max'\]"):
        evaluate_dir(ir_dir, vis_dir, rows, tmp_path / "out")


def test_the_reference_against_itself_has_infinite_psnr_and_squared_errors_are_averaged(tmp_path, rng):
    """mse_ref is the mean of the squared differences (half the pixels 4 off: 8, not the squared mean 4)."""
    ir_dir, vis_dir, ref = _two_sizes(tmp_path, rng)
    off = {stem: img + np.where(np.arange(img.shape[1]) % 2, 4, 0).astype(np.uint8) for stem, img in ref.items()}
    methods = [Method("ref", fused_dir=_fused_folder(tmp_path / "ref", ref)),
               Method("off", fused_dir=_fused_folder(tmp_path / "off", off))]
    result = evaluate_dir(ir_dir, vis_dir, methods, tmp_path / "out", reference="ref")
    assert result.means["ref"]["psnr_ref"] == math.inf and result.means["ref"]["delta_grey"] == 0
    assert {r["mse_ref"] for r in result.rows if r["method"] == "off"} == {8.0}
    assert result.means["off"]["psnr_ref"] == pytest.approx(10 * math.log10(255**2 / 8))


def test_delta_grey_is_the_mean_absolute_difference_from_the_reference(tmp_path, rng):
    """Half the pixels 5 grey levels brighter than the reference's, half 5 darker: delta grey 5, not the 0 of the
    differences' mean."""
    ir_dir, vis_dir, ref = _two_sizes(tmp_path, rng)
    off = {stem: (img.astype(np.int16) + np.where(np.arange(img.shape[1]) % 2, 5, -5)).astype(np.uint8)
           for stem, img in ref.items()}
    methods = [Method("ref", fused_dir=_fused_folder(tmp_path / "ref", ref)),
               Method("off", fused_dir=_fused_folder(tmp_path / "off", off))]
    result = evaluate_dir(ir_dir, vis_dir, methods, tmp_path / "out", reference="ref")
    assert {r["delta_grey"] for r in result.rows if r["method"] == "off"} == {5.0}
    assert result.means["off"]["delta_grey"] == 5.0


def test_a_metric_finite_on_no_pair_has_a_nan_mean(pairs, tmp_path):
    """QSF infinite on every pair (flat sources, textured output): no mean to give, NaN rather than a plausible 0."""
    ir_dir, vis_dir = pairs
    texture = read_grey(ir_dir / "p1.png")
    fused = tmp_path / "fused"
    fused.mkdir()
    for stem in ("p0", "p1", "p2"):
        for folder in (ir_dir, vis_dir):
            for old in folder.glob(f"{stem}.*"):
                old.unlink()
            cv2.imwrite(str(folder / f"{stem}.png"), np.full((45, 70), 90, np.uint8))
        cv2.imwrite(str(fused / f"{stem}.png"), texture)
    means = evaluate_dir(ir_dir, vis_dir, [Method("textured", fused_dir=fused)], tmp_path / "out").means["textured"]
    assert math.isnan(means["QSF"]) and math.isfinite(means["SF"])


def test_an_earlier_runs_other_yaml_files_in_out_are_kept(pairs, tmp_path):
    """Only the files a run writes (its table, CSV, montage and ``*.resolved.yaml``) are replaced: a user's own
    ``notes.yaml`` in --out stays."""
    ir_dir, vis_dir = pairs
    (out := tmp_path / "out").mkdir()
    (out / "notes.yaml").write_text("mine: true\n")
    evaluate_dir(ir_dir, vis_dir, [Method("max", fuser=build_fuser(FuseConfig(name="max")))], out)
    assert (out / "notes.yaml").read_text() == "mine: true\n"


def test_each_fuser_saves_into_a_folder_of_a_file_name_safe_version_of_its_name(tmp_path):
    fusers = [Method(n, fuser=build_fuser(FuseConfig(name="max"))) for n in ("max", "max:sharpen=1", "a b/c")]
    assert evaluation._save_dirs(fusers, tmp_path) == {"max": tmp_path / "max", "max:sharpen=1": tmp_path /
                                                       "max_sharpen_1", "a b/c": tmp_path / "a_b_c"}


def test_two_fusers_whose_names_make_one_save_folder_are_refused_before_any_work(evaluate, pairs, tmp_path):
    """Two configs named "a b.yaml" and "a_b.yaml" with other settings made one save folder, "max__a_b.yaml_": the
    second method's images replaced the first's, and the run ended 0 with one method's images under both names."""
    ir_dir, vis_dir = pairs
    (spaced := tmp_path / "a b.yaml").write_text("fuse:\n  name: max\n")
    (joined := tmp_path / "a_b.yaml").write_text("fuse:\n  name: max\nbaseline:\n  contrast: 1.5\n")
    saved, out = tmp_path / "saved", tmp_path / "out"
    with pytest.raises(SystemExit, match=rf"^{EVALUATE_ERROR}--save: the methods 'max \(a b.yaml\)' and "
                                         rf"'max \(a_b.yaml\)' would both save into {saved / 'max__a_b.yaml_'}; "):
        evaluate([str(ir_dir), str(vis_dir), "--config", str(spaced), "--config", str(joined), "--out", str(out),
                  "--save", str(saved)])
    assert not saved.exists() and not out.exists()


def test_a_saved_and_scored_still_is_the_image_a_replay_writes_of_it(evaluate, pairs, tmp_path):
    """``average`` puts half the pixels on .5: the saved PNG rounds them as the post stage does for replay and live
    runs (half up), not half to even, and the metrics score that image."""
    ir_dir, vis_dir = pairs
    out, saved = tmp_path / "out", tmp_path / "saved"
    evaluate([str(ir_dir), str(vis_dir), "--fuser", "average", "--out", str(out), "--save", str(saved)])
    processor = FrameProcessor(build_fuser(FuseConfig("average")), post=PostConfig(encoding="mono8"))
    scored = {r["image"]: r for r in read_csv(out / "metrics.csv")}
    for stem, ir_path, vis_path in find_pairs(ir_dir, vis_dir):
        ir, vis_y = read_pair(stem, ir_path, vis_path)
        written = processor(still_pair(ir, vis_y)).image
        np.testing.assert_array_equal(cv2.imread(str(saved / f"{stem}.png"), cv2.IMREAD_UNCHANGED), written)
        assert float(scored[stem]["EN"]) == pytest.approx(metrics.entropy(written), rel=1e-5)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_scoring_shows_its_progress_on_a_terminal(evaluate, pairs, tmp_path, monkeypatch):
    # 32 pairs of several fusers (the README's quality runs, tools/ablate.py's dozen rows) scored for minutes
    # without a line of output, where a replay shows a bar
    ir_dir, vis_dir = pairs
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--fuser", "average", "--out", str(tmp_path / "out")])
    assert "3/3" in terminal.getvalue() and "pair" in terminal.getvalue()


def test_scoring_shows_no_bar_where_stderr_is_no_terminal(evaluate, pairs, tmp_path, capsys):
    ir_dir, vis_dir = pairs
    evaluate([str(ir_dir), str(vis_dir), "--fuser", "max", "--out", str(tmp_path / "out")])
    assert "3/3" not in capsys.readouterr().err  # a log file keeps no bar's redraws
