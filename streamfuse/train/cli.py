"""Train HCLFuse (VBE + latent denoiser) on registered IR/visible pairs, keeping EMA weights for inference.

Two stages, one command:

1. ``streamfuse train --out runs/a`` (``tools/train.py`` in a checkout) trains the VBE, the decoder and the teacher
   denoiser with the method's losses.
2. ``streamfuse train --distill --init runs/a/hclfuse_v4.pt --out runs/b`` freezes them and distils the student.

Settings are ``--key value`` for the optimisation (``train`` section: ``--steps 40000 --lr 1e-3``) and
``--section.key value`` for the others (``--model.widths 16 24``, ``--loss.gradient 40``, ``--align.reg 0.05``);
``--key=value`` works too, a value is read as YAML and a bare boolean flag means true (``--distill``). Checkpoints
(model, EMA, optimiser, step, random state) are written every --ckpt-minutes to OUT/checkpoint.pt; Ctrl-C, SIGTERM
or SIGHUP lets the step in flight finish, writes one and stops; --resume continues from there as if never stopped
(with the run's own settings and --data where they are left out, bar --threads on a machine of other cores: its
default there; one given otherwise than the run's is refused, bar --steps, --minutes and --threads).
When the run completes, OUT/hclfuse_v4.pt holds the EMA weights; OUT/train_config.yaml holds the resolved configuration
(a finished run trained further keeps its own in OUT/train_config.extending.yaml until it completes).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import textwrap
from pathlib import Path
from typing import NoReturn

import yaml

from streamfuse.cli import say_stopped
from streamfuse.cli.args import Parser, data_dir, path_arg, time_span
from streamfuse.device import available_cores
from streamfuse.errors import printable
from streamfuse.log_queue import install_direct
from streamfuse.signals import said_last
from streamfuse.train.config import SECTIONS, TrainSetup, load_setup
from streamfuse.train.loop import run_training
from streamfuse.train.settings_file import settings_file

__all__ = ["main", "to_overrides"]

log = logging.getLogger("train")
_PROG = "streamfuse train"  # as its usage errors and every command's own lines start


def _value(tokens: list[str]) -> str:
    """The YAML text of a flag's values: none is ``true``, several are a list."""
    if not tokens:
        return "true"
    return tokens[0] if len(tokens) == 1 else "[" + ", ".join(tokens) + "]"


def to_overrides(args: list[str]) -> list[str]:
    """``--steps 3 --model.widths 4 8 --distill`` -> ``["train.steps=3", "model.widths=[4, 8]", "train.distill=true"]``.

    Raises:
        ValueError: a token that is not a flag or a flag's value.
    """
    overrides: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i]
        if not flag.startswith("--") or flag == "--":
            raise ValueError(f"unexpected argument {flag!r}; settings are --key value or --section.key value")
        key, eq, text = flag[2:].partition("=")
        j = i + 1
        while not eq and j < len(args) and not args[j].startswith("--"):
            j += 1
        value = text if eq else _value(args[i + 1:j])
        overrides.append(f"{key if '.' in key else 'train.' + key}={value}")
        i = j
    return overrides


def _settings_help() -> str:
    """Every setting with its default, one paragraph per section."""
    lines = ["settings (defaults):"]
    for name, cls in SECTIONS.items():
        prefix = "" if name == "train" else f"{name}."
        flags = []
        for f in dataclasses.fields(cls):
            default = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
            flags.append(f"--{prefix}{f.name} {default}".replace(" ", "\xa0"))  # kept on one line by the wrap
        wrapped = textwrap.wrap(", ".join(flags), 118, initial_indent="  ", subsequent_indent="    ")
        lines += [line.replace("\xa0", " ") for line in wrapped]
    return "\n".join(lines)


def _saved_settings(out: Path) -> tuple[dict, Path | None]:
    """The settings that ``out``'s run was saved with (its settings file) and its data folder, for a resume to go on
    from: a setting the command line leaves out is the run's own, not the default (a 3000-step run went on to 20000;
    one of --batch 2 was refused for batch 8); one it gives otherwise is refused as ever. Empty where the file cannot
    tell (the resume's own checks name what is wrong); keys that this version has not are left out, and so are the
    CPU threads on a machine of other cores than the run's: its default there unless given (16 threads of the
    workstation a run started on oversubscribed the laptop it went on on), the run's own on its like."""
    try:
        saved = yaml.safe_load(settings_file(out).read_text())
        folder = (saved.get("data") or {}).get("folder")
        sections = {name: {f.name: saved[name][f.name] for f in dataclasses.fields(cls) if f.name in saved[name]}
                    for name, cls in SECTIONS.items() if isinstance(saved.get(name), dict)}
        if (saved.get("machine") or {}).get("cores") not in (None, available_cores()):  # None: a run before the record
            sections.get("train", {}).pop("threads", None)
        return sections, Path(folder) if isinstance(folder, str) and folder else None
    except (OSError, yaml.YAMLError, TypeError, KeyError, AttributeError):
        return {}, None


def _setup(overrides: list[str], saved: dict, where: Path) -> TrainSetup:
    """The run's settings: the command line's over ``saved`` (a resumed run's own, from ``where``) over the defaults.
    The command line's own mistakes are named as given; a value of the file that this version refuses, with it."""
    setup = load_setup(overrides)
    if not saved:
        return setup
    try:
        return load_setup(overrides, saved)
    except ValueError as exc:
        raise ValueError(f"cannot resume: {where}, the run's settings, holds {exc}") from None


def _stopped(why: str | KeyboardInterrupt) -> NoReturn:
    """The user stopped the run: its line (a stop with nothing saved names its signal, as every command's), and exit
    status 130 as every command gives (128 + SIGINT)."""
    raise SystemExit(say_stopped(_PROG, why) if isinstance(why, KeyboardInterrupt) else said_last(why, 130))


def main(argv: list[str] | None = None) -> None:
    """The training command: parse ``argv``, run, exit with one line on bad input."""
    parser = Parser(prog="python -m streamfuse train", description=__doc__, epilog=_settings_help(),
                    allow_abbrev=False,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=path_arg,
                        help="data folder: its training sets, or its own ir/ and vi/ (default: a resumed run's own, "
                             "else STREAMFUSE_DATA, else ../shared/data)")
    parser.add_argument("--out", type=path_arg, default=Path("runs") / "hclfuse", help="output folder (runs/hclfuse)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--ckpt-minutes", type=time_span("minutes"), default=3.0,
                        help="checkpoint interval in minutes (default 3; 0: every step)")
    parser.add_argument("--init", type=path_arg, help="weights file whose tensors start the run (fine-tuning)")
    args, rest = parser.parse_known_args(argv)
    install_direct(logging.INFO, "%(asctime)s %(name)s %(message)s")
    saved, folder = _saved_settings(args.out) if args.resume else ({}, None)
    try:
        setup = _setup(to_overrides(rest), saved, settings_file(args.out))
    except ValueError as exc:  # a bad key or value: a config error, exit status 2 as for every command
        raise SystemExit(said_last(f"{_PROG}: error: {printable(exc)}", 2)) from None
    except KeyboardInterrupt as exc:
        _stopped(exc)
    try:
        path = run_training(args.data or folder or data_dir(), args.out, setup, resume=args.resume,
                            ckpt_minutes=args.ckpt_minutes, init=args.init)
    except InterruptedError as exc:  # stopped by Ctrl-C, SIGTERM or SIGHUP: what was learnt is saved
        _stopped(f"{_PROG}: {exc}")
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{_PROG}: error: {exc}") from None
    except KeyboardInterrupt as exc:  # outside run_training's handlers (parsing, or once it is done): nothing to save
        _stopped(exc)
    log.info("EMA weights: %s", path)
