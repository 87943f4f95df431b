"""The README's configuration table, as a user reads it to find a key: one row per section, each naming every key
that section's dataclass takes."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from streamfuse.config import PipelineConfig

README = Path(__file__).resolve().parents[1] / "README.md"
HEADER = "| section | owner | main keys |"


def _table_lines() -> list[str]:
    """The config table's lines after its header and rule, up to the blank line that ends it."""
    lines = README.read_text().splitlines()
    start = lines.index(HEADER) + 2
    end = lines.index("", start)
    return lines[start:end]


def _section_keys() -> dict[str, set[str]]:
    """Each config section's keys, from the stage dataclass :class:`PipelineConfig` holds it in."""
    keys = {}
    for section, hint in typing.get_type_hints(PipelineConfig).items():
        for cls in typing.get_args(hint) or (hint,):
            if dataclasses.is_dataclass(cls):
                keys[section] = {f.name for f in dataclasses.fields(cls)}
    return keys


def test_each_row_of_the_config_table_is_one_line():
    # a row wrapped onto more lines renders its continuation as rows of their own, cut off from their section
    stray = [line[:60] for line in _table_lines() if not (line.startswith("| `") and line.endswith("|"))]
    assert not stray, f"config table rows wrapped onto lines of their own: {stray}"


def test_the_config_table_names_every_key_of_every_section():
    rows = {}
    for line in _table_lines():
        cells = line.split(" | ", 2)
        for section in re.findall(r"`(\w+)`", cells[0]):
            rows[section] = set(re.findall(r"`(\w+)`", cells[-1]))
    missing = {section: sorted(keys - rows.get(section, set())) for section, keys in _section_keys().items()
               if keys - rows.get(section, set())}
    assert not missing, f"keys the README's config table does not name: {missing}"
