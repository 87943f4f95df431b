"""The stalled-peers benchmark: the same as ``python -m streamfuse bench peers`` (see its -h)."""

import importlib.util
import sys
from pathlib import Path

# where the package is not installed, this checkout's: its import names the dependencies this Python lacks, in the
# one line of `python -m streamfuse`. No origin: only a folder that an uninstall left (numba's cache files in it)
if getattr(importlib.util.find_spec("streamfuse"), "origin", None) is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from streamfuse.cli import tool  # noqa: E402

if __name__ == "__main__":
    tool("streamfuse.bench.peers:main", __file__, "bench")
