"""tools/ablate.py on generated pairs with an untrained net: the JSON summary's structure and its deltas.
Runs main() in-process; the shipped weights are not needed (the rows' plumbing is what is checked)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfuse import ablation

ROWS = ("no_guidance", "image_guidance=1", "image_guidance=5", "latent_zero", "latent_swap", "no_ot", "K=1", "K=2",
        "K=4", "K=8", "K=20", "rule", "max:contrast=1.25", "max", "max:sharpen=0.5", "max:sharpen=1", "average",
        "average:sharpen=1", "laplacian", "laplacian:sharpen=0.5")
METRICS = ("VIF", "Qabf", "AG", "SF", "Nabf", "Over", "SSIM")


@pytest.fixture
def folders(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """Three 40x56 pairs of different scenes, and a visible image without a partner."""
    ir_dir, vis_dir = tmp_path / "thermal", tmp_path / "rgb"
    ir_dir.mkdir()
    vis_dir.mkdir()
    for i in range(3):
        scene = cv2.GaussianBlur(rng.uniform(0, 255, (40, 56)), (0, 0), 2.0)
        cv2.imwrite(str(ir_dir / f"f{i}.png"), np.clip(scene * 1.4 - 40, 0, 255).astype(np.uint8))
        cv2.imwrite(str(vis_dir / f"f{i}.png"), np.clip(255 - scene + 20 * i, 0, 255).astype(np.uint8))
    cv2.imwrite(str(vis_dir / "extra.png"), np.zeros((40, 56), np.uint8))
    return ir_dir, vis_dir


def test_json_summary(tool, folders, tmp_path, random_weights, capsys):
    ir_dir, vis_dir = folders
    summary_file = tmp_path / "runs" / "ablation.json"
    tool("ablate").main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--weights", str(random_weights),
                         "--json", str(summary_file), "--out", str(tmp_path / "out")])
    summary = json.loads(summary_file.read_text())
    assert summary["n"] == 3 and set(summary["default"]) == set(METRICS)
    assert set(ROWS) <= set(summary["rows"]) and "default" not in summary["rows"]
    for name, row in summary["rows"].items():
        assert set(row) == {"n", *METRICS, "delta_grey", "psnr_ref", "ms"}, name
        assert all(math.isfinite(v) for v in row.values()) and row["n"] == 3, name  # latent_swap's last pair too
    rows = summary["rows"]
    assert rows["rule"]["delta_grey"] > 0 and rows["latent_zero"]["delta_grey"] > 0
    assert rows["max:contrast=1.25"]["delta_grey"] != rows["max"]["delta_grey"]
    energies = summary["guidance_energies"]
    assert set(energies) == {"with", "without", "image_guidance=1", "image_guidance=5"}
    assert set(energies["with"]) == {"heat", "structure", "consistency", "image_structure"}
    table = (tmp_path / "out" / "metrics.md").read_text()
    assert table.splitlines()[0].endswith("| ms/frame | delta grey |") and "| latent_swap | 3 |" in table
    assert "| rule | 3 |" in capsys.readouterr().out


def test_latent_swap_decodes_with_the_next_pairs_latent(folders, random_weights):
    """Pair i gets pair i+1's latent, the last pair the first's; with three equal latents nothing would move."""
    from streamfuse.eval_pairs import find_pairs, read_grey
    from streamfuse.fusers import FuseConfig
    from streamfuse.inference import EngineConfig, HCLFuseConfig
    from streamfuse.processor import build_fuser

    pairs = find_pairs(*folders)
    hcl = build_fuser(FuseConfig(), hclfuse=HCLFuseConfig(weights=str(random_weights)),
                      engine=EngineConfig(device="cpu"))
    swap = ablation.LatentRow("latent_swap", hcl, pairs)
    images = [(read_grey(i), read_grey(v)) for _, i, v in pairs]
    moved = []
    for k, (ir, vis) in enumerate(images):
        expected = hcl.decode_with(ir, vis, hcl.latent(*images[(k + 1) % 3]))
        np.testing.assert_allclose(swap.fuse(ir, vis), expected, atol=1e-3)  # OT warm starts: float rounding only
        moved.append(np.abs(expected - hcl.decode_with(ir, vis, hcl.latent(ir, vis))).mean())
    assert max(moved) > 0.01  # the swapped latent is not the pair's own


@pytest.mark.parametrize("case, message", [
    ("out_is_file", "--out {tmp}/afile exists and is not a folder"),
    ("json_in_vis", "--json {vis}/summary.json is or lies in the visible folder {vis}"),
    ("out_is_ir", "is or lies in the IR folder {ir}"),
    ("size_mismatch", "f1: IR {ir}/f1.png (56x40) and visible {vis}/f1.png (28x20) differ in size"),
])
def test_bad_outputs_and_sizes_are_one_line(tool, folders, tmp_path, random_weights, case, message):
    ir_dir, vis_dir = folders
    (tmp_path / "afile").write_text("kept")
    out = {"out_is_file": tmp_path / "afile", "out_is_ir": ir_dir}.get(case, tmp_path / "out")
    extra = ["--json", str(vis_dir / "summary.json")] if case == "json_in_vis" else []
    if case == "size_mismatch":  # the second pair: the latent_swap row reads it while fusing the first
        cv2.imwrite(str(vis_dir / "f1.png"), np.zeros((20, 28), np.uint8))
    inputs = {p: p.read_bytes() for d in folders for p in d.iterdir()}
    with pytest.raises(SystemExit) as exc:
        tool("ablate").main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--weights", str(random_weights), "--limit",
                             "3", "--steps", "1", "--no-baselines", "--out", str(out), *extra])
    code = str(exc.value.code)
    assert code.startswith("ablate.py: error: ") and "\n" not in code
    assert message.format(tmp=tmp_path, ir=ir_dir, vis=vis_dir) in code
    assert {p: p.read_bytes() for d in folders for p in d.iterdir()} == inputs
    assert (tmp_path / "afile").read_text() == "kept"


@pytest.mark.parametrize("args, message", [
    (["--steps", "1,x"], "argument --steps: 'x' is not an integer"),
    (["--steps", "1,30"], "argument --steps: steps=30 is out of range; allowed: 1..20"),  # before the model loads
    (["--steps", "2,4,2"], "argument --steps: '2,4,2' names a K twice"),
    (["--limit", "-1"], "argument --limit: must be >= 0, got -1"),
    (["--set", "fuse.name=max"], "--set fuse.name=max: the rows take overrides of align, hclfuse, engine"),
    # each baseline row sets both baseline keys: an override of one was taken and changed nothing
    (["--set", "baseline.sharpen=1"], "--set baseline.sharpen=1: the rows take overrides of align, hclfuse, engine"),
    (["--weights", "a.pt", "--set", "hclfuse.weights=b.pt"], "--set hclfuse.weights=b.pt: the rows take overrides of"),
    (["--vis", "x"], "give both --ir and --vis, or neither (then --data/--dataset)"),
])
def test_usage_errors_are_argparse_errors(tool, folders, tmp_path, capsys, args, message):
    ir_dir, vis_dir = folders
    base = [] if "--vis" in args else ["--ir", str(ir_dir), "--vis", str(vis_dir)]
    with pytest.raises(SystemExit) as exc:
        tool("ablate").main([*base, *args, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("args, message", [
    (["--config", "nosuch"], "nosuch: no such config file here, nor a shipped config of that name; shipped: demo, "),
    (["--config", "nosuch.yaml"], "nosuch.yaml: no such config file here, nor a shipped config of that name; "),
    (["--set", "hclfuse.steps=30"], "eval.yaml: hclfuse: steps=30 is out of range; allowed: 1..20"),
])
def test_config_errors_are_one_line_and_exit_2_as_in_run(tool, folders, tmp_path, monkeypatch, capsys, args,
                                                         message):
    """--set is a config override as in run, replay and evaluate, and a bad one is reported as theirs are."""
    monkeypatch.chdir(tmp_path)
    ir_dir, vis_dir = folders
    with pytest.raises(SystemExit) as exc:
        tool("ablate").main(["--ir", str(ir_dir), "--vis", str(vis_dir), *args, "--out", str(tmp_path / "out")])
    [line] = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and line.startswith("ablate.py: config error: ") and message in line


def test_dataset_picks_the_pairs_under_data_which_defaults_to_streamfuse_data(tool, tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMFUSE_DATA", str(tmp_path / "shared"))
    for data in ([], ["--data", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            tool("ablate").main([*data, "--dataset", "some/set", "--out", str(tmp_path / "out")])
        root = Path(data[1]) if data else tmp_path / "shared"
        assert str(exc.value.code) == f"ablate.py: error: IR folder not found: {root / 'some' / 'set' / 'ir'}"


def test_latent_swap_needs_two_pairs(folders, random_weights, caplog):
    """With one pair the swap would decode the pair with its own latent: a row equal to the default (delta grey 0)
    that reads as "the latent does nothing". It is left out, with a warning."""
    from streamfuse.config import load_config
    from streamfuse.configs import resolve
    from streamfuse.eval_pairs import find_pairs

    cfg = load_config(resolve("eval"), [f"hclfuse.weights={random_weights}", "engine.device=cpu"])
    pairs = find_pairs(*folders)
    names = [m.name for m in ablation.methods(cfg, [1], pairs[:1], baselines=False)]
    assert "latent_swap" not in names and "latent_zero" in names
    assert "latent_swap left out: it needs at least two pairs" in caplog.text
    assert "latent_swap" in [m.name for m in ablation.methods(cfg, [1], pairs[:2], baselines=False)]


def test_json_that_is_a_folder_is_refused_before_any_work(tool, folders, tmp_path, monkeypatch):
    ir_dir, vis_dir = folders
    monkeypatch.setattr(ablation, "evaluate_dir", lambda *a, **k: pytest.fail("ran before refusing"))
    with pytest.raises(SystemExit) as exc:
        tool("ablate").main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--json", str(tmp_path), "--out",
                             str(tmp_path / "out")])
    assert str(exc.value.code) == f"ablate.py: error: --json {tmp_path} exists and is not a file"


def test_ctrl_c_is_one_line_and_exit_130(tool, folders, tmp_path, random_weights, monkeypatch, capsys):
    ir_dir, vis_dir = folders

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablation, "evaluate_dir", interrupted)
    with pytest.raises(BaseException) as exc:  # on a KeyboardInterrupt that escapes, too
        tool("ablate").main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--weights", str(random_weights), "--steps",
                             "1", "--no-baselines", "--out", str(tmp_path / "out"), "--json", str(tmp_path / "s.json")])
    assert exc.type is SystemExit and exc.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["ablate.py: interrupted (Ctrl-C)"]
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("name", ["metrics.csv", "montage.png", "eval.resolved.yaml"])
def test_json_that_is_one_of_out_s_own_files_is_refused(name, tool, folders, tmp_path, monkeypatch, capsys):
    # it was written over the table, montage or config of the same run (or that file over it)
    ir_dir, vis_dir = folders
    monkeypatch.setattr(ablation, "evaluate_dir", lambda *a, **k: pytest.fail("ran before refusing"))
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit) as exc:
        tool("ablate").main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--json", str(tmp_path / "out" / name),
                             "--out", str(tmp_path / "out" / ".")])  # the same folder, spelt otherwise
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f": error: --json {tmp_path / 'out' / name} is a file that --out gets (its table, CSV, montage or "
        "configs); name another")


def _eval_config(weights: Path, *overrides: str):
    from streamfuse.config import load_config
    from streamfuse.configs import resolve

    return load_config(resolve("eval"), [f"hclfuse.weights={weights}", "engine.device=cpu", *overrides])


def test_rows_keep_the_configs_ot_switch_and_fuser(folders, random_weights):
    """The hclfuse rows start from the config: OT off there is off in every row (no_ot is then the default), and a
    config naming another fuser still ablates hclfuse; --no-baselines leaves out the sharpen rows."""
    from streamfuse.eval_pairs import find_pairs

    pairs = find_pairs(*folders)
    rows = ablation.methods(_eval_config(random_weights, "align.enabled=false", "fuse.name=max"), [1], pairs,
                                  baselines=False)
    hcl = [m for m in rows if m.align is not None]
    assert hcl[0].name == "default" and not any(m.align.enabled for m in hcl)
    assert hcl[0].fuser.name == "hclfuse"
    assert [m.name for m in rows if m.name.split(":")[0] in ("max", "average", "laplacian")] == [
        "max:contrast=1.25", "max:contrast=1.3"]


def test_only_the_no_ot_row_turns_ot_off(folders, random_weights):
    """With OT on in the config, every hclfuse row keeps it but no_ot, the row that ablates it."""
    from streamfuse.eval_pairs import find_pairs

    rows = ablation.methods(_eval_config(random_weights, "align.enabled=true"), [1], find_pairs(*folders),
                                  baselines=False)
    switched = {m.name: m.align.enabled for m in rows if m.align is not None}
    assert switched == {**{name: True for name in switched}, "no_ot": False} and switched["default"]


def test_latent_swap_between_pairs_of_two_sizes_resizes_the_latent(tmp_path, rng, random_weights):
    from streamfuse.eval_pairs import find_pairs, read_grey
    from streamfuse.processor import config_fuser

    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for stem, shape in (("a", (40, 56)), ("b", (48, 72))):
            scene = cv2.GaussianBlur(rng.uniform(0, 255, shape), (0, 0), 2.0).astype(np.uint8)
            cv2.imwrite(str(tmp_path / sub / f"{stem}.png"), scene)
    pairs = find_pairs(tmp_path / "ir", tmp_path / "vi")
    swap = ablation.LatentRow("latent_swap", config_fuser(_eval_config(random_weights)), pairs)
    for _, ir, vis in pairs:
        assert swap.fuse(read_grey(ir), read_grey(vis)).shape == read_grey(ir).shape


def test_guidance_energies_are_means_over_every_pair_and_without_means_no_image_guide(folders, monkeypatch,
                                                                                random_weights):
    from streamfuse.eval_pairs import find_pairs

    built = {}

    class Energies:
        def __init__(self, cfg):
            self.guidance, self.steps = cfg.hclfuse.guidance, cfg.hclfuse.image_guidance
            built.setdefault("steps", []).append((self.guidance, self.steps))

        def energies(self, ir, vis, name):
            return {"heat": float(name[1:]), "image_structure": float(self.steps)}

    monkeypatch.setattr(ablation, "config_fuser", Energies)
    out = ablation.guidance_energies(_eval_config(random_weights, "hclfuse.image_guidance=3"),
                                           find_pairs(*folders))
    assert out["with"] == {"heat": 1.0, "image_structure": 3.0}  # pairs f0, f1, f2
    assert out["without"]["image_structure"] == 0.0 and out["image_guidance=5"]["image_structure"] == 5.0
    assert built["steps"][:2] == [(True, 3), (False, 0)]


def test_reference_outputs_are_scored_only_for_the_dataset_and_limit_reaches_the_scoring(tool, folders, tmp_path,
                                                                                        monkeypatch, random_weights):
    """Published outputs under <data>/reference are those of msrs/test: with --ir/--vis they are not rows; --limit
    limits the pairs that are scored, not only those the rows read."""
    ir_dir, vis_dir = folders
    (tmp_path / "shared" / "reference" / "seafusion" / "msrs_test").mkdir(parents=True)
    seen = {}

    def evaluate_dir(*args, **kwargs):
        seen.update(rows=[m.name for m in args[2]], limit=kwargs.get("limit"))
        raise ValueError("scored")

    monkeypatch.setattr(ablation, "evaluate_dir", evaluate_dir)
    with pytest.raises(SystemExit, match="^ablate.py: error: scored$"):
        tool("ablate").main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--data", str(tmp_path / "shared"),
                             "--weights", str(random_weights), "--steps", "1", "--no-baselines", "--limit", "2",
                             "--out", str(tmp_path / "out")])
    assert "seafusion" not in seen["rows"] and seen["limit"] == 2


def test_a_published_folder_lacking_images_says_its_own_pair_count(tool, folders, tmp_path, random_weights, capsys):
    # a reference row is scored on the pairs it has an image for; its JSON row gave no count, so its means read as
    # being over the top-level n pairs
    ir_dir, vis_dir = folders
    data = tmp_path / "shared"
    shutil.copytree(ir_dir, data / "msrs" / "test" / "ir")
    shutil.copytree(vis_dir, data / "msrs" / "test" / "vi")
    published = data / "reference" / "seafusion" / "msrs_test"
    published.mkdir(parents=True)
    for stem in ("f0", "f1"):  # none for f2
        shutil.copy(vis_dir / f"{stem}.png", published)
    summary_file = tmp_path / "ablation.json"
    tool("ablate").main(["--data", str(data), "--weights", str(random_weights), "--steps", "1", "--no-baselines",
                         "--json", str(summary_file), "--out", str(tmp_path / "out")])
    summary = json.loads(summary_file.read_text())
    assert summary["n"] == 3 and summary["rows"]["seafusion"]["n"] == 2
    assert {row["n"] for name, row in summary["rows"].items() if name != "seafusion"} == {3}
    assert "| seafusion | 2 |" in capsys.readouterr().out


@pytest.mark.parametrize("out", ["s", "s/sub"])
def test_json_that_is_the_out_folder_or_above_it_is_refused_before_any_work(out, tool, folders, tmp_path,
                                                                             monkeypatch, capsys):
    # the whole ablation ran, then its JSON could not be written over the folder its table went to
    ir_dir, vis_dir = folders
    monkeypatch.setattr(ablation, "evaluate_dir", lambda *a, **k: pytest.fail("ran before refusing"))
    with pytest.raises(SystemExit) as exc:
        tool("ablate").main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--json", str(tmp_path / "s"), "--out",
                             str(tmp_path / out)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f": error: --json {tmp_path / 's'} is the --out folder {tmp_path / out} or a folder above it; name a file")


def test_a_run_stopped_before_its_json_leaves_out_and_json_of_one_run(tool, folders, tmp_path, random_weights,
                                                                       monkeypatch):
    # the table went into --out before the energies were computed: a Ctrl-C then left it beside an earlier JSON
    ir_dir, vis_dir = folders
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.md").write_text("earlier\n")

    def table(dir_ir, dir_vis, rows, out, **kwargs):
        from streamfuse.evaluation import EvalResult
        (Path(out) / "metrics.md").write_text("this run's\n")
        return EvalResult(means={"default": {"n": 3, **dict.fromkeys(METRICS, 1.0)}})

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablation, "evaluate_dir", table)
    monkeypatch.setattr(ablation, "guidance_energies", interrupted)
    with pytest.raises(SystemExit) as exc:
        tool("ablate").main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--weights", str(random_weights), "--steps",
                             "1", "--no-baselines", "--out", str(tmp_path / "out"), "--json", str(tmp_path / "s.json")])
    assert exc.value.code == 130 and (tmp_path / "out" / "metrics.md").read_text() == "earlier\n"


def test_json_among_the_published_images_it_scores_is_refused(tool, folders, tmp_path, monkeypatch):
    # the JSON was written over the published image it had just scored
    ir_dir, vis_dir = folders
    data = tmp_path / "shared"
    shutil.copytree(ir_dir, data / "msrs" / "test" / "ir")
    shutil.copytree(vis_dir, data / "msrs" / "test" / "vi")
    image = data / "reference" / "seafusion" / "msrs_test" / "f0.png"
    image.parent.mkdir(parents=True)
    shutil.copy(vis_dir / "f0.png", image)
    monkeypatch.setattr(ablation, "evaluate_dir", lambda *a, **k: pytest.fail("ran before refusing"))
    published = r"^ablate.py: error: --json .* is or lies in the published \(seafusion\) folder "
    with pytest.raises(SystemExit, match=published):
        tool("ablate").main(["--data", str(data), "--json", str(image), "--out", str(tmp_path / "out")])
    assert image.read_bytes() == (vis_dir / "f0.png").read_bytes()
