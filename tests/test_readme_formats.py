"""The README's example consumer of compressed frames, run against a publisher: what a consumer written from the
README alone, in plain OpenCV and PyAV, gets from ``jpeg`` and ``h264`` frames."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_zmq import ANY_PORT, good_parts, publishing

REPO = Path(__file__).resolve().parents[1]
MARKER = "### Reading frames without streamfuse"
ODD = (61, 97)  # odd sides: 4:2:0 H.264 codes them one pixel longer


def _blocks() -> list[str]:
    """The python blocks of the README's section on reading frames without streamfuse."""
    text = (REPO / "README.md").read_text()
    section = text.split(MARKER, 1)[1].split("\n### ", 1)[0] if MARKER in text else ""
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _readme_snippet() -> str | None:
    """The section's first block: raw frames."""
    return next(iter(_blocks()), None)


def _compressed_snippet() -> str | None:
    """The section's block for jpeg and h264 frames, or None when it has none."""
    return next((b for b in _blocks() if '"h264"' in b), None)


def _smooth(channels: int) -> np.ndarray:
    """A smooth image from black to white, so a lossy codec keeps it within a few levels."""
    h, w = ODD
    ramp = (np.add.outer(np.arange(h) * 255 / (h - 1), np.arange(w) * 255 / (w - 1)) / 2).astype(np.uint8)
    if channels == 1:
        return ramp
    return np.stack([ramp, ramp[::-1], 255 - ramp], axis=2)


@pytest.mark.parametrize("encoding", ["jpeg", "h264"])
@pytest.mark.parametrize("channels", [1, 3], ids=["mono8", "bgr8"])
def test_readme_compressed_consumer_gets_the_published_picture(encoding: str, channels: int,
                                                                 tmp_path: Path) -> None:
    # the README said nothing of H.264's odd sides (coded one pixel longer) nor of its limited range: a consumer
    # written from it could not reshape a 97 x 61 frame, and a mono8 one read from the Y plane was 16 levels off
    snippet = _compressed_snippet()
    assert snippet is not None, f"README.md's '{MARKER}' section has no python block for jpeg and h264 frames"
    assert "streamfuse" not in snippet  # plain pyzmq, OpenCV and PyAV
    image = _smooth(channels)
    saved = tmp_path / "last.npy"
    script = snippet + f"\nnp.save({str(saved)!r}, image)\n"
    with publishing(image, encoding=encoding, jpeg_quality=98, h264_crf=5) as pub:
        result = subprocess.run([sys.executable, "-c", script, pub.endpoint], capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    shape = ODD + ((3,) if channels == 3 else ())
    lines = result.stdout.splitlines()
    assert len(lines) == 20 and all(line.startswith("fused/rig0 ") and line.endswith(str(shape)) for line in lines)
    got = np.load(saved)
    assert got.shape == shape
    assert np.abs(got.astype(int) - image).mean() < 3


def test_readme_raw_consumer_counts_the_frames_it_missed() -> None:
    # the README's consumer printed frames but no count of those missed, nor said that a lower seq is a restart
    snippet = _readme_snippet()
    assert snippet is not None, f"README.md's '{MARKER}' section has no python block"
    image = np.zeros((4, 6, 3), np.uint8)
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as sock:
        sock.bind(ANY_PORT)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        proc = subprocess.Popen([sys.executable, "-c", snippet, endpoint], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        sent, deadline = 0, time.monotonic() + 120  # generous: a consumer that never ends fails, not hangs the suite
        while proc.poll() is None and time.monotonic() < deadline:  # every other frame left out, a restart every 10
            topic, header, payload = good_parts(image)
            fields = {**json.loads(header), "seq": 2 * (sent % 10)}
            sock.send_multipart([b"fused/rig0", json.dumps(fields).encode(), payload])
            sent += 1
            time.sleep(0.005)  # paces a publisher, no wait for an event
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    seqs = [int(line.split()[1]) for line in out.splitlines()]
    expected = sum(b - a - 1 for a, b in zip(seqs, seqs[1:]) if b > a)
    assert len(seqs) == 20 and any(b < a for a, b in zip(seqs, seqs[1:]))  # a restart came among them
    assert out.splitlines()[-1].endswith(f", {expected} missed")
