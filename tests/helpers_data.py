"""Where the shared real-data folder is: ``STREAMFUSE_DATA``, or ``../shared/data`` beside the repository. A plain
module rather than conftest.py, because skip marks read it at import and tests cannot import conftest."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STREAMFUSE_DATA", REPO.parent / "shared" / "data"))
