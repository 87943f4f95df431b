"""Train HCLFuse: the entry point of :mod:`streamfuse.train` (see ``--help``, or the model card for the commands
that trained the shipped weights)."""

from __future__ import annotations

import signal
import sys

try:
    from streamfuse.train import main
except ModuleNotFoundError as exc:  # a Python without the package or its dependencies
    sys.exit(f"{exc.name} is not installed for {sys.executable}; run `make venv` once and use .venv/bin/python")
except KeyboardInterrupt:  # Ctrl-C while torch loads
    sys.exit("train: interrupted")

if __name__ == "__main__":
    try:
        main()
    finally:  # the command is over: a Ctrl-C pressed again while Python shuts down would only print a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
