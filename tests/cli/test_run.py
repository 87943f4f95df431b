"""``python -m streamfuse run`` / ``replay`` and run_stream.py: shipped config names, and one-line errors before the
pipeline's heavy imports; a stop while a run starts."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from helpers_zmq import PATIENCE_S, published_on

from streamfuse.checks import ConfigError
from streamfuse.client import Subscriber
from streamfuse.cli.run import main, replay_main
from streamfuse.configs import CONFIG_DIR, resolve, shipped
from streamfuse.signals import Terminated

REPO = Path(__file__).resolve().parents[2]


def test_shipped_names_resolve_and_paths_stay_paths(tmp_path, monkeypatch):
    assert shipped() == ["demo", "eval", "replay", "rig"]
    assert resolve("demo") == CONFIG_DIR / "demo.yaml"
    assert resolve("some/where.yaml") == Path("some/where.yaml")  # a path, even a missing one: load_config says so
    monkeypatch.chdir(tmp_path)
    assert resolve("rig.yaml") == CONFIG_DIR / "rig.yaml"  # the shipped file's name, with no such file here
    (tmp_path / "mine.yaml").write_text("fuse: {}\n")
    assert resolve("mine.yaml") == Path("mine.yaml")
    (tmp_path / "demo").write_text("fuse: {}\n")
    (tmp_path / "rig.yaml").write_text("fuse: {}\n")
    assert resolve("demo") == Path("demo") and resolve("rig.yaml") == Path("rig.yaml")  # a file of that name here wins
    for name in ("demoo", "demoo.yaml"):  # a name, with or without its suffix, that is neither
        with pytest.raises(ConfigError, match=f"{name}: no such config file here, nor a shipped config of that "
                                              "name; shipped: demo, eval, replay, rig"):
            resolve(name)


@pytest.mark.parametrize("command", [main, replay_main])
@pytest.mark.parametrize("name", ["demoo", "demoo.yaml"])
def test_an_unknown_config_name_is_a_config_error(tmp_path, monkeypatch, capsys, command, name):
    monkeypatch.chdir(tmp_path)
    assert command(["--config", name, "--ir", "a.mp4", "--vis", "b.mp4", "--out", "o.mp4"]) == 2
    said = "replay" if command is replay_main else "run"
    assert capsys.readouterr().err.splitlines() == [
        f"streamfuse {said}: config error: {name}: no such config file here, nor a shipped config of that name; "
        "shipped: demo, eval, replay, rig (or give the path of a YAML file)"]


def test_a_bad_key_is_one_line(capsys):
    assert main(["--config", "demo", "--set", "fuse.stepz=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("streamfuse run: config error: ") and "demo.yaml" in err


def test_a_path_holding_a_newline_or_an_escape_stays_on_the_error_line(tmp_path, monkeypatch, capsys):
    """A path's control characters were printed raw: the error broke across lines (or drew on the terminal)."""
    monkeypatch.chdir(tmp_path)
    assert replay_main(["--config", "replay", "--ir", "a\nb\x1b[2J.mp4", "--vis", "v.mp4", "--out", "o.mp4"]) == 1
    assert capsys.readouterr().err.splitlines() == ["streamfuse replay: error: ir input not found: a\\nb\\x1b[2J.mp4"]
    assert main(["--config", "a\nb\x1b[2J.yaml"]) == 2  # a config error's line too
    assert capsys.readouterr().err.splitlines() == [
        "streamfuse run: config error: a\\nb\\x1b[2J.yaml: no such config file here, nor a shipped config of that "
        "name; shipped: demo, eval, replay, rig (or give the path of a YAML file)"]


def test_duration_with_a_replay_is_refused_not_ignored(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "replay", "--ir", "a.mp4", "--vis", "v.mp4", "--out", "o.mp4", "--duration", "5"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "streamfuse run: config error: --duration is for live runs: a replay (--out) fuses its inputs to their end"]
    assert not list(tmp_path.iterdir())


def test_a_live_run_of_a_source_without_a_path_is_a_config_error_before_it_binds(capsys):
    # `run --config replay` bound the publisher, started the sources and printed final stats before "no path given",
    # exit 1
    import socket

    with socket.socket() as taken:  # held: a run that bound it would fail otherwise than with the config's line
        taken.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        assert main(["--config", "replay", "--set", f"publish.endpoint={endpoint}", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("streamfuse run: config error: ") and err.endswith(
        "replay.yaml: ir.path is empty: a file source needs one (--set ir.path=...; a replay takes it from --ir with "
        "--out)"), err


def test_a_palette_for_the_synthetic_source_is_a_config_error_before_it_binds(capsys):
    import socket

    with socket.socket() as taken:  # held: a run that bound it would fail otherwise than with the config's line
        taken.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        assert main(["--config", "demo", "--set", "ir.palette=jet", "--set", f"publish.endpoint={endpoint}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("streamfuse run: config error: ") and err.endswith(
        "demo.yaml with --set ir.palette=jet: ir.palette='jet' is a thermal camera's, and the synthetic source "
        "renders grey IR (leave it empty)")


@pytest.mark.parametrize(("sets", "said"), [
    (["ir.kind=file", "ir.path=ir.mp4"], "the IR frames (ir.kind file) carry times from their own start (0), the "
     "visible ones (vis.kind synthetic) the wall clock at capture"),
    (["vis.kind=mcap", "vis.path=rig.mcap"], "the IR frames (ir.kind synthetic) carry the wall clock at capture, the "
     "visible ones (vis.kind mcap) the recording's times"),
    (["vis.realtime=false"], "the visible ones (vis.kind synthetic not realtime) times from their own start (0)"),
])
def test_sources_whose_times_never_pair_are_a_config_error_before_it_binds(sets, said, capsys):
    # a video file's IR beside a live visible camera published nothing, in silence: every frame counted unpaired
    import socket

    with socket.socket() as taken:  # held: a run that bound it would fail otherwise than with the config's line
        taken.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        args = [a for s in sets for a in ("--set", s)]
        assert main(["--config", "demo", *args, "--set", f"publish.endpoint={endpoint}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("streamfuse run: config error: ") and said in err and "\n" not in err
    assert err.endswith(": they would never pair (give two live sources, two files or folders, or two recordings)")


def test_a_replay_says_it_does_not_record(monkeypatch, caplog):
    import streamfuse.replay

    monkeypatch.setattr(streamfuse.replay, "run_replay", lambda cfg, **kw: types.SimpleNamespace(complete=True))
    assert main(["--config", "replay", "--set", "record.path=rig.mcap", "--ir", "a.mp4", "--vis", "b.mp4",
                 "--out", "o.mp4"]) == 0
    assert "record.path=rig.mcap is for live runs: a replay writes only its output (--out)" in caplog.text


def test_a_live_run_never_waits_for_a_subscriber(monkeypatch, caplog):
    # publish.wait_ms, a replay's lossless back-pressure, made a live run's loop wait on a stalled subscriber
    import streamfuse.pipeline

    given = []

    def started(cfg, *_):  # what the publisher would be made from
        given.append(cfg)
        raise RuntimeError("stopped before the publisher")

    monkeypatch.setattr(streamfuse.pipeline, "_started", started)
    assert main(["--config", "demo", "--set", "publish.nodrop=true", "--set", "publish.wait_ms=250"]) == 1
    assert given[0].publish.wait_ms == 0 and given[0].publish.nodrop
    assert "publish.wait_ms=250 is for replay: a live run never waits for a subscriber" in caplog.text


def test_run_needs_a_config(capsys):
    # a live run has no default config: `run` alone is a usage error, not a traceback or some config's run
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "the following arguments are required: --config" in capsys.readouterr().err


def test_replay_needs_out(capsys):
    with pytest.raises(SystemExit) as exc:
        replay_main(["--config", "replay", "--ir", "a.mp4", "--vis", "b.mp4"])
    assert exc.value.code == 2 and "the following arguments are required: --out" in capsys.readouterr().err


@pytest.mark.parametrize("args, given", [(["--resume"], "--resume is"), (["--ir", "a.mp4"], "--ir/--vis are"),
                                         (["--vis", "b.mp4", "--resume"], "--ir/--vis are")])
def test_replay_options_without_an_output_are_refused(capsys, args, given):
    assert main(["--config", "demo", *args]) == 2  # not a live run that ignores them
    assert capsys.readouterr().err.splitlines() == [
        f"streamfuse run: config error: {given} for replay: also give --out (or set replay.out in the config)"]


@pytest.mark.parametrize("option", ["--ir", "--vis", "--out"])
def test_an_empty_path_is_refused_by_its_options_name(capsys, option):
    # --out '' (an unset shell variable) said 'also give --out'
    args = {"--ir": "a.mp4", "--vis": "b.mp4", "--out": "o.mp4", option: ""}
    with pytest.raises(SystemExit) as exc:
        replay_main([word for pair in args.items() for word in pair])
    assert exc.value.code == 2 and f"argument {option}: empty path" in capsys.readouterr().err


def test_replay_runs_the_shipped_replay_config_by_default(monkeypatch):
    import streamfuse.pipeline

    seen = {}
    monkeypatch.setattr(streamfuse.pipeline, "run", lambda cfg, **kw: seen.update(cfg=cfg, **kw) or 0)
    assert replay_main(["--ir", "a.mp4", "--vis", "b.mp4", "--out", "o.mp4"]) == 0
    assert seen["out_path"] == "o.mp4" and seen["cfg"].replay.pacing == "fast" and seen["cfg"].ir.kind == "file"


@pytest.mark.parametrize(("flag", "resume"), [([], None), (["--resume"], True)], ids=["config's", "--resume"])
def test_without_resume_the_configs_replay_resume_decides(monkeypatch, flag, resume):
    # resume=False (not None) overrode replay.resume: true, and a partial output was started over, its frames lost
    import streamfuse.pipeline

    seen = {}
    monkeypatch.setattr(streamfuse.pipeline, "run", lambda cfg, **kw: seen.update(kw) or 0)
    assert replay_main(["--ir", "a.mp4", "--vis", "b.mp4", "--out", "o.mp4", "--set", "replay.resume=true",
                        *flag]) == 0
    assert seen["resume"] is resume


def test_a_sigterm_as_a_replay_of_the_configs_out_starts_is_a_stopped_replay(monkeypatch, capsys):
    # a run made a replay by replay.out (no --out) exited 0, a live run's clean stop, not a replay's 130
    import streamfuse.pipeline

    def stopped(cfg, **kw):
        raise Terminated("interrupted (SIGTERM)")

    monkeypatch.setattr(streamfuse.pipeline, "run", stopped)
    assert main(["--config", "replay", "--set", "replay.out=o.mp4", "--ir", "a.mp4", "--vis", "b.mp4"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "streamfuse run: interrupted (SIGTERM)"


@pytest.mark.parametrize("exc, said", [
    (ImportError("libtorch_cpu.so: failed to map segment from shared object"),
     "cannot load a library: libtorch_cpu.so: failed to map segment from shared object"),
    (MemoryError(), "out of memory: no memory left")], ids=["library", "allocation"])
def test_a_memory_limit_too_low_is_one_line(monkeypatch, capsys, exc, said):
    # under ulimit -v (systemd's LimitAS=) torch's or scipy's libraries cannot be mapped: a 60-line traceback
    import streamfuse.pipeline

    def short(cfg, **kw):
        raise exc

    monkeypatch.setattr(streamfuse.pipeline, "run", short)
    assert main(["--config", "demo"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"streamfuse run: error: {said} (is the process's memory limit, ulimit -v, too low?)"]


def test_an_open_file_limit_reached_is_named_in_the_line(monkeypatch, capsys):
    # a live run under a low ulimit -n (or one whose subscribers' sockets took the rest) ended on "[Errno 24] Too many
    # open files" and whatever it failed to open next: a pipe, a module, a shared-memory segment
    import resource

    import streamfuse.pipeline

    def out_of_files(cfg, **kw):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(streamfuse.pipeline, "run", out_of_files)
    assert main(["--config", "demo"]) == 1
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert capsys.readouterr().err.splitlines() == [
        f"streamfuse run: error: [Errno 24] Too many open files (the process's open-file limit, ulimit -n, is {soft}: "
        "raise it)"]


@pytest.mark.parametrize("program, said", [
    ([str(REPO / "run_stream.py")], "run_stream.py"), (["-m", "streamfuse", "run"], "streamfuse run"),
    (["-m", "streamfuse", "replay", "--out", "o.mp4"], "streamfuse replay")], ids=["run_stream", "run", "replay"])
def test_each_entry_points_errors_begin_with_its_command(program, said, tmp_path):
    # a live run's config and input errors began 'streamfuse:', where every other command's name the command
    (tmp_path / "bad.yaml").write_text("fuse:\n  stepz: 1\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for config, line in (("bad.yaml", "config error: bad.yaml: unknown config key fuse.stepz"),
                         ("replay", "error: ir input not found: a.mp4")):
        proc = subprocess.run([sys.executable, *program, "--config", config, "--ir", "a.mp4", "--vis", "b.mp4",
                               "--out", "o.mp4"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.stderr.splitlines()[-1].startswith(f"{said}: {line}"), proc.stderr


def test_config_errors_come_before_the_pipelines_imports(tmp_path):
    code = ("import sys; from streamfuse.cli.run import main; code = main(['--config', 'demo', '--set', "
            "'fuse.stepz=1']); print(code, sorted(m for m in ('torch', 'ot', 'streamfuse.pipeline') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "2 []", proc.stderr


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "soon"])
def test_a_duration_that_is_not_a_time_is_refused(value, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--config", "demo", "--duration", value])
    assert err.value.code == 2 and "argument --duration" in capsys.readouterr().err


def _read_by(fifo: Path, proc: subprocess.Popen) -> int:
    """The write end of the named pipe ``fifo`` once ``proc`` has opened it to read: it then waits for the text."""
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nobody reads it yet
                raise
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        time.sleep(0.01)


def _wait_delivered(pid: int, sig: int) -> None:
    """Wait until no thread of process ``pid`` has ``sig`` pending (Linux's /proc status masks)."""
    def pending() -> bool:
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            try:
                lines = status.read_text().splitlines()
            except (FileNotFoundError, ProcessLookupError):  # a thread that has ended (before the open, or after)
                continue
            if any(int(ln.split()[1], 16) >> (sig - 1) & 1 for ln in lines if ln.startswith(("SigPnd:", "ShdPnd:"))):
                return True
        return False

    while pending():
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or not hasattr(os, "mkfifo") or not hasattr(signal, "SIGHUP"),
                    reason="no /proc, named pipes or SIGHUP")
@pytest.mark.parametrize("command, status", [
    ([str(REPO / "run_stream.py")], 0),
    (["-m", "streamfuse", "run"], 0),
    (["-m", "streamfuse", "replay", "--out", "o.mkv"], 130),
], ids=["run_stream.py", "run", "replay"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_while_the_run_starts_is_its_clean_stop(tmp_path, command, status, sig):
    """A service manager that stops a run just after starting it (SIGTERM), or a terminal that hangs up, while the
    run still starts: one line and the exit status of the same stop later (a live run's 0, a replay's 130), not a death
    by the signal. The run is held at a known point of its start-up, reading its config from a named pipe that stays
    silent (after the command's own imports, before the pipeline's and the model)."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, *command, "--config", str(fifo)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # as from a terminal
    writer = None
    try:
        writer = _read_by(fifo, proc)
        proc.send_signal(sig)
        # The kernel may hand the signal to any of the run's threads: then its handler runs only once the main thread
        # leaves the read it is blocked in. So, once no thread has it pending, the pipe ends (an empty config).
        _wait_delivered(proc.pid, sig)
        os.close(writer)
        writer = None
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        if writer is not None:
            os.close(writer)
    named = "run_stream.py" if command[0].endswith(".py") else " ".join(command[1:3])
    said = f"{named}: interrupted ({sig.name})"  # the command named, as its other lines do
    assert (proc.returncode, out.splitlines()) == (status, [said]), out[-2000:]


def test_a_live_run_leaves_no_multiprocessing_folder_behind(tmp_path):
    # the CLI leaves by os._exit, which skipped multiprocessing's exit handler: each live run left a pymp-* folder
    # (its producers' forkserver socket) in the temp folder, thousands on a robot that restarts its runs
    small = [f"--set={s}.{k}={v}" for s in ("ir", "vis") for k, v in (("width", 64), ("height", 48))]
    proc = subprocess.run([sys.executable, "-m", "streamfuse", "run", "--config", "demo", "--set=fuse.name=max",
                           "--set=publish.endpoint=tcp://127.0.0.1:*", *small, "--duration", "1"], cwd=REPO,
                          env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.glob("pymp-*"))


def test_a_live_run_started_with_its_stderr_closed_ends_as_it_would_with_it(tmp_path):
    # a service started with 2>&- (sys.stderr None): the log writer died on its first line, and the exit's flush
    # raised, so a run_stream.py that went well ended with status 1 after Python's whole teardown
    small = [f"--set={s}.{k}={v}" for s in ("ir", "vis") for k, v in (("width", 64), ("height", 48))]
    proc = subprocess.run(["sh", "-c", 'exec "$0" "$@" 2>&-', sys.executable, str(REPO / "run_stream.py"), "--config",
                           "demo", "--set=fuse.name=max", "--set=publish.endpoint=tcp://127.0.0.1:*", *small,
                           "--duration", "1"], cwd=REPO, env={**os.environ, "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_a_live_run_started_with_ctrl_c_ignored_goes_on_past_one_and_stops_on_sigterm(tmp_path):
    """``streamfuse run ... &`` in a script: the shell starts it with SIGINT ignored, so that the Ctrl-C stopping the
    script's foreground command leaves it running. The run put its own handler in place and stopped there."""
    sets = ["publish.endpoint=tcp://127.0.0.1:*", "fuse.name=max", "align.enabled=false"] + [
        f"{cam}.{side}={size}" for cam in ("ir", "vis") for side, size in (("width", 64), ("height", 48))]
    proc = subprocess.Popen([sys.executable, "-m", "streamfuse", "run", "--config", "demo",
                             *(arg for s in sets for arg in ("--set", s))], cwd=tmp_path, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        with Subscriber(published_on(proc), timeout_s=PATIENCE_S, shm=False) as sub:
            assert (frame := sub.recv(120)) is not None, "the run published nothing"
            proc.send_signal(signal.SIGINT)
            after = frame[0]["seq"] + 50  # two seconds of frames: a stopped run publishes none of them
            while (frame := sub.recv()) is not None and frame[0]["seq"] < after:
                pass
            assert frame is not None, "the Ctrl-C stopped the run"
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=PATIENCE_S)[1]
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
