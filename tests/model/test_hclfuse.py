"""HCLFuseNet forward contract, weights save/load and their one-line errors, the hclfuse Fuser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamfuse.align import AlignConfig
from streamfuse.fusers import FuseConfig
from streamfuse.model.hclfuse import (
    DEFAULT_WEIGHTS,
    HCLFuseNet,
    ModelConfig,
    build_hclfuse,
    load_weights,
    read_weights,
    save_weights,
)
from streamfuse.model.vbe import lowpass

TINY = ModelConfig(widths=(4, 8), latent_channels=2, denoiser_width=4)


def _frames(h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, h, w, generator=g), torch.rand(1, 1, h, w, generator=g)


@pytest.mark.parametrize("steps", [1, 3])
def test_forward_shape_range_and_attributes(steps):
    net = HCLFuseNet(TINY, steps=steps).eval()
    ir, vis = _frames()
    noise = torch.randn(1, net.latent_channels, 4, 6)
    with torch.inference_mode():
        out = net(ir, vis, noise, ir)
    assert out.shape == (1, 1, 32, 48) and out.min() >= 0 and out.max() <= 1
    assert (net.stride, net.latent_channels, net.steps) == (8, 2, steps)


def test_same_noise_same_output():
    net = HCLFuseNet(TINY, steps=2).eval()
    ir, vis = _frames()
    n1 = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = net(ir, vis, n1, ir), net(ir, vis, n1.clone(), ir)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_save_load_round_trip(tmp_path):
    net = HCLFuseNet(TINY, steps=2)
    path = tmp_path / "w.pt"
    save_weights(path, net, extra={"align": {"reg": 0.01, "blend": 0.3}})
    loaded, extra = load_weights(path, steps=2)
    assert extra["align"]["reg"] == 0.01 and loaded.cfg == TINY and loaded.steps == 2
    ir, vis = _frames()
    noise = torch.zeros(1, 2, 4, 6)
    net.eval().fold_gates()
    with torch.inference_mode():
        torch.testing.assert_close(net(ir, vis, noise, ir), loaded(ir, vis, noise, ir))


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


def test_older_format_is_refused_for_inference_but_can_start_a_fine_tune(tmp_path):
    path = tmp_path / "old.pt"
    save_weights(path, HCLFuseNet(TINY))
    blob = torch.load(str(path), weights_only=True)
    blob["format_version"] = 1
    torch.save(blob, str(path))
    _one_line_value_error(path, "format version 1 is not supported")
    cfg, state, _ = read_weights(path, any_version=True)
    assert cfg == TINY and set(state) == set(HCLFuseNet(TINY).state_dict())


def test_decoder_takes_detail_from_the_raw_ir():
    net = HCLFuseNet(TINY, steps=1).eval()
    with torch.no_grad():
        net.decoder.cue.weight.zero_()  # unit gains whatever the sources' detail energy
    ir, vis = _frames()
    raw = torch.rand(ir.shape, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        z, skips = net.sample(ir, vis, torch.zeros(1, 2, 4, 6))
        a, b = net.decoder(z, skips, raw, vis), net.decoder(z, skips, ir, vis)
    torch.testing.assert_close(a - b, (raw - lowpass(raw)) - (ir - lowpass(ir)), atol=1e-5, rtol=0)  # unit gains


def test_student_and_teacher_are_separate_samplers():
    net = HCLFuseNet(TINY, steps=3).eval()
    assert net.steps == 3 and not net.use_student
    with torch.no_grad():
        net.student.out.bias.fill_(0.5)
    ir, vis = _frames()
    noise = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        teacher = net(ir, vis, noise, ir)
        net.set_sampling(3, student=True)
        assert net.steps == TINY.student_steps and net.use_student
        assert not torch.equal(net(ir, vis, noise, ir), teacher)
    assert any(k.startswith("student.") for k in net.state_dict())


def test_config_weights_mismatch_is_one_line(tmp_path):
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(TINY))
    blob = torch.load(str(path), weights_only=True)
    blob["model"]["widths"] = [8, 8]
    torch.save(blob, str(path))
    _one_line_value_error(path, "do not match the model config")
    blob["model"]["widths"] = [4, 8]
    blob["state_dict"]["denoiser.out.bias"][:] = float("nan")
    torch.save(blob, str(path))
    _one_line_value_error(path, "NaN")


def test_fuser_on_cpu(tmp_path):
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(TINY))
    fuser = build_hclfuse(FuseConfig(weights=str(path), device="cpu", steps=2, threads=1), AlignConfig())
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (37, 50), dtype=np.uint8)  # not a multiple of the stride: the engine pads
    vis = rng.integers(0, 256, (37, 50), dtype=np.uint8)
    out = fuser.fuse(ir, vis, "cam0")
    assert out.shape == (37, 50) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 255
    np.testing.assert_array_equal(fuser.fuse(ir, vis, "cam0"), out)  # static input -> identical output
    assert fuser.name == "hclfuse" and fuser.version.startswith("3.0+")
    stats = fuser.stats()
    assert stats["ot_misses"] == 1 and stats["ot_hits"] == 1
    assert not torch.equal(fuser.noise("cam0", 37, 50), fuser.noise("cam1", 37, 50))
    batch = fuser.fuse_batch([ir, ir], [vis, vis], ["cam0", "cam0"])
    np.testing.assert_allclose(batch[0], out, atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        fuser.fuse(ir.astype(np.float32), vis)


def test_shipped_weights_load_and_produce_finite_output():
    net, extra = load_weights(DEFAULT_WEIGHTS, steps=2)
    ir, vis = _frames(48, 64)
    with torch.inference_mode():
        out = net(ir, vis, torch.randn(1, net.latent_channels, 6, 8, generator=torch.Generator().manual_seed(0)), ir)
    assert torch.isfinite(out).all() and out.shape == (1, 1, 48, 64)
    assert "align" in extra and DEFAULT_WEIGHTS.stat().st_size <= 20 * 2**20


def test_guidance_can_be_switched_off():
    net = HCLFuseNet(TINY, steps=2).eval()
    assert net.guide is not None
    net.set_sampling(2, guidance=False)
    ir, vis = _frames()
    with torch.inference_mode():
        assert net.guide is None and net(ir, vis, torch.zeros(1, 2, 4, 6), ir).shape == (1, 1, 32, 48)
