"""The commands' help, as a user reads it beside the README: a time a help text quotes is one the README gives with
the command that measures it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamfuse.bench import BENCHES
from streamfuse.cli import COMMANDS, main

README = Path(__file__).resolve().parents[1] / "README.md"
SPAN = re.compile(r"\b\d+(?:\.\d+)?-\d+(?:\.\d+)? ?m?s\b")  # "6-16 s", "0.11-0.12 s", "58-128 ms"


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [[name] for name in COMMANDS if name != "bench"] +
                         [["bench", name] for name in BENCHES], ids=" ".join)
def test_every_time_span_a_commands_help_quotes_is_one_the_readme_gives(argv, capsys):
    readme = README.read_text()
    text = " ".join(_help(argv, capsys).split())  # argparse wraps a span across lines
    stray = [span for span in SPAN.findall(text) if span not in readme]
    assert not stray, f"{' '.join(argv)} --help quotes times the README does not give: {stray}"
