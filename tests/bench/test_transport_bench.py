"""``python -m streamfuse bench transport``: its shared-memory rows really go through shared memory (and the pool's
ring, or ZeroMQ descriptors for the ``zmq headers`` row), its codec figures are sane."""

from __future__ import annotations

import pytest

from streamfuse.bench import transport as bench_transport
from streamfuse.shm_pool import shm_supported


@pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
@pytest.mark.parametrize("rate", [0.0, 100.0], ids=["capacity", "paced"])
def test_shared_memory_row_reads_the_pool(rate: float) -> None:
    frames = bench_transport._demo_frames(64, 48, 3)
    result = bench_transport._ours(frames, 0.2, rate, "shm")
    assert result["frames"] > 0 and result["via_shm"] >= result["frames"] and result["cpu_ms"] > 0
    assert result["via_ring"] >= result["frames"]  # descriptors from the pool's ring, not ZeroMQ


@pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
def test_zmq_headers_row_takes_no_ring() -> None:
    result = bench_transport._ours(bench_transport._demo_frames(64, 48, 3), 0.2, 0.0, "loan-zmq")
    assert result["frames"] > 0 and result["via_shm"] >= result["frames"] and result["via_ring"] == 0


@pytest.mark.parametrize("mode", ["jpeg", "h264"])
def test_codec_figures(mode: str) -> None:
    figures = bench_transport._codec(bench_transport._demo_frames(64, 48, 3), mode, 90)
    assert 0 < figures["bytes"] < 64 * 48 * 3 and figures["enc_ms"] > 0 and figures["dec_ms"] > 0
    assert figures["psnr"] >= 30.0


@pytest.mark.parametrize("args, message", [
    (["--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    (["--seconds", "nan"], "argument --seconds: must be a finite number > 0, got nan"),
    (["--latency-seconds", "-1"], "argument --latency-seconds: must be a finite number > 0, got -1"),
    (["--rate", "0"], "argument --rate: must be a finite number > 0, got 0"),
    (["--quality", "200"], "argument --quality: must be <= 100, got 200"),
    (["--sizes", "0x0"], "argument --sizes: size '0x0': width and height must be in 1..8192"),
])
def test_bad_numbers_are_refused_when_parsing(args, message, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench_transport, "_size_report", lambda *a: pytest.fail("started with a bad number"))
    with pytest.raises(SystemExit) as exc:
        bench_transport.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().splitlines()[-1].endswith(message)
