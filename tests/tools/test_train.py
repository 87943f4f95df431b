"""streamfuse.train (tools/train.py): a few steps on generated pairs, weights + config written, resume continues,
msrs/test excluded, settings through the one override parser."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from streamfuse import train
from streamfuse.model.weights import DEFAULT_WEIGHTS
from streamfuse.train.cli import to_overrides

TRAIN_ERROR = "streamfuse train: error: "  # how the command's error lines start

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A tiny data folder: grey pairs in msrs/train, a 3-channel IR pair (LLVIP-like), and an excluded msrs/test."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"  # beside the runs' --out folders, not around them
    for sub, n, ir_channels in (("msrs/train", 2, 1), ("llvip/train", 1, 3), ("msrs/test", 1, 1)):
        for d in ("ir", "vi"):
            (root / sub / d).mkdir(parents=True)
        for i in range(n):
            ir = rng.integers(0, 256, (40, 56, ir_channels), dtype=np.uint8)
            vis = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
            cv2.imwrite(str(root / sub / "ir" / f"{i:03d}.png"), ir)
            cv2.imwrite(str(root / sub / "vi" / f"{i:03d}.png"), vis)
    return root


def test_load_pairs_reads_training_sets_only(data):
    pairs = train.load_pairs(data)
    names = [name for name, _, _ in pairs]
    assert len(pairs) == 3 and not any(n.startswith("msrs/test") for n in names)
    assert all(ir.ndim == 2 and vis.ndim == 2 and ir.dtype == np.uint8 for _, ir, vis in pairs)


def test_train_few_steps_then_resume(data, tmp_path, caplog):
    out = tmp_path / "run"
    common = ["--data", str(data), "--out", str(out), "--batch", "2", "--crop", "32", "--warmup", "1",
              "--threads", str(torch.get_num_threads()), "--ckpt-minutes", "100", "--model.widths", "4", "8",
              "--model.denoiser_width", "4"]
    train.main([*common, "--steps", "3"])
    assert (out / DEFAULT_WEIGHTS.name).is_file() and (out / "checkpoint.pt").is_file()
    resolved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert resolved["train"]["steps"] == 3 and resolved["model"]["widths"] == [4, 8]
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 3

    with pytest.raises(SystemExit, match=rf"^{TRAIN_ERROR}cannot resume with other settings than the run started with "
                                         r"\(loss.gradient 40.0 -> 7.0, train.batch 2 -> 1, train.seed 0 -> 1\): "
                                         r"give the same, or start another --out$"):  # a seed: other batches, noise
        train.main([*common[:4], "--batch", "1", *common[6:], "--loss.gradient", "7", "--seed", "1", "--steps", "5",
                    "--resume"])
    assert yaml.safe_load((out / "train_config.yaml").read_text()) == resolved  # the run's settings, as they were
    with caplog.at_level("INFO", logger="train"):
        train.main([*common, "--steps", "5", "--resume"])
    assert "resumed" in caplog.text and "resuming with another budget (train.steps 3 -> 5)" in caplog.text
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 5

    from streamfuse.model import load_weights

    net, extra = load_weights(out / DEFAULT_WEIGHTS.name)
    assert extra["step"] == 5 and net.cfg.widths == (4, 8)
    with torch.inference_mode():
        ir = torch.rand(1, 1, 32, 32)
        fused = net(ir, torch.rand(1, 1, 32, 32), torch.zeros(1, 4, 4, 4), ir)
    assert torch.isfinite(fused).all()


def test_missing_data_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no training pairs") as info:
        train.main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--steps", "1"])
    assert "\n" not in str(info.value) and not (tmp_path / "o").exists()  # nothing written for a run that cannot be


def test_init_takes_matching_tensors_and_refuses_another_architecture(data, tmp_path, caplog):
    from streamfuse.model import HCLFuseNet, ModelConfig, load_weights, save_weights

    tiny = ModelConfig(widths=(4, 8), denoiser_width=4)
    start = HCLFuseNet(tiny)
    with torch.no_grad():
        start.decoder.head.bias.fill_(0.25)  # a state training from scratch would not have
    save_weights(tmp_path / "start.pt", start)
    common = ["--data", str(data), "--batch", "2", "--crop", "32", "--threads", "1", "--ckpt-minutes", "100",
              "--model.denoiser_width", "4", "--init", str(tmp_path / "start.pt"), "--steps", "1"]
    train.main([*common, "--model.widths", "4", "8", "--out", str(tmp_path / "run"), "--lr", "1e-9"])
    net, _ = load_weights(tmp_path / "run" / DEFAULT_WEIGHTS.name)
    torch.testing.assert_close(net.decoder.head.bias, torch.full((3,), 0.25), atol=1e-4, rtol=0)
    with caplog.at_level("INFO", logger="train"):  # another width: only the shape-independent tensors carry over
        train.main([*common, "--model.widths", "8", "8", "--out", str(tmp_path / "other")])
    assert "left at initialisation" in caplog.text
    with pytest.raises(SystemExit, match="tensors match the model config") as info:
        train.main([*common, "--model.widths", "2", "2", "--model.denoiser_width", "2",
                              "--model.latent_channels", "3", "--out", str(tmp_path / "third")])
    assert "\n" not in str(info.value)


def test_init_needs_at_least_half_of_the_files_tensors_to_match(tmp_path):
    # a few coincident shapes of another architecture are no starting point; half of them is the line
    from streamfuse.model import HCLFuseNet, ModelConfig, save_weights
    from streamfuse.train import loop

    net = HCLFuseNet(ModelConfig(widths=(4, 8), denoiser_width=4))
    save_weights(tmp_path / "start.pt", net)
    blob = torch.load(str(tmp_path / "start.pt"), weights_only=True)
    own = [k for k in blob["state_dict"] if not k.startswith(("denoiser.", "student."))][:10]
    for foreign, verdict in ((10, "taken"), (11, "refused")):
        blob["state_dict"] = {**{k: blob["state_dict"][k] for k in own},
                              **{f"other.{i}": torch.zeros(1) for i in range(foreign)}}
        torch.save(blob, str(tmp_path / f"{verdict}.pt"))
    loop._load_matching(net, tmp_path / "taken.pt")
    with pytest.raises(ValueError, match=r"refused.pt: only 10 of its 21 tensors match the model config"):
        loop._load_matching(net, tmp_path / "refused.pt")


def test_init_from_weights_without_a_student_starts_it_as_a_copy_of_the_teacher(tmp_path):
    # a stage-1 file from before the student: --distill must start from the teacher, not from a random student
    from streamfuse.model import HCLFuseNet, ModelConfig, save_weights
    from streamfuse.train import loop

    tiny = ModelConfig(widths=(4, 8), denoiser_width=4)
    save_weights(tmp_path / "start.pt", HCLFuseNet(tiny))
    blob = torch.load(str(tmp_path / "start.pt"), weights_only=True)
    blob["state_dict"] = {k: v for k, v in blob["state_dict"].items() if not k.startswith("student.")}
    torch.save(blob, str(tmp_path / "start.pt"))
    torch.manual_seed(1)  # another initialisation than the file's
    net = HCLFuseNet(tiny)
    loop._load_matching(net, tmp_path / "start.pt")
    teacher, student = net.denoiser.state_dict(), net.student.state_dict()
    assert teacher.keys() == student.keys() and all(torch.equal(teacher[k], student[k]) for k in teacher)


@pytest.mark.parametrize("stage, learns", [(["--distill", "--teacher_steps", "3"], {"student"}),
                                           (["--decoder_only"], {"decoder"})])
def test_a_stage_trains_only_its_part(data, tmp_path, stage, learns):
    from streamfuse.model import HCLFuseNet, ModelConfig, load_weights, save_weights

    tiny = ModelConfig(widths=(4, 8), denoiser_width=4)
    save_weights(tmp_path / "start.pt", HCLFuseNet(tiny))
    train.main(["--data", str(data), "--batch", "2", "--crop", "32", "--threads", "1", "--ckpt-minutes",
                          "100", "--model.widths", "4", "8", "--model.denoiser_width", "4", "--init",
                          str(tmp_path / "start.pt"), "--steps", "2", *stage, "--out", str(tmp_path / "run")])
    before, _ = load_weights(tmp_path / "start.pt")
    after, _ = load_weights(tmp_path / "run" / DEFAULT_WEIGHTS.name)
    old, new = before.state_dict(), after.state_dict()
    moved = {k.split(".")[0] for k in old if not torch.equal(old[k], new[k])}
    assert moved == learns
    # the run's config names what it started from
    assert yaml.safe_load((tmp_path / "run" / "train_config.yaml").read_text())["train"]["init"] == \
        str(tmp_path / "start.pt")


def test_flags_become_dotted_overrides_of_the_one_parser():
    assert to_overrides(["--steps", "3", "--model.widths", "4", "8", "--distill", "--lr", "1e-3", "--loss.kl=0"]) == [
        "train.steps=3", "model.widths=[4, 8]", "train.distill=true", "train.lr=1e-3", "loss.kl=0"]
    assert train.load_setup(to_overrides(["--lr", "1e-9", "--minutes", "2.5e1"])).train.lr == 1e-9
    setup = train.load_setup(to_overrides(["--teacher_steps", "3", "--model.widths", "4", "8", "--align.reg", "5e-2"]))
    assert setup.train.teacher_steps == 3 and setup.model.widths == (4, 8) and setup.align.reg == 0.05
    with pytest.raises(ValueError, match=r"^unexpected argument '--'; settings are"):  # no key, not "train.="
        to_overrides(["--steps", "3", "--", "--lr", "1"])


@pytest.mark.parametrize("argv, match", [
    (["--stepz", "3"], "unknown config key train.stepz"),
    (["--steps", "many"], "train.steps='many' has the wrong type"),
    (["--crop", "30"], "crop=30 is out of range"),
    (["--optim.lr", "1"], "unknown config section optim"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_settings_are_one_line(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        train.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2  # a config error's status, as for every command
    assert err.startswith("streamfuse train: error: ") and match in err and err.count("\n") == 1


def test_entry_point_runs_without_path_edits(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--model.widths" in proc.stdout and "--teacher_steps" in proc.stdout


TINY = ["--batch", "2", "--crop", "32", "--threads", "1", "--ckpt-minutes", "100", "--model.widths", "4", "8",
        "--model.denoiser_width", "4", "--steps", "2"]


def test_runs_that_would_write_over_something_or_mean_nothing_are_one_line(data, tmp_path):
    """Refused before anything is written: into the data, over --init's file or an earlier run, --resume of
    nothing, a stage of a trained model without one, a damaged checkpoint."""
    run = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(run), *TINY])
    (tmp_path / "afile").write_bytes(b"")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    cases = [(["--out", str(data / "runs")], "is in the data folder"),
             (["--out", str(tmp_path / "afile")], "is a file, not a folder"),
             (["--out", str(run)], r"holds an earlier run \(checkpoint.pt\): --resume it"),
             (["--out", str(run), "--resume", "--init", str(run / DEFAULT_WEIGHTS.name)], "whose weights the run"),
             (["--out", str(tmp_path / "none"), "--resume"], "nothing to resume"),
             (["--out", str(tmp_path / "d"), "--distill"], "give it with --init WEIGHTS"),
             (["--out", str(tmp_path / "d"), "--decoder_only"], "give it with --init WEIGHTS"),
             (["--out", str(tmp_path / "damaged"), "--resume"], "cannot resume from .*damaged")]
    weights = (run / DEFAULT_WEIGHTS.name).read_bytes()
    for args, match in cases:
        with pytest.raises(SystemExit, match=match) as info:
            train.main(["--data", str(data), *TINY, *args])
        assert "\n" not in str(info.value)
    assert (run / DEFAULT_WEIGHTS.name).read_bytes() == weights
    assert not (data / "runs").exists() and not (tmp_path / "none").exists() and not (tmp_path / "d").exists()


def test_a_second_run_given_the_same_out_is_refused_while_the_first_runs(data, tmp_path):
    # started before the first's checkpoint appeared, it passed the earlier-run check and wrote over its weights
    from streamfuse.output_lock import output_lock

    run = tmp_path / "run"
    with output_lock(run):  # what the first run holds while it trains
        with pytest.raises(SystemExit,
                           match=rf"^{TRAIN_ERROR}output .*run is being written by another run .*wait for it"):
            train.main(["--data", str(data), "--out", str(run), *TINY])
    assert not run.exists()
    train.main(["--data", str(data), "--out", str(run), *TINY])  # once it ended
    assert (run / DEFAULT_WEIGHTS.name).is_file() and not list(tmp_path.glob(".run.lock"))


def test_a_second_run_given_an_out_in_a_new_folder_is_refused_too(data, tmp_path, monkeypatch):
    # the lock was taken only where --out's folder existed: runs/a on a fresh checkout was not locked
    from streamfuse.output_lock import output_lock
    from streamfuse.train import loop

    def second_run(data, out, *rest):  # started while the first trains
        with pytest.raises(FileExistsError, match="is being written by another run"), output_lock(out):
            pass
        return out

    monkeypatch.setattr(loop, "_train", second_run)
    train.main(["--data", str(data), "--out", str(tmp_path / "runs" / "a"), *TINY])
    assert not (tmp_path / "runs").exists()  # made for the lock, left empty, removed again


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(data, tmp_path, monkeypatch, capsys):
    from streamfuse.train import loop

    real_optimise, calls = loop._optimise, []

    def interrupted(run, total, cfg):  # Ctrl-C during the third step, after two were learnt
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_optimise(run, total, cfg)

    monkeypatch.setattr(loop, "_optimise", interrupted)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train.main(["--data", str(data), "--out", str(out), *TINY[:-1], "5"])
    assert stopped.value.code == 130  # as every command stopped by the user
    assert re.match(r"streamfuse train: stopped at step 2; .*checkpoint.pt saved: --resume continues",
                    capsys.readouterr().err.splitlines()[-1])  # after the progress bar
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 2
    monkeypatch.setattr(loop, "_optimise", real_optimise)
    train.main(["--data", str(data), "--out", str(out), *TINY[:-1], "5", "--resume"])
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 5


def test_a_resume_with_other_data_or_fewer_steps_than_done_is_refused(data, tmp_path, caplog):
    """Resumed on another data folder's pairs without a word, and with --steps below the steps done it wrote the
    weights and a config saying the lower count; both logged "resumed" before any check."""
    import shutil

    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY])
    moved = shutil.copytree(data, tmp_path / "moved")  # the same pairs elsewhere: resumable
    changed = shutil.copytree(data, tmp_path / "changed")
    cv2.imwrite(str(changed / "msrs/train/vi/000.png"), np.zeros((40, 56, 3), np.uint8))
    with caplog.at_level("INFO", logger="train"):
        with pytest.raises(SystemExit, match=rf"^{TRAIN_ERROR}cannot resume with other settings than the run started "
                                             r"with \(data\.digest '\w+' -> '\w+'\)"):
            train.main(["--data", str(changed), "--out", str(out), *TINY[:-1], "4", "--resume"])
        with pytest.raises(SystemExit, match=rf"^{TRAIN_ERROR}cannot resume with --steps 1: the run has done 2 steps"):
            train.main(["--data", str(data), "--out", str(out), *TINY[:-1], "1", "--resume"])
        assert "resumed" not in caplog.text
        train.main(["--data", str(moved), "--out", str(out), *TINY[:-1], "4", "--resume"])
    assert "resumed from" in caplog.text and torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 4
    assert yaml.safe_load((out / "train_config.yaml").read_text())["data"]["pairs"] == 3


@pytest.mark.parametrize("state", [[1, 2], {"step": "8", "elapsed": 1.0}, {"step": -1, "elapsed": 1.0}],
                         ids=["list", "text_step", "negative_step"])
def test_a_checkpoint_torch_reads_that_holds_no_training_state_is_one_line(state, data, tmp_path):
    # a TypeError traceback (or one from inside the progress bar, for a step read as text)
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY])
    torch.save(state, str(out / "checkpoint.pt"))
    with pytest.raises(SystemExit, match=rf"^{TRAIN_ERROR}cannot resume from .*checkpoint.pt \(damaged, or another "
                                         r"architecture or stage\): it holds no training checkpoint") as info:
        train.main(["--data", str(data), "--out", str(out), *TINY[:-1], "4", "--resume"])
    assert "\n" not in str(info.value)


def test_tiff_pairs_are_trained_on_as_evaluate_reads_them(tmp_path):
    # training read .png, .jpg, .jpeg and .bmp only: a set of TIFF pairs was "no training pairs", a mixed one lost them
    root = tmp_path / "data"
    for d in ("ir", "vi"):
        (root / "msrs/train" / d).mkdir(parents=True)
    rng = np.random.default_rng(1)
    cv2.imwrite(str(root / "msrs/train/ir/a.tiff"), rng.integers(0, 65536, (40, 56), dtype=np.uint16))
    cv2.imwrite(str(root / "msrs/train/vi/a.tiff"), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "msrs/train/ir/b.png"), rng.integers(0, 256, (40, 56), dtype=np.uint8))
    cv2.imwrite(str(root / "msrs/train/vi/b.png"), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    assert [name for name, _, _ in train.load_pairs(root)] == ["msrs/train/ir/a.tiff", "msrs/train/ir/b.png"]


def test_an_out_holding_only_an_earlier_runs_weights_is_refused(data, tmp_path):
    # a finished run whose checkpoint was deleted to save space: a new run given its --out wrote over its weights
    out = tmp_path / "run"
    out.mkdir()
    (out / DEFAULT_WEIGHTS.name).write_bytes(b"an earlier run's weights")
    with pytest.raises(SystemExit, match=rf"holds an earlier run \({DEFAULT_WEIGHTS.name}\): --resume it"):
        train.main(["--data", str(data), "--out", str(out), *TINY])
    assert (out / DEFAULT_WEIGHTS.name).read_bytes() == b"an earlier run's weights"


def test_a_resume_on_another_number_of_cpu_threads_goes_on(data, tmp_path):
    # a run started on a workstation and resumed on a smaller machine (or the other way) was refused for --threads,
    # which changes how fast it trains, not what it learns
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY])
    resumed = [*TINY[:-1], "3"]
    resumed[resumed.index("--threads") + 1] = "2"
    train.main(["--data", str(data), "--out", str(out), *resumed, "--resume"])
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 3


def test_a_run_whose_config_predates_a_setting_resumes(data, tmp_path):
    # a run started by an earlier version, whose train_config.yaml lacks a setting added since: no KeyError
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY])
    config = yaml.safe_load((out / "train_config.yaml").read_text())
    del config["train"]["guidance_scale"]
    (out / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    train.main(["--data", str(data), "--out", str(out), *TINY[:-1], "3", "--resume"])
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 3
