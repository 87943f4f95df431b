"""The training schedule's numbers: the warm-up and cosine learning rate, the EMA's early decay, the wall-clock budget
in minutes, and a resume that goes on with the time already spent."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from streamfuse import train
from streamfuse.model.weights import DEFAULT_WEIGHTS, read_weights
from streamfuse.train import loop
from streamfuse.train.config import TrainConfig

# a tiny model on the threads torch has now (setting them would change them for the tests after)
TINY = ["--batch", "1", "--crop", "32", "--threads", str(torch.get_num_threads()), "--model.widths", "4", "8",
        "--model.denoiser_width", "4"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two grey pairs in msrs/train."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for d in ("ir", "vi"):
        (root / "msrs/train" / d).mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(root / "msrs/train/ir" / f"{i:03d}.png"), rng.integers(0, 256, (40, 56), dtype=np.uint8))
        cv2.imwrite(str(root / "msrs/train/vi" / f"{i:03d}.png"), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    return root


def test_the_learning_rate_warms_up_from_the_first_step_then_decays_by_cosine_to_5_percent():
    cfg = TrainConfig(lr=1e-3, warmup=4, steps=104)
    assert [loop._lr(s, s / 104, cfg) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert loop._lr(4, 0.0, cfg) == pytest.approx(1e-3)  # the cosine starts at the full rate
    assert loop._lr(54, 0.5, cfg) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert loop._lr(104, 1.0, cfg) == loop._lr(200, 3.0, cfg) == pytest.approx(5e-5)


def test_the_minutes_budget_is_minutes_of_wall_clock():
    cfg = TrainConfig(steps=1000, minutes=2.0)
    assert loop._progress(10, 60.0, cfg) == pytest.approx(0.5)  # one minute of two, whatever the steps
    assert loop._progress(600, 60.0, cfg) == pytest.approx(0.6)  # the steps, where they come first
    assert loop._progress(10, 60.0, TrainConfig(steps=1000)) == pytest.approx(0.01)  # no budget: steps only


def test_the_ema_follows_the_weights_closely_in_the_first_steps():
    torch.manual_seed(0)
    net, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2).requires_grad_(False)
    before = [p.detach().clone() for p in ema.parameters()]
    params = list(net.parameters())
    run = loop._Run(net, ema, torch.optim.AdamW(params), params, torch.Generator(), np.random.default_rng(0))
    loop._optimise(run, net(torch.ones(1, 3)).sum(), TrainConfig(ema=0.999))
    decay = 1 / 10  # step 0: min(ema, 1/10), not 0.999 (the EMA would stay at the initialisation for long)
    for pe, old, p in zip(ema.parameters(), before, net.parameters()):
        torch.testing.assert_close(pe, decay * old + (1 - decay) * p.detach())


def test_a_step_clips_the_gradients_to_norm_1():
    # a loss spike (a batch of saturated crops) must not throw the weights far off: the step takes at most norm 1
    torch.manual_seed(0)
    net, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2).requires_grad_(False)
    params = list(net.parameters())
    run = loop._Run(net, ema, torch.optim.AdamW(params), params, torch.Generator(), np.random.default_rng(0))
    loop._optimise(run, 1000 * net(torch.ones(1, 3)).sum(), TrainConfig())
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item() == pytest.approx(1.0)


def test_a_resume_goes_on_with_the_time_and_steps_already_spent(data, tmp_path):
    out = tmp_path / "run"
    common = ["--data", str(data), "--out", str(out), *TINY, "--warmup", "1", "--ckpt-minutes", "100"]
    train.main([*common, "--steps", "2"])
    train.main([*common, "--steps", "2", "--resume"])  # a finished run resumed as it was: nothing to do, no error
    state = torch.load(str(out / "checkpoint.pt"), weights_only=True)
    assert state["step"] == 2
    state["elapsed"] = 1000.0  # as if the first two steps had taken that long
    torch.save(state, str(out / "checkpoint.pt"))
    train.main([*common, "--steps", "3", "--resume"])
    _, _, extra = read_weights(out / DEFAULT_WEIGHTS.name)
    assert extra["step"] == 3 and extra["train_seconds"] >= 1000.0


def test_checkpoints_come_every_ckpt_minutes_of_wall_clock(data, tmp_path, monkeypatch):
    clock = iter(range(0, 10**6, 10))  # the loop's clock, read twice a step: 20 s a step
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    saves = []
    save = loop._save
    monkeypatch.setattr(loop, "_save", lambda run, *a, **k: (saves.append(run.step), save(run, *a, **k)))
    train.main(["--data", str(data), "--out", str(tmp_path / "run"), *TINY, "--ckpt-minutes", "1", "--steps", "8"])
    assert saves == [4, 8]  # the first checkpoint once more than 60 s have passed, the last at the end
