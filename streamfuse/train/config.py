"""Training settings: :class:`TrainConfig` (optimisation) and :class:`TrainSetup`, the four sections a run resolves.

A run is configured by ``section.key=value`` overrides of the defaults (``train``, ``model``, ``loss``, ``align``),
read by :func:`streamfuse.checks.apply_overrides` and validated by :func:`streamfuse.checks.parse_section`, the
parser and checks the pipeline's own config uses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from streamfuse.align import AlignConfig
from streamfuse.checks import apply_overrides, check, parse_section
from streamfuse.model.losses import LossConfig
from streamfuse.model.net import ModelConfig

__all__ = ["SECTIONS", "TrainConfig", "TrainSetup", "load_setup"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Args:
        steps: optimiser steps of the schedule.
        minutes: wall-clock budget; the schedule ends at whichever of steps and minutes comes first (0: none).
        batch: pairs per step.
        crop: square crop side (px), a multiple of the net's stride 8.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps before the cosine decay.
        ema: decay of the exponential moving average kept for inference.
        seed: seed of the weights' initialisation, the batches and the noise.
        threads: torch CPU threads.
        distill: stage 2, distil the student from the frozen teacher (see :mod:`streamfuse.train.distill`).
        decoder_only: only the decoder learns; the encoder's latent and both denoisers stay as loaded, so a
            distilled student remains valid (a decoder change needs no second distillation).
        teacher_steps: DDIM steps of the teacher the student is distilled from.
        guidance_scale: of the guided samplers the student is distilled from and with.
    """

    steps: int = 20000
    minutes: float = 0.0
    batch: int = 8
    crop: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    ema: float = 0.999
    seed: int = 0
    threads: int = 2
    distill: bool = False
    decoder_only: bool = False
    teacher_steps: int = 20
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        check(1 <= self.steps <= 10**9, "steps", self.steps, "1 .. 10^9")
        check(self.minutes >= 0, "minutes", self.minutes, ">= 0 (0 = no budget)")
        check(1 <= self.batch <= 4096, "batch", self.batch, "1 .. 4096")  # more is a typo: the shipped runs used 8
        check(8 <= self.crop <= 1024 and self.crop % 8 == 0, "crop", self.crop, "a multiple of 8, 8..1024")
        check(0 < self.lr <= 10, "lr", self.lr, "0 < lr <= 10")
        check(0 <= self.weight_decay < math.inf, "weight_decay", self.weight_decay, ">= 0, finite")
        check(1 <= self.warmup <= 10**9, "warmup", self.warmup, "1 .. 10^9")  # as steps: a float divides by it
        check(0 <= self.ema < 1, "ema", self.ema, "0 <= ema < 1")
        check(1 <= self.threads <= 1024, "threads", self.threads, "1 .. 1024")  # as engine.threads: more is a typo
        check(0 <= self.seed < 2**63, "seed", self.seed, "0 .. 2^63 - 1")
        check(not (self.distill and self.decoder_only), "decoder_only", self.decoder_only, "false with distill")
        check(1 <= self.teacher_steps <= 20, "teacher_steps", self.teacher_steps, "1..20")
        check(0 <= self.guidance_scale <= 10, "guidance_scale", self.guidance_scale, "0 .. 10")


#: The sections of a training run, in the order they are saved.
SECTIONS: dict[str, type] = {"train": TrainConfig, "model": ModelConfig, "loss": LossConfig, "align": AlignConfig}


@dataclass(frozen=True)
class TrainSetup:
    """Everything a training run is configured by."""

    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    align: AlignConfig = field(default_factory=AlignConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain mapping of every section (written beside the run's outputs)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


def load_setup(overrides: list[str], base: dict[str, dict[str, Any]] | None = None) -> TrainSetup:
    """The defaults, with ``base``'s settings (``{section: {key: value}}``: a resumed run's own) and then the
    ``section.key=value`` overrides applied, validated.

    Raises:
        ValueError: one line naming the bad key or value and what is allowed.
    """
    data = apply_overrides({name: dict(values) for name, values in (base or {}).items()}, overrides)
    for name, value in data.items():
        if name not in SECTIONS:
            raise ValueError(f"unknown config section {name}; allowed sections: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ValueError(f"{name}={value!r}: give one of its keys, {name}.<key>=value")
    return TrainSetup(**{name: _section(cls, data.get(name, {}), name) for name, cls in SECTIONS.items()})


def _section(cls: type, values: dict[str, Any], name: str) -> Any:
    """:func:`parse_section`, its range errors naming the key as its other errors do (``train.crop=30``, not
    ``train: crop=30``, which the command's own ``train:`` prefix would double)."""
    try:
        return parse_section(cls, values, name)
    except ValueError as exc:
        message = str(exc)
        if message.startswith(f"{name}: "):
            message = f"{name}.{message[len(name) + 2:]}"
        raise ValueError(message) from None
