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
import logging
import sys
from pathlib import Path

# where the package is not installed, this checkout's: its import names the dependencies this Python lacks, in the
# one line of `python -m streamfuse`. No origin: only a folder that an uninstall left (numba's cache files in it)
if getattr(importlib.util.find_spec("streamfuse"), "origin", None) is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))
import streamfuse  # noqa: E402,F401  (first: a missing dependency then says which environment to use)
from streamfuse.cli import leave, quiet_interrupt, say_stopped, stoppable  # noqa: E402
from streamfuse.errors import printable  # noqa: E402

PROG = Path(__file__).name  # how every line of the tool begins, as its usage errors do
quiet_interrupt(PROG)  # a Ctrl-C while the imports below load (numpy, torch) is one line

from streamfuse.checks import override_keys  # noqa: E402
from streamfuse.cli.args import (DefaultsFormatter, Parser, config_error, config_value, data_dir,  # noqa: E402
                                 int_at_least, path_arg)
from streamfuse.config import ConfigError  # noqa: E402
from streamfuse.evaluation import is_eval_file  # noqa: E402
from streamfuse.inference import HCLFuseConfig  # noqa: E402
from streamfuse.log_queue import install_direct  # noqa: E402

# it imports torch: after streamfuse, whose import sets the OpenMP wait policy that torch reads once when it loads
from streamfuse.ablation import ROW_SECTIONS, ablate, published_dirs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def step_list(text: str) -> list[int]:
    """An argparse ``type``: comma-separated teacher steps K, each once (each is a row)."""
    # the section's range check; 0, which config_value lets through (a default elsewhere), is no K here
    steps = [config_value(HCLFuseConfig, "steps")(k) or int_at_least(1)(k) for k in text.split(",")]
    if len(set(steps)) != len(steps):
        raise argparse.ArgumentTypeError(f"{text!r} names a K twice")
    return steps


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
    published = [] if args.ir is not None else published_dirs(args.data, args.dataset)
    try:
        weights = [f"hclfuse.weights={args.weights}"] * bool(args.weights)
        ablate(dir_ir, dir_vis, args.config, args.overrides + weights, args.steps, args.out, limit=args.limit,
               baselines=not args.no_baselines, published=published, json_file=args.json)
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
