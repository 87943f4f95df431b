"""Where the shared real-data folder is: ``STREAMFUSE_DATA``, or ``../shared/data`` beside the repository. A plain
module rather than conftest.py, because skip marks read it at import and tests cannot import conftest."""

from __future__ import annotations

from pathlib import Path

from streamfuse.cli.args import data_dir

REPO = Path(__file__).resolve().parents[1]
DATA = data_dir(REPO.parent)
