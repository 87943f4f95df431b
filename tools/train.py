"""Train HCLFuse: the entry point of :mod:`streamfuse.train` (see ``--help``, or the model card for the commands
that trained the shipped weights)."""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path

# where the package is not installed, this checkout's: its import names the dependencies this Python lacks, in the
# one line of `python -m streamfuse`. No origin: only a folder that an uninstall left (numba's cache files in it)
if getattr(importlib.util.find_spec("streamfuse"), "origin", None) is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from streamfuse.cli import not_installed, stoppable  # noqa: E402


def _main() -> int | None:
    """Load the trainer (torch: seconds, under the command's stop signals already) and run it."""
    try:
        from streamfuse.train import main
    except ModuleNotFoundError as exc:  # an extra, or a dependency's own (the package's import names its direct ones)
        sys.exit(not_installed(Path(__file__).name, exc))
    return main()


if __name__ == "__main__":
    try:
        code = stoppable(_main, Path(__file__).name, "train")
    finally:  # the command is over: a Ctrl-C pressed again while Python shuts down would only print a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)
