"""streamfuse.train on bad input, as a user meets it: one line naming what and where, a non-zero exit, nothing written
over an input, no partial weights passed off as complete, and Ctrl-C / SIGTERM that --resume continues exactly."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from helpers_clock import SleptClock

from streamfuse import train
from streamfuse.postprocess import vis_luma
from streamfuse.signals import stopped_by
from streamfuse.model.net import HCLFuseNet, ModelConfig
from streamfuse.model.weights import DEFAULT_WEIGHTS, read_weights, save_weights
from streamfuse.output_lock import output_lock
from streamfuse.device import available_cores
from streamfuse.train import data as train_data
from streamfuse.train import loop

TRAIN_ERROR = "streamfuse train: error: "  # how the command's error lines start

TINY = ["--batch", "2", "--crop", "32", "--threads", "1", "--ckpt-minutes", "100", "--model.widths", "4", "8",
        "--model.denoiser_width", "4", "--warmup", "1"]


def _write_pair(root: Path, name: str, ir: np.ndarray, vis: np.ndarray) -> None:
    for sub, image in (("ir", ir), ("vi", vis)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / sub / name), image)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two 8-bit pairs in msrs/train."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(2):
        _write_pair(root / "msrs" / "train", f"{i}.png", rng.integers(0, 256, (40, 56), dtype=np.uint8),
                    rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    return root


def _fails(argv: list[str]) -> str:
    """The one-line message ``train.main(argv)`` exits with (a config error's printed, with its status 2; a stop by
    the user's printed, with 130)."""
    printed = io.StringIO()
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(printed):
        train.main(argv)
    message = str(info.value)
    if info.value.code == 2:
        message = printed.getvalue().removesuffix("\n")
    elif info.value.code == 130:  # after the progress bar's lines
        message = printed.getvalue().removesuffix("\n").rpartition("\n")[2]
    assert info.value.code != 0 and message and "\n" not in message
    return message


@pytest.mark.parametrize("argv, message", [
    (["--crop", "30"], "streamfuse train: error: train.crop=30 is out of range; allowed: a multiple of 8, 8..1024"),
    (["--crop", "4096"], "streamfuse train: error: train.crop=4096 is out of range; allowed: a multiple of 8, 8..1024"),
    (["--loss.kl", "-1"], "streamfuse train: error: loss.kl=-1.0 is out of range; allowed: >= 0, finite"),
    (["--loss.gradient", ".inf"], "streamfuse train: error: loss.gradient=inf is out of range; allowed: >= 0, finite"),
    (["--align.reg", "0"], "streamfuse train: error: align.reg=0.0 is out of range; allowed: 0 < reg <= 10"),
    (["--weight_decay", "-1"], f"{TRAIN_ERROR}train.weight_decay=-1.0 is out of range; allowed: >= 0, finite"),
])
def test_a_range_error_has_one_prefix_and_names_its_key(tmp_path, argv, message):
    assert _fails(["--data", str(tmp_path), "--out", str(tmp_path / "o"), *argv]) == message


@pytest.mark.parametrize("argv, message", [
    (["--steps=3", "4"], f"{TRAIN_ERROR}unexpected argument '4'; settings are --key value or --section.key value"),
    (["--", "3"], "streamfuse train: error: unexpected argument '--'; settings are --key value or --section.key value"),
    # a shortened option is no option: --resu did not resume, nor --ckpt set the interval
    (["--resu"], "streamfuse train: error: unknown config key train.resu; allowed keys: steps, minutes,"),
    (["--ckpt", "5"], "streamfuse train: error: unknown config key train.ckpt; allowed keys: steps, minutes,"),
])
def test_a_stray_or_shortened_argument_is_refused(tmp_path, argv, message):
    assert _fails(["--data", str(tmp_path), "--out", str(tmp_path / "o"), *argv]).startswith(message)


@pytest.mark.parametrize("value, words", [("nan", "nan must be a finite number of minutes >= 0"),
                                          ("-1", "-1 must be a finite number of minutes >= 0"),
                                          ("soon", "'soon' is not a number of minutes")])
def test_a_checkpoint_interval_that_is_no_time_is_refused_when_parsed(tmp_path, capsys, value, words):
    with pytest.raises(SystemExit) as info:
        train.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--ckpt-minutes", value])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"argument --ckpt-minutes: {words}")


@pytest.mark.parametrize("argv, match", [
    (["--lr", ".inf"], r"train\.lr=inf is out of range"),
    # each passed its check and failed as a traceback, after the run's config was written to --out
    (["--lr", "1e308"], r"^streamfuse train: error: train\.lr=1e\+308 is out of range; allowed: 0 < lr <= 10$"),
    (["--model.num_train_timesteps", "-5"], r"^streamfuse train: error: model\.num_train_timesteps=-5 is out of range"),
    (["--model.num_train_timesteps", "0"], r"^streamfuse train: error: model\.num_train_timesteps=0 is out of range"),
    (["--model.band_sigma", ".inf"], r"^streamfuse train: error: model\.band_sigma=inf is out of range"),
    (["--loss.base_sigma", "1e308"], r"^streamfuse train: error: loss\.base_sigma=1e\+308 is out of range"),
    (["--steps", "1" + "0" * 400], rf"^{TRAIN_ERROR}train\.steps=1000.*000 is out of range; allowed: 1 \.\. 10\^9$"),
    (["--seed", "-1"], rf"^{TRAIN_ERROR}train\.seed=-1 is out of range"),  # "expected non-negative integer", no key
    # the learning rate's warm-up divided by it: OverflowError (int too large to convert to float), a traceback
    (["--warmup", "1" + "0" * 400], rf"^{TRAIN_ERROR}train\.warmup=1000.*000 is out of range; allowed: 1 \.\. 10\^9$"),
    # a traceback (numpy: "Unable to allocate 7.28 TiB") once the run's config was written, and torch's "Overflow when
    # unpacking long" naming no setting (100000 threads crashed the process as it exited)
    (["--batch", "1000000000000"], rf"^{TRAIN_ERROR}train\.batch=1000000000000 is out of range; allowed: 1 \.\. 4096"),
    # a traceback of torch's allocator (360000000000 bytes) for the first convolution
    (["--model.widths", "100000", "100000"],
     rf"^{TRAIN_ERROR}model\.widths=.* is out of range; allowed: 2 ints in 1 \.\. 1024$"),
    (["--model.denoiser_width", "100000"], rf"^{TRAIN_ERROR}model\.denoiser_width=100000 is out of range"),
    (["--threads", "1000000000000"], rf"^{TRAIN_ERROR}train\.threads=1000000000000 is out of range; allowed: 1 \.\. "
                                     r"1024$"),
])
def test_numbers_that_cannot_train_are_refused_before_anything_is_written(data, tmp_path, argv, match):
    out = tmp_path / "o"
    assert re.search(match, _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", *argv]))
    assert not out.exists()


def test_an_empty_out_is_refused_not_read_as_the_working_folder(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        train.main(["--data", str(data), "--out", "", *TINY, "--steps", "1"])
    assert info.value.code == 2 and not (tmp_path / "checkpoint.pt").exists()


def test_a_pair_of_two_sizes_is_named_with_both(tmp_path):
    root = tmp_path / "data" / "roadscene"
    _write_pair(root, "a.png", np.zeros((40, 56), np.uint8), np.zeros((40, 56, 3), np.uint8))
    _write_pair(root, "b.jpg", np.zeros((48, 64), np.uint8), np.zeros((40, 56, 3), np.uint8))
    with pytest.raises(ValueError) as info:
        train.load_pairs(tmp_path / "data")
    assert str(info.value) == (f"pair {root}/{{ir,vi}}/b.jpg has different sizes: IR 64x48, visible 56x40; "
                               "training needs registered pairs of one size")


def test_sequences_are_read_in_name_order_with_their_image_suffixes_in_any_case(tmp_path):
    # the batches depend on the pairs' order: the folders' as listed by the file system would change it from one
    # machine (or copy of the data) to the next; and a camera's F.PNG is an image as f.png is
    root = tmp_path / "data"
    for folder in ("b", "c", "a"):
        _write_pair(root / "sequences" / folder, "F.PNG", np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8))
    assert [name for name, _, _ in train.load_pairs(root)] == [f"sequences/{f}/ir/F.PNG" for f in "abc"]


def test_a_pair_of_one_height_but_two_widths_is_refused_too(tmp_path):
    root = tmp_path / "data" / "roadscene"
    _write_pair(root, "a.png", np.zeros((40, 64), np.uint8), np.zeros((40, 56, 3), np.uint8))
    with pytest.raises(ValueError, match=r"a.png has different sizes: IR 64x40, visible 56x40"):
        train.load_pairs(tmp_path / "data")


@pytest.mark.parametrize("content, reason", [(b"", "empty file"), (b"\x89PNG\r\n\x1a\n garbage",
                                                                      "corrupt, or not an image")])
def test_an_unreadable_image_is_named(tmp_path, content, reason):
    root = tmp_path / "data" / "msrs" / "train"
    _write_pair(root, "a.png", np.zeros((40, 56), np.uint8), np.zeros((40, 56, 3), np.uint8))
    (root / "vi" / "a.png").write_bytes(content)
    with pytest.raises(ValueError) as info:
        train.load_pairs(tmp_path / "data")
    assert str(info.value) == f"cannot read image {root / 'vi' / 'a.png'}: {reason}"


def test_names_without_a_partner_are_reported(data, caplog):
    (data / "msrs" / "train" / "vi" / "1.png").rename(data / "msrs" / "train" / "vi" / "9.png")
    with caplog.at_level(logging.WARNING, logger="train"):
        pairs = train.load_pairs(data)
    assert [name for name, _, _ in pairs] == ["msrs/train/ir/0.png"]
    assert "only one of ir/ and vi/: 2 (first 1.png)" in caplog.text


def test_16_bit_images_are_reported_and_read_as_evaluation_reads_them(tmp_path, caplog):
    rng = np.random.default_rng(1)
    ir16 = rng.integers(7000, 9000, (40, 56), dtype=np.uint16)  # radiometric counts: near black in the top 8 bits
    vis16 = rng.integers(0, 65536, (40, 56, 3), dtype=np.uint16)
    _write_pair(tmp_path / "data" / "llvip" / "train", "a.png", ir16, vis16)
    with caplog.at_level(logging.WARNING, logger="train"):
        [(_, ir, vis_y)] = train.load_pairs(tmp_path / "data")
    assert (ir.min(), ir.max()) == (0, 255)  # IR stretched by its own range
    np.testing.assert_array_equal(vis_y, vis_luma((vis16 >> 8).astype(np.uint8)))  # visible: its top 8 bits
    assert "2 16-bit images" in caplog.text and "IR stretched by its own range" in caplog.text


def test_a_folder_of_own_pairs_is_one_set(tmp_path):
    own = tmp_path / "own"  # ir/ and vi/ at the top, as evaluate takes them
    _write_pair(own, "a.png", np.zeros((40, 56), np.uint8), np.zeros((40, 56, 3), np.uint8))
    _write_pair(own / "msrs" / "test", "b.png", np.zeros((40, 56), np.uint8), np.zeros((40, 56, 3), np.uint8))
    assert [name for name, _, _ in train.load_pairs(own)] == ["ir/a.png"]


def test_a_data_folder_without_pairs_says_where_pairs_are_read(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"under .*empty: training reads ir/<name> with vi/<name> there, "
                                                r"or <set>/ir/<name> with <set>/vi/<name> for the sets msrs/train"):
        train.load_pairs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"the data folder .*missing does not exist \(give another with "
                                                r"--data DIR or the STREAMFUSE_DATA environment variable\)"):
        train.load_pairs(tmp_path / "missing")
    (tmp_path / "afile").write_bytes(b"")  # a file given for the folder: said so, not that it holds no pairs
    with pytest.raises(FileNotFoundError, match=r"the data folder .*afile is not a folder \(give another"):
        train.load_pairs(tmp_path / "afile")


def test_an_out_or_init_that_cannot_be_used_is_refused_first(data, tmp_path):
    (tmp_path / "afile").write_bytes(b"")
    message = _fails(["--data", str(data), "--out", str(tmp_path / "afile" / "run"), *TINY])
    assert message == f"{TRAIN_ERROR}--out {tmp_path / 'afile' / 'run'} cannot be made: {tmp_path / 'afile'} is a " \
                      "file, not a folder"
    message = _fails(["--data", str(data), "--out", str(tmp_path / "o"), "--init", str(tmp_path / "none.pt"), *TINY])
    assert message == f"streamfuse train: error: --init {tmp_path / 'none.pt'} is not a weights file (not found)"
    assert not (tmp_path / "o").exists()


def test_an_out_in_a_folder_this_user_cannot_write_is_refused_first(data, tmp_path, monkeypatch):
    # the tests may run as root, whom no permission bit stops: the folder's answer is the one a service user gets
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "ro" and real_access(path, mode))
    message = _fails(["--data", str(data), "--out", str(tmp_path / "ro" / "run"), *TINY, "--steps", "1"])
    assert message == f"{TRAIN_ERROR}--out {tmp_path / 'ro' / 'run'} cannot be written: {tmp_path / 'ro'} is read-only"
    assert list((tmp_path / "ro").iterdir()) == []


def test_a_checkpoint_interval_of_nan_is_refused_by_the_function_too(data, tmp_path):
    # the command's parser refuses it; called directly, no checkpoint was ever due (every comparison false)
    setup = train.load_setup(["train.steps=1", "train.batch=1", "train.crop=32", "model.widths=[4, 8]",
                              "model.denoiser_width=4"])
    with pytest.raises(ValueError, match=r"^--ckpt-minutes nan is out of range; allowed: >= 0 \(0: every step\)$"):
        loop.run_training(data, tmp_path / "o", setup, ckpt_minutes=float("nan"))
    assert not (tmp_path / "o").exists()


def test_a_diverging_run_stops_without_writing_weights(data, tmp_path):
    out = tmp_path / "o"
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "3", "--loss.gradient", "1e300"])
    assert message.startswith("streamfuse train: error: training diverged: the loss is ") and "at step 1" in message
    assert not (out / DEFAULT_WEIGHTS.name).exists()


def test_a_failed_write_keeps_the_previous_checkpoint_and_no_temporary(data, tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def disk_full(obj, f, *args, **kwargs):  # the second checkpoint hits a full disk halfway
        calls.append(f)
        if len(calls) == 2:
            Path(f).write_bytes(b"half a checkpoint")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 30656 vs 30560")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    out = tmp_path / "o"
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--ckpt-minutes", "0", "--steps", "4"])
    assert message == f"{TRAIN_ERROR}cannot write {out / 'checkpoint.pt'}: the write failed (is the disk full?)"
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "train_config.yaml"]
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The checkpoint of a 6-step run that nothing stopped, on the ``data`` fixture's images."""
    tmp = tmp_path_factory.mktemp("reference")
    rng = np.random.default_rng(0)  # the same images as ``data``
    for i in range(2):
        _write_pair(tmp / "data" / "msrs" / "train", f"{i}.png", rng.integers(0, 256, (40, 56), dtype=np.uint8),
                    rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    train.main(["--data", str(tmp / "data"), "--out", str(tmp / "run"), *TINY, "--steps", "6"])
    return torch.load(str(tmp / "run" / "checkpoint.pt"), weights_only=True)


@pytest.fixture
def net():
    """Ctrl-C's handler for SIGTERM and SIGHUP meanwhile: a signal the code under test leaves unhandled then fails
    the test instead of ending pytest."""
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                                  ids=["SIGINT", "SIGTERM", "SIGHUP"])


def _stopped_at_step_3(monkeypatch, data: Path, out: Path, sig: int) -> str:
    """The error line of a 6-step run to ``out`` that ``sig`` stops in its third step, after that step's batch and
    noise were drawn."""
    real_optimise, calls = loop._optimise, []

    def signalled(run, total, cfg):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(sig)
        real_optimise(run, total, cfg)

    monkeypatch.setattr(loop, "_optimise", signalled)
    try:
        return _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "6"])
    finally:
        monkeypatch.setattr(loop, "_optimise", real_optimise)


def _assert_as_uninterrupted(out: Path, uninterrupted: dict) -> None:
    """``out``'s checkpoint is at step 6, its weights file written, and every tensor is the uninterrupted run's."""
    resumed = torch.load(str(out / "checkpoint.pt"), weights_only=True)
    assert resumed["step"] == 6 and (out / DEFAULT_WEIGHTS.name).is_file()
    for part in ("net", "ema"):
        for key, value in uninterrupted[part].items():
            assert torch.equal(resumed[part][key], value), f"{part}.{key} differs from the uninterrupted run"


@SIGNALS
def test_a_signal_mid_step_saves_a_checkpoint_that_resumes_exactly(data, tmp_path, monkeypatch, uninterrupted, sig,
                                                                    net):
    out = tmp_path / "run"
    message = _stopped_at_step_3(monkeypatch, data, out, sig)
    assert message.startswith(f"streamfuse train: stopped at step 3; {out / 'checkpoint.pt'} saved: --resume continues")
    assert not (out / DEFAULT_WEIGHTS.name).exists()  # 3 of 6 steps: no weights file that looks finished
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "6", "--resume"])
    _assert_as_uninterrupted(out, uninterrupted)


def test_a_resume_given_no_settings_goes_on_with_the_runs_own_exactly(data, tmp_path, monkeypatch, uninterrupted,
                                                                       net):
    # a resume had to repeat every setting the run started with (--batch, --crop, the model's...): each one left out
    # was refused as changed to its default
    out = tmp_path / "run"
    assert _stopped_at_step_3(monkeypatch, data, out, signal.SIGINT).startswith("streamfuse train: stopped at step 3")
    train.main(["--out", str(out), "--resume"])  # its settings, its --steps and its data folder: the run's own
    _assert_as_uninterrupted(out, uninterrupted)
    assert _fails(["--out", str(out), "--resume", "--steps", "7", "--batch", "3", "--crop", "32"]) == (
        f"{TRAIN_ERROR}cannot resume with other settings than the run started with (train.batch 2 -> 3): give the "
        "same, or start another --out")  # a setting given otherwise is refused as ever, one given alike is not


def test_a_resume_on_a_machine_of_other_cores_takes_its_default_threads_unless_given(data, tmp_path, monkeypatch):
    # a run started with --threads 16 on a workstation went on with 16 on the laptop it was resumed on
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])  # --threads 1
    threads: list[int] = []
    monkeypatch.setattr(loop.torch, "set_num_threads", threads.append)
    train.main(["--out", str(out), "--resume", "--steps", "2"])  # its like: the run's own, as exact as uninterrupted
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=available_cores(): set(range(cores + 3)))
    train.main(["--out", str(out), "--resume", "--steps", "3"])
    train.main(["--out", str(out), "--resume", "--steps", "4", "--threads", "3"])
    assert threads == [1, train.TrainConfig().threads, 3]


def _as_an_earlier_version_wrote_it(out: Path, data: Path) -> str:
    """``out``'s settings file and checkpoint as the version before the data digest's version 2 wrote them: colour IR
    read by OpenCV's grey decode, and no version kept; that digest."""
    pairs = [(name, cv2.imread(str(data / name), cv2.IMREAD_GRAYSCALE), vis) for name, _, vis in train.load_pairs(data)]
    digest = train_data.data_digest(pairs)
    config = yaml.safe_load((out / "train_config.yaml").read_text())
    state = torch.load(str(out / "checkpoint.pt"), weights_only=True)
    for record in (config, state["config"]):
        record["data"]["digest"] = digest
        record["data"].pop("digest_version", None)
    (out / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    torch.save(state, str(out / "checkpoint.pt"))
    return digest


def test_a_run_of_an_earlier_version_on_colour_ir_now_read_otherwise_is_told_in_one_line(tmp_path):
    # training turned colour IR grey by OpenCV's decoder, replay and evaluate by another luma; read now as they read
    # it, a run started before on such IR would have been refused as if its data had changed
    rng, data = np.random.default_rng(0), tmp_path / "data"
    for i in range(2):
        _write_pair(data / "msrs" / "train", f"{i}.png", rng.integers(0, 256, (40, 56, 3), dtype=np.uint8),
                    rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    digest = _as_an_earlier_version_wrote_it(out, data)
    assert _fails(["--out", str(out), "--resume", "--steps", "2"]) == (
        f"{TRAIN_ERROR}cannot resume: the run's pairs were read by an earlier version (data.digest {digest!r}, colour "
        f"IR turned grey by OpenCV's decoder, where this version takes the luma that replay and evaluate take) and "
        f"read otherwise now (colour IR, or the data changed): resume with that version, or start another --out")


def test_a_run_of_an_earlier_version_on_grey_ir_resumes_as_its_pairs_read_alike(data, tmp_path):
    """Grey IR (and LLVIP's colour IR of three alike channels, the shipped weights' data) reads the same pixels
    either way: the earlier version's digest is this one's, and its run goes on."""
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    digest = _as_an_earlier_version_wrote_it(out, data)
    train.main(["--out", str(out), "--resume", "--steps", "2"])
    resumed = yaml.safe_load((out / "train_config.yaml").read_text())["data"]
    assert (resumed["digest"], resumed["digest_version"]) == (digest, train_data.DIGEST_VERSION)


@SIGNALS
def test_a_signal_while_starting_is_one_line_and_writes_nothing(data, tmp_path, monkeypatch, sig, net):
    def signalled(*args, **kwargs):
        signal.raise_signal(sig)

    monkeypatch.setattr(loop, "PairSampler", signalled)
    out = tmp_path / "run"
    try:
        message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2"])
    except KeyboardInterrupt:
        pytest.fail("the signal escaped as a KeyboardInterrupt")
    assert message == "streamfuse train: interrupted before the first step; no checkpoint written"
    assert not out.exists()


@pytest.mark.parametrize("text", ["", "[1, 2]\n", "train: 5\n"])
def test_a_damaged_settings_file_refuses_the_resume_in_one_line(data, tmp_path, text):
    # an empty or edited train_config.yaml was an AttributeError or TypeError traceback
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    (out / "train_config.yaml").write_text(text)
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--resume"])
    assert message == (f"{TRAIN_ERROR}cannot resume: {out / 'train_config.yaml'}, the run's settings, is damaged "
                       "(not a mapping of sections)")


def test_a_settings_file_value_this_version_refuses_is_said_of_the_file_and_one_given_of_the_command(data, tmp_path):
    # a resume takes the run's own settings from its file: a value there that is refused is the file's, not the
    # command line's, which gave none
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    settings = out / "train_config.yaml"
    saved = yaml.safe_load(settings.read_text())
    settings.write_text(yaml.safe_dump({**saved, "train": {**saved["train"], "batch": 0}}))
    assert _fails(["--out", str(out), "--resume"]) == (
        f"{TRAIN_ERROR}cannot resume: {settings}, the run's settings, holds train.batch=0 is out of range; "
        "allowed: 1 .. 4096")
    settings.write_text(yaml.safe_dump(saved))
    assert _fails(["--out", str(out), "--resume", "--batch", "0"]) == (
        f"{TRAIN_ERROR}train.batch=0 is out of range; allowed: 1 .. 4096")


def test_a_run_started_from_init_resumes_once_that_file_is_moved(data, tmp_path):
    # refused as "other settings" (train.init '...' -> None), and with the moved path too: a distillation could never
    # be resumed once its teacher's file was gone, though its checkpoint holds every tensor
    start, out = tmp_path / "start.pt", tmp_path / "run"
    save_weights(start, HCLFuseNet(ModelConfig(widths=(4, 8), denoiser_width=4)))
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1", "--init", str(start)])
    moved = start.rename(tmp_path / "moved.pt")
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--resume"])
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "3", "--resume", "--init", str(moved)])
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 3
    assert yaml.safe_load((out / "train_config.yaml").read_text())["train"]["init"] == str(start)


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_a_checkpoint_that_is_no_file_is_nothing_to_resume(data, tmp_path, kind):
    # read as a damaged checkpoint; a pipe of that name held the run in torch.load for good
    out = tmp_path / "run"
    out.mkdir()
    if kind == "folder":
        (out / "checkpoint.pt").mkdir()
    else:
        (out / "checkpoint.pt").symlink_to(os.devnull)
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--resume"])
    assert message == f"{TRAIN_ERROR}nothing to resume: {out / 'checkpoint.pt'} is not a file (a folder, a pipe or a " \
                      "device)"


def test_a_checkpoint_copied_in_from_a_run_of_other_settings_is_refused(data, tmp_path):
    # its own record of its settings was not read: it resumed, and the weights file said the run had one loss weight
    other, out = tmp_path / "other", tmp_path / "run"
    train.main(["--data", str(data), "--out", str(other), *TINY, "--steps", "1", "--loss.gradient", "80"])
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    (other / "checkpoint.pt").replace(out / "checkpoint.pt")
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--resume"])
    assert message == (f"{TRAIN_ERROR}cannot resume: {out / 'checkpoint.pt'} was saved by a run with other settings "
                       "(loss.gradient 80.0 -> 40.0); it is not this run's checkpoint")
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 1  # nothing trained on, kept
    assert yaml.safe_load((out / "train_config.yaml").read_text())["loss"]["gradient"] == 40.0


@pytest.mark.parametrize("argv, changed", [(["--model.denoiser_width", "8"], "model.denoiser_width 4 -> 8"),
                                           (["--decoder_only"], "train.decoder_only False -> True"),
                                           (["--align.blend", "0.3"], "align.blend 0.15 -> 0.3")])  # the data's OT
def test_a_resume_with_another_model_or_stage_names_the_setting(data, tmp_path, argv, changed):
    # it read the checkpoint first: "damaged, or another architecture or stage: Error(s) in loading state_dict ..."
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--resume", *argv])
    assert message == f"{TRAIN_ERROR}cannot resume with other settings than the run started with ({changed}): give " \
                      "the same, or start another --out"


@pytest.mark.parametrize("part, value, reason", [("ema", float("nan"), "its weights hold NaN or infinite values"),
                                                 ("elapsed", float("nan"), "(no step count)"),
                                                 ("elapsed", float("inf"), "(no step count)")])
def test_a_checkpoint_with_non_finite_values_is_refused(data, tmp_path, part, value, reason):
    # NaN EMA weights trained on to a weights file that every fuser refuses, written as complete with exit status 0
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    state = torch.load(str(out / "checkpoint.pt"), weights_only=True)
    if part == "ema":
        next(iter(state["ema"].values())).fill_(value)
    else:
        state[part] = value
    torch.save(state, str(out / "checkpoint.pt"))
    (out / DEFAULT_WEIGHTS.name).unlink()
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--resume"])
    assert message.startswith(f"{TRAIN_ERROR}cannot resume from {out / 'checkpoint.pt'}") and message.endswith(reason)
    assert not (out / DEFAULT_WEIGHTS.name).exists()


def test_a_resume_whose_settings_file_is_gone_is_refused_after_its_checkpoint_is_read(data, tmp_path):
    """Without train_config.yaml the checkpoint is read first (a damaged one is named before the settings), but the
    settings are still compared: a run without its record would be continued as any run's."""
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    (out / "train_config.yaml").unlink()
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--resume"])
    assert message.startswith(f"{TRAIN_ERROR}cannot resume: {out / 'train_config.yaml'}, the run's settings, is "
                              "unreadable")
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 1


@pytest.mark.parametrize("minutes, config, moved", [("60", None, False), ("0", ["hand", "edited"], False),
                                                    ("0", {"model": torch.ones(1)}, False), ("0", None, True)])
def test_a_checkpoint_whose_record_differs_in_budget_or_data_folder_alone_resumes(data, tmp_path, minutes, config,
                                                                                    moved):
    """A finished run trained further for longer, or on its pairs moved to another folder, is this run's checkpoint
    (as with more steps); a record that is no mapping of sections (or one yaml cannot write) records nothing to
    compare."""
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    if config is not None:
        state = torch.load(str(out / "checkpoint.pt"), weights_only=True)
        torch.save({**state, "config": config}, str(out / "checkpoint.pt"))
    if moved:
        data = data.rename(tmp_path / "moved")
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--minutes", minutes, "--resume"])
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 2


def test_a_finished_run_resumed_with_its_own_step_count_ends_at_once(data, tmp_path):
    """No step is left, which is no error: the refusal is for a budget below the steps the run has done."""
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1", "--resume"])
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 1
    assert (out / DEFAULT_WEIGHTS.name).is_file()


def test_a_resume_without_a_budget_keeps_the_runs_own(data, tmp_path, monkeypatch, caplog):
    """A 2-step run stopped at each step and resumed without --steps completes at step 2, unwarned: the default's
    20000 steps were taken as a new budget (the run stopped at step 2 of 20000)."""
    out = tmp_path / "run"
    real_optimise = loop._optimise

    def stopped(run, total, cfg):
        signal.raise_signal(signal.SIGINT)
        real_optimise(run, total, cfg)

    monkeypatch.setattr(loop, "_optimise", stopped)
    _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--minutes", "60"])
    with caplog.at_level(logging.WARNING, logger="train"):
        train.main(["--data", str(data), "--out", str(out), *TINY, "--resume"])
    assert torch.load(str(out / "checkpoint.pt"), weights_only=True)["step"] == 2 and "budget" not in caplog.text
    assert (out / DEFAULT_WEIGHTS.name).is_file()
    saved = yaml.safe_load((out / "train_config.yaml").read_text())["train"]
    assert (saved["steps"], saved["minutes"]) == (2, 60)


def test_the_alignment_of_the_pairs_is_said_before_it_runs(data, tmp_path, caplog):
    """One OT solve a pair took two silent minutes on the full data, between the read and the pairs' count."""
    with caplog.at_level(logging.INFO, logger="train"):
        train.main(["--data", str(data), "--out", str(tmp_path / "run"), *TINY, "--steps", "1"])
    said = [record.getMessage() for record in caplog.records]
    counted = next(i for i, line in enumerate(said) if line.startswith("2 training pairs from"))
    assert "aligning the IR of the 2 pairs to their visible images (OT)" in said[:counted]


def test_a_run_its_time_budget_ends_ends_its_bar_complete_and_says_why(data, tmp_path, monkeypatch):
    """--minutes before --steps: the bar stopped at 2/1000, 0%, as a failed run's would."""
    clock, real_optimise = SleptClock(), loop._optimise

    def forty_seconds(run, total, cfg):  # each step takes 40 s: the minute's budget is spent after the second
        clock.sleep(40.0)
        real_optimise(run, total, cfg)

    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(loop, "_optimise", forty_seconds)
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        train.main(["--data", str(data), "--out", str(tmp_path / "run"), *TINY, "--steps", "1000", "--minutes", "1"])
    last = re.split(r"[\r\n]+", printed.getvalue().strip())[-1]
    assert re.match(r"time budget spent \(--minutes 1\): 100%\|\S+\| 2/2 ", last), last
    assert (tmp_path / "run" / DEFAULT_WEIGHTS.name).is_file()


def test_a_finished_run_trained_further_and_stopped_says_its_weights_file_is_the_earlier_runs(data, tmp_path,
                                                                                              monkeypatch, caplog):
    """The run's settings say 3 steps once it resumes: the weights file of its first step, kept until the run
    completes, is named as the earlier run's at the start and in the stop line."""
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    weights = (out / DEFAULT_WEIGHTS.name).read_bytes()
    real_optimise = loop._optimise

    def stopped(run, total, cfg):
        signal.raise_signal(signal.SIGINT)
        real_optimise(run, total, cfg)

    monkeypatch.setattr(loop, "_optimise", stopped)
    setup = train.load_setup(["train.steps=3", "train.batch=2", "train.crop=32", "train.threads=1",
                              "model.widths=[4, 8]", "model.denoiser_width=4", "train.warmup=1"])
    with caplog.at_level(logging.WARNING, logger="train"), pytest.raises(InterruptedError) as info:
        loop.run_training(data, out, setup, resume=True, ckpt_minutes=100)
    assert str(info.value) == (f"stopped at step 2; {out / 'checkpoint.pt'} saved: --resume continues (the weights "
                               f"file is written when the run completes; the one there is still the earlier run's)")
    assert f"{out / DEFAULT_WEIGHTS.name} stays the earlier run's until this one completes" in caplog.text
    assert (out / DEFAULT_WEIGHTS.name).read_bytes() == weights


def test_an_init_that_is_a_pipe_is_not_called_a_folder(data, tmp_path):
    os.mkfifo(tmp_path / "pipe.pt")
    message = _fails(["--data", str(data), "--out", str(tmp_path / "o"), "--init", str(tmp_path / "pipe.pt"), *TINY])
    assert message == f"{TRAIN_ERROR}--init {tmp_path / 'pipe.pt'} is not a weights file (a pipe or a device)"


def test_the_working_folder_as_out_trains_there(data, tmp_path, monkeypatch):
    # refused with "PosixPath('.') has an empty name": the lock was made beside a path without a name
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    train.main(["--data", str(data), "--out", ".", *TINY, "--steps", "1"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "hclfuse_v4.pt",
                                                                    "train_config.yaml"]
    assert not (tmp_path / ".run.lock").exists()


def test_a_stop_while_the_settings_are_written_leaves_no_temporary(data, tmp_path, monkeypatch):
    # Ctrl-C between the write and the rename of train_config.yaml left OUT/train_config.tmp
    monkeypatch.setattr(loop, "durable_replace", lambda *_: signal.raise_signal(signal.SIGINT))
    out = tmp_path / "run"
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    assert message == "streamfuse train: interrupted before the first step; no checkpoint written"
    assert not out.exists() or list(out.iterdir()) == []


def test_a_second_run_given_a_link_to_the_first_runs_folder_is_refused(data, tmp_path):
    # the lock was made beside the name given: .link.lock, so both runs trained into one folder
    (tmp_path / "run").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")
    with output_lock(tmp_path / "run"):
        message = _fails(["--data", str(data), "--out", str(tmp_path / "link"), *TINY, "--steps", "1"])
    assert "is being written by another run" in message and list((tmp_path / "run").iterdir()) == []


def test_the_weights_file_holds_the_ema_and_the_first_steps_warm_up(data, tmp_path):
    from streamfuse.model.weights import read_weights

    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--warmup", "4", "--lr", "0.01"])
    ckpt = torch.load(str(out / "checkpoint.pt"), map_location="cpu", weights_only=True)
    assert ckpt["opt"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 2 / 4)  # the second step's, of 4 warm-up
    _, saved, _ = read_weights(out / DEFAULT_WEIGHTS.name, any_version=True, check_model=False)
    assert all(torch.equal(saved[k], v) for k, v in ckpt["ema"].items() if k in saved)
    assert not all(torch.equal(saved[k], v) for k, v in ckpt["net"].items() if k in saved)  # the EMA trails the net


@pytest.mark.parametrize("stop, said", [(KeyboardInterrupt, "interrupted (Ctrl-C)"),
                                        (stopped_by(signal.SIGTERM), "interrupted (SIGTERM)")])
def test_a_stop_while_the_settings_load_names_its_signal(stop, said, data, tmp_path, monkeypatch):
    # a SIGTERM there said a bare "train: interrupted", as for a Ctrl-C
    def loading(*_args):
        raise stop

    monkeypatch.setattr(train.cli, "load_setup", loading)
    message = _fails(["--data", str(data), "--out", str(tmp_path / "run"), *TINY, "--steps", "1"])
    assert message == f"streamfuse train: {said}"


@pytest.mark.parametrize("cut, said", [(lambda n: n - 10, "it is truncated: its {n} bytes end before the end of the "
                                                          "checkpoint, as a write cut short leaves it"),
                                       (lambda n: n // 2, "it is truncated: its {n} bytes end before the end of the "
                                                          "checkpoint, as a write cut short leaves it"),
                                       (lambda n: 0, "it is empty (0 bytes)")], ids=["end", "half", "empty"])
def test_a_truncated_checkpoint_is_refused_saying_so(cut, said, data, tmp_path):
    # refused as "damaged ...: [Errno 22] Invalid argument", torch's reason, which says nothing of the file
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    whole = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(whole[:cut(len(whole))])
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--resume"])
    assert message == f"{TRAIN_ERROR}cannot resume from {out / 'checkpoint.pt'}: " + said.format(n=cut(len(whole)))


def test_a_file_that_is_no_checkpoint_is_refused_saying_so(data, tmp_path):
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    (out / "checkpoint.pt").write_text("steps: 1\n")
    message = _fails(["--data", str(data), "--out", str(out), *TINY, "--steps", "2", "--resume"])
    assert message == f"{TRAIN_ERROR}cannot resume from {out / 'checkpoint.pt'}: not a checkpoint (not a file torch " \
                      "writes)"


def test_a_killed_extension_of_a_finished_run_leaves_the_settings_beside_the_weights_true_of_them(data, tmp_path,
                                                                                                   monkeypatch):
    # train_config.yaml beside the earlier run's weights file said 3 steps, the extension's, once it was killed
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "1"])
    weights = (out / DEFAULT_WEIGHTS.name).read_bytes()

    class Killed(BaseException):  # as kill -9 ends it: nothing saved on the way out
        pass

    def killed(*_args):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(loop, "_optimise", killed)
        with pytest.raises(Killed):
            train.main(["--data", str(data), "--out", str(out), *TINY, "--steps", "3", "--resume"])
    settings = yaml.safe_load((out / "train_config.yaml").read_text())
    assert (out / DEFAULT_WEIGHTS.name).read_bytes() == weights
    assert settings == _weights_settings(out) and settings["train"]["steps"] == 1
    train.main(["--data", str(data), "--out", str(out), *TINY, "--resume"])  # the extension's 3 steps, its own
    settings = yaml.safe_load((out / "train_config.yaml").read_text())
    assert settings == _weights_settings(out) and settings["train"]["steps"] == 3
    assert not (out / "train_config.extending.yaml").exists()


def _weights_settings(out: Path) -> dict:
    """The settings that ``out``'s weights file records of its run, as YAML holds them (a tuple read back as a list)."""
    return yaml.safe_load(yaml.safe_dump(read_weights(out / DEFAULT_WEIGHTS.name)[2]["config"]))
