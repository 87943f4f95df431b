"""streamfuse: real-time infrared + visible video fusion (HCLFuse) published over ZeroMQ.

The public surface is small; stages live in their own modules (see the README's layout section).
"""

import importlib.util
import os
import sys

# Every entry point imports this package first: a Python without the dependencies (the system one, say) gets one line
# that says which environment to use instead of a ModuleNotFoundError from deep inside a stage.
_MISSING = [m for m in ("numpy", "yaml", "cv2", "torch", "ot", "av", "zmq", "numba", "mcap", "zstandard", "tqdm")
            if importlib.util.find_spec(m) is None]
if _MISSING:
    raise SystemExit(f"streamfuse: {', '.join(_MISSING)} not installed for {sys.executable}; run `make venv` once and"
                     " use .venv/bin/python (or install the package: pip install -e .)")

# Capture processes and the numba postprocess share the cores with torch; spinning OpenMP workers that get descheduled
# made fusion several times slower under such load (README, Benchmarks). OpenMP reads this once, when torch loads, so
# it is set here, before any streamfuse module imports torch, for every entry point; a user's own choice is kept.
LATE_WAIT_POLICY = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ  # too late: the engine says so
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from streamfuse.config import ConfigError, PipelineConfig, load_config  # noqa: E402
from streamfuse.frames import Frame, FramePair, FusedFrame  # noqa: E402

__all__ = ["ConfigError", "PipelineConfig", "load_config", "Frame", "FramePair", "FusedFrame"]
__version__ = "0.1.0"
