"""streamfuse's command line: ``streamfuse COMMAND [ARGS...]`` (or ``python -m streamfuse``); ``COMMAND -h`` shows a
command's help, ``--version`` the package's version.

Commands:
  run        run a pipeline, live (or an offline replay with --out); the same as run_stream.py
  replay     replay a recorded pair offline into a fused video: every frame, nothing dropped (--out required)
  recover    a finished recording from one a killed run left cut short (.NAME.mcap.partial -> NAME.mcap)
  subscribe  print per-frame latency and rate of a running pipeline; --save DIR writes frames
  view       serve a live web page of a running pipeline: IR, visible and fused frames with its stats
  foxglove   serve a running pipeline's fused frames and stats to Foxglove (needs the foxglove extra)
  evaluate   score fusion methods on IR/visible image pairs with the standard metrics
  bench      benchmarks: bench fuse | transport | replay | batch | view | peers | client | subscriptions | start
  train      train the HCLFuse model

Each command's module is imported only when it runs, so one command's missing extra never stops another.
"""

from __future__ import annotations

import errno
import importlib
import os
import select
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from streamfuse.errors import io_reason, printable
from streamfuse.signals import (TERMINATE, Terminated, handled, ignore_stops, interrupted, raise_interrupt,
                                raise_terminated, said_last)

__all__ = ["COMMANDS", "STOPPED_BY", "main", "dispatch", "console", "guarded", "stoppable", "not_installed", "tool",
           "leave", "quiet_interrupt", "say_stopped"]

# command -> "module:function" taking argv and returning an exit status (None counts as 0)
COMMANDS = {
    "run": "streamfuse.cli.run:main",
    "replay": "streamfuse.cli.run:replay_main",
    "recover": "streamfuse.recover:main",
    "subscribe": "streamfuse.subscribe:main",
    "view": "streamfuse.view.server:main",
    "foxglove": "streamfuse.view.foxglove_bridge:main",
    "evaluate": "streamfuse.cli.evaluate:main",
    "bench": "streamfuse.bench:main",
    "train": "streamfuse.train:main",
}
_WRITE_FAILED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}  # the device's failures, not the program's
FAST_EXIT = ("run", "replay")  # commands whose teardown is skipped by the console (see cli.run.exit_now)
# commands that a service manager's stop ends cleanly: the signals that do (SIGTERM; a hangup too where the command
# takes one) and the exit status of that stop (README). console() takes them from the process's start, so that one
# arriving while the command still loads (torch, OpenCV, the model), before its own handlers, is no death by it.
STOPPED_BY: dict[str, tuple[tuple[int, ...], int]] = {
    "run": (TERMINATE, 0), "replay": (TERMINATE, 130), "recover": (TERMINATE, 130), "train": (TERMINATE, 130),
    "evaluate": (TERMINATE, 130), "bench": (TERMINATE, 130),
    "tools": (TERMINATE, 130),  # "tools": the tools/ scripts that are no command
    "subscribe": ((signal.SIGTERM,), 0), "view": ((signal.SIGTERM,), 0), "foxglove": ((signal.SIGTERM,), 0)}


def not_installed(where: str, exc: ModuleNotFoundError) -> str:
    """The one line for a command (or tool) whose imports lack ``exc.name``: an optional extra, or a dependency's own
    dependency (the package's import names the direct ones that are missing)."""
    return (f"{where}: needs {exc.name}, which is not installed for {sys.executable} "
            "(see pyproject.toml's optional dependencies)")


def _target(where: str, spec: str) -> Callable[[list[str]], int | None]:
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:  # an optional extra (aiohttp, foxglove, ray, imagezmq) not installed here
        raise SystemExit(not_installed(where, exc)) from None


def dispatch(prog: str, commands: dict[str, str], argv: list[str], doc: str) -> int:
    """Run ``argv[0]``'s command from ``commands`` (name -> "module:function") with the rest; its exit status.

    ``prog`` (``streamfuse bench``) starts the error lines; the usage line says ``python -m PROG``, as every command's
    own parser does.
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m {prog} {{{','.join(commands)}}} [ARGS...]\n\n{doc}")
        return 0 if argv else 2
    if argv[0] == "--version" and prog == "streamfuse":  # what a bug report names first
        from streamfuse import __version__

        print(f"streamfuse {__version__} (Python {sys.version.split()[0]}, {sys.executable})")
        return 0
    if argv[0] not in commands:
        return said_last(f"{prog}: unknown command {argv[0]!r}; choose one of {', '.join(commands)}", 2)
    return int(_target(f"{prog} {argv[0]}", commands[argv[0]])(argv[1:]) or 0)


def main(argv: list[str] | None = None) -> int:
    """``streamfuse COMMAND [ARGS...]``; returns the command's exit status."""
    return dispatch("streamfuse", COMMANDS, sys.argv[1:] if argv is None else argv, __doc__)


def _stdout_gone() -> bool:
    """True when nothing reads standard output any more (the read end of its pipe is closed)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no stdout
        return False


def _flush_stdout() -> None:
    if sys.stdout is not None:  # None where the process started with its standard output closed
        sys.stdout.flush()


def _say_unsynced() -> None:
    """The count of the files whose folder's sync failed after the first one said (a file a frame), for a command that
    wrote any: only such a command has loaded the writer's module, whose import (OpenCV) the others are spared."""
    if (written := sys.modules.get("streamfuse.atomic_write")) is not None:
        written.say_unsynced()


def guarded(main: Callable[[], int | None], prog: str) -> int:
    """``main()``'s exit status. A failure to write its output is no traceback: the output's reader gone (``| head``)
    ends the command quietly with 141, as SIGPIPE ends other tools; a full or failing disk (``> out.txt``) is one
    line and 1. The output still buffered when ``main`` ends (all of it, unless ``PYTHONUNBUFFERED`` is set) is
    written here, where its failure is reported: at the interpreter's exit it would be two lines and 120."""
    try:
        try:
            code = int(main() or 0)
        except SystemExit as exc:  # argparse's help or usage line ends the command this way
            _flush_stdout()
            if isinstance(exc.code, str):  # an error line: Python would print it at exit, the stops' handlers gone
                return said_last(exc.code, 1)
            # its status returned, not raised past the console: a stop as Python exits would end it by that signal
            return int(exc.code or 0)
        finally:
            _say_unsynced()
        _flush_stdout()
        return code
    except OSError as exc:
        gone = isinstance(exc, BrokenPipeError) and _stdout_gone()
        if not gone and exc.errno not in _WRITE_FAILED:
            raise
        try:
            sys.stdout.flush()
        except OSError:  # the interpreter's own flush at exit would fail again, with a message of its own
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if gone:
            return 141
        return said_last(f"{prog}: error: cannot write {printable(exc.filename or 'its output')}: {io_reason(exc)}", 1)


def _null_closed_streams() -> None:
    """Give a standard output or error that the process started without (``>&-``, ``2>&-``; Python makes it None) to
    /dev/null: left None, argparse's help, the log writer, a replay's progress bar and the exit's flush each failed
    on it (a traceback, a finished live run's status 1, a replay that never started)."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:
            null = os.open(os.devnull, os.O_WRONLY)  # the lowest free descriptor: ``fd`` itself, unless 0 is closed too
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, "w", buffering=1, errors="backslashreplace", closefd=False))


def _names_printed_as_bytes() -> None:
    """A file name's bytes that are not UTF-8 printed as they are, as ``ls`` prints them and as Python does under the C
    locale: a UTF-8 locale's standard output refuses them (a traceback, after the command's work was done)."""
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")


def stoppable(main: Callable[[], int | None], prog: str, command: str) -> int:
    """``guarded(main, prog)``'s status, with ``command``'s stop signals (``STOPPED_BY``) taken from here on: one
    that comes before ``main`` has handlers of its own (its imports, its model's load) is one line and the status
    that command gives that stop; a Ctrl-C that ``main`` lets through is one line and 130."""
    _null_closed_streams()
    _names_printed_as_bytes()
    try:
        os.getcwd()
    except FileNotFoundError:  # torch's MKL then aborts the process ("Cannot load libtorch_cpu.so"), a relative path
        # is an [Errno 2] naming nothing
        return said_last(f"{prog}: error: its working folder was deleted; start it from one that exists", 1)
    signals, stopped = STOPPED_BY.get(command, ((), 0))
    def said(exc: KeyboardInterrupt) -> int:  # before the command's own handlers (its start-up): nothing to keep
        return said_last(f"{prog}: {interrupted(exc)}", stopped if isinstance(exc, Terminated) else 130)

    try:  # Python's Ctrl-C, but one that lands in a finalizer is not lost (one ignored from the start stays so)
        with handled(raise_interrupt, (signal.SIGINT,)), handled(raise_terminated, signals):
            try:
                if hasattr(signal, "pthread_sigmask"):  # a stop the entry point held while it loaded comes now
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATE)
                return guarded(main, prog)
            except KeyboardInterrupt as exc:  # said with these handlers standing: a stop as it is printed is ignored
                return said(exc)
    except KeyboardInterrupt as exc:  # one as the handlers are put in place
        return said(exc)


def say_stopped(prog: str, exc: KeyboardInterrupt) -> int:
    """The one line of a stop with nothing to keep or sum up, naming its signal as every command's stop line does:
    ``interrupted (SIGTERM)``, ``interrupted (Ctrl-C)``; the command's last (:func:`said_last`). Returns 130."""
    return said_last(f"{prog}: {interrupted(exc)}", 130)


def tool(spec: str, file: str, command: str = "") -> NoReturn:
    """A ``tools/`` script that runs ``spec``'s ("module:function") main on its arguments: the module's import (torch:
    seconds) and the run both under ``stoppable`` with ``command``'s stop signals; exits with the status."""
    prog = Path(file).name
    try:
        code = stoppable(lambda: _target(prog, spec)(sys.argv[1:]), prog, command)
    except SystemExit as exc:  # a module that is not installed: its line
        leave(exc.code)
    leave(code)


def leave(code: int | str | None) -> NoReturn:
    """Exit with ``code`` once a command or tool is over, with the stop signals ignored (:func:`ignore_stops`)."""
    ignore_stops()
    sys.exit(code)


def quiet_interrupt(prog: str) -> None:
    """For a ``tools/`` script whose own module imports the heavy packages (before ``stoppable`` can run): a Ctrl-C
    that no handler takes is one line, not a traceback. Python then ends the process by SIGINT, as it does without."""
    def hook(kind: type[BaseException], exc: BaseException, tb: object) -> None:
        if issubclass(kind, KeyboardInterrupt):
            print(f"{prog}: {interrupted(exc)}", file=sys.stderr)
        else:
            sys.__excepthook__(kind, exc, tb)

    sys.excepthook = hook


def console() -> None:
    """The ``streamfuse`` console script and ``python -m streamfuse``: exit with the command's status."""
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    prog = f"streamfuse {command}".rstrip()
    code = stoppable(main, prog, command)
    if command not in FAST_EXIT:
        leave(code)
    try:
        from streamfuse.cli.run import exit_now

        exit_now(code)
    except Exception:  # noqa: BLE001  a stop that cut an import short left a module half made (yaml, multiprocessing)
        leave(code)
