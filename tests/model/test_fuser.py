"""The hclfuse Fuser: padding, determinism, OT cache, fixed noise, batching, input checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from streamfuse.align import AlignConfig
from streamfuse.diffusion.guidance import IMAGE_LAMBDA, LAMBDAS, structure_energy, structure_inputs
from streamfuse.engine import Engine
from streamfuse.inference import EngineConfig, HCLFuseConfig
from streamfuse.model import fuser as fuser_module
from streamfuse.model.fuser import build_hclfuse
from streamfuse.model.net import HCLFuseNet
from streamfuse.model.weights import FORMAT_VERSION, save_weights


def test_fuser_on_cpu(tmp_path, tiny):
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(tiny))
    fuser = build_hclfuse(HCLFuseConfig(weights=str(path), steps=2), EngineConfig(device="cpu", threads=1),
                          AlignConfig())
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (37, 50), dtype=np.uint8)  # not a multiple of the stride: the engine pads
    vis = rng.integers(0, 256, (37, 50), dtype=np.uint8)
    out = fuser.fuse(ir, vis, "cam0")
    assert out.shape == (37, 50) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 255
    np.testing.assert_array_equal(fuser.fuse(ir, vis, "cam0"), out)  # static input -> identical output
    assert fuser.name == "hclfuse" and fuser.version.startswith(f"{FORMAT_VERSION}.0+")
    stats = fuser.stats()
    assert stats["ot_misses"] == 1 and stats["ot_hits"] == 1
    # the noise is the seed's and the frame size's, not the stream name's: a replay (another topic) fuses alike
    np.testing.assert_array_equal(fuser.fuse(ir, vis, "replay"), out)
    other_seed = build_hclfuse(HCLFuseConfig(weights=str(path), steps=2, seed=1), EngineConfig(device="cpu", threads=1),
                               AlignConfig())
    assert not torch.equal(fuser.noise(37, 50), other_seed.noise(37, 50))
    assert not np.array_equal(other_seed.fuse(ir, vis, "cam0"), out)  # the seed reaches the image
    batch = fuser.fuse_batch([ir, ir], [vis, vis], ["cam0", "cam0"])
    np.testing.assert_allclose(batch[0], out, atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        fuser.fuse(ir.astype(np.float32), vis)
    # the visible Y too, said by the fuser (not left to the alignment, which the "no OT" ablation does not run)
    with pytest.raises(ValueError, match=r"hclfuse needs two \(H, W\) uint8 images.*visible Y \(37, 50\) uint16"):
        fuser.fuse(ir, vis.astype(np.uint16))


def test_warm_up_runs_the_engine_once_outside_every_stream(tmp_path, tiny, monkeypatch):
    # a live run warms the fuser up before capture starts: the engine's first call (a CUDA graph's capture) must not
    # fall on a camera's first frame, and must leave no stream's OT plan behind
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(tiny))
    made = [build_hclfuse(HCLFuseConfig(weights=str(path), steps=2), EngineConfig(device="cpu", threads=1),
                          AlignConfig()) for _ in range(2)]
    shapes, run = [], made[0].engine.run
    monkeypatch.setattr(made[0].engine, "run", lambda ir, *a: shapes.append(ir.shape) or run(ir, *a))
    made[0].warm_up(37, 50)
    assert shapes == [(1, 37, 50)] and made[0].stats()["ot_misses"] == 0
    rng = np.random.default_rng(0)
    ir, vis = (rng.integers(0, 256, (37, 50), dtype=np.uint8) for _ in range(2))
    np.testing.assert_array_equal(made[0].fuse(ir, vis, "cam0"), made[1].fuse(ir, vis, "cam0"))


def _tiny_fuser(tmp_path, tiny, **engine):
    path = tmp_path / "w.pt"
    if not path.exists():
        with torch.random.fork_rng():  # the same weights every run, the global RNG untouched
            torch.manual_seed(0)
            save_weights(path, HCLFuseNet(tiny))
    return build_hclfuse(HCLFuseConfig(weights=str(path), steps=2), EngineConfig(device="cpu", threads=1),
                         AlignConfig(), **engine)


def _two_pairs():
    rng = np.random.default_rng(1)
    ir, vis = (rng.integers(0, 256, (40, 48), dtype=np.uint8) for _ in range(2))
    return [(ir, vis), ((ir // 3).astype(np.uint8), vis)]  # the second IR darker: another OT table


@pytest.mark.parametrize("max_batch", [1, 2])
def test_a_batch_of_different_pairs_fuses_each_with_its_own_table(tmp_path, tiny, max_batch):
    pairs = _two_pairs() * 2  # with max_batch 1 or 2, later engine calls get later pairs' tables
    singles = _tiny_fuser(tmp_path, tiny)
    want = [singles.fuse(ir, vis, f"s{k}") for k, (ir, vis) in enumerate(pairs)]
    batched = _tiny_fuser(tmp_path, tiny, max_batch=max_batch)
    got = batched.fuse_batch([p[0] for p in pairs], [p[1] for p in pairs], [f"s{k}" for k in range(4)])
    np.testing.assert_allclose(got, np.stack(want), atol=1e-4)
    assert np.abs(want[1] - want[0]).mean() > 1  # the two tables differ enough to tell


def test_an_empty_or_mixed_size_batch_is_refused_in_one_line(tmp_path, tiny):
    fuser = _tiny_fuser(tmp_path, tiny, max_batch=2)
    (ir, vis), _ = _two_pairs()
    small = ir[:32]
    with pytest.raises(ValueError, match="at least one pair.* got 0, 0 and 0"):
        fuser.fuse_batch([], [], [])
    with pytest.raises(ValueError, match="got 1, 1 and 0"):  # zip would drop the pair without a stream name
        fuser.fuse_batch([ir], [vis], [])
    with pytest.raises(ValueError, match=r"^hclfuse needs two \(H, W\) uint8 images of one size, got IR \(40, 48\) "
                                         r"uint8 and visible Y \(32, 48\) uint8$"):  # a pair of two sizes
        fuser.fuse(ir, small)
    for k in (1, 2):  # in the first engine call, or in a later one
        irs = [ir] * k + [small]
        with pytest.raises(ValueError, match=rf"one frame size: pair 0 is \(40, 48\), pair {k} \(32, 48\)"):
            fuser.fuse_batch(irs, [x.copy() for x in irs], ["s"] * len(irs))


def test_streams_of_one_fuser_keep_their_own_ot_plans(tmp_path, tiny):
    fuser = _tiny_fuser(tmp_path, tiny)
    (ir, vis), (ir2, vis2) = _two_pairs()
    for _ in range(2):  # alternating streams: each frame hits its own stream's plan after the first
        fuser.fuse(ir, vis, "cam0")
        fuser.fuse(ir2, vis2, "cam1")
    assert (fuser.stats()["ot_misses"], fuser.stats()["ot_hits"]) == (2, 2)
    batched = _tiny_fuser(tmp_path, tiny, max_batch=2)  # the same in batches: each pair with its own stream's plan
    for _ in range(2):
        batched.fuse_batch([ir, ir2], [vis, vis2], ["cam0", "cam1"])
    assert (batched.stats()["ot_misses"], batched.stats()["ot_hits"]) == (2, 2)


def test_the_fixed_noise_is_kept_per_frame_size(tmp_path, tiny):
    fuser = _tiny_fuser(tmp_path, tiny)
    for h, w in ((40, 48), (40, 64), (24, 48)):  # sizes sharing a height or a width
        assert fuser.noise(h, w).shape == (1, *fuser.engine.latent_shape(h, w))
    rng = np.random.default_rng(2)
    for w in (48, 64):
        ir, vis = (rng.integers(0, 256, (40, w), dtype=np.uint8) for _ in range(2))
        assert fuser.fuse(ir, vis).shape == (40, w)


def test_the_model_section_reaches_the_net_and_the_engine(tmp_path, tiny, monkeypatch):
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(tiny))
    made = []
    monkeypatch.setattr(fuser_module, "Engine", lambda net, **kw: made.append(kw) or Engine(net, **kw))
    cfg = HCLFuseConfig(weights=str(path), sampler="teacher", steps=3, guidance_scale=2.5, image_guidance=2)
    net = build_hclfuse(cfg, EngineConfig(device="cpu", threads=1), AlignConfig()).net
    assert [g.lambda0 for g in net.guide.guides] == pytest.approx([2.5 * lam for lam in LAMBDAS])
    assert (net.steps, net.use_student, net.image_steps, net.image_lambda) == (3, False, 2, 2.5 * IMAGE_LAMBDA)
    assert made[-1]["cuda_graphs"] is False  # a graph cannot capture the decoded-image guide's autograd
    student = build_hclfuse(HCLFuseConfig(weights=str(path), steps=3), EngineConfig(device="cpu", threads=1),
                            AlignConfig()).net
    assert made[-1]["cuda_graphs"] is True
    assert (student.use_student, student.steps) == (True, tiny.student_steps)  # the teacher's K is not the student's


OTHER_ALIGN = [({"reg": 0.01, "blend": 0.3}, True), ({"reg": 0.05, "blend": 0.15}, True),
               ({"reg": 0.01, "blend": 0.15}, False), ({}, False)]  # the defaults are reg 0.01, blend 0.15


@pytest.mark.parametrize("enabled", [True, False], ids=["aligned", "no-ot"])
@pytest.mark.parametrize(("trained", "warns"), OTHER_ALIGN, ids=["blend", "reg", "same", "none"])
def test_weights_trained_with_another_alignment_warn(tmp_path, tiny, caplog, trained, warns, enabled):
    # with the alignment off (the "no OT" ablation) its settings are not used: nothing to warn of
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(tiny), extra={"align": trained})
    with caplog.at_level(logging.WARNING, logger="streamfuse.model.fuser"):
        build_hclfuse(HCLFuseConfig(weights=str(path)), EngineConfig(device="cpu", threads=1),
                      AlignConfig(enabled=enabled))
    assert ("was trained with align" in caplog.text) == (warns and enabled)


@pytest.mark.parametrize("trained", [{"blend": "0.3", "reg": None}, [0.3], "blend", {"blend": [0.3]}],
                         ids=["text", "list", "string", "nested"])
def test_weights_whose_recorded_alignment_is_no_numbers_still_load(tmp_path, tiny, caplog, trained):
    path = tmp_path / "w.pt"  # a hand-edited file: its record cannot be compared, so it is not, and nothing breaks
    save_weights(path, HCLFuseNet(tiny), extra={"align": trained})
    with caplog.at_level(logging.WARNING, logger="streamfuse.model.fuser"):
        fuser = build_hclfuse(HCLFuseConfig(weights=str(path)), EngineConfig(device="cpu", threads=1), AlignConfig())
    assert fuser is not None and "was trained with align" not in caplog.text


@pytest.mark.parametrize(("train", "sampler", "warns"), [({"distill": False}, "student", True),
                                                         ({"distill": False}, "teacher", False),
                                                         ({"distill": True}, "student", False),
                                                         (None, "student", False),
                                                         ({}, "student", False)])  # a record that does not say
def test_weights_of_a_first_training_stage_run_with_the_student_warn(tmp_path, tiny, caplog, train, sampler, warns):
    # the first stage's file holds a student never trained: run with the live default (the student), said nowhere
    path = tmp_path / "w.pt"
    save_weights(path, HCLFuseNet(tiny), extra={} if train is None else {"config": {"train": train}})
    with caplog.at_level(logging.WARNING, logger="streamfuse.model.fuser"):
        build_hclfuse(HCLFuseConfig(weights=str(path), sampler=sampler), EngineConfig(device="cpu", threads=1),
                      AlignConfig())
    assert ("holds an untrained student (its run had no --distill)" in caplog.text) == warns


def test_a_pairs_own_latent_decodes_to_its_fused_frame_at_the_frames_size(tmp_path, tiny):
    # the ablations decode a pair with another latent: a frame that is no multiple of the stride is padded for the net,
    # and what they compare with the fused frame must be cut back to the frame's own size
    fuser = _tiny_fuser(tmp_path, tiny)
    rng = np.random.default_rng(2)
    ir, vis = (rng.integers(0, 256, (37, 50), dtype=np.uint8) for _ in range(2))
    out = fuser.decode_with(ir, vis, fuser.latent(ir, vis))
    assert out.shape == (37, 50)
    np.testing.assert_allclose(out, fuser.fuse(ir, vis), atol=1e-3)


def test_the_reported_image_energy_is_that_of_the_fused_frame_in_the_guides_range(tmp_path, tiny):
    # image_structure is what the decoded-image guide lowers: the energy of 2 F - 1 against the raw IR and the visible
    fuser = _tiny_fuser(tmp_path, tiny)
    rng = np.random.default_rng(3)
    ir, vis = (rng.integers(0, 256, (40, 48), dtype=np.uint8) for _ in range(2))
    fused = torch.from_numpy(fuser.fuse(ir, vis))[None, None] / 255.0
    raw, vis01 = (torch.from_numpy(x)[None, None].float() / 255.0 for x in (ir, vis))
    want = structure_energy(2.0 * fused - 1.0, structure_inputs(raw, vis01))
    assert fuser.energies(ir, vis)["image_structure"] == pytest.approx(want, rel=1e-3)
