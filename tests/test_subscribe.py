"""The subscribe CLI against a Publisher (or a raw PUB socket) running in a thread on a random loopback port."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
import zmq.auth
from helpers_zmq import ANY_PORT, MALFORMED, PATIENCE_S, plain_pub, publishing, with_header
from test_atomic_write import _folder_sync_refused

from streamfuse.frames import Frame, FramePair, FusedFrame
from streamfuse.publish import Publisher, PublishConfig
from streamfuse.subscribe import main

REPO = Path(__file__).resolve().parents[1]


def test_cli_count_prints_latency_lines(rng: np.random.Generator) -> None:
    with publishing(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rate_hz=50) as pub:
        result = subprocess.run([sys.executable, "-m", "streamfuse.subscribe", pub.endpoint, "--count", "3"],
                                env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    frames = [line for line in lines if line.startswith("seq ")]
    assert len(frames) == 3
    assert all(re.search(r" 64x48 bgr8 (raw|shm) age ", line) and " fps " in line for line in frames)
    assert lines[-1].startswith("received 3 frames") and "malformed 0" in lines[-1]


def test_cli_sigterm_stops_with_the_summary(rng: np.random.Generator) -> None:
    # a launcher (systemd, ROS launch) stops it with SIGTERM: exit 0 and the summary, as Ctrl-C gives
    with publishing(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rate_hz=50) as pub:
        proc = subprocess.Popen([sys.executable, "-u", "-m", "streamfuse.subscribe", pub.endpoint],
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().startswith("seq "), proc.stderr.read()[-2000:]  # inside the loop
            proc.terminate()
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert out.splitlines()[-1].startswith("received ") and "Traceback" not in err


def test_cli_lines_reach_a_pipe_as_the_frames_come_and_a_restart_is_said() -> None:
    # a launcher's log or `| tee` is a pipe, not a terminal: a frame's line must reach it then, not at the exit
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}  # as a user runs it
    with zmq.Context.instance().socket(zmq.XPUB) as pub:
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        proc = subprocess.Popen([sys.executable, "-m", "streamfuse.subscribe", f"tcp://127.0.0.1:{port}", "--timeout",
                                 "60"], env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert pub.poll(PATIENCE_S * 1000), proc.stderr.read()[-2000:]  # its subscription: it is connected
            for seq in (5, 6, 0):  # far less than a pipe's buffer of lines, then silence; 0: a restarted publisher
                pub.send_multipart(with_header(seq=seq))
            lines = [proc.stdout.readline() for _ in range(3)]
            proc.terminate()  # still waiting for the next frame: stopped as a launcher stops it
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert [line[:4] for line in lines] == ["seq "] * 3, err[-2000:]
    assert proc.returncode == 0 and out.splitlines()[-1].startswith("received 3 frames"), err[-2000:]
    assert f"INFO streamfuse.seq_count: publisher at tcp://127.0.0.1:{port} restarted (seq 0 after 6)" in err, err


def test_cli_whose_reader_goes_away_ends_quietly_like_other_tools(rng: np.random.Generator) -> None:
    """``streamfuse subscribe ... | head -1``: once the reader of its output is gone, it ends with 141 (as SIGPIPE
    ends other tools) and no traceback."""
    with publishing(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rate_hz=50) as pub:
        proc = subprocess.Popen([sys.executable, "-u", "-m", "streamfuse", "subscribe", pub.endpoint],
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().startswith("seq "), proc.stderr.read()[-2000:]
            proc.stdout.close()  # what head does after its line
            err = proc.stderr.read()
            proc.wait(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 141 and not err, err[-2000:]


def test_cli_started_with_ctrl_c_ignored_keeps_it_ignored_and_stops_on_sigterm(rng: np.random.Generator) -> None:
    """``streamfuse subscribe ... &`` from a script: the shell starts it with SIGINT ignored, and a Ctrl-C meant for
    the script in the foreground must not stop it; a SIGTERM still does, with its summary."""
    with publishing(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rate_hz=50) as pub:
        proc = subprocess.Popen([sys.executable, "-u", "-m", "streamfuse", "subscribe", pub.endpoint, "--no-shm"],
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            assert proc.stdout.readline().startswith("seq "), proc.stderr.read()[-2000:]
            proc.send_signal(signal.SIGINT)
            after = pub.published  # a frame published after the Ctrl-C shows the command went on past it
            while (line := proc.stdout.readline()).startswith("seq ") and int(line.split()[1]) <= after:
                pass
            assert line.startswith("seq "), f"stopped by the Ctrl-C: {line!r} {proc.stderr.read()[-2000:]}"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0 and "received " in (line + out), err[-2000:]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_cli_whose_output_cannot_be_written_says_so_in_one_line(rng: np.random.Generator) -> None:
    with publishing(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rate_hz=50) as pub, \
            open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "streamfuse", "subscribe", pub.endpoint, "--count", "3"],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == "streamfuse subscribe: error: cannot write its output: No space left on device\n"


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_cli_no_shm_takes_the_zeromq_stream(encoding: str, rng: np.random.Generator,
                                            capsys: pytest.CaptureFixture) -> None:
    with publishing(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rate_hz=50, encoding=encoding) as pub:
        assert main([pub.endpoint, "--count", "3", "--no-shm"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(f" 64x48 bgr8 {encoding} age " in line for line in lines) == 3
    assert lines[-1].endswith("from shared memory 0")


def test_cli_save_latest(rng: np.random.Generator, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with publishing(image, rate_hz=50) as pub:
        assert main([pub.endpoint, "--count", "2", "--latest", "--save", str(tmp_path / "out")]) == 0
    saved = sorted((tmp_path / "out").glob("fused_*.png"))
    assert len(saved) == 2
    np.testing.assert_array_equal(cv2.imread(str(saved[0])), image)
    assert "received 2 frames" in capsys.readouterr().out


@contextmanager
def alternating(bad: list[bytes], good: bool = True) -> Iterator[str]:
    """A raw PUB socket sending ``bad`` and a good frame (seq 0, 1, 2 ...) alternately until the block ends
    (``good=False``: ``bad`` alone)."""
    stop = threading.Event()
    with plain_pub() as sock:
        def send() -> None:
            seq = 0
            while not stop.wait(0.02):
                sock.send_multipart(bad)
                if good:
                    sock.send_multipart(with_header(seq=seq))
                seq += 1

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        try:
            yield sock.getsockopt_string(zmq.LAST_ENDPOINT)
        finally:
            stop.set()
            thread.join(timeout=30)


@pytest.mark.parametrize("latest", [False, True], ids=["plain", "latest"])
@pytest.mark.parametrize("name", ["not_json", *MALFORMED])
def test_cli_skips_and_counts_malformed_messages(name: str, latest: bool, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    bad, reason = ([b"fused/x", b"not json", b""], "not UTF-8 JSON") if name == "not_json" else MALFORMED[name]
    with caplog.at_level(logging.WARNING, logger="streamfuse.client"), alternating(bad) as endpoint:
        # --save: a forged seq once reached the file name (10**400 digits: "File name too long")
        assert main([endpoint, "--count", "2", "--save", str(tmp_path), *(["--latest"] if latest else [])]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.startswith("received 2 frames") and re.search(r"malformed [1-9]", summary)
    assert any("skipped malformed message" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert len(list(tmp_path.glob("fused_*.png"))) == 2


def test_cli_only_malformed_messages_says_so(capsys: pytest.CaptureFixture) -> None:
    with alternating([b"fused/x", b"not json", b""], good=False) as endpoint:
        assert main([endpoint, "--timeout", "2", "--first-timeout", "2"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING")]
    assert len(err) == 1 and err[0].startswith(f"no frame from {endpoint}") and "after 0 frames" in err[0]
    assert re.search(r"(1 message arrived, malformed|[2-9]\d* messages arrived, all malformed) \(the last: header is "
                     r"not UTF-8 JSON", err[0]), err[0]


def test_one_malformed_message_is_said_in_the_singular() -> None:
    from types import SimpleNamespace

    from streamfuse.subscribe import _why_silent

    sub = SimpleNamespace(last_malformed="header is not UTF-8 JSON", handshake_failures=0)
    assert _why_silent(sub, "", 1) == "1 message arrived, malformed (the last: header is not UTF-8 JSON)"
    assert _why_silent(sub, "", 3).startswith("3 messages arrived, all malformed (the last: ")


@pytest.mark.parametrize("target", ["file", "proc"])
def test_cli_save_where_no_folder_can_be_is_one_line(target: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "taken" if target == "file" else Path("/proc/streamfuse-no-such-pid/frames")
    if target == "file":
        path.write_bytes(b"")
    assert main(["tcp://127.0.0.1:1", "--save", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"streamfuse subscribe: error: cannot make the --save folder {path}: "), err


def test_cli_server_key_file_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text("# no key here\n")
    missing = tmp_path / "missing.key"
    for value, reason in [(empty, f"streamfuse subscribe: error: server key file {empty} holds no public key"),
                          (missing, f"streamfuse subscribe: error: server key file {missing} does not exist")]:
        assert main(["tcp://127.0.0.1:1", "--server-key", str(value)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(reason), err


def test_cli_save_never_writes_over_a_frame_already_saved(rng: np.random.Generator, tmp_path: Path) -> None:
    # a restarted publisher numbers its frames from 0 again: its frames went over the first run's under their names
    first, second = (rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2))
    for image in (first, second):
        with publishing(image) as pub:
            assert main([pub.endpoint, "--count", "3", "--save", str(tmp_path)]) == 0
    saved = {p.name: cv2.imread(str(p)) for p in tmp_path.glob("fused_*.png")}
    assert len(saved) == 6
    assert sum(np.array_equal(img, first) for img in saved.values()) == 3  # each run's three frames kept
    assert sum(np.array_equal(img, second) for img in saved.values()) == 3


def test_cli_save_into_a_folder_whose_sync_fails_warns_once_with_a_count_at_the_end(
        rng: np.random.Generator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # a failing disk: one warning a frame
    folder = tmp_path.resolve()
    _folder_sync_refused(monkeypatch, folder, errno.EIO)
    with publishing(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) as pub:
        assert main([pub.endpoint, "--count", "4", "--save", str(folder)]) == 0
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 2 and said[0].startswith(f"{folder}/fused_") and said[1].startswith(
        f"3 more files written whole in {folder} after the first one said"), said
    assert len(list(folder.glob("fused_*.png"))) == 4


def test_cli_save_every_n(rng: np.random.Generator, tmp_path: Path) -> None:
    with publishing(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) as pub:
        assert main([pub.endpoint, "--count", "5", "--every", "2", "--save", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("fused_*.png"))) == 3  # frames 1, 3 and 5


def test_cli_a_frame_that_cannot_be_saved_ends_the_run_with_one_line(rng: np.random.Generator, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    # a disk that fills mid-run: the run stops there and says so, as for a --save folder refused at the start
    import streamfuse.subscribe

    def disk_full(path: Path, image: np.ndarray, *, new: bool) -> Path:
        raise RuntimeError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(streamfuse.subscribe, "write_png", disk_full)
    with publishing(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) as pub:
        assert main([pub.endpoint, "--count", "5", "--save", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert re.fullmatch(r"streamfuse subscribe: error: cannot write .*fused_\d{8}\.png: No space left on device",
                        err.splitlines()[-1]), err
    assert out.splitlines()[-1].startswith("received 1 frames")


def test_cli_reader_thread_failure_is_one_line(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    def broken(parts: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr("streamfuse.client.decode_header", broken)
    with publishing(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) as pub:
        assert main([pub.endpoint, "--latest", "--count", "1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"streamfuse subscribe: error: subscriber {pub.endpoint}: the reader thread stopped: OSError: disk "
                   f"on fire"]


@pytest.mark.parametrize("key", ["wrong", "none"])
def test_cli_curve_key_mismatch_says_so(key: str, tmp_path: Path, rng: np.random.Generator,
                                        capsys: pytest.CaptureFixture) -> None:
    public, secret = zmq.auth.create_certificates(tmp_path, "rig0")
    wrong, _ = zmq.auth.create_certificates(tmp_path, "other")
    with publishing(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), curve_secret_file=str(secret)) as pub:
        assert main([pub.endpoint, "--server-key", str(public), "--count", "1"]) == 0
        capsys.readouterr()
        # The timeout is the wait for frames that cannot come; the handshake fails within milliseconds.
        wrong_key = ["--server-key", str(wrong)] if key == "wrong" else []
        assert main([pub.endpoint, "--timeout", "2", "--first-timeout", "2", *wrong_key]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"no frame from {pub.endpoint}")
    if key == "wrong":
        assert f"CURVE handshakes failed: the publisher's public key differs from {wrong}" in err[0]
    else:
        assert "the publisher encrypts, give its key with --server-key" in err[0]


def test_cli_client_key_lets_a_consumer_the_publisher_knows_in(tmp_path: Path, rng: np.random.Generator,
                                                                capsys: pytest.CaptureFixture) -> None:
    public, secret = zmq.auth.create_certificates(tmp_path, "rig0")
    robot_public, robot_secret = zmq.auth.create_certificates(tmp_path, "robot")
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "robot.key").write_bytes(Path(robot_public).read_bytes())
    with publishing(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), curve_secret_file=str(secret),
                    curve_clients_dir=str(tmp_path / "allowed")) as pub:
        assert main([pub.endpoint, "--server-key", str(public), "--client-key", str(robot_secret), "--count", "1"]) == 0
        capsys.readouterr()
        for given, said in (([str(public), str(robot_public)], f"client key file {robot_public} holds no secret key"),
                            (["", str(robot_secret)], "is for a publisher that encrypts: give its server key too")):
            assert main([pub.endpoint, "--server-key", given[0], "--client-key", given[1]]) == 2
            [line] = capsys.readouterr().err.splitlines()
            assert line.startswith("streamfuse subscribe: error: ") and said in line


@pytest.mark.parametrize(("args", "said"), [
    (["--every", "0"], "--every: must be >= 1, got 0"), (["--count", "-1"], "--count: must be >= 0, got -1"),
    (["--max-frame-mb", "0"], "--max-frame-mb: must be a number in (0, 1e+06], got 0"),
    (["--max-frame-mb", "2e6"], "--max-frame-mb: must be a number in (0, 1e+06], got 2e6"),
    (["--timeout", "0"], "--timeout: must be a number in (0, 9.22337e+09], got 0"),
    (["--timeout", "nan"], "--timeout: must be a number in (0, 9.22337e+09], got nan"),
    (["--timeout", "inf"], "--timeout: must be a number in (0, 9.22337e+09], got inf"),
    (["--timeout=-1"], "--timeout: must be a number in (0, 9.22337e+09], got -1"),
    (["--timeout", "1e308"], "--timeout: must be a number in (0, 9.22337e+09], got 1e308"),  # named timeout_s
    (["--first-timeout", "1e308"], "--first-timeout: must be a number in (0, 9.22337e+09], got 1e308"),
    (["--timeout", "soon"], "--timeout: 'soon' is not a number")])
def test_cli_bad_arguments_exit_2(args: list[str], said: str, capsys: pytest.CaptureFixture) -> None:
    # the line named every option's range at once ("--timeout must be finite and > 0, --count >= 0, ...")
    with pytest.raises(SystemExit) as info:
        main(["tcp://127.0.0.1:1", *args])
    err = capsys.readouterr().err.splitlines()
    assert info.value.code == 2 and err[-1].endswith(f"error: argument {said}")


def test_cli_waits_longer_for_the_first_frame(rng: np.random.Generator) -> None:
    # started beside a run that still loads its model (6-16 s on a first start), it gave up after --timeout's 10 s;
    # here the first frame takes the connection's set-up and a publishing tick, far more than --timeout's 1 ms
    with publishing(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), rate_hz=20) as pub:
        assert main([pub.endpoint, "--timeout", "0.001", "--first-timeout", str(PATIENCE_S), "--count", "1"]) == 0


def test_cli_a_zeromq_peer_that_is_no_publisher_is_said_to_be_one(capsys: pytest.CaptureFixture) -> None:
    # a REP socket on the port (another program's): the handshake fails on the socket type with no event that says so,
    # and the line blamed "not the ZeroMQ protocol"
    with zmq.Context.instance().socket(zmq.REP) as rep:
        port = rep.bind_to_random_port("tcp://127.0.0.1")
        assert main([f"tcp://127.0.0.1:{port}", "--timeout", "5", "--first-timeout", "5"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING")]
    assert len(err) == 1 and "a peer that is no publisher: another socket type, another protocol" in err[0], err


def test_a_first_timeout_shorter_than_timeout_is_the_first_wait(capsys: pytest.CaptureFixture) -> None:
    # it waited max(--timeout, --first-timeout): 30 s here, where the help promises S
    assert main(["tcp://127.0.0.1:1", "--timeout", "30", "--first-timeout", "0.3"]) == 1
    assert "for 0.3 s after 0 frames" in capsys.readouterr().err


def test_cli_timeout_exits_1_with_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["tcp://127.0.0.1:1", "--timeout", "0.3", "--first-timeout", "0.3"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no frame from tcp://127.0.0.1:1" in err[0] and "after 0 frames" in err[0]
    assert err[0].endswith("is the publisher running?")
    assert main(["tcp://127.0.0.1:1", "--timeout", "0.3", "--first-timeout", "0.3", "--server-key", "x" * 40]) == 1
    assert "the publisher is not running, or its CURVE public key differs from the --server-key given" in \
        capsys.readouterr().err


def test_cli_host_name_that_does_not_resolve_is_one_line(capsys: pytest.CaptureFixture) -> None:
    # libzmq retries such a name in silence: this said "no frame ... is the publisher running?" after --timeout
    assert main(["tcp://no-such-host.invalid:47001", "--timeout", "0.05"]) == 2  # looked up until --timeout
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("streamfuse subscribe: error: cannot connect to "
                                               "tcp://no-such-host.invalid:47001: the host name no-such-host.invalid "
                                               "does not resolve ("), err


@pytest.mark.skipif(not re.search(r"GUI:\s+NONE", cv2.getBuildInformation()),
                    reason="OpenCV has a GUI here: --show would open a window")
def test_cli_show_on_headless_opencv_says_so(capsys: pytest.CaptureFixture) -> None:
    assert main(["tcp://127.0.0.1:1", "--show"]) == 2
    # the two OpenCV packages share the cv2 module: installing the GUI one beside the headless one breaks both
    assert capsys.readouterr().err == (
        "streamfuse subscribe: error: --show needs an OpenCV build with GUI support; this one is headless (pip "
        "uninstall -y opencv-python-headless && pip install opencv-python; the pipeline itself needs only the headless "
        "build)\n")


@pytest.mark.parametrize(("topic", "said"), [
    ("stats/rig0", "carries the stats' JSON snapshots, not frames: give the fused topic, e.g. 'fused/' (README, "
                   "Telemetry: the same line the pipeline logs)"),
    ("s", "also takes the stats/ topics, whose messages would come in mixed with the frames: give the fused topic"),
    ("preview/", "also takes the preview/ topics")])
def test_cli_on_a_topic_of_no_frames_says_it_reads_frames(topic: str, said: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    # each stats snapshot (two parts: topic, JSON) was a "malformed message" warning, and the run ended in failure;
    # a prefix of them was told in other words, without the option's name
    with pytest.raises(SystemExit) as stopped:
        main(["tcp://127.0.0.1:1", "--topic", topic])
    assert stopped.value.code == 2
    assert f"error: --topic {topic}: {said}" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("every", ["2", "10"])
def test_cli_every_without_save_is_refused(every: str, capsys: pytest.CaptureFixture) -> None:
    # accepted and without effect: a user thinned nothing and was not told
    with pytest.raises(SystemExit) as stopped:
        main(["tcp://127.0.0.1:1", "--every", every])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --every {every} needs --save DIR (it keeps one received frame in N)")


@pytest.mark.parametrize("topic", ["shm/fused/demo", "ring/shm/fused/demo"])
def test_cli_on_a_shared_memory_descriptor_topic_is_refused(topic: str, capsys: pytest.CaptureFixture) -> None:
    # the first descriptor mapped the pool and unsubscribed the topic: one frame, then silence
    with pytest.raises(SystemExit) as stopped:
        main(["tcp://127.0.0.1:1", "--topic", topic])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --topic {topic}: carries shared-memory descriptors, not frames: give the fused topic 'fused/demo' (a "
        f"same-host consumer reads the publisher's shared memory by itself)")


@pytest.mark.parametrize(("clock", "start_ns"), [("media", 0), ("recorded", time.time_ns() - 86_400 * 10**9)],
                         ids=["media", "recorded"])  # ids alike in every collection, as xdist's workers need
def test_frames_on_a_files_own_clock_get_no_age(clock: str, start_ns: int, rng: np.random.Generator) -> None:
    # a video file's or frame folder's capture times run from 0: "age" read 56 years; a recording's replayed read
    # the day since it was recorded
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with Publisher(PublishConfig(endpoint=ANY_PORT), capture_clock=clock) as pub:
        stop = threading.Event()

        def send() -> None:
            while not stop.wait(0.02):
                seq = pub.published
                t_ns = start_ns + seq * 40_000_000
                pair = FramePair(Frame("ir", seq, t_ns, image[..., 0]), Frame("vis", seq, t_ns, image))
                pub.send_fused(FusedFrame(pair, image, "max", "1", time.time_ns(), {}))

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        try:
            result = subprocess.run([sys.executable, "-m", "streamfuse", "subscribe", pub.endpoint, "--count", "2"],
                                    env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                                    timeout=60)
        finally:
            stop.set()
            thread.join(timeout=5)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert sum("age n/a (the source's own clock) net " in line for line in lines) == 2, lines
    assert lines[-1].startswith("received 2 frames") and "; age n/a; net median" in lines[-1]


def test_without_first_timeout_the_first_wait_is_the_longer_of_timeout_and_the_default(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # a consumer started beside a publisher that still loads its model would give up after --timeout alone (10 s),
    # before the 6-16 s that start takes; the default (60 s here 0.4 s) is the first wait unless --timeout is longer
    import streamfuse.subscribe

    monkeypatch.setattr(streamfuse.subscribe, "_FIRST_TIMEOUT_S", 0.4)
    assert main(["tcp://127.0.0.1:1", "--timeout", "0.2"]) == 1
    assert "for 0.4 s after 0 frames" in capsys.readouterr().err
    assert main(["tcp://127.0.0.1:1", "--timeout", "0.5"]) == 1
    assert "for 0.5 s after 0 frames" in capsys.readouterr().err


class ScriptedSubscriber:
    """What ``_loop`` reads of a Subscriber: it hands out ``frames`` (header, image) in order, then none; at the
    first empty wait ``malformed_then`` more messages have arrived malformed (a publisher that went wrong mid-run)."""

    def __init__(self, frames: list[tuple[dict, np.ndarray]], malformed: int = 0, malformed_then: int = 0) -> None:
        self.frames, self.malformed, self.malformed_then = list(frames), malformed, malformed_then
        self.received = self.missed = self.discarded = self.via_shm = self.handshake_failures = 0
        self.last_malformed = "header is not UTF-8 JSON"

    def recv(self, timeout_s: float) -> tuple[dict, np.ndarray] | None:
        if not self.frames:
            self.malformed, self.malformed_then = self.malformed + self.malformed_then, 0
            return None
        self.received += 1
        return self.frames.pop(0)


NOW_NS = 1_700_000_000 * 10**9  # the wall clock of the scripted runs (2023)


def _scripted_header(seq: int, clock: str = "epoch", vis_ns: int = NOW_NS - 40_000_000,
                     ir_ns: int = NOW_NS - 50_000_000) -> dict:
    return {"seq": seq, "width": 6, "height": 4, "encoding": "bgr8", "format": "raw", "t_capture_clock": clock,
            "t_capture_vis_ns": vis_ns, "t_capture_ir_ns": ir_ns, "t_publish_ns": NOW_NS - 2_500_000}


def _scripted_run(sub: ScriptedSubscriber, monkeypatch: pytest.MonkeyPatch, count: int = 0, timeout: float = 1.0,
                  first_timeout: float = 1.0) -> int:
    """``_loop`` over ``sub`` with the wall clock at NOW_NS and a monotonic clock that moves 0.1 s a reading."""
    import argparse
    import itertools
    from types import SimpleNamespace

    import streamfuse.subscribe
    from streamfuse.subscribe import _loop

    ticks = itertools.count()
    monkeypatch.setattr(streamfuse.subscribe, "time", SimpleNamespace(time_ns=lambda: NOW_NS,
                                                                      monotonic=lambda: next(ticks) / 10))
    args = argparse.Namespace(endpoint="tcp://127.0.0.1:1", topic="fused/", count=count, timeout=timeout,
                              first_timeout=first_timeout, server_key="", save=None, every=1, show=False)
    return _loop(sub, args)


def test_latencies_are_in_ms_from_the_visible_capture_and_the_publish_time(monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture) -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    assert _scripted_run(ScriptedSubscriber([(_scripted_header(0), image)]), monkeypatch, count=1) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "age    40.0 ms (ir 50.0) net   2.50 ms" in line, line


@pytest.mark.parametrize(("vis_ns", "age"), [(NOW_NS - 40_000_000, "age    40.0 ms"),
                                             (3 * 10**9, "age n/a (the source's own clock)"),
                                             (30 * 86_400 * 10**9, "age n/a (the source's own clock)")])  # since boot
def test_an_older_publisher_that_names_no_clock_gets_an_age_only_for_wall_clock_times(
        vis_ns: int, age: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # a publisher before t_capture_clock sends ""; a video file's times from 0 read as 53 years of age
    frame = (_scripted_header(0, clock="", vis_ns=vis_ns, ir_ns=vis_ns), np.zeros((4, 6, 3), np.uint8))
    assert _scripted_run(ScriptedSubscriber([frame]), monkeypatch, count=1) == 0
    assert age in capsys.readouterr().out.splitlines()[0]


def test_once_frames_came_a_silence_ends_the_run_after_timeout_not_first_timeout(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # --first-timeout covers a publisher still starting; a stream that stops later must end the run after --timeout
    waits = []

    class Waits(ScriptedSubscriber):
        def recv(self, timeout_s: float) -> tuple[dict, np.ndarray] | None:
            waits.append(timeout_s)
            return super().recv(timeout_s)

    frame = (_scripted_header(0), np.zeros((4, 6, 3), np.uint8))
    assert _scripted_run(Waits([frame]), monkeypatch, timeout=0.5, first_timeout=30.0) == 1
    assert waits == [30.0, 0.5]
    assert "for 0.5 s after 1 frames" in capsys.readouterr().err


def test_the_rate_is_frames_per_second_between_the_first_and_last_arrival(monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture) -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    frames = [(_scripted_header(seq), image) for seq in range(3)]
    assert _scripted_run(ScriptedSubscriber(frames), monkeypatch, count=3) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ["  0.0 fps" in lines[0], " 10.0 fps" in lines[2]] == [True, True], lines  # 2 intervals of 0.1 s


def test_each_line_and_the_summary_give_the_subscriber_s_own_counts(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    # each number where a reader looks for it: the publisher's seq (not a camera's), the gaps (missed) apart from
    # latest mode's replaced frames (discarded), and the frames read from shared memory (not only from its ring)
    frame = (_scripted_header(7) | {"seq_vis": 3, "seq_ir": 4}, np.zeros((4, 6, 3), np.uint8))
    sub = ScriptedSubscriber([frame], malformed=2)
    sub.missed, sub.discarded, sub.via_shm = 5, 11, 1
    assert _scripted_run(sub, monkeypatch, count=1) == 0
    line, summary = capsys.readouterr().out.splitlines()
    assert line.startswith("seq      7 6x4 bgr8 raw age ") and line.endswith(" missed 5 malformed 2"), line
    assert summary.endswith("; missed 5, malformed 2, discarded 11, from shared memory 1"), summary


def test_a_silence_after_frames_counts_only_the_malformed_messages_meanwhile(monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture) -> None:
    # five malformed before the first frame, one after it: "6 messages arrived, all malformed" was no longer true
    sub = ScriptedSubscriber([(_scripted_header(0), np.zeros((4, 6, 3), np.uint8))], malformed=5, malformed_then=1)
    assert _scripted_run(sub, monkeypatch) == 1
    err = capsys.readouterr().err
    assert "after 1 frames: 1 message arrived, malformed (the last: header is not UTF-8 JSON)" in err, err


@pytest.mark.parametrize(("received", "said"), [(10_000, False), (10_001, True)])
def test_the_summary_names_its_latency_window_only_once_frames_fell_out_of_it(received: int, said: bool,
                                                                              capsys: pytest.CaptureFixture) -> None:
    import collections
    from types import SimpleNamespace

    from streamfuse.subscribe import SUMMARY_WINDOW, _summary

    assert SUMMARY_WINDOW == 10_000
    sub = SimpleNamespace(received=received, missed=0, malformed=0, discarded=0, via_shm=0)
    _summary(sub, collections.deque([1.0]), collections.deque([1.0]), 1.0)
    assert ("(latencies of the last 10000)" in capsys.readouterr().out) == said


@pytest.mark.parametrize(("mb", "limit"), [("0.5", 500_000), ("1e-9", 1)])
def test_max_frame_mb_reaches_the_subscriber_in_bytes(mb: str, limit: int, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    seen = {}

    def subscriber(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise ValueError("not connecting here")

    monkeypatch.setattr("streamfuse.subscribe.Subscriber", subscriber)
    assert main(["tcp://127.0.0.1:1", "--max-frame-mb", mb]) == 2
    assert seen["max_frame_bytes"] == limit


def test_the_readme_synopsis_is_the_usage_line(capsys: pytest.CaptureFixture) -> None:
    # the README wrote [--count N] [--save DIR] [--max-frame-mb MB] where -h said --count COUNT, --save SAVE,
    # --max-frame-mb MAX_FRAME_MB
    text = (REPO / "README.md").read_text()
    synopsis = re.search(r"^python -m streamfuse subscribe tcp://\S+ (.*?)^```", text, re.M | re.S).group(1)
    with pytest.raises(SystemExit):
        main(["-h"])
    usage = " ".join(capsys.readouterr().out.partition("\n\n")[0].split())
    written = re.findall(r"\[(--[a-z-]+)(?: ([^\s\]\[]+))?", synopsis)
    shown = dict(re.findall(r"\[(--[a-z-]+)(?: ([^\s\]]+))?\]", usage))
    assert sorted(option for option, _ in written) == sorted(option for option in shown if option != "-h")
    assert [(option, word) for option, word in written if word != shown[option] and option != "--topic"] == []
    assert "[--topic fused/]" in synopsis  # the README shows the default there
