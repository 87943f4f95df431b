"""Where a training run's settings are kept. ``OUT/train_config.yaml`` tells of the weights file beside it: a finished
run trained further keeps its own settings apart, in ``OUT/train_config.extending.yaml``, until it completes and its
weights file takes the earlier one's place (a run killed before then leaves both files true of what they describe)."""

from __future__ import annotations

from pathlib import Path

from streamfuse.atomic_write import durable_replace
from streamfuse.model.weights import DEFAULT_WEIGHTS

__all__ = ["SETTINGS", "EXTENDING", "settings_file", "new_settings_file", "settle"]

SETTINGS = "train_config.yaml"
EXTENDING = "train_config.extending.yaml"


def settings_file(out: Path) -> Path:
    """The settings of the run that ``out``'s checkpoint continues: an extension's while one is under way."""
    extending = out / EXTENDING
    return extending if extending.exists() else out / SETTINGS


def new_settings_file(out: Path) -> Path:
    """Where a run starting or resuming in ``out`` writes its settings: apart from those of a weights file there."""
    return out / (EXTENDING if (out / DEFAULT_WEIGHTS.name).exists() else SETTINGS)


def settle(out: Path) -> None:
    """Once the run's weights file is written: its settings become those beside it (an extension's moved in)."""
    if (out / EXTENDING).exists():
        durable_replace(out / EXTENDING, out / SETTINGS)
