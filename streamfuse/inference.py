"""The two config sections of the ``hclfuse`` fuser: ``hclfuse`` (which weights, how to sample) and ``engine`` (where
and how the net runs).

They live here, apart from :mod:`streamfuse.model.fuser` and :mod:`streamfuse.engine` that read them, because those
import torch and loading a config must not (a bad key is reported in a fraction of a second).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from streamfuse.checks import check

__all__ = ["HCLFuseConfig", "EngineConfig", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class HCLFuseConfig:
    """The ``hclfuse`` section: the model's weights and sampling (its architecture comes with the weights file).

    Args:
        weights: HCLFuse weights file; empty means the weights shipped with the package.
        sampler: ``student`` (the distilled few-step sampler, the live default) or ``teacher`` (K-step DDIM).
        steps: DDIM steps K of the teacher (1..20).
        guidance: apply the physics guides during sampling.
        guidance_scale: multiplies the physics guides' weights (1 = the method's).
        image_guidance: gradient steps of the structure guide on the decoded image after sampling (0 = off, the
            live default: one step takes 1.4x the default's time, 26.2 against 18.6 ms at 640x480 on two CPU
            threads, for Qabf +0.001 on msrs/test and +0.004 on M3SVD; five raise Qabf further, for offline replay;
            model card). Runs autograd, so the engine does not use CUDA graphs with it.
        seed: seed of the sampler's fixed latent noise (0..2^32-1).
    """

    weights: str = ""
    sampler: Literal["student", "teacher"] = "student"
    steps: int = 20
    guidance: bool = True
    guidance_scale: float = 1.0
    image_guidance: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.sampler in ("student", "teacher"), "sampler", self.sampler, "student | teacher")
        check(1 <= self.steps <= 20, "steps", self.steps, "1..20")
        check(0.0 <= self.guidance_scale <= 10.0, "guidance_scale", self.guidance_scale, "0 .. 10")
        check(0 <= self.image_guidance <= 20, "image_guidance", self.image_guidance, "0 .. 20")
        check(0 <= self.seed < 2**32, "seed", self.seed, "0 .. 2^32-1")


@dataclass(frozen=True)
class EngineConfig:
    """The ``engine`` section: the device the net runs on (:class:`streamfuse.engine.Engine`).

    Args:
        device: ``auto`` (a GPU when torch sees one), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, or ``fp16``/``bf16`` autocast (on the GPU, and on the CPU as well).
        threads: torch CPU threads; 0 means all cores.
        cuda_graphs: capture the fixed-shape forward in a CUDA graph.
    """

    device: str = "auto"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    threads: int = 0
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        check(self.precision in PRECISIONS, "precision", self.precision, " | ".join(PRECISIONS))
        check(0 <= self.threads <= 1024, "threads", self.threads, "0 (all cores) .. 1024")  # more is a typo
        device_ok = self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d{1,3}", self.device) is not None
        check(device_ok, "device", self.device, "auto | cpu | cuda | cuda:N")
