"""The model card's sections of what was tried and not shipped say that their figures are a past experiment's."""

from __future__ import annotations

import re
from pathlib import Path

CARD = Path(__file__).resolve().parents[2] / "streamfuse" / "weights" / "MODEL_CARD.md"


def test_each_tried_section_opens_saying_its_figures_are_a_past_experiments_and_its_code_s_commit():
    # their figures read as today's commands', though the scripts that printed them were never in the repository
    sections = re.findall(r"^## (Tried .*?)\n\n(.*?)\n\n", CARD.read_text(encoding="utf-8"), re.M | re.S)
    assert len(sections) >= 7
    for title, opening in sections:
        assert opening.startswith("Past experiments, not today's commands: "), title
        assert re.search(r"\bcommit\s+[0-9a-f]{7}\b", opening), f"{title}: names no commit of its code"
