"""Replay many recorded IR/visible pairs, one fused video each; pairs already done are skipped.

LIST_OR_DIR is a text file of "IR_PATH VIS_PATH" lines (relative to the file; '#' comments) or a folder with
ir/ and vi/ (or vis/) subfolders of same-named videos. Each output is OUT/<IR name><ext>. A failing pair is
reported at the end without stopping the others; the exit status is 1 when any failed.
Run from the repository root: ``PYTHONPATH=. python tools/replay_many.py LIST_OR_DIR --out DIR``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("pairs", metavar="LIST_OR_DIR", help="pair list file or folder with ir/ and vi/")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", default=str(REPO / "configs" / "replay.yaml"), help="replay config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--ext", default=".mp4", help="output container extension")
    parser.add_argument("--resume", action="store_true", help="continue interrupted outputs from their partial files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    from streamfuse.config import ConfigError, load_config
    from streamfuse.replay import find_pairs, replay_many

    try:
        cfg = load_config(args.config, args.overrides)
        pairs = find_pairs(args.pairs)
        failed = replay_many(cfg, pairs, args.out, ext=args.ext, resume=args.resume)  # checks outputs first
    except (ConfigError, OSError, ValueError) as exc:
        print(f"replay_many: error: {exc}", file=sys.stderr)
        return 2
    print(f"replay_many: {len(pairs) - len(failed)} of {len(pairs)} pairs done in {args.out}")
    for out, why in failed.items():
        print(f"replay_many: FAILED {out}: {why}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
