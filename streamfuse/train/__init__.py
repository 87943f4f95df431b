"""HCLFuse training: settings (``config``), data (``data``), the loop (``loop``), distillation (``distill``) and the
command (``cli``, run by ``tools/train.py``)."""

from streamfuse.train.cli import main
from streamfuse.train.config import TrainConfig, TrainSetup, load_setup
from streamfuse.train.data import PairSampler, load_pairs
from streamfuse.train.distill import distill_losses
from streamfuse.train.loop import run_training

__all__ = ["PairSampler", "TrainConfig", "TrainSetup", "distill_losses", "load_pairs", "load_setup", "main",
           "run_training"]
