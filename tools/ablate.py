"""HCLFuse ablation: each part of the model removed or replaced in turn, beside the baseline fusers, on one pair set.

Rows: default (hclfuse with the config's settings), no_guidance, image_guidance=1 and =5 (one and five steps of the
structure guide on the decoded image; five is the offline-quality setting), latent_zero (each pair decoded from a zero
latent), latent_swap (each pair decoded with the next pair's latent, the last with the first's; left out with fewer
than two pairs), no_ot, K=<k> for every --steps value (the K-step teacher where the default samples with a distilled
student), the hand rule (rule), max:contrast=1.25 and 1.3, and max / average / laplacian each with sharpen 0, 0.5, 1.
Settings come from --config (default eval, shipped: a synchronous OT solve for every image, no temporal stage) and
--set stage.key=value overrides, as for every other command.

Writes metrics.csv, metrics.md (means per row, the median ms per frame and delta grey, the mean |output - default
output| over all pixels and pairs) and montage.png to --out; with --json also one JSON object
{"n": pairs, "default": {metric: mean}, "rows": {name: {"n": its pairs, metric: mean, "delta_grey": ..., "psnr_ref": dB
against the default, "ms": ...}},
"guidance_energies": {"with"|"without"|"image_guidance=1"|"image_guidance=5": {heat, structure, consistency,
image_structure}}} with the metrics VIF, Qabf, AG, SF, Nabf, Over (halos and rims, streamfuse.metrics.overshoot)
and SSIM; the energies are the physics guides' (streamfuse.diffusion.guidance) on the sampled latent, and the
structure energy of the fused image. Pairs come from --ir/--vis (any two folders, matched by file name) or from the
data set --dataset under --data; published outputs under <data>/reference/<method>/msrs_test are scored too for
msrs/test, each on the pairs whose image it has: a row's "n" (and its n in the table) is then below the top "n".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

# where the package is not installed, this checkout's: its import names the dependencies this Python lacks, in the
# one line of `python -m streamfuse`. No origin: only a folder that an uninstall left (numba's cache files in it)
if getattr(importlib.util.find_spec("streamfuse"), "origin", None) is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))
import streamfuse  # noqa: E402,F401  (first: a missing dependency then says which environment to use)
from streamfuse.cli import leave, quiet_interrupt, say_stopped, stoppable  # noqa: E402
from streamfuse.errors import printable  # noqa: E402

PROG = Path(__file__).name  # how every line of the tool begins, as its usage errors do
quiet_interrupt(PROG)  # a Ctrl-C while the imports below load (numpy, torch) is one line

import numpy as np  # noqa: E402

from streamfuse.atomic_write import write_file  # noqa: E402
from streamfuse.checks import override_keys  # noqa: E402
from streamfuse.cli.args import (DefaultsFormatter, Parser, config_error, config_value, data_dir,  # noqa: E402
                                 int_at_least, path_arg)
from streamfuse.config import ConfigError, PipelineConfig, load_config  # noqa: E402
from streamfuse.configs import resolve  # noqa: E402
from streamfuse.eval_report import check_outputs  # noqa: E402
from streamfuse.eval_pairs import find_pairs, read_pair  # noqa: E402
from streamfuse.evaluation import EvalResult, Method, evaluate_dir, is_eval_file  # noqa: E402
from streamfuse.inference import HCLFuseConfig  # noqa: E402
from streamfuse.log_queue import install_direct  # noqa: E402
from streamfuse.processor import config_fuser  # noqa: E402

# after streamfuse, whose import sets the OpenMP wait policy that torch reads once when it loads
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
JSON_METRICS = ("VIF", "Qabf", "AG", "SF", "Nabf", "Over", "SSIM")
DEFAULT = "default"
# steps of the decoded-image guide (hclfuse.image_guidance) in its rows: one, the cheapest, and five, the
# offline-quality setting
IMAGE_STEPS = (1, 5)


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


def step_list(text: str) -> list[int]:
    """An argparse ``type``: comma-separated teacher steps K, each once (each is a row)."""
    # the section's range check; 0, which config_value lets through (a default elsewhere), is no K here
    steps = [config_value(HCLFuseConfig, "steps")(k) or int_at_least(1)(k) for k in text.split(",")]
    if len(set(steps)) != len(steps):
        raise argparse.ArgumentTypeError(f"{text!r} names a K twice")
    return steps


ROW_SECTIONS = ("align", "hclfuse", "engine")  # what the rows are built from (the fuser and the baselines: each row's)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors that argparse cannot see: --ir without --vis, an override the rows do not take, a --json that
    --out would write over or that names a folder."""
    if (args.ir is None) != (args.vis is None):
        parser.error("give both --ir and --vis, or neither (then --data/--dataset)")
    for override in args.overrides:
        keys = override_keys(override)
        if keys[0] not in ROW_SECTIONS or (args.weights and keys == ["hclfuse", "weights"]):
            parser.error(f"--set {override}: the rows take overrides of {', '.join(ROW_SECTIONS)} (the weights once)")
    if args.json is not None and is_eval_file(args.json, args.out):
        parser.error(f"--json {args.json} is a file that --out gets (its table, CSV, montage or configs); name another")
    out_folders = (args.out.resolve(), *args.out.resolve().parents)  # one that exists: check_outputs says so below
    if args.json is not None and not args.json.exists() and args.json.resolve() in out_folders:
        parser.error(f"--json {args.json} is the --out folder {args.out} or a folder above it; name a file")


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=DefaultsFormatter)
    p.add_argument("--ir", type=path_arg, help="folder of IR images (with --vis; replaces --data/--dataset)")
    p.add_argument("--vis", type=path_arg, help="folder of visible images, same file names as --ir")
    p.add_argument("--data", type=path_arg, default=data_dir(REPO.parent),
                   help="shared data folder (STREAMFUSE_DATA, else beside the repository)")
    p.add_argument("--dataset", default="msrs/test", metavar="NAME",
                   help="data set under --data to score (NAME/ir, NAME/vi), without --ir/--vis")
    p.add_argument("--config", default="eval",
                   help="pipeline config whose fusing sections (align, hclfuse, engine) the hclfuse rows start from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="stage.key=value",
                   help="dotted override of the config, e.g. engine.threads=2; repeatable")
    p.add_argument("--weights", default="", help="HCLFuse weights (shorthand for --set hclfuse.weights=...)")
    p.add_argument("--steps", type=step_list, default="1,2,4,8,20", help="comma-separated K values")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the max/average/laplacian +- sharpen rows (rule and max:contrast stay)")
    p.add_argument("--limit", type=int_at_least(0), default=0, help="score only the first N pairs; 0 = all")
    p.add_argument("--out", type=path_arg, default=REPO / "out" / "ablation", help="output folder")
    p.add_argument("--json", type=path_arg, default=None, metavar="FILE", help="also write the summary as JSON here")
    args = p.parse_args(argv)
    install_direct(logging.INFO, "%(levelname)s %(name)s: %(message)s")
    _check_args(p, args)
    data = args.data / args.dataset
    dir_ir, dir_vis = (args.ir, args.vis) if args.ir else (data / "ir", data / "vi")
    published = [d / "msrs_test" for d in sorted((args.data / "reference").glob("*"))
                 if args.ir is None and args.dataset == "msrs/test" and (d / "msrs_test").is_dir()]
    try:  # the published folders are inputs too: --json was written over one of their images
        check_outputs({"IR": dir_ir, "visible": dir_vis, **{f"published ({d.parent.name})": d for d in published}},
                      {"--out": args.out}, {"--json": args.json})
        weights = [f"hclfuse.weights={args.weights}"] * bool(args.weights)
        cfg = load_config(resolve(args.config), args.overrides + weights)
        pairs = find_pairs(dir_ir, dir_vis, args.limit)
        rows = methods(cfg, args.steps, pairs, not args.no_baselines)
        rows += [Method(d.parent.name, fused_dir=d) for d in published]
        # before the table is put in place: a run stopped meanwhile left --out this run's and --json an earlier one's
        energies = guidance_energies(cfg, pairs) if args.json is not None else {}
        result = evaluate_dir(dir_ir, dir_vis, rows, args.out, limit=args.limit, reference=DEFAULT)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            report = {**summary(result), "guidance_energies": energies}
            write_file(args.json, (json.dumps(report, indent=1) + "\n").encode())
    except ConfigError as exc:
        raise SystemExit(config_error(PROG, exc)) from None
    except (ValueError, OSError, RuntimeError) as exc:
        raise SystemExit(f"{PROG}: error: {printable(exc)}") from None
    except KeyboardInterrupt as exc:  # nothing half-written is left: every output is renamed into place when complete
        say_stopped(PROG, exc)
        raise SystemExit(130) from None
    print((args.out / "metrics.md").read_text(), end="")


if __name__ == "__main__":
    leave(stoppable(main, PROG, "tools"))
