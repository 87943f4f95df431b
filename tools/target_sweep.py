"""Score the training's fusion target itself at several detail gains: the quality ceiling the net is trained toward.

The target (``streamfuse.model.losses.fusion_target``, built from the raw IR as in training) trades edge fidelity
(Qabf) against sharpness (AG, SF) through ``detail_gain``; this table is how the shipped ``loss.detail_gain`` was
chosen. With ``--base aligned`` the base is ``max(G IR', G VIS)`` of the OT-aligned IR' (the eval config's solve per
pair), the brighter source as the method's intensity term sees it, while the detail stays the raw IR's and the
visible's: the ceiling of a model whose base comes from a latent of IR'. Writes metrics.csv / metrics.md /
montage.png to --out like tools/evaluate.py and prints the table.

Example: ``python tools/target_sweep.py --gains 1.0,1.1,1.2,1.3,1.5 --base aligned``; ``--set align.blend=0.3``
solves IR' as the weights of v4.3 and older ran it.
"""

from __future__ import annotations

import importlib.util
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
from streamfuse.cli.args import DefaultsFormatter, Parser, config_error, data_dir, path_arg, positive  # noqa: E402
from streamfuse.config import ConfigError  # noqa: E402

# it imports torch: after streamfuse, whose import sets the OpenMP wait policy that torch reads once when it loads
from streamfuse.target_fuser import sweep  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=DefaultsFormatter)
    p.add_argument("--data", type=path_arg, default=data_dir(REPO.parent),
                   help="shared data folder (STREAMFUSE_DATA, else beside the repository)")
    p.add_argument("--dataset", default="msrs/test", metavar="NAME", help="data set under --data (NAME/ir, NAME/vi)")
    p.add_argument("--gains", type=lambda text: [positive()(g) for g in text.split(",")],
                   default="1.0,1.1,1.2,1.3,1.5", help="comma-separated detail gains")
    p.add_argument("--base", choices=("raw", "aligned"), default="raw",
                   help="the base's IR: raw (the training target) or the OT-aligned IR' of the eval config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="align.key=value",
                   help="dotted override of the eval config's align section (with --base aligned); repeatable")
    p.add_argument("--out", type=path_arg, default=REPO / "out" / "target_sweep", help="output folder")
    args = p.parse_args(argv)
    for override in args.overrides:  # the targets read no other section, and the raw base not even this one
        if args.base != "aligned" or override_keys(override)[0] != "align":
            p.error(f"--set {override}: only the aligned base's IR' is configurable: --base aligned --set align.KEY=V")
    pairs = args.data / args.dataset
    try:
        sweep(pairs / "ir", pairs / "vi", args.gains, args.out, aligned=args.base == "aligned",
              overrides=args.overrides)
    except ConfigError as exc:
        raise SystemExit(config_error(PROG, exc)) from None
    except (ValueError, OSError, RuntimeError) as exc:
        raise SystemExit(f"{PROG}: error: {printable(exc)}") from None
    except KeyboardInterrupt as exc:
        say_stopped(PROG, exc)
        raise SystemExit(130) from None
    print((args.out / "metrics.md").read_text(), end="")


if __name__ == "__main__":
    leave(stoppable(main, PROG, "tools"))
