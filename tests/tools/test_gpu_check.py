"""tools/gpu_check.sh's own checks, on the CPU: its arguments, and step 6 (evaluate on the device and on the CPU)
when evaluate fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.sh"


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_h_prints_the_usage_and_runs_nothing(tmp_path):
    proc = _run(["-h"], tmp_path)
    assert proc.returncode == 0 and "bash tools/gpu_check.sh --dry-run" in proc.stdout and not proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["--nope"], ["--dry-run", "extra"]])
def test_an_unknown_argument_is_one_line_and_runs_nothing(args, tmp_path):
    # any argument but the two it knew ran the check (installing what this Python lacks into .whl/site)
    proc = _run(args, tmp_path)
    assert (proc.returncode, proc.stderr) == (2, f"gpu_check.sh: unknown arguments: {' '.join(args)}; give none, "
                                                 "--fetch-wheels, --dry-run or -h\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(300)  # two evaluate runs, each loading torch and the model: over 120 s on a loaded machine
def test_a_failed_evaluate_is_said_and_no_earlier_table_is_shown(tmp_path):
    # its `cat metrics.md` printed an earlier check's table, or failed and ended the script (set -e) unexplained
    data = tmp_path / "data"
    for sub in ("ir", "vi"):
        (data / sub).mkdir(parents=True)
        cv2.imwrite(str(data / sub / "a.png"), np.full((48, 64), 90, np.uint8))
    (data / "ir" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    stale = tmp_path / "out" / "eval_cpu"
    stale.mkdir(parents=True)
    (stale / "metrics.md").write_text("| an earlier table |\n")
    proc = _run(["--dry-run"], tmp_path, STEPS="6", DATA=str(data))
    assert proc.returncode == 1, proc.stderr
    assert "an earlier table" not in proc.stdout and not stale.exists()
    said = "gpu_check: evaluate on cpu failed (exit 1): streamfuse evaluate: error: cannot read image "
    assert proc.stdout.count(said) == 2
    assert "fused images, this device vs the CPU" not in proc.stdout
