"""streamfuse: real-time infrared + visible video fusion (HCLFuse) published over ZeroMQ.

The public surface is small; stages live in their own modules (see the README's layout section).
"""

import importlib.util
import signal
import sys
from typing import TYPE_CHECKING


def _located_by_python_m() -> bool:
    """Whether this import is ``python -m streamfuse`` locating its ``__main__`` (``sys.argv[0]``: "-m" till then)."""
    argv = getattr(sys, "orig_argv", [])
    return sys.argv[:1] == ["-m"] and any(pair == ("-m", "streamfuse") for pair in zip(argv, argv[1:]))


# ``python -m streamfuse`` runs these lines before its __main__, which holds the stops until the command takes them
# (a Ctrl-C until it can say it in one line): held from here, a stop meanwhile is no traceback or death by the signal
if _located_by_python_m() and hasattr(signal, "pthread_sigmask"):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})  # POSIX has all three

# Every entry point imports this package first: a Python without the dependencies (the system one, say) gets one line
# that says which environment to use instead of a ModuleNotFoundError from deep inside a stage.
# The import names of pyproject.toml's dependencies (a test holds the two lists together).
_DEPENDENCIES = ("numpy", "yaml", "cv2", "torch", "ot", "av", "zmq", "numba", "mcap", "zstandard", "lz4", "tqdm",
                 "simplejpeg", "scipy")
_MISSING = [m for m in _DEPENDENCIES if importlib.util.find_spec(m) is None]
if _MISSING:
    raise SystemExit(f"streamfuse: {', '.join(_MISSING)} not installed for {sys.executable}; run `make venv` once and"
                     " use .venv/bin/python (or install the package: pip install -e .)")

from streamfuse.openmp import LATE_WAIT_POLICY  # noqa: E402  (first: before any module imports torch)
from streamfuse.torch_cache import set_cache_dir  # noqa: E402

set_cache_dir()

__all__ = ["ConfigError", "PipelineConfig", "load_config", "Frame", "FramePair", "FusedFrame", "LATE_WAIT_POLICY"]
__version__ = "0.1.0"

# The public names load on first use: the config pulls in every stage's module (OpenCV, PyAV, ZeroMQ), which every
# process that imports the package (each capture producer, each tool) would otherwise pay for at start.
_LAZY = {"ConfigError": "streamfuse.checks", "PipelineConfig": "streamfuse.config", "load_config": "streamfuse.config",
         "Frame": "streamfuse.frames", "FramePair": "streamfuse.frames", "FusedFrame": "streamfuse.frames"}
if TYPE_CHECKING:  # a type checker reads their own types (``__getattr__`` gives it only ``object``)
    from streamfuse.checks import ConfigError
    from streamfuse.config import PipelineConfig, load_config
    from streamfuse.frames import Frame, FramePair, FusedFrame


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamfuse' has no attribute {name!r}")
