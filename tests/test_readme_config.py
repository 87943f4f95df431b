"""The README's configuration table, as a user reads it to find a key: one row per section, each naming every key
that section's dataclass takes, and no other, in the module it names; and every default the README states is the
one the dataclass has."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

from streamfuse.config import PipelineConfig
from streamfuse.frames import optical_frame

README = Path(__file__).resolve().parents[1] / "README.md"
HEADER = "| section | owner | main keys |"


def _table_lines() -> list[str]:
    """The config table's lines after its header and rule, up to the blank line that ends it."""
    lines = README.read_text().splitlines()
    start = lines.index(HEADER) + 2
    end = lines.index("", start)
    return lines[start:end]


def _section_classes() -> dict[str, type]:
    """Each config section's stage dataclass, as :class:`PipelineConfig` holds it."""
    classes = {}
    for section, hint in typing.get_type_hints(PipelineConfig).items():
        for cls in typing.get_args(hint) or (hint,):
            if dataclasses.is_dataclass(cls):
                classes[section] = cls
    return classes


def _section_keys() -> dict[str, set[str]]:
    """Each config section's keys, from the stage dataclass :class:`PipelineConfig` holds it in."""
    return {section: {f.name for f in dataclasses.fields(cls)} for section, cls in _section_classes().items()}


def _defaults(section: str) -> dict[str, Any]:
    """A section's keys and their defaults; an empty ``frame_id`` is the stream's optical frame, as the README says."""
    cls = _section_classes()[section]
    found = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
             for f in dataclasses.fields(cls)}
    if section in ("ir", "vis") and not found["frame_id"]:
        found["frame_id"] = optical_frame(section)
    return found


def _rows() -> list[tuple[list[str], str, str]]:
    """The table's rows: the sections a row is for, its owner cell and its keys cell."""
    rows = []
    for line in _table_lines():
        sections, owner, keys = line.strip("|").split(" | ", 2)
        rows.append((re.findall(r"`(\w+)`", sections), owner, keys))
    return rows


def _closing(text: str, start: int) -> int:
    """The index just past the parenthesis that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def _top_level_keys(cell: str) -> list[tuple[str, str]]:
    """Each key a keys cell names outside parentheses, with the parenthesised text right after it (its notes)."""
    keys, i = [], 0
    while i < len(cell):
        if cell[i] == "(":
            i = _closing(cell, i)
        elif cell[i] == "`":
            end = cell.index("`", i + 1)
            key, i = cell[i + 1:end], end + 1
            notes_end = _closing(cell, i + 1) if cell.startswith(" (", i) else i
            keys.append((key, cell[i:notes_end].strip()))
            i = notes_end
        else:
            i += 1
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


def test_the_config_table_names_no_key_its_section_lacks_and_the_owner_holding_it():
    extra, owners = {}, []
    for sections, owner, cell in _rows():
        module, name = re.findall(r"`([^`]+)`", owner)
        for section in sections:
            cls = _section_classes()[section]
            if (cls.__module__, cls.__name__) != ("streamfuse." + module.removesuffix(".py").replace("/", "."), name):
                owners.append(f"{section}: {owner} (it is {cls.__module__}.{cls.__name__})")
            if unknown := [key for key, _ in _top_level_keys(cell)
                           if key.isidentifier() and key not in _section_keys()[section]]:
                extra[section] = unknown
    assert not extra, f"keys the README's config table names that their section does not take: {extra}"
    assert not owners, f"config table rows naming another owner than the section's dataclass: {owners}"


# "default 18", "20 by default", "`arrival`, the default" in a key's notes; "`publish.sndhwm` (default 2" in prose
_SAID = re.compile(r"(?:^|\(|[,;] )default `?([\w./:-]+)`?|`?([\w.-]+)`? by default|`?([\w.-]+)`?, the default")
_PROSE = re.compile(r"`(\w+)\.(\w+)`[^`;.]{0,30}?(?:\(|, )default `?([\w./:*-]+)`?")


def _stated_defaults() -> list[tuple[str, str, str]]:
    """(section, key, the default as the README gives it) for every default it states: in the table and in prose."""
    said = [(section, key, next(g for g in m.groups() if g)) for sections, _, cell in _rows() for section in sections
            for key, notes in _top_level_keys(cell) for m in _SAID.finditer(notes)]
    text = " ".join(README.read_text().split())
    return said + [m.groups() for m in _PROSE.finditer(text) if m.group(1) in _section_classes()]


def test_every_default_the_readme_states_is_the_dataclass_default():
    stated = _stated_defaults()
    assert len(stated) >= 15, stated  # the table's and the wire format's: a change of wording that hid them fails
    wrong = []
    for section, key, value in stated:
        default = _defaults(section).get(key, "<no such key>")
        same = str(default) == value if isinstance(default, str) else default == type(default)(float(value))
        if not same:
            wrong.append(f"{section}.{key}: README {value}, code {default!r}")
    assert not wrong, f"defaults the README states that the config dataclasses do not have: {wrong}"
