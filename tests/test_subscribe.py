"""The subscribe CLI against a Publisher running in a thread."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from helpers_zmq import publishing, with_header

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
    assert all(" 64x48 bgr8 age " in line and " ms " in line and " fps " in line for line in frames)
    assert lines[-1].startswith("received 3 frames") and "malformed 0" in lines[-1]


def test_cli_save_latest(rng: np.random.Generator, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with publishing(image, rate_hz=50) as pub:
        assert main([pub.endpoint, "--count", "2", "--latest", "--save", str(tmp_path / "out")]) == 0
    saved = sorted((tmp_path / "out").glob("fused_*.png"))
    assert len(saved) == 2
    np.testing.assert_array_equal(cv2.imread(str(saved[0])), image)
    assert "received 2 frames" in capsys.readouterr().out


def test_cli_reports_malformed_messages(capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    stop = threading.Event()

    def send() -> None:  # garbage and good frames alternately until the CLI has taken two good ones
        seq = 0
        while not stop.wait(0.02):
            sock.send_multipart([b"fused/x", b"not json", b""])
            sock.send_multipart(with_header(seq=seq))
            seq += 1

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        assert main([sock.getsockopt_string(zmq.LAST_ENDPOINT), "--count", "2"]) == 0
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close(linger=0)
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.startswith("received 2 frames") and re.search(r"malformed [1-9]", summary)
    assert any("skipped malformed message" in r.getMessage() and "not UTF-8 JSON" in r.getMessage()
               for r in caplog.records)


def test_cli_timeout_exits_1_with_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["tcp://127.0.0.1:1", "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    assert "no frame from tcp://127.0.0.1:1" in err and "after 0 frames" in err


@pytest.mark.skipif(not re.search(r"GUI:\s+NONE", cv2.getBuildInformation()),
                    reason="OpenCV has a GUI here: --show would open a window")
def test_cli_show_on_headless_opencv_says_so(capsys: pytest.CaptureFixture) -> None:
    assert main(["tcp://127.0.0.1:1", "--show"]) == 2
    assert "--show needs an OpenCV build with GUI support" in capsys.readouterr().err
