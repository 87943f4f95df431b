"""The batch replay benchmark: the same as ``python -m streamfuse bench batch`` (see its -h)."""

import importlib.util
import sys
from pathlib import Path

# where the package is not installed, this checkout's: its import names the dependencies this Python lacks, in the
# one line of `python -m streamfuse`. No origin: only a folder that an uninstall left (numba's cache files in it)
if getattr(importlib.util.find_spec("streamfuse"), "origin", None) is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

try:
    from streamfuse.bench.batch import main
    from streamfuse.cli import guarded
except ModuleNotFoundError as exc:  # an extra, or a dependency's own (the package's import names its direct ones)
    from streamfuse.cli import not_installed

    sys.exit(not_installed(Path(__file__).name, exc))

if __name__ == "__main__":
    sys.exit(guarded(main, Path(__file__).name))
