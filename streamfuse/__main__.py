"""``python -m streamfuse COMMAND [ARGS...]``: the same as the ``streamfuse`` console script (see streamfuse.cli)."""

import sys

try:  # a Ctrl-C as the package loads, before console() takes the stop signals: one line and 130, not a traceback
    from streamfuse.cli import console
except KeyboardInterrupt:
    print(" ".join(["streamfuse", *sys.argv[1:2]]) + ": interrupted", file=sys.stderr)  # as console() names it
    raise SystemExit(130) from None

if __name__ == "__main__":
    console()
