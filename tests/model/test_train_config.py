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
    (["train.warmup=0"], "1 .. 10^9"),
    (["train.teacher_steps=21"], "1..20"),
    (["train.distill=true", "train.decoder_only=true"], "false with distill"),
    (["train.crop=36"], "a multiple of 8, 8..1024"),  # a multiple of 4 only: the net's stride is 8
    (["train.minutes=-1"], ">= 0 (0 = no budget)"),
    (["train.weight_decay=.inf"], ">= 0, finite"),  # AdamW would make every weight NaN at the first step
    (["train.steps=0"], "1 .. 10^9"),  # a schedule of no step: weights written untrained
    (["train.batch=0"], "1 .. 4096"),
    (["train.threads=0"], "1 .. 1024"),  # torch refuses 0 threads at the run's start, in a traceback
    (["train.crop=1032"], "a multiple of 8, 8..1024"),
    (["train.seed=9223372036854775808"], "0 .. 2^63 - 1"),  # 2^63: beyond a signed 64-bit seed
    (["loss.range_window=8"], "odd, 1 .. 255"),  # an even window makes a local range a pixel larger than the image
    # every step's local range (computed at any range weight) took over a minute of max_pool2d at this window
    (["loss.range_window=1000000001"], "odd, 1 .. 255"),
    (["loss.detail_gain=0"], "> 0, finite"),  # a hand rule without the detail it is there for
    (["model.latent_channels=0"], "1 .. 256"),  # named, not image_channels, which the user left alone
    (["model.beta_start=0"], "0 < beta_start < 1"),  # named, not beta_end
    (["model.beta_end=0.00001"], "beta_start < beta_end < 1"),
])
def test_settings_that_cannot_train_are_refused_naming_the_key(overrides, allowed):
    key = overrides[-1].split("=")[0]
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}=\S+ is out of range; allowed: {re.escape(allowed)}$"):
        load_setup(overrides)


def test_the_edges_that_can_train_are_taken():
    # guidance 0: the unguided samplers
    setup = load_setup(["train.lr=10", "train.ema=0", "train.warmup=1", "train.teacher_steps=20", "train.distill=true",
                        "train.guidance_scale=0", "train.crop=8", "train.seed=9223372036854775807"])
    assert (setup.train.lr, setup.train.ema, setup.train.warmup, setup.train.teacher_steps,
            setup.train.guidance_scale, setup.train.crop, setup.train.seed) == (10, 0, 1, 20, 0, 8, 2**63 - 1)


def test_a_section_given_a_value_instead_of_keys_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"^train=3: give one of its keys, train.<key>=value$"):
        load_setup(["train=3"])


def test_an_unknown_section_is_refused_naming_the_sections():
    with pytest.raises(ValueError,
                       match=r"^unknown config section trian; allowed sections: train, model, loss, align$"):
        load_setup(["trian.steps=10"])  # a typo of train: the run would go on with the default steps


@pytest.mark.parametrize("text", ["inf", "Infinity", "+inf", ".inf"])
def test_an_infinite_budget_is_taken_as_python_or_yaml_writes_it(text):
    # `--minutes inf` was "the wrong type; expected float" while YAML's `.inf` was taken
    assert load_setup([f"train.minutes={text}"]).train.minutes == float("inf")


@pytest.mark.parametrize("text", ["-inf", "nan", "NaN"])
def test_a_budget_python_writes_that_means_nothing_is_out_of_range_not_the_wrong_type(text):
    with pytest.raises(ValueError, match=r"^train\.minutes=.* is out of range; allowed: >= 0 \(0 = no budget\)$"):
        load_setup([f"train.minutes={text}"])
