"""tools/temporal.py on generated clips: the flicker ratio it prints, the denoiser's effect, the static check and
another method's fused frames."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers_data import DATA
from streamfuse import temporal_eval


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


def _cells(out: str, method: str) -> list[str]:
    row = next(line for line in out.splitlines() if line.startswith(f"| {method} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def _mean_ratio(out: str, method: str) -> float:
    cells = _cells(out, method)
    assert cells[-1] == "yes"  # a static input gives identical outputs
    return float(cells[-5])


def _flow_warp(out: str, method: str) -> float:
    return float(_cells(out, method)[-4])


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


def test_clips_default_to_the_sequences_of_streamfuse_data(tool, tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMFUSE_DATA", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["temporal"])
    assert tool("temporal").parse_args().seq_root == tmp_path / "sequences"


def test_an_empty_clips_folder_is_refused_not_read_as_the_working_folder(tool, monkeypatch, capsys):
    # an unset shell variable ("temporal.py $CLIPS") scored the clips of the working folder
    monkeypatch.setattr("sys.argv", ["temporal", ""])
    with pytest.raises(SystemExit) as exc:
        tool("temporal").parse_args()
    assert exc.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith("argument seq_root: empty path")


@pytest.mark.parametrize("name", ["nosuch", "nosuch.yaml"])
def test_an_unknown_config_is_a_config_error_as_in_run(temporal, tmp_path, rng, monkeypatch, capsys, name):
    _clip(tmp_path / "a", rng, n=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--config", name])
    with pytest.raises(SystemExit) as exc:
        temporal()
    assert exc.value.code == 2 and capsys.readouterr().err.splitlines() == [
        f"temporal.py: config error: {name}: no such config file here, nor a shipped config of that name; shipped: "
        "demo, eval, replay, rig (or give the path of a YAML file)"]


def _copy_visible(seq: Path, out: Path) -> None:
    """Another method's fused frames that are the visible frames themselves, ``out/<clip>/<frame>``."""
    for clip in seq.iterdir():
        (out / clip.name).mkdir(parents=True)
        for frame in (clip / "vi").iterdir():
            shutil.copy(frame, out / clip.name / frame.name)


def test_fused_frames_of_another_method(temporal, tmp_path, rng, monkeypatch, capsys):
    """The visible frames as a method's output: flicker ratio 1 on every clip, and the visible input's AG."""
    _clip(tmp_path / "seq" / "a", rng)
    _clip(tmp_path / "seq" / "b", rng)
    _copy_visible(tmp_path / "seq", tmp_path / "out")
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path / "seq"), "--fused", f"copy={tmp_path / 'out'}"])
    temporal()
    out = capsys.readouterr().out
    cells = _cells(out, "copy")
    assert [float(c) for c in cells[2:5]] == [1.0, 1.0, 1.0]  # clip a, clip b, mean
    assert cells[-3] == out.split(", AG ")[1].split(" ")[0]  # AG: the visible input's
    assert cells[-2:] == ["-", "-"] and "| hclfuse |" not in out  # no fuser runs when only --fused is named
    per_clip = out.split("flow warp error per clip")[1]  # the visible frames warp as the visible input does
    assert _cells(per_clip, "copy")[1:] == _cells(per_clip, "visible input")[1:]
    assert len(_cells(per_clip, "copy")) == 4 and float(_cells(per_clip, "copy")[-1]) > 0  # clip a, clip b, mean


@pytest.mark.parametrize("methods", [["--fused", "a={out}", "--fused", "a={out}"], ["--fused", "max={out}", "--fuser",
                                                                                 "max"]], ids=["fused", "fuser"])
def test_two_methods_of_one_name_are_refused(methods, temporal, tmp_path, rng, monkeypatch):
    # the two --fused folders' frames were one row (the last one's), silently
    _clip(tmp_path / "seq" / "a", rng)
    _copy_visible(tmp_path / "seq", tmp_path / "out")
    name = methods[1].split("=")[0]
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path / "seq"),
                                     *(m.format(out=tmp_path / "out") for m in methods)])
    with pytest.raises(SystemExit) as exc:
        temporal()
    assert exc.value.code == f"temporal.py: error: two methods named {name}: name them apart (NAME=DIR for --fused, " \
                             "a config file's name)"


def test_missing_fused_frame_is_one_line(temporal, tmp_path, rng, monkeypatch):
    _clip(tmp_path / "seq" / "a", rng)
    _copy_visible(tmp_path / "seq", tmp_path / "out")
    (tmp_path / "out" / "a" / "0003.png").unlink()
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path / "seq"), "--fused", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"out/a: no fused frame 0003 \(1 of 6 missing\)"):
        temporal()


@pytest.mark.data
@pytest.mark.timeout(600)  # about a minute alone; several times that beside other suites on two cores
@pytest.mark.skipif(not (DATA / "sequences").is_dir(), reason="needs ../shared/data (sequences) beside the repository"
                    " or STREAMFUSE_DATA")
def test_live_config_keeps_every_real_clip_under_the_flicker_goal(temporal, monkeypatch, capsys):
    """The shipped demo config (the model, the IR level stabilizer, the temporal denoiser) on the six M3SVD clips: at
    most 1.1 on each (model card: 0.64-1.05; the model alone reaches 1.49)."""
    monkeypatch.setattr("sys.argv", ["temporal", str(DATA / "sequences"), "--config", "demo", "--static", "2"])
    temporal()
    cells = _cells(capsys.readouterr().out, "hclfuse (demo.yaml)")
    clips = [float(c) for c in cells[2:-5]]
    assert len(clips) == 6 and max(clips) <= 1.1, f"flicker ratio per clip above 1.1: {clips}"
    assert cells[-1] == "yes"


@pytest.mark.parametrize("side, frame", [("vi", "0003.png"), ("ir", "0002.png")])
def test_a_frame_of_another_size_is_one_line(temporal, tmp_path, rng, monkeypatch, side, frame):
    _clip(tmp_path / "a", rng)
    cv2.imwrite(str(tmp_path / "a" / side / frame), np.zeros((20, 28), np.uint8))
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "max", "--static", "2"])
    with pytest.raises(SystemExit) as exc:
        temporal()
    assert str(exc.value.code) == (f"temporal.py: error: {tmp_path / 'a' / side / frame}: frame is 28x20, the clip's "
                                   "is 56x40")


@pytest.mark.parametrize("value", ["1", "0", "-2"])
def test_static_check_needs_two_repeats(temporal, tmp_path, rng, monkeypatch, capsys, value):
    _clip(tmp_path / "a", rng)
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "max", "--static", value])
    with pytest.raises(SystemExit) as exc:
        temporal()
    assert exc.value.code == 2 and f"argument --static: must be >= 2, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("one_frame", "{clip}: one IR/visible frame pair; a clip needs at least two"),
    ("still_visible", "{clip}/vi: the visible frames do not change, and the flicker ratio is the fused frames' change "
                      "relative to theirs"),
])
def test_a_clip_with_nothing_to_measure_against_is_one_line(temporal, tmp_path, rng, monkeypatch, case, message):
    _clip(tmp_path / "a", rng, n=1 if case == "one_frame" else 3)
    if case == "still_visible":  # its ratio was infinite, and so the mean over every clip
        for i in (1, 2):
            shutil.copy(tmp_path / "a" / "vi" / "0000.png", tmp_path / "a" / "vi" / f"{i:04d}.png")
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "max", "--static", "2"])
    with pytest.raises(SystemExit) as exc:
        temporal()
    assert str(exc.value.code) == "temporal.py: error: " + message.format(clip=tmp_path / "a")


@pytest.mark.parametrize("option, value, words", [
    ("--stabilize", "2", "strength=2.0 is out of range; allowed: 0 (off) .. 0.95"),
    ("--denoise", "-1", "denoise=-1.0 is out of range; allowed: 0 (off) .. 0.95"),
    ("--denoise", "x", "'x' is not a number"),
    # it was a late error, not naming the option
    ("--denoise-threshold", "0", "denoise_threshold=0.0 is out of range; allowed: 0.01 .. 255 grey levels"),
])
def test_a_bad_filter_setting_is_refused_naming_its_option(temporal, tmp_path, rng, monkeypatch, capsys, option,
                                                           value, words):
    _clip(tmp_path / "a", rng, n=3)
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "max", option, value])
    with pytest.raises(SystemExit) as exc:
        temporal()
    assert exc.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(f"argument {option}: {words}")


def test_ctrl_c_is_one_line_and_exit_130(temporal, tmp_path, rng, monkeypatch, capsys):
    _clip(tmp_path / "a", rng, n=3)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(temporal_eval, "temporal_ratio", interrupted)
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "max", "--static", "2"])
    with pytest.raises(BaseException) as exc:  # on a KeyboardInterrupt that escapes, too
        temporal()
    assert exc.type is SystemExit and exc.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["temporal.py: interrupted (Ctrl-C)"]


def test_a_configs_registration_is_applied(temporal, tmp_path, rng, monkeypatch, capsys):
    # the tool built each config's processor by hand and dropped its register section: the IR went unwarped
    _clip(tmp_path / "seq" / "a", rng)
    ag = {}
    for name, homography in (("plain", []), ("shifted", [1, 0, 12, 0, 1, 0, 0, 0, 1])):
        config = tmp_path / f"{name}.yaml"
        config.write_text(f"fuse: {{name: max}}\nregister: {{homography: {homography}}}\n")
        monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path / "seq"), "--config", str(config), "--static", "2"])
        temporal()
        ag[name] = _cells(capsys.readouterr().out, f"max ({name}.yaml)")[-3]
    assert ag["plain"] != ag["shifted"]  # IR shifted 12 px under the visible frame: another fused image


def test_a_fuser_whose_output_drifts_on_a_static_input_is_said_to(temporal, tmp_path, rng, monkeypatch, capsys):
    module, real = temporal_eval, temporal_eval._processor

    def drifting(method, stream, level, post):
        processor, calls = real(method, stream, level, post), []
        if stream != "static":
            return processor

        def run(pair):
            out = processor(pair)
            calls.append(1)
            return types.SimpleNamespace(filtered_y=out.filtered_y + len(calls), fused_y=out.fused_y)

        return run

    monkeypatch.setattr(module, "_processor", drifting)
    _clip(tmp_path / "a", rng)
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "average", "--static", "3"])
    temporal()
    assert _cells(capsys.readouterr().out, "average")[-1] == "NO"


def test_a_configs_own_stabilize_and_denoise_are_its_rows(temporal, tmp_path, rng, monkeypatch, capsys):
    _clip(tmp_path / "seq" / "a", rng)
    config = tmp_path / "steady.yaml"
    config.write_text("fuse: {name: average}\nstabilize: {strength: 0.5}\n"
                      "post: {denoise: 0.85, denoise_threshold: 6}\n")
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path / "seq"), "--config", str(config), "--static", "2"])
    temporal()
    out = capsys.readouterr().out
    assert _cells(out, "average (steady.yaml)")[1] == "0.5 / 0.85, 6"
    assert "| hclfuse |" not in out  # a --config names the method: the default model does not run beside it


def test_a_fused_frame_of_another_size_is_one_line(temporal, tmp_path, rng, monkeypatch):
    _clip(tmp_path / "seq" / "a", rng)
    _copy_visible(tmp_path / "seq", tmp_path / "out")
    cv2.imwrite(str(tmp_path / "out" / "a" / "0002.png"), np.zeros((20, 28), np.uint8))
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path / "seq"), "--fused", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"out/a/0002\.png: fused frame is 28x20, the clip's is 56x40$"):
        temporal()


def test_fuser_methods_take_the_set_overrides(temporal, tmp_path, rng, monkeypatch, capsys):
    _clip(tmp_path / "a", rng, n=3)
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "max", "--set", "baseline.sharpen=x"])
    with pytest.raises(SystemExit) as exc:
        temporal()
    assert exc.value.code == 2 and "baseline.sharpen" in capsys.readouterr().err


def test_fuser_methods_run_with_the_stabilize_and_denoise_options(temporal, tmp_path, rng, monkeypatch, capsys):
    _clip(tmp_path / "a", rng, n=3)
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "average", "--static", "2",
                                     "--stabilize", "0.5", "--denoise", "0.85", "--denoise-threshold", "6"])
    temporal()
    assert _cells(capsys.readouterr().out, "average")[1] == "0.5 / 0.85, 6"


def test_a_fusers_rows_measure_its_filtered_frames_against_the_visible_ones(temporal, tmp_path, rng, monkeypatch,
                                                                             capsys):
    """A processor whose output is the visible frame: flicker ratio 1 and the visible input's AG and flow warp, over
    every frame; the filter lag leaves out each clip's first frame, which the filter has nothing to lag behind."""

    def visible_out(method, stream, level, post):
        frames = []

        def run(pair):
            frames.append(pair)
            vis = pair.vis.image.astype(np.float32)
            return types.SimpleNamespace(filtered_y=vis, fused_y=vis - (9 if len(frames) == 1 else 1))

        return run

    monkeypatch.setattr(temporal_eval, "_processor", visible_out)
    _clip(tmp_path / "a", rng)
    _clip(tmp_path / "b", rng)
    stripes = np.tile(np.array([0, 255], np.uint8), (40, 28))  # a first frame far sharper than the others
    cv2.imwrite(str(tmp_path / "a" / "vi" / "0000.png"), stripes)
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "max", "--static", "2"])
    temporal()
    out = capsys.readouterr().out
    cells = _cells(out, "max")
    assert cells[2:5] == ["1.000", "1.000", "1.000"] and cells[-3] == out.split(", AG ")[1].split(" ")[0]
    assert cells[-2:] == ["1.00 / 1.0", "yes"]
    per_clip = out.split("flow warp error per clip")[1]
    assert _cells(per_clip, "max")[1:] == _cells(per_clip, "visible input")[1:]


def test_folders_without_ir_beside_the_clips_are_not_clips(temporal, tmp_path, rng, monkeypatch, capsys):
    _clip(tmp_path / "a", rng, n=3)
    (tmp_path / "notes").mkdir()
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "max", "--static", "2"])
    temporal()
    assert "| method | stabilize / denoise | a | mean |" in capsys.readouterr().out


def test_frames_numbered_without_leading_zeros_run_in_their_numbers_order(tool, tmp_path, monkeypatch):
    # sorted as text, frame 10 came between 1 and 2: the flicker ratio and flow warp of the clip in another order
    for sub in ("ir", "vi"):
        (tmp_path / "a" / sub).mkdir(parents=True)
        for i in range(12):
            cv2.imwrite(str(tmp_path / "a" / sub / f"{i}.png"), np.full((8, 8), 10 * i, np.uint8))
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path), "--fuser", "average"])
    frames, *_ = temporal_eval.load(tool("temporal").parse_args().seq_root, fusers=["average"], configs=[], fused=[],
                                    overrides=[])
    assert [int(vi[0, 0]) for _, vi in frames["a"]] == [10 * i for i in range(12)]


def _ramp_clip(root: Path, vis_levels: tuple[int, ...], ir: list[np.ndarray]) -> None:
    """A clip of flat visible frames at ``vis_levels`` and the IR frames ``ir``: on flat visible frames DIS finds no
    motion, so every figure is worked out by hand."""
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True)
    for i, (level, frame) in enumerate(zip(vis_levels, ir, strict=True)):
        cv2.imwrite(str(root / "vi" / f"{i:04d}.png"), np.full((12, 16), level, np.uint8))
        cv2.imwrite(str(root / "ir" / f"{i:04d}.png"), frame.astype(np.uint8))


def test_each_clips_figures_and_their_means_are_the_clips_own(temporal, tmp_path, monkeypatch, capsys):
    """Three clips of three frames, a --fused method and a fuser: every per-clip figure in its own row and column.

    Visible levels: a 20, 30, 50 (mean change 15); b 40, 50, 40 (10); c 90, 70, 90 (20); flat, so AG 0 and the
    visible input's flow warp is its own mean change: 15, 10, 20, mean 15.
    IR (the max fuser's output, as IR >= 100 > visible): 100 + a ramp of 2 (a, b) or 4 (c) grey levels a column, plus
    an offset per frame: a 0, 15, 45 (change 22.5); b 0, 5, 0 (5); c 0, 30, 90 (45). Flicker ratios 1.5, 0.5, 2.25
    (mean 1.417), flow warp 22.5, 5, 45 (mean 24.17), AG sqrt(2^2 / 2) = 1.414 on six frames and sqrt(4^2 / 2) = 2.828
    on three: 1.89; nothing filtered, so no lag.
    The --fused method "other": a ramp of 2 plus offsets a 0, 30, 30 (change 15); b 0, 20, 40 (20); c flat at 10 (0).
    Flicker ratios 1, 2, 0 (mean 1), flow warp 15, 20, 0 (mean 11.67), AG 1.414 on six frames and 0 on three: 0.94.
    """
    ramp = np.tile(np.arange(16), (12, 1))
    clips = {"a": ((20, 30, 50), 2, (0, 15, 45), (0, 30, 30)), "b": ((40, 50, 40), 2, (0, 5, 0), (0, 20, 40)),
             "c": ((90, 70, 90), 4, (0, 30, 90), (10, 10, 10))}
    for name, (levels, slope, ir_offsets, other_offsets) in clips.items():
        _ramp_clip(tmp_path / "seq" / name, levels, [100 + slope * ramp + o for o in ir_offsets])
        (tmp_path / "other" / name).mkdir(parents=True)
        for i, o in enumerate(other_offsets):
            other = 2 * ramp + o if name != "c" else np.full(ramp.shape, o)
            cv2.imwrite(str(tmp_path / "other" / name / f"{i:04d}.png"), other.astype(np.uint8))
    monkeypatch.setattr("sys.argv", ["temporal", str(tmp_path / "seq"), "--fuser", "max", "--fused",
                                     f"other={tmp_path / 'other'}", "--static", "2"])
    temporal()
    out = capsys.readouterr().out
    assert "visible input: flow warp error 15.00 grey levels, AG 0.00 " in out
    assert "| method | stabilize / denoise | a | b | c | mean | flow warp | AG |" in out
    assert _cells(out, "max") == ["max", "0 / 0, 12", "1.500", "0.500", "2.250", "1.417", "24.17", "1.89",
                                  "0.00 / 0.0", "yes"]
    assert _cells(out, "other") == ["other", "-", "1.000", "2.000", "0.000", "1.000", "11.67", "0.94", "-", "-"]
    per_clip = out.split("flow warp error per clip")[1]
    assert _cells(per_clip, "visible input") == ["visible input", "15.00", "10.00", "20.00", "15.00"]
    assert _cells(per_clip, "max") == ["max", "22.50", "5.00", "45.00", "24.17"]
    assert _cells(per_clip, "other") == ["other", "15.00", "20.00", "0.00", "11.67"]
