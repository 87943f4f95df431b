"""The command-line argument types and helpers every command shares: where each range starts and ends, and the
shared data folder's default."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamfuse.cli.args import config_value, data_dir, int_at_least, positive, seconds


def test_int_at_least_takes_both_ends_of_its_range() -> None:
    assert [int_at_least(1, 1000)(text) for text in ("1", "1000")] == [1, 1000]
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be in 1\.\.1000, got 1001$"):
        int_at_least(1, 1000)("1001")


def test_positive_takes_its_maximum_and_refuses_infinity_where_it_has_none() -> None:
    assert positive(600)("600") == 600.0
    assert positive()("1e300") == 1e300
    for text in ("inf", "nan", "0"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"^must be a finite number > 0, got {text}$"):
            positive()(text)


def test_a_time_span_of_zero_is_taken() -> None:
    # 0 is what --duration, --name-wait and --gpus read as "until stopped" or "none"; their help says so
    assert seconds("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"^inf must be a finite number of seconds >= 0$"):
        seconds("inf")


def test_the_data_folder_is_streamfuse_data_else_shared_data_beside(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMFUSE_DATA", str(tmp_path / "data"))
    assert data_dir(tmp_path) == tmp_path / "data"
    monkeypatch.setenv("STREAMFUSE_DATA", "")  # set but empty (an unset shell variable exported): not "."
    assert data_dir(tmp_path) == tmp_path / "shared" / "data"
    monkeypatch.delenv("STREAMFUSE_DATA")
    assert data_dir() == Path("..") / "shared" / "data"  # training's default: beside the working directory


@dataclass(frozen=True)
class _Section:
    """A config section whose range check refuses 0 (as ``HCLFuseConfig.steps`` does)."""

    steps: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")


def test_a_config_value_is_checked_by_its_section_and_0_is_off_unless_said_otherwise() -> None:
    assert config_value(_Section, "steps")("0") == 0  # the options that read 0 as their default or as off
    with pytest.raises(argparse.ArgumentTypeError, match=r"^steps=-1 must be >= 1$"):
        config_value(_Section, "steps")("-1")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^steps=0 must be >= 1$"):
        config_value(_Section, "steps", zero_is_off=False)("0")


def test_a_config_value_that_is_no_number_says_which_it_takes() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"^'four' is not an integer$"):
        config_value(_Section, "steps")("four")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^'soon' is not a number$"):  # a float option's
        config_value(_Section, "steps", float)("soon")


class _Parsed(BaseException):
    """Raised in place of parsing: carries the command's parser out of its main (no SystemExit: the command line
    returns that one's status)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


REPO = Path(__file__).resolve().parents[2]
_COMMANDS = [*([name] for name in ("run", "replay", "recover", "subscribe", "view", "foxglove", "evaluate", "train")),
             *(["bench", name] for name in ("fuse", "transport", "replay", "batch", "view"))]
# the tools that are no thin wrapper of a command (those have the command's parser)
_TOOLS = sorted(path.name for path in (REPO / "tools").glob("*.py") if 'tool("streamfuse.' not in path.read_text())


def _parser(monkeypatch: pytest.MonkeyPatch, command: list[str]) -> argparse.ArgumentParser:
    import runpy
    import sys

    from streamfuse.cli import main

    def parsed(self: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> None:
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parsed)
    try:
        if command[0].endswith(".py"):
            monkeypatch.setattr(sys, "argv", [command[0], "-h"])
            runpy.run_path(str(REPO / "tools" / command[0]), run_name="__main__")
        else:
            main([*command, "-h"])
    except _Parsed as got:
        return got.parser
    except SystemExit as exc:
        if "not installed" not in str(exc.code):
            raise
        pytest.skip(str(exc.code))  # an optional extra the command needs
    raise AssertionError(f"{command} parsed no arguments")


@pytest.mark.parametrize("command", [*_COMMANDS, *([tool] for tool in _TOOLS)],
                         ids=lambda command: " ".join(command))
def test_every_option_s_help_states_its_default_once(command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # `bench fuse -h` said "default 1000 on a GPU, 50 on CPU (default: None)", `subscribe -h` "default 60 ...
    # (default: None)"; `bench view -h` named none of its defaults, and `bench fuse --fuser` had no help at all
    parser = _parser(monkeypatch, command)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        shown = formatter._expand_help(action) if action.help else ""
        name = "/".join(action.option_strings) or action.dest
        assert "(default: None)" not in shown and "(default: )" not in shown, f"{name}: {shown}"
        if action.default not in (None, False, "", [], argparse.SUPPRESS):
            assert "default" in shown or str(action.default) in shown, f"{name} hides its default: {shown!r}"
