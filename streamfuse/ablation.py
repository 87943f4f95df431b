"""The HCLFuse ablation: each part of the model removed or replaced in turn (its rows), beside the baseline fusers,
scored on one pair set by :func:`streamfuse.evaluation.evaluate_dir`; the physics guides' energies with and without
guidance; and the JSON summary of the rows (``tools/ablate.py`` is its command line).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamfuse.atomic_write import write_file
from streamfuse.config import PipelineConfig, load_config
from streamfuse.configs import resolve
from streamfuse.eval_pairs import find_pairs, read_pair
from streamfuse.eval_report import check_outputs
from streamfuse.evaluation import EvalResult, Method, evaluate_dir
from streamfuse.processor import config_fuser

__all__ = ["DEFAULT", "IMAGE_STEPS", "JSON_METRICS", "ROW_SECTIONS", "LatentRow", "ablate", "guidance_energies",
           "methods", "published_dirs", "summary"]

JSON_METRICS = ("VIF", "Qabf", "AG", "SF", "Nabf", "Over", "SSIM")
DEFAULT = "default"
# steps of the decoded-image guide (hclfuse.image_guidance) in its rows: one, the cheapest, and five, the
# offline-quality setting
IMAGE_STEPS = (1, 5)
ROW_SECTIONS = ("align", "hclfuse", "engine")  # what the rows are built from (the fuser and the baselines: each row's)


class LatentRow:
    """A row that decodes each pair with another latent than its own: zeros, or the next pair's (``pairs`` given).

    The swap relies on :func:`evaluate_dir` fusing ``pairs`` in their order, once each; a latent of another size is
    resized to this pair's latent shape.
    """

    version = "1"

    def __init__(self, name: str, hcl: Any, pairs: list[tuple[str, Path, Path]] | None = None):
        self.name, self.hcl, self.pairs = name, hcl, pairs
        self.index = 0

    def fuse(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
        """The pair's fused Y (H, W) float32 on 0..255, decoded from the replacement latent."""
        if self.pairs is None:
            return self.hcl.decode_with(ir, vis_y, torch.zeros_like(self.hcl.latent(ir, vis_y, stream)), stream)
        ir_next, vis_next = read_pair(*self.pairs[(self.index + 1) % len(self.pairs)])
        self.index += 1
        z = self.hcl.latent(ir_next, vis_next, stream)
        if ir_next.shape != ir.shape:
            z = torch.nn.functional.interpolate(z, size=self.hcl.latent(ir, vis_y, stream).shape[-2:],
                                                mode="bilinear", align_corners=False)
        return self.hcl.decode_with(ir, vis_y, z, stream)

    def stats(self) -> dict[str, float]:
        return {}


def methods(cfg: PipelineConfig, steps: list[int], pairs: list[tuple[str, Path, Path]],
            baselines: bool = True) -> list[Method]:
    """The rows of the ablation, ``default`` first (the reference of every delta), in the order they are printed."""
    cfg = replace(cfg, fuse=replace(cfg.fuse, name="hclfuse"))

    def hcl(name: str, ot: bool = True, **changes: Any) -> Method:
        align = replace(cfg.align, enabled=cfg.align.enabled and ot)
        return Method(name, fuser=config_fuser(replace(cfg, hclfuse=replace(cfg.hclfuse, **changes), align=align)),
                      align=align)

    def baseline(name: str, sharpen: float = 0.0, contrast: float = 1.0) -> Method:
        label = name + (f":sharpen={sharpen:g}" if sharpen else "")
        label += f":contrast={contrast:g}" if contrast != 1 else ""
        return Method(label, fuser=config_fuser(replace(cfg, fuse=replace(cfg.fuse, name=name),
                                                        baseline=replace(cfg.baseline, sharpen=sharpen,
                                                                         contrast=contrast))))

    latent = config_fuser(cfg)  # its own fuser: the rows' extra OT solves stay out of the default's cache
    rows = [hcl(DEFAULT), hcl("no_guidance", guidance=False),
            *(hcl(f"image_guidance={n}", image_guidance=n) for n in IMAGE_STEPS),
            Method("latent_zero", fuser=LatentRow("latent_zero", latent))]
    if len(pairs) > 1:
        rows.append(Method("latent_swap", fuser=LatentRow("latent_swap", latent, pairs)))
    else:  # one pair would be decoded with its own latent: a row equal to the default that reads as "no effect"
        logging.warning("latent_swap left out: it needs at least two pairs")
    rows.append(hcl("no_ot", ot=False))
    rows += [hcl(f"K={k}", steps=k, sampler="teacher") for k in steps]  # K rows: the K-step teacher
    rows += [baseline("rule"), baseline("max", contrast=1.25), baseline("max", contrast=1.3)]
    if baselines:
        rows += [baseline(name, sharpen) for name in ("max", "average", "laplacian") for sharpen in (0.0, 0.5, 1.0)]
    return rows


def guidance_energies(cfg: PipelineConfig, pairs: list[tuple[str, Path, Path]]) -> dict[str, dict[str, float]]:
    """Mean physics energies (streamfuse.model.fuser.HCLFuser.energies) with the default's guidance, without it, and
    with the decoded-image guide's steps (what guidance lowers)."""
    out = {}
    for label, guidance, steps in (("with", True, cfg.hclfuse.image_guidance), ("without", False, 0),
                                   *((f"image_guidance={n}", True, n) for n in IMAGE_STEPS)):
        fuser = config_fuser(replace(cfg, fuse=replace(cfg.fuse, name="hclfuse"),
                                     hclfuse=replace(cfg.hclfuse, guidance=guidance, image_guidance=steps)))
        values = [fuser.energies(*read_pair(name, i, v), name) for name, i, v in pairs]
        out[label] = {k: float(np.mean([e[k] for e in values])) for k in values[0]}
    return out


def summary(result: EvalResult) -> dict:
    """The JSON object: pairs scored, the default's metrics, and every other row's pairs, metrics and delta grey (a
    published folder's row is scored on the pairs it has an image for: fewer than the default's where it lacks some)."""

    def pick(means: dict[str, float], keys: tuple[str, ...]) -> dict[str, float | None]:
        return {k: means[k] if math.isfinite(means[k]) else None for k in keys}

    default = result.means[DEFAULT]
    return {"n": int(default["n"]), "default": pick(default, JSON_METRICS),
            "rows": {name: {"n": int(m["n"]), **pick(m, (*JSON_METRICS, "delta_grey", "psnr_ref", "ms"))}
                     for name, m in result.means.items() if name != DEFAULT}}


def published_dirs(data: Path, dataset: str) -> list[Path]:
    """Published outputs scored beside the rows: ``<data>/reference/<method>/msrs_test``, for msrs/test only."""
    return [d / "msrs_test" for d in sorted((data / "reference").glob("*"))
            if dataset == "msrs/test" and (d / "msrs_test").is_dir()]


def ablate(dir_ir: Path, dir_vis: Path, config: str, overrides: list[str], steps: list[int], out: Path, *,
           limit: int = 0, baselines: bool = True, published: list[Path] | None = None,
           json_file: Path | None = None) -> EvalResult:
    """Score every row (:func:`methods`, from ``config`` with ``overrides``) and ``published`` folders on the pairs of
    two folders into ``out`` (as :func:`evaluate_dir`), and with ``json_file`` write :func:`summary` and the
    :func:`guidance_energies` there.

    Outputs are checked before any work: none may be, or lie in, an input (the published folders are inputs too).
    ``ConfigError``, ``ValueError`` or ``OSError`` (one line) for bad input.
    """
    published = published or []
    check_outputs({"IR": dir_ir, "visible": dir_vis, **{f"published ({d.parent.name})": d for d in published}},
                  {"--out": out}, {"--json": json_file})
    cfg = load_config(resolve(config), overrides)
    pairs = find_pairs(dir_ir, dir_vis, limit)
    rows = methods(cfg, steps, pairs, baselines)
    rows += [Method(d.parent.name, fused_dir=d) for d in published]
    # before the table is put in place: a run stopped meanwhile left --out this run's and --json an earlier one's
    energies = guidance_energies(cfg, pairs) if json_file is not None else {}
    result = evaluate_dir(dir_ir, dir_vis, rows, out, limit=limit, reference=DEFAULT)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        report = {**summary(result), "guidance_energies": energies}
        write_file(json_file, (json.dumps(report, indent=1) + "\n").encode())
    return result
