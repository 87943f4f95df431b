"""``python -m streamfuse COMMAND``: the dispatch, its one-line errors, and the documented wrappers that lead to it."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamfuse.bench import BENCHES
from streamfuse.cli import COMMANDS, dispatch, guarded, main, quiet_interrupt, stoppable
from streamfuse.signals import handled

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_command(capsys):
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in COMMANDS)
    assert main([]) == 2


def test_help_names_every_benchmark(capsys):
    main(["-h"])
    bench_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  bench "))
    assert all(f" {name}" in bench_line for name in BENCHES), bench_line


def test_version_is_the_one_pyproject_gives(capsys):
    import re

    assert main(["--version"]) == 0
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert capsys.readouterr().out.startswith(f"streamfuse {version} (Python ")


def test_unknown_command_is_one_line(capsys):
    assert main(["nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"streamfuse: unknown command 'nope'; choose one of {', '.join(COMMANDS)}"
    assert main(["bench", "nope"]) == 2
    assert capsys.readouterr().err.startswith("streamfuse bench: unknown command 'nope'; choose one of fuse,")
    assert main(["bench", "--version"]) == 2  # the package's version is the top command's alone
    assert capsys.readouterr().err.startswith("streamfuse bench: unknown command '--version'; choose one of fuse,")


def test_a_command_that_returns_nothing_succeeded(capsys):
    # a command's main may end without a status (bench batch's does): None is 0, as sys.exit(None) is
    assert dispatch("streamfuse", {"x": "builtins:print"}, ["x"], "") == 0
    assert capsys.readouterr().out == "[]\n"  # print() of the command's own (empty) arguments


def test_a_missing_extra_is_one_line():
    with pytest.raises(SystemExit) as exc:
        dispatch("streamfuse", {"x": "streamfuse_no_such_module:main"}, ["x"], "")
    assert str(exc.value.code).startswith("streamfuse x: needs streamfuse_no_such_module, which is not installed")


def test_ctrl_c_while_a_command_loads_is_one_line_and_130(monkeypatch, capsys):
    # it was a SystemExit with the message, so the status was 1
    from streamfuse import cli

    def loading(name: str):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["streamfuse", "train"])
    monkeypatch.setattr("importlib.import_module", loading)
    # handled() puts back the Ctrl-C handler, which console() leaves ignored once its command is over
    with handled(signal.getsignal(signal.SIGINT), (signal.SIGINT,)), pytest.raises(SystemExit) as exc:
        cli.console()
    assert exc.value.code == 130
    assert capsys.readouterr().err == "streamfuse train: interrupted (Ctrl-C)\n"


def test_ctrl_c_during_a_finalizer_stops_the_command_once_the_finalizer_is_over(capsys):
    # Python's own handler raised it inside the finalizer (pyzmq's context's, freed by a garbage collection), which
    # reported it as ignored: `bench transport` ran on
    class Finalized:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)

    def command() -> int:
        Finalized()  # unreferenced at once: finalized here
        threading.Event().wait(30)  # the stop ends this wait
        return 0

    with handled(signal.default_int_handler, (signal.SIGINT,)):
        assert stoppable(command, "streamfuse bench", "bench") == 130
    assert capsys.readouterr().err == "streamfuse bench: interrupted (Ctrl-C)\n"


def test_each_command_reaches_its_own_main(capsys):
    for name in COMMANDS:
        if name == "bench":  # a dispatch of its own (below)
            continue
        with pytest.raises(SystemExit) as exc:
            main([name, "-h"])
        assert exc.value.code == 0, name
        assert "usage:" in capsys.readouterr().out, name
    for name in ("fuse", "replay"):
        with pytest.raises(SystemExit) as exc:
            main(["bench", name, "-h"])
        assert exc.value.code == 0 and f"python -m streamfuse bench {name}" in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS), *(["bench", name] for name in BENCHES)],
                         ids=lambda command: " ".join(command) or "(none)")
def test_every_usage_line_names_python_m_streamfuse(command, capsys):
    """As the README writes each command (the console script ``streamfuse`` runs the same)."""
    try:
        code = main([*command, "-h"])
    except SystemExit as exc:  # argparse's -h
        if "which is not installed" in str(exc.code):
            pytest.skip(str(exc.code))  # an optional extra the command needs
        code = exc.code
    usage = capsys.readouterr().out.splitlines()[0]
    assert code == 0 and usage.startswith(f"usage: {' '.join(['python -m streamfuse', *command])} "), usage


@pytest.mark.parametrize("command", [[name] for name in COMMANDS if name != "bench"] + [["bench", name]
                                                                                     for name in BENCHES],
                         ids=" ".join)
def test_every_usage_error_starts_as_the_commands_own_error_lines(command, capsys):
    # argparse started them "python -m streamfuse subscribe: error:", the command's own "streamfuse subscribe: error:"
    wrong = ["--out", ""] if command == ["train"] else ["--no-such-option"]  # train takes unknown options as settings
    with pytest.raises(SystemExit) as exc:
        main([*command, *wrong])
    if "which is not installed" in str(exc.value.code):
        pytest.skip(str(exc.value.code))  # an optional extra the command needs
    said = capsys.readouterr().err.splitlines()[-1]
    assert exc.value.code == 2 and said.startswith(f"streamfuse {' '.join(command)}: error: "), said


@pytest.mark.parametrize("argv", [
    [str(Path(sys.executable).with_name("streamfuse")), "run", "-h"],  # the console script pip installs
    [sys.executable, "-m", "streamfuse", "run", "-h"],
    [sys.executable, str(REPO / "run_stream.py"), "-h"],
    [sys.executable, str(REPO / "tools" / "evaluate.py"), "-h"],
    [sys.executable, str(REPO / "tools" / "bench_fuse.py"), "-h"],
    [sys.executable, str(REPO / "tools" / "bench_replay.py"), "-h"],
], ids=["streamfuse", "python -m streamfuse", "run_stream.py", "tools/evaluate.py", "tools/bench_fuse.py",
        "tools/bench_replay.py"])
def test_documented_entry_points_run_from_anywhere(argv, tmp_path):
    # from another folder, so only the installed package (no checkout on sys.path) can answer
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr


def test_a_ctrl_c_a_command_lets_through_is_one_line(monkeypatch, capsys):
    from streamfuse import cli

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    monkeypatch.setattr(sys, "argv", ["streamfuse", "bench", "batch"])
    # handled() puts back the Ctrl-C handler, which console() leaves ignored once its command is over
    with handled(signal.getsignal(signal.SIGINT), (signal.SIGINT,)), pytest.raises(SystemExit) as exc:
        cli.console()
    assert exc.value.code == 130
    assert capsys.readouterr().err == "streamfuse bench: interrupted (Ctrl-C)\n"


@pytest.mark.parametrize("command", ["run", "replay"])
def test_a_ctrl_c_that_cut_an_import_short_is_still_one_line_and_130(command, monkeypatch, capsys):
    """A Ctrl-C in the first tenth of a second of ``run`` stopped an import (yaml, multiprocessing) half way: the exit
    that followed imported the half-made module again, a traceback and status 1 after the "interrupted" line."""
    import types

    from streamfuse import cli

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    monkeypatch.setattr(sys, "argv", ["streamfuse", command])
    monkeypatch.setitem(sys.modules, "streamfuse.cli.run", types.ModuleType("streamfuse.cli.run"))  # half made
    # handled() puts back the Ctrl-C handler, which console() leaves ignored once its command is over
    with handled(signal.getsignal(signal.SIGINT), (signal.SIGINT,)), pytest.raises(SystemExit) as exc:
        cli.console()
    assert exc.value.code == 130
    assert capsys.readouterr().err == f"streamfuse {command}: interrupted (Ctrl-C)\n"


@pytest.mark.parametrize("command, status", [("run", 0), ("replay", 130), ("recover", 130), ("train", 130),
                                             ("subscribe", 0), ("view", 0), ("foxglove", 0),
                                             ("evaluate", 130), ("bench", 130)])
def test_a_sigterm_while_a_command_loads_is_its_clean_stop(command, status, monkeypatch, capsys):
    """A service manager that stops a command just after starting it, while its module loads (torch, OpenCV, the
    model: seconds), before the command's own handlers: one line and the exit status it gives for SIGTERM later
    (README), not a death by the signal."""
    from streamfuse import cli

    def loading(name: str):
        signal.raise_signal(signal.SIGTERM)

    def unhandled(*_):  # the net: fires only where console() took no SIGTERM handler (the process would die by it)
        raise AssertionError("SIGTERM reached the caller's handler")

    monkeypatch.setattr("streamfuse.cli.run.exit_now", sys.exit)  # run and replay leave by os._exit, not the test
    monkeypatch.setattr(sys, "argv", ["streamfuse", command])
    monkeypatch.setattr("importlib.import_module", loading)  # last: monkeypatch itself imports by it
    # handled() puts back the Ctrl-C handler, which console() leaves ignored once its command is over
    with handled(unhandled, (signal.SIGTERM,)), handled(signal.getsignal(signal.SIGINT), (signal.SIGINT,)), \
            pytest.raises(SystemExit) as exc:
        cli.console()
    assert exc.value.code == status
    assert capsys.readouterr().err == f"streamfuse {command}: interrupted (SIGTERM)\n"


_HELD_IMPORT = """
import pathlib, sys, time
here = pathlib.Path(__file__).parent
(here / "loading").touch()
while not (here / "go").exists():  # the package's load, held here while the test sends its signal
    time.sleep(0.01)
sys.path.remove(str(here))
del sys.modules["yaml"]
import yaml
sys.modules["yaml"] = yaml
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_while_run_stream_loads_the_package_is_its_clean_stop(sig, tmp_path):
    # run_stream.py imported the package (yaml, multiprocessing: a fraction of a second, seconds on a starved CPU)
    # before it took its stop signals: a service manager's SIGTERM then killed the run without a word, status 143
    (tmp_path / "yaml.py").write_text(_HELD_IMPORT)  # the first import of yaml, by the package, waits for "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), str(REPO)]))}
    proc = subprocess.Popen([sys.executable, str(REPO / "run_stream.py"), "--config", "demo"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # as from a terminal
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "loading").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "run_stream.py never loaded the package"
            time.sleep(0.02)
        proc.send_signal(sig)
        (tmp_path / "go").touch()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, err) == (0, f"run_stream.py: interrupted ({sig.name})\n")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("argv, prog", [
    ([sys.executable, "-m", "streamfuse", "-h"], "streamfuse -h"),  # printed, then returned
    ([sys.executable, "-m", "streamfuse", "run", "-h"], "streamfuse run"),  # argparse's help, then SystemExit
    ([sys.executable, "-m", "streamfuse", "bench", "fuse", "-h"], "streamfuse bench"),
    ([sys.executable, str(REPO / "run_stream.py"), "-h"], "run_stream.py"),
    ([sys.executable, str(REPO / "tools" / "train.py"), "-h"], "train.py"),
    ([sys.executable, str(REPO / "tools" / "replay_many.py"), "-h"], "replay_many.py"),
], ids=["streamfuse", "run", "bench fuse", "run_stream.py", "tools/train.py", "tools/replay_many.py"])
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_output_to_a_full_disk_is_one_line_buffered_or_not(argv, prog, unbuffered, tmp_path):
    # without PYTHONUNBUFFERED (a user's shell rarely sets it) the text waits in stdout's buffer until the interpreter's
    # exit, whose failed flush said "Exception ignored in: <_io.TextIOWrapper ...>" and exited 120; with it, argparse
    # dropped the failed write of its help text and the command exited 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "w") as full:
        proc = subprocess.run(argv, cwd=tmp_path, env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (1, f"{prog}: error: cannot write its output: No space left on device\n")


@pytest.mark.parametrize("tool, status", [("replay_many", 130), ("train", 130)])
def test_a_tool_stopped_before_its_own_handlers_ends_as_its_command_does(tool, status, monkeypatch, capsys):
    import runpy

    def stopped(*_args, **_kwargs):  # a SIGTERM while the tool parses its arguments or loads its data
        signal.raise_signal(signal.SIGTERM)

    def unhandled(*_):  # the net: fires only where the tool took no SIGTERM handler (the process would die by it)
        raise AssertionError("SIGTERM reached the caller's handler")

    monkeypatch.setattr(sys, "argv", [f"{tool}.py", "--help"])
    monkeypatch.setattr("argparse.ArgumentParser.parse_args", stopped)
    monkeypatch.setattr("argparse.ArgumentParser.parse_known_args", stopped)
    with handled(unhandled, (signal.SIGTERM,)), handled(signal.getsignal(signal.SIGINT), (signal.SIGINT,)), \
            pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "tools" / f"{tool}.py"), run_name="__main__")
    assert exc.value.code == status
    assert capsys.readouterr().err == f"{tool}.py: interrupted (SIGTERM)\n"


def test_a_sigterm_while_train_loads_torch_is_its_clean_stop(monkeypatch, capsys):
    # tools/train.py took its stop signals only once torch had loaded: a SIGTERM in those seconds killed it
    import runpy
    import types

    class Loading(types.ModuleType):
        def __getattr__(self, name: str) -> None:  # the trainer's import: torch and the model code
            if name != "main":  # what the import machinery or a failure's report look up
                raise AttributeError(name)
            signal.raise_signal(signal.SIGTERM)

    def unhandled(*_):  # the net: fires only where the tool took no SIGTERM handler (the process would die by it)
        raise AssertionError("SIGTERM reached the caller's handler")

    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.setitem(sys.modules, "streamfuse.train", Loading("streamfuse.train"))
    with handled(unhandled, (signal.SIGTERM,)), handled(signal.getsignal(signal.SIGINT), (signal.SIGINT,)), \
            pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "tools" / "train.py"), run_name="__main__")
    assert exc.value.code == 130
    assert capsys.readouterr().err == "train.py: interrupted (SIGTERM)\n"


@pytest.mark.parametrize("leaving", ["streamfuse.cli:leave", "streamfuse.cli.run:exit_now"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_stop_sent_again_while_a_finished_command_exits_keeps_its_status(leaving, sig):
    """A batch stopped by Ctrl-C said so and returned 130; a Ctrl-C or SIGTERM sent again while Python shut down (here
    from an exit handler, where torch's or Ray's threads are torn down) ended the process by that signal (-2, -15)."""
    module, name = leaving.split(":")
    code = (f"import atexit, os, signal\nfrom {module} import {name}\n"
            f"atexit.register(lambda: os.kill(os.getpid(), signal.{sig.name}))\n"
            f"import streamfuse.log_queue as q\nq.flush = lambda *a: os.kill(os.getpid(), signal.{sig.name})\n"
            f"{name}(130)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", ["run", "subscribe"])
def test_a_ctrl_c_while_a_command_loads_is_130_whatever_its_sigterm_status(command, monkeypatch, capsys):
    # run and subscribe end 0 on a SIGTERM (a service manager's stop); a Ctrl-C is still an interruption: 130
    from streamfuse import cli

    def loading(name: str):
        raise KeyboardInterrupt

    monkeypatch.setattr("streamfuse.cli.run.exit_now", sys.exit)  # run leaves by os._exit, not the test
    monkeypatch.setattr(sys, "argv", ["streamfuse", command])
    monkeypatch.setattr("importlib.import_module", loading)  # last: monkeypatch itself imports by it
    with handled(signal.getsignal(signal.SIGINT), (signal.SIGINT,)), pytest.raises(SystemExit) as exc:
        cli.console()
    assert exc.value.code == 130
    assert capsys.readouterr().err == f"streamfuse {command}: interrupted (Ctrl-C)\n"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO])
def test_a_file_a_command_cannot_write_is_named_in_its_one_line(code, capsys):
    def main_() -> int:
        raise OSError(code, os.strerror(code), "runs/latency.csv")

    assert guarded(main_, "streamfuse subscribe") == 1
    said = capsys.readouterr().err
    assert said == f"streamfuse subscribe: error: cannot write runs/latency.csv: {os.strerror(code)}\n"


def test_other_os_errors_are_not_taken_for_a_write_failure():
    def main_() -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "in.mcap")

    with pytest.raises(FileNotFoundError):
        guarded(main_, "streamfuse replay")


def test_a_tools_quiet_interrupt_shortens_only_a_ctrl_c(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # put back after the test
    monkeypatch.setattr(sys, "__excepthook__", lambda kind, exc, tb: seen.append(kind))
    quiet_interrupt("temporal.py")
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
    sys.excepthook(ValueError, ValueError("a bug"), None)  # its traceback is Python's own
    assert capsys.readouterr().err == "temporal.py: interrupted (Ctrl-C)\n" and seen == [ValueError]


@pytest.mark.parametrize("argv, closed", [(["-m", "streamfuse", "replay", "-h"], ">&-"),
                                          ([str(REPO / "run_stream.py"), "-h"], ">&-"),
                                          (["-m", "streamfuse", "replay", "-h"], "<&- >&-")],
                         ids=["replay", "run_stream.py", "stdin_too"])
def test_help_with_standard_output_closed_is_no_traceback(argv, closed, tmp_path):
    # a service started with its stdout closed (>&-) has sys.stdout None: argparse's help there was an AttributeError
    # traceback and status 1; with its stdin closed too, /dev/null opens as descriptor 0, not as stdout's 1
    proc = subprocess.run(["sh", "-c", f'exec "$0" "$@" {closed}', sys.executable, *argv], cwd=tmp_path,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_a_command_started_in_a_deleted_folder_says_so_in_one_line(tmp_path):
    # a working folder deleted under its launcher: torch's MKL aborted a run there ("Intel oneMKL FATAL ERROR: Cannot
    # load libtorch_cpu.so", status 2), and a replay of relative paths said "[Errno 2] No such file or directory"
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.run(["sh", "-c", 'cd "$0" && rmdir "$0" && exec "$@"', str(gone), sys.executable,
                           str(REPO / "run_stream.py"), "--config", "replay", "--ir", "ir.mp4", "--vis", "vis.mp4",
                           "--out", "fused.mkv"], capture_output=True, text=True, timeout=120)
    said = "run_stream.py: error: its working folder was deleted; start it from one that exists\n"
    assert (proc.returncode, proc.stderr) == (1, said)


@pytest.mark.parametrize("argv", [["-m", "streamfuse", "replay", "-h"], [str(REPO / "run_stream.py"), "-h"]],
                         ids=["replay", "run_stream.py"])
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_help_whose_reader_is_gone_ends_quietly_with_141(argv, unbuffered, tmp_path):
    # `--help | head -1` once head has gone: 141 with nothing said, as SIGPIPE ends other tools
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")
