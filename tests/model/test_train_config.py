"""Training settings (:func:`streamfuse.train.config.load_setup`) at the edges of what can train: refused in one line
naming the key before a run starts, rather than a run that learns nothing (a zero learning rate, an average that never
moves) or fails at its first step."""

from __future__ import annotations

import re

import pytest

from streamfuse.train.config import load_setup


@pytest.mark.parametrize("overrides, allowed", [
    (["train.lr=0"], "0 < lr <= 10"),
    (["train.ema=1"], "0 <= ema < 1"),  # the EMA weights would stay the initial ones
    (["train.warmup=0"], ">= 1"),
    (["train.teacher_steps=21"], "1..20"),
    (["train.distill=true", "train.decoder_only=true"], "false with distill"),
])
def test_settings_that_cannot_train_are_refused_naming_the_key(overrides, allowed):
    key = overrides[-1].split("=")[0]
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}=\S+ is out of range; allowed: {re.escape(allowed)}$"):
        load_setup(overrides)


def test_the_edges_that_can_train_are_taken():
    setup = load_setup(["train.lr=10", "train.ema=0", "train.warmup=1", "train.teacher_steps=20", "train.distill=true"])
    assert (setup.train.lr, setup.train.ema, setup.train.warmup, setup.train.teacher_steps) == (10, 0, 1, 20)
