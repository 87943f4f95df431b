"""What the command-line tools share: argument types (argparse's one-line error then names the option), the
consumers' CURVE key options, the data folder's default, and how a bad config is reported."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from streamfuse.checks import ConfigError
from streamfuse.errors import printable
from streamfuse.file_names import utf8_text
from streamfuse.signals import said_last

__all__ = ["path_arg", "text_arg", "int_at_least", "config_value", "seconds", "time_span", "positive", "key_options",
           "data_dir", "config_error", "given", "command_name", "DefaultsFormatter", "HelpFormatter", "Parser"]


def command_name(prog: str) -> str:
    """How a command's own lines begin: its ``prog`` without ``python -m`` (``streamfuse run``, ``run_stream.py``)."""
    return prog.removeprefix("python -m ")


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose help and usage text to a stdout that fails (a full disk) raises as every other
    write does: argparse drops that error, so the command exited 0 having printed nothing (Python's own buffering
    hid it, ``PYTHONUNBUFFERED=1`` did not). Its messages to stderr stay as argparse writes them, bar the error line's
    start: the program's name as the command's own error lines give it (``streamfuse view: error:``), its usage
    line's ``python -m`` left out. A usage error is the command's last words (:func:`said_last`): a stop that comes
    as they are printed cuts neither its usage nor its error line, nor takes its status 2 for its own."""

    def error(self, message: str) -> NoReturn:
        raise SystemExit(said_last(f"{self.format_usage()}{command_name(self.prog)}: error: {message}", 2))

    def _print_message(self, message: str, file: Any = None) -> None:
        if message and file is sys.stdout:
            file.write(message)
        else:
            super()._print_message(message, file)


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, bar an option's "none given" (None, ""): its help says what that does, and argparse's
    "(default: None)" after "default 60" read as a second, other default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == "":
            return action.help
        return super()._get_help_string(action)


class HelpFormatter(DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the docstring's examples kept as written."""


def path_arg(text: str) -> Path:
    """An argparse ``type``: a path; an empty one (an unset shell variable) is refused rather than read as the working
    folder."""
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    return Path(text)


def text_arg(text: str) -> str:
    """An argparse ``type``: text sent on to a peer (a topic), as the UTF-8 it is under any locale; bytes that are no
    UTF-8 are refused (ZeroMQ topics and Foxglove channels are UTF-8)."""
    try:
        return utf8_text(text)
    except UnicodeError:
        raise argparse.ArgumentTypeError(f"{printable(ascii(text))} holds bytes that are not UTF-8 text") from None


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum`` (and <= ``maximum`` when given); argparse's one-line error
    names the option."""
    allowed = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    return parse


def config_value(section: type, key: str, parse: Callable[[str], Any] = int, *,
                 zero_is_off: bool = True) -> Callable[[str], Any]:
    """An argparse ``type``: a value that the config ``section`` accepts as ``key`` (its range check's words, after
    the option's name). 0 is not checked where ``zero_is_off``: the options that take one read it as their default or
    as off."""

    def check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        try:
            section(**{key: value}) if value or not zero_is_off else None
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return check


def time_span(unit: str) -> Callable[[str], float]:
    """An argparse ``type``: a finite number of ``unit`` (seconds, minutes, GPUs) >= 0 (``--duration``, where a negative
    one would read as "until Ctrl-C"; ``--name-wait``; ``--ckpt-minutes``; ``--gpus``); the option's help says what 0
    means."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{text} must be a finite number of {unit} >= 0")
        return value

    return parse


seconds = time_span("seconds")


def positive(maximum: float = math.inf) -> Callable[[str], float]:
    """An argparse ``type``: a finite number > 0 (and <= ``maximum``): a ``--timeout`` or ``--wait`` of 0 or NaN
    would never wait, an infinite one never end; argparse's one-line error names the option."""
    allowed = "a finite number > 0" if maximum == math.inf else f"a number in (0, {maximum:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 < value <= maximum or value == math.inf:  # NaN fails the comparison
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    return parse


def given(parser: argparse.ArgumentParser, argv: list[str] | None, dests: Iterable[str]) -> set[str]:
    """Which of ``dests`` (options that store a value) the command line ``argv`` (None: ``sys.argv[1:]``) sets,
    whatever its spelling: abbreviated (``--bat`` for ``--batch``) or with ``=VALUE``. Parses ``argv`` again."""
    unset = object()  # argparse leaves a value it finds in the namespace where the option is not given
    parsed = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(dests, unset)))
    return {dest for dest in dests if getattr(parsed, dest) is not unset}


def key_options(parser: argparse.ArgumentParser) -> None:
    """A consumer's ``--server-key`` and ``--client-key`` (a publisher's ``curve_secret_file`` and
    ``curve_clients_dir``)."""
    parser.add_argument("--server-key", default="", metavar="KEY|FILE",
                        help="publisher's CURVE public key (Z85) or its .key file")
    parser.add_argument("--client-key", default="", metavar="FILE",
                        help="this consumer's .key_secret file, for a publisher that lets in only the keys in its "
                             "publish.curve_clients_dir")


def data_dir(beside: Path = Path("..")) -> Path:
    """The shared data folder: ``STREAMFUSE_DATA`` when set, else ``shared/data`` in ``beside`` (the working
    directory's parent for training, which may run from an installed package; the repository's parent for tools/)."""
    return Path(os.environ.get("STREAMFUSE_DATA") or beside / "shared" / "data")


def config_error(prog: str, exc: ConfigError) -> int:
    """Report a config that cannot run (a missing --config, a bad key or --set) as one line, ``PROG: config error:
    ...``; returns its exit status, 2, the same for every command."""
    return said_last(f"{prog}: config error: {printable(exc)}", 2)
