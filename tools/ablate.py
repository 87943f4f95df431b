"""HCLFuse ablation table: DDIM steps K, without guidance, without OT, and the baseline fusers, side by side.

Runs streamfuse.evaluation on one pair set (default: msrs/test under --data) and writes metrics.csv, metrics.md
(means per method, with the median ms per frame of every fuser run here) and montage.png to --out. Published
reference outputs under <data>/reference/<method>/msrs_test are scored with the same code when present.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from streamfuse.align import AlignConfig
from streamfuse.evaluation import Method, evaluate_dir
from streamfuse.fusers import FuseConfig, build_fuser

REPO = Path(__file__).resolve().parents[1]


def methods(weights: str, steps: list[int], default_k: int, threads: int, baselines: bool) -> list[Method]:
    """The rows of the ablation table, in the order they are printed."""

    def hcl(k: int, guidance: bool = True, ot: bool = True) -> Method:
        fuse = FuseConfig(name="hclfuse", weights=weights, steps=k, guidance=guidance, device="cpu", threads=threads)
        name = f"hclfuse K={k}" + ("" if guidance else " no-guidance") + ("" if ot else " no-OT")
        return Method(name, fuser=build_fuser(fuse, AlignConfig(enabled=ot)))

    rows = [hcl(k) for k in steps] + [hcl(default_k, guidance=False), hcl(default_k, ot=False)]
    if baselines:
        for name in ("max", "average", "laplacian"):
            for sharpen in (0.0, 0.5, 1.0):
                fuser = build_fuser(FuseConfig(name=name, sharpen=sharpen))
                rows.append(Method(fuser.name, fuser=fuser))
        for contrast in (1.25, 1.3):  # max with a global contrast stretch: the strongest simple baseline found
            fuser = build_fuser(FuseConfig(name="max", contrast=contrast))
            rows.append(Method(fuser.name, fuser=fuser))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    p.add_argument("--set", default="msrs/test", help="pair set under --data (<set>/ir, <set>/vi)")
    p.add_argument("--weights", default="", help="HCLFuse weights; '' = the shipped file")
    p.add_argument("--steps", default="1,2,4,8,20", help="comma-separated K values")
    p.add_argument("--default-k", type=int, default=FuseConfig.steps, help="K of the no-guidance and no-OT rows")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-baselines", action="store_true", help="skip the max/average/laplacian rows")
    p.add_argument("--limit", type=int, default=0, help="score only the first N pairs; 0 = all")
    p.add_argument("--out", type=Path, default=REPO / "out" / "ablation", help="output folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pairs = args.data / args.set
    try:
        rows = methods(args.weights, [int(k) for k in args.steps.split(",")], args.default_k, args.threads,
                       not args.no_baselines)
        refs = args.data / "reference"
        rows += [Method(d.name, fused_dir=d / "msrs_test") for d in sorted(refs.glob("*"))
                 if args.set == "msrs/test" and (d / "msrs_test").is_dir()]
        evaluate_dir(pairs / "ir", pairs / "vi", rows, args.out, limit=args.limit)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(f"ablate: {exc}") from None
    print((args.out / "metrics.md").read_text(), end="")


if __name__ == "__main__":
    main()
