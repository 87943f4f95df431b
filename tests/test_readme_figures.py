"""The README's CPU figures name the benchmark command that prints them, beside them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_each_cpu_figure_names_the_bench_command_that_prints_it():
    # the live CPU row gave "about 0.8 ms of CPU a frame" for the loop's own work, which no command printed
    text = README.read_text(encoding="utf-8")
    blocks = re.split(r"\n\s*\n|\n(?=\|)", text)  # paragraphs, and each table row on its own
    orphans = [m.group(0) for block in blocks if "python -m streamfuse bench " not in block
               for m in re.finditer(r"\d[\d.]* ms of (?:[\w' ]+ )?CPU", block)]
    assert not orphans, f"CPU figures with no bench command beside them: {orphans}"
