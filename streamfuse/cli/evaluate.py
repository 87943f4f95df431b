"""Score fusion methods on IR/visible pairs with the field's standard metrics, side by side.

Pairs are matched by file name in DIR_IR and DIR_VIS (any size; colour or grey visible; 3-channel IR is made grey).
Each method is a folder of another method's fused images (--fused), a fuser from a pipeline config (--config) or a
fuser by name (--fuser); give as many as you like. With none, the fuser of the shipped eval config is scored.
--fuser methods take their align and fuse settings from the first --config, or the shipped eval config: a
synchronous OT solve for every image and no temporal stage, so that no image depends on the one before. Writes
metrics.csv (per image), metrics.md (means per method, with ms per frame for fusers run here) and montage.png
(IR | visible | each method) to --out.

Examples:
  python -m streamfuse evaluate ../shared/data/msrs/test/ir ../shared/data/msrs/test/vi \\
      --fused seafusion=../shared/data/reference/seafusion/msrs_test --fuser max --fuser max:sharpen=1
  python -m streamfuse evaluate IR_DIR VIS_DIR --config eval --set hclfuse.sampler=teacher --set hclfuse.steps=4 \\
      --save out/fused
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from streamfuse.checks import override_keys
from streamfuse.cli.args import HelpFormatter, Parser, config_error, int_at_least, path_arg
from streamfuse.config import ConfigError, load_config
from streamfuse.configs import resolve
from streamfuse.errors import printable
from streamfuse.eval_report import markdown_table
from streamfuse.evaluation import FUSER_SECTIONS, config_method, evaluate_dir, fused_dir_method, fuser_method
from streamfuse.log_queue import install_direct

__all__ = ["EVAL_CONFIG", "parse_args", "main"]

EVAL_CONFIG = "eval"  # the shipped still-image config
_PROG = "streamfuse evaluate"  # as its usage errors and every command's own lines start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``evaluate``."""
    p = Parser(prog="python -m streamfuse evaluate", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("dir_ir", type=path_arg, metavar="DIR_IR", help="folder of IR images")
    p.add_argument("dir_vis", type=path_arg, metavar="DIR_VIS", help="folder of visible images (same file names)")
    p.add_argument("--fused", action="append", default=[], metavar="[NAME=]DIR",
                   help="folder of fused images of another method (grey or colour; Y is scored); repeatable")
    p.add_argument("--config", action="append", default=[], metavar="NAME|FILE",
                   help="pipeline config (shipped name or YAML file) whose fuse/align sections build a fuser to "
                        "score; repeatable; the first (else eval) also gives the --fuser methods their align and "
                        "fuse settings")
    p.add_argument("--fuser", action="append", default=[], metavar="NAME[:key=value,...]",
                   help="fuser by name with keys of its hclfuse, engine or baseline section, e.g. max:sharpen=1 or "
                        "hclfuse:sampler=teacher,steps=4; repeatable")
    p.add_argument("--set", action="append", default=[], metavar="stage.key=value", dest="overrides",
                   help="dotted override for every --config/--fuser method, e.g. hclfuse.guidance=false")
    p.add_argument("--save", type=path_arg, default=None, metavar="DIR",
                   help="also write each fuser's output as DIR/<stem>.png (DIR/<method>/ with several fusers)")
    p.add_argument("--out", type=path_arg, default=Path("out/evaluate"), metavar="DIR",
                   help="where the CSV, table and montage go (an earlier run's there are replaced)")
    p.add_argument("--limit", type=int_at_least(0), default=0, metavar="N",
                   help="score only the first N pairs; 0 = all")
    p.add_argument("--rows", type=int_at_least(1), default=4, help="pairs shown in the montage (darkest to brightest)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Score the methods, print the table of means; a bad input is one line and exit status 1 (a bad config: 2)."""
    args = parse_args(argv)
    install_direct(logging.INFO, "%(levelname)s %(name)s: %(message)s")
    try:
        configs = args.config or ([] if args.fused or args.fuser else [EVAL_CONFIG])
        # with the overrides the fuser methods take: a config's ${VAR} that a --set replaces need not be set
        fusing = [o for o in args.overrides if override_keys(o)[0] in FUSER_SECTIONS]
        base = load_config(resolve(args.config[0] if args.config else EVAL_CONFIG), fusing)
        methods = [fused_dir_method(spec) for spec in args.fused]
        methods += [config_method(path, args.overrides) for path in configs]
        methods += [fuser_method(spec, args.overrides, base) for spec in args.fuser]
        result = evaluate_dir(args.dir_ir, args.dir_vis, methods, args.out, save_dir=args.save, limit=args.limit,
                              montage_rows=args.rows)
    except ConfigError as exc:
        return config_error(_PROG, exc)
    except (ValueError, OSError, RuntimeError) as exc:
        raise SystemExit(f"{_PROG}: error: {printable(exc)}") from None
    print(markdown_table(result.means))  # as metrics.md holds it
    n_pairs = len({r["image"] for r in result.rows})
    print(f"{n_pairs} pairs; per-image rows in {printable(Path(args.out) / 'metrics.csv')}, montage in "
          f"{printable(Path(args.out) / 'montage.png')}")
    return 0
