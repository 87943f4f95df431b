"""The OpenMP wait policy, set before torch loads.

Capture processes and the numba postprocess share the cores with torch; spinning OpenMP workers that get descheduled
made fusion several times slower under such load (README, Benchmarks). OpenMP reads ``OMP_WAIT_POLICY`` once, when
torch loads, so the package's import sets it here, before any streamfuse module imports torch, for every entry point;
a user's own choice is kept.
"""

import os
import sys

__all__ = ["LATE_WAIT_POLICY"]

LATE_WAIT_POLICY = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ  # too late: the engine says so
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
