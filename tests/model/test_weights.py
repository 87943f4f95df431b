"""Weights files: save/load round trip, one-line errors for bad files, older formats, the shipped weights."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch

from streamfuse.model.net import HCLFuseNet
from streamfuse.model.weights import (DEFAULT_WEIGHTS, FORMAT_VERSION, load_weights, read_weights, save_weights,
                                      weights_version)


def test_save_load_round_trip(tmp_path, tiny, pair):
    net = HCLFuseNet(tiny, steps=2)
    path = tmp_path / "w.pt"
    save_weights(path, net, extra={"align": {"reg": 0.01, "blend": 0.3}})
    loaded, extra = load_weights(path, steps=2)
    assert extra["align"]["reg"] == 0.01 and loaded.cfg == tiny and loaded.steps == 2
    ir, vis = pair()
    noise = torch.zeros(1, 2, 4, 6)
    net.eval().fold_gates()
    with torch.inference_mode():
        torch.testing.assert_close(net(ir, vis, noise, ir), loaded(ir, vis, noise, ir))


def _blob(tmp_path, tiny) -> tuple[Path, dict]:
    """A tiny net's weights file and what it holds, to edit and save again (:func:`_refused_as_saved`)."""
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(tiny))
    return path, torch.load(str(path), weights_only=True)


def _refused_as_saved(path, blob, match):
    torch.save(blob, str(path))
    _one_line_value_error(path, match)


def _one_line_value_error(path, match):
    with pytest.raises(ValueError, match=match) as info:
        load_weights(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_bad_files_give_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_weights(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    _one_line_value_error(junk, "not a readable")
    text = tmp_path / "passwd.pt"  # a text file: torch.load fails with an IndexError of its own
    text.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    _one_line_value_error(text, "not a readable")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, str(other))
    _one_line_value_error(other, "not an HCLFuse weights file")


class _Payload:
    """What a hostile file pickles: unpickling it would call ``Path.touch`` on ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_file_that_would_run_code_when_read_is_refused_without_running_it(tmp_path, tiny):
    # a weights file is a pickle: read without torch's weights-only unpickler, any file a user is handed runs its code
    path, blob = _blob(tmp_path, tiny)
    marker = tmp_path / "ran"
    blob["extra"] = {"note": _Payload(marker)}
    torch.save(blob, str(path))
    _one_line_value_error(path, "not a readable torch weights file")
    assert not marker.exists()


def test_older_format_is_refused_for_inference_but_can_start_a_fine_tune(tmp_path, tiny):
    path, blob = _blob(tmp_path, tiny)
    blob["format_version"] = 1
    _refused_as_saved(path, blob, "format version 1 is not supported")
    cfg, state, _ = read_weights(path, any_version=True)
    assert cfg == tiny and set(state) == set(HCLFuseNet(tiny).state_dict())


def test_config_weights_mismatch_is_one_line(tmp_path, tiny):
    path, blob = _blob(tmp_path, tiny)
    blob["model"]["widths"] = [8, 8]
    _refused_as_saved(path, blob, "do not match the model config")
    blob["model"]["widths"] = [4, 8]
    blob["state_dict"]["denoiser.out.bias"][:] = float("nan")
    _refused_as_saved(path, blob, "NaN")


@pytest.mark.parametrize("change, said", [("drop", r"missing \['student\.out\.bias'\], unexpected \[\]"),
                                          ("add", r"missing \[\], unexpected \['student\.extra'\]")])
def test_a_tensor_missing_or_one_too_many_is_named_in_one_line(tmp_path, tiny, change, said):
    # a KeyError traceback for a missing one; load_state_dict's multi-line RuntimeError for an unexpected one
    path, blob = _blob(tmp_path, tiny)
    if change == "drop":
        del blob["state_dict"]["student.out.bias"]
    else:
        blob["state_dict"]["student.extra"] = torch.zeros(2)
    _refused_as_saved(path, blob, said)


@pytest.mark.parametrize("key, value, said", [("student_steps", 9, "bad model config: student_steps=9 is out of range"),
                                              ("colour", 1, r"unknown model config keys \['colour'\]"),
                                              # a schedule shorter than the teacher's 20 steps: refused at load, not
                                              # at the first frame of a run that asks for more steps than it has
                                              ("num_train_timesteps", 10, "bad model config: num_train_timesteps=10"),
                                              ("image_channels", 3, "bad model config: image_channels=3 is out"),
                                              ("band_sigma", -1.0, "bad model config: band_sigma=-1.0 is out")])
def test_a_bad_or_unknown_model_config_value_is_one_line_naming_the_file(tmp_path, tiny, key, value, said):
    # the config's own check said what was wrong but not in which file
    path, blob = _blob(tmp_path, tiny)
    blob["model"][key] = value
    _refused_as_saved(path, blob, said)


def test_a_state_dict_holding_something_else_than_a_tensor_is_one_line(tmp_path, tiny):
    # a hand-edited file (a list where a tensor was) gave an AttributeError traceback ('list' has no 'shape')
    path, blob = _blob(tmp_path, tiny)
    blob["state_dict"]["student.out.bias"] = [0.0, 0.0]
    _refused_as_saved(path, blob, "its state_dict is not a mapping of tensors")


def test_a_tensor_of_the_right_size_but_another_shape_is_refused_in_one_line(tmp_path, tiny):
    # as many values as the config needs, laid out otherwise (a transposed kernel): load_state_dict's multi-line
    # RuntimeError, or with check_model off a tensor read in the wrong layout
    path, blob = _blob(tmp_path, tiny)
    blob["state_dict"]["encoder.down.weight"] = blob["state_dict"]["encoder.down.weight"].transpose(0, 1).contiguous()
    _refused_as_saved(path, blob,
                      re.escape("encoder.down.weight has shape (4, 8, 3, 3), the config needs (8, 4, 3, 3)"))


def test_shipped_weights_load_and_produce_finite_output(pair):
    net, extra = load_weights(DEFAULT_WEIGHTS, steps=2)
    ir, vis = pair(48, 64)
    with torch.inference_mode():
        out = net(ir, vis, torch.randn(1, net.latent_channels, 6, 8, generator=torch.Generator().manual_seed(0)), ir)
    assert torch.isfinite(out).all() and out.shape == (1, 1, 48, 64)
    assert "align" in extra and DEFAULT_WEIGHTS.stat().st_size <= 20 * 2**20


def test_a_file_without_band_sigma_keeps_the_block_mean_band(tmp_path, tiny):
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(tiny))
    blob = torch.load(path, weights_only=False)
    del blob["model"]["band_sigma"]  # as written before the key existed
    torch.save(blob, path)
    assert read_weights(path)[0].band_sigma == 0.0
    assert load_weights(path)[0].decoder.band_sigma == 0.0


@pytest.mark.parametrize("name", ["demo", "eval", "rig", "replay"])
def test_shipped_configs_align_as_the_shipped_weights_were_trained(name):
    from streamfuse.config import load_config
    from streamfuse.configs import resolve

    trained = read_weights(DEFAULT_WEIGHTS)[2]["align"]
    align = load_config(resolve(name)).align
    assert (align.reg, align.blend) == (trained["reg"], trained["blend"])  # else every run warns and fuses off-model


def test_the_shipped_weights_report_the_model_cards_version(tmp_path, tiny):
    title = (DEFAULT_WEIGHTS.parent / "MODEL_CARD.md").read_text(encoding="utf-8").splitlines()[0]
    card = re.fullmatch(rf"# HCLFuse-RT v(\d+\.\d+) \(`{DEFAULT_WEIGHTS.name}`\)", title)
    assert card, f"the model card's title names no version of {DEFAULT_WEIGHTS.name}: {title!r}"
    digest = hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()[:8]
    assert weights_version(DEFAULT_WEIGHTS) == f"{card[1]}+{digest}"  # was "4.0+cd4e0775" beside the card's v4.6
    path = tmp_path / "mine.pt"  # a file of one's own: its format version and its hash
    save_weights(path, HCLFuseNet(tiny))
    assert re.fullmatch(rf"{FORMAT_VERSION}\.0\+[0-9a-f]{{8}}", weights_version(path))


def test_weights_that_are_a_folder_or_a_device_are_said_to_be_so(tmp_path):
    # "not found", for a path that is there
    for path in (tmp_path, Path("/dev/null")):
        with pytest.raises(FileNotFoundError, match=f"^HCLFuse weights not a file \\(a folder, a pipe or a device\\): "
                                                    f"{re.escape(str(path))}$"):
            read_weights(path)
    with pytest.raises(FileNotFoundError, match="^HCLFuse weights not found: "):
        read_weights(tmp_path / "none.pt")


def test_a_float16_file_loads_as_float32_with_the_gates_folded(tmp_path, tiny):
    half = tmp_path / "half.pt"
    save_weights(half, HCLFuseNet(tiny, steps=2))
    blob = torch.load(str(half), weights_only=True)  # halved by hand, as a user shrinking a file would
    blob["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    torch.save(blob, str(half))
    loaded = load_weights(half, steps=2)[0]
    assert all(v.dtype == torch.float32 for v in read_weights(half)[1].values() if v.is_floating_point())
    assert all(torch.sigmoid(g.logit).eq(1).all() for g in (loaded.encoder.gate1, loaded.encoder.gate2))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("where", [0, -1])
def test_a_non_finite_value_in_any_tensor_is_refused(tmp_path, tiny, where):
    path, blob = _blob(tmp_path, tiny)
    key = [k for k, v in blob["state_dict"].items() if v.is_floating_point()][where]
    blob["state_dict"][key].view(-1)[where] = float("inf")  # the first value of the first tensor, the last of the last
    _refused_as_saved(path, blob, "NaN or infinite")


@pytest.mark.parametrize("key, value, what", [("model", [4, 8], "model config is not a mapping but list"),
                                              ("model", None, "model config is not a mapping but NoneType"),
                                              ("extra", "abc", "extra metadata is not a mapping but str"),
                                              ("extra", [1, 2], "extra metadata is not a mapping but list")])
def test_a_config_or_metadata_that_is_no_mapping_is_one_line(tmp_path, tiny, key, value, what):
    # a TypeError traceback in run, replay, evaluate and train --init ('list' object is not a mapping)
    path, blob = _blob(tmp_path, tiny)
    blob[key] = value
    _refused_as_saved(path, blob, what)


@pytest.mark.parametrize("widths, match", [((2**20, 2**20), "bad model config: widths=.* is out of range"),
                                           ((2**40, 2**40), "bad model config: widths=.* is out of range")])
def test_a_config_of_huge_sizes_allocates_nothing_before_it_is_refused(tmp_path, tiny, widths, match):
    # a small hostile file made the reader build its config's net first: gigabytes, or an allocator's traceback
    path, blob = _blob(tmp_path, tiny)
    blob["model"]["widths"] = list(widths)
    _refused_as_saved(path, blob, match)


def test_integer_tensors_where_the_model_has_floats_are_refused(tmp_path, tiny):
    # they loaded, cast to whole numbers, and fused garbage without a word
    path, blob = _blob(tmp_path, tiny)
    blob["state_dict"] = {k: v.long() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    _refused_as_saved(path, blob, "holds torch.int64, not floats")


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, None])
def test_a_newer_or_unstated_format_version_is_refused_too(tmp_path, tiny, version):
    # only the version this reader knows loads for inference: a newer file's tensors may mean something else under the
    # same names, and a file that states no version at all is no file this package wrote
    path, blob = _blob(tmp_path, tiny)
    if version is None:
        del blob["format_version"]
    else:
        blob["format_version"] = version
    _refused_as_saved(path, blob, f"format version {version} is not supported")
