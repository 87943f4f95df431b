"""Smoke test of ``python -m streamfuse bench replay``: a tiny synthetic pair, the max fuser, the printed figures."""

from __future__ import annotations

import re

from streamfuse.bench.replay import main


def test_prints_rate_and_stage_shares(capsys):
    main(["--fuser", "max", "--frames", "6", "--size", "64x48", "--set", "engine.device=cpu"])
    out = capsys.readouterr().out
    assert re.search(r"max +6 frames in [0-9.]+ s = [0-9.]+ frames/s", out), out
    assert "fuse " in out and "loop waits on decode+encode" in out
