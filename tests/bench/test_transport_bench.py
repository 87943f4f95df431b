"""``python -m streamfuse bench transport``: its shared-memory rows really go through shared memory (and the pool's
ring, or ZeroMQ descriptors for the ``zmq headers`` row), its codec figures are sane, a SIGTERM ends it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq
from helpers_zmq import wait_until

import streamfuse.bench
from streamfuse.bench import memory_available, receiver_process
from streamfuse.bench import transport as bench_transport
from streamfuse.shm_pool import shm_supported
from streamfuse.signals import handled, raise_interrupt


def _rounds_that_send(monkeypatch, frames: int) -> None:
    """Each timed round of ``_ours`` from now on lasts until ``frames`` frames went out, in rounds of its seconds
    (the benchmark's clock), at most 120 s: a sender that a busy machine held back for its 0.2 s sent none, and its
    receiver, given nothing after its first frame, counted none."""
    paced = bench_transport._paced

    def until_sent(send, seconds: float, rate: float) -> int:
        sent, deadline = 0, time.monotonic() + 120
        while sent < frames:
            assert time.monotonic() < deadline, f"{sent} frames went out in 120 s of {seconds:g} s rounds"
            sent += paced(lambda seq, before=sent: send(before + seq), seconds, rate)
        return sent

    monkeypatch.setattr(bench_transport, "_paced", until_sent)


@pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
@pytest.mark.parametrize("rate", [0.0, 100.0], ids=["capacity", "paced"])
def test_shared_memory_row_reads_the_pool(rate: float, monkeypatch) -> None:
    _rounds_that_send(monkeypatch, 20)  # what 0.2 s at 100 frames/s sends
    frames = bench_transport._demo_frames(64, 48, 3)
    result = bench_transport._ours(frames, 0.2, rate, "shm")
    assert result["frames"] > 0 and result["via_shm"] >= result["frames"] and result["cpu_ms"] > 0
    assert result["via_ring"] >= result["frames"]  # descriptors from the pool's ring, not ZeroMQ
    assert result["frames"] < 2 or result["reader_us"] > 0  # the reader's CPU a frame, from two frames on


@pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm")
def test_zmq_headers_row_takes_no_ring(monkeypatch) -> None:
    _rounds_that_send(monkeypatch, 20)
    result = bench_transport._ours(bench_transport._demo_frames(64, 48, 3), 0.2, 0.0, "loan-zmq")
    assert result["frames"] > 0 and result["via_shm"] >= result["frames"] and result["via_ring"] == 0


@pytest.mark.timeout(120)
def test_a_port_another_program_takes_is_never_the_benchmarks(monkeypatch) -> None:
    # each port was picked (bound and closed) first and bound later, by the receiver's process seconds on: another
    # program, or another benchmark's pick, could take it meanwhile: the publisher's bind failed, and imagezmq's
    # sender waited for ever on a hub that never bound
    with socket.create_server(("127.0.0.1", 0)) as other:
        class Picked:  # what the OS picked for the benchmark, which that program now listens on
            def __init__(self, *args):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def bind(self, address):
                pass

            def getsockname(self):
                return other.getsockname()

        monkeypatch.setattr(bench_transport, "socket", SimpleNamespace(socket=Picked), raising=False)
        frames = [np.zeros((48, 64, 3), np.uint8)]
        assert bench_transport._stall(frames[0], 0.05, 100.0, "none", False, False)["calls"] > 0
        assert bench_transport._imagezmq(frames, 0.05, 100.0)["sent"] > 0


@pytest.mark.timeout(120)
def test_a_receiver_that_ends_before_it_is_ready_is_one_line(monkeypatch) -> None:
    # the sender went on offering its first frame to a receiver that was gone, for ever
    monkeypatch.setattr(bench_transport, "_sub_receiver", print)  # ends at once, never ready
    with pytest.raises(SystemExit) as exc:
        bench_transport._ours(bench_transport._demo_frames(64, 48, 1), 0.1, 0.0, "raw")
    assert exc.value.code == "streamfuse bench transport: error: its receiver ended before it was ready (exit status 0)"


def _never_ready(endpoint, ready, done, results, *args) -> None:
    """A receiver that starts but never reads (a lost subscription): ends once told to, or after a minute."""
    done.wait(60)


@pytest.mark.timeout(120)
def test_a_receiver_never_ready_is_one_line_and_is_not_left_running(monkeypatch) -> None:
    # the sender offered its first frame for ever to a receiver that never said it was ready, and the suite hung
    monkeypatch.setattr(receiver_process, "PATIENCE_S", 2.0)
    monkeypatch.setattr(bench_transport, "_sub_receiver", _never_ready)
    started = []
    monkeypatch.setattr(receiver_process.Receiver, "started",
                        lambda self, real=receiver_process.Receiver.started: started.append(self) or real(self))
    with pytest.raises(SystemExit) as exc:
        bench_transport._ours(bench_transport._demo_frames(64, 48, 1), 0.1, 0.0, "raw")
    assert exc.value.code == "streamfuse bench transport: error: its receiver was not ready 2 s after its start"
    assert not started[-1].proc.is_alive()


_KILLED_BENCHMARK = """
import sys, time
from streamfuse.bench import peers
from streamfuse.bench.receiver_process import Receiver
if __name__ == "__main__":
    rx = Receiver(peers._stalled, "tcp://127.0.0.1:1", 1)
    while not rx.started():
        pass
    print(rx.proc.pid, flush=True)
    time.sleep(120)
"""


@pytest.mark.timeout(180)
def test_a_receiver_whose_benchmark_was_killed_ends_with_one_line(tmp_path: Path) -> None:
    # a benchmark killed (SIGKILL, the OOM killer) left its receiver waiting for its word for good
    script = tmp_path / "bench.py"
    script.write_text(_KILLED_BENCHMARK)
    bench = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    receiver = 0

    def gone() -> bool:  # ended: no process, or one that only waits to be reaped
        try:
            return Path(f"/proc/{receiver}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
        except OSError:
            return True

    try:
        receiver = int(bench.stdout.readline())
        bench.kill()
        _, err = bench.communicate(timeout=60)  # its stderr ends once the receiver, which holds it too, has ended
        wait_until(gone, "the receiver of the killed benchmark gone", timeout_s=60)
    finally:
        bench.kill()
        if receiver and not gone():
            os.kill(receiver, signal.SIGKILL)
    # (then multiprocessing's resource tracker, the benchmark's too, frees the semaphores it left)
    assert err.splitlines()[0] == f"streamfuse bench: error: receiver {receiver}: the benchmark that started it is gone"


def test_a_ctrl_c_while_a_receiver_starts_stops_the_benchmark(monkeypatch) -> None:
    # Ctrl-C was ignored while the receiver's process started (so that it would inherit that): one then, for as long
    # as a loaded machine took to start it, was lost, and the benchmark ran on to its end
    from multiprocessing.context import SpawnProcess

    start, started = SpawnProcess.start, []

    def interrupted_start(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        start(self)
        started.append(self)

    monkeypatch.setattr(SpawnProcess, "start", interrupted_start)
    try:  # the command's Ctrl-C handler (one landing in a finalizer, a semaphore's as it is freed, is not lost)
        with handled(raise_interrupt, (signal.SIGINT,)), pytest.raises(KeyboardInterrupt):
            bench_transport._Receiver(print, "tcp://127.0.0.1:1")
            threading.Event().wait(30)  # the stop ends this wait (raised once out of a finalizer it landed in)
    finally:
        for proc in started:
            proc.kill()
            proc.join()


@pytest.mark.parametrize("mode", ["jpeg", "h264"])
def test_codec_figures(mode: str) -> None:
    figures = bench_transport._codec(bench_transport._demo_frames(64, 48, 3), mode, 90)
    assert 0 < figures["bytes"] < 64 * 48 * 3 and figures["enc_ms"] > 0 and figures["dec_ms"] > 0
    assert figures["psnr"] >= 30.0


def test_the_codecs_psnr_is_of_the_mean_squared_error_in_db(monkeypatch) -> None:
    class OffByOne:  # a decoder whose every pixel is one grey level off: MSE 1, PSNR 10 log10(255^2) = 48.13 dB
        def decode(self, packet, height, width, channels):
            return frame.astype(np.float64) + 1

    frame = bench_transport._demo_frames(64, 48, 1)[0]
    monkeypatch.setattr(bench_transport, "JpegDecoder", OffByOne)
    assert bench_transport._codec([frame], "jpeg", 90)["psnr"] == pytest.approx(10 * np.log10(255.0**2))


@pytest.mark.filterwarnings("error")
def test_frames_that_come_back_exact_are_lossless_without_a_warning_and_one_lossy_frame_is_finite() -> None:
    flat = np.full((16, 16, 3), 128, np.uint8)  # a flat grey block survives JPEG at quality 100 exactly
    assert bench_transport._codec([flat, flat], "jpeg", 100)["psnr"] == np.inf
    noisy = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.isfinite(bench_transport._codec([flat, noisy], "jpeg", 100)["psnr"])


@pytest.mark.parametrize("args, message", [
    (["--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    (["--seconds", "nan"], "argument --seconds: must be a finite number > 0, got nan"),
    (["--latency-seconds", "-1"], "argument --latency-seconds: must be a finite number > 0, got -1"),
    (["--rate", "0"], "argument --rate: must be a finite number > 0, got 0"),
    (["--quality", "200"], "argument --quality: must be in 1..100, got 200"),
    (["--quality", "101"], "argument --quality: must be in 1..100, got 101"),  # the edge: JPEG's scale ends at 100
    (["--sizes", "0x0"], "argument --sizes: size '0x0': width and height must be in 1..8192"),
])
def test_bad_numbers_are_refused_when_parsing(args, message, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench_transport, "_size_report", lambda *a: pytest.fail("started with a bad number"))
    with pytest.raises(SystemExit) as exc:
        bench_transport.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().splitlines()[-1].endswith(message)


def test_each_size_is_benchmarked_as_width_by_height(monkeypatch) -> None:
    reports = []
    monkeypatch.setattr(bench_transport, "_size_report", lambda width, height, args: reports.append((width, height)))
    bench_transport.main(["--sizes", "640x480,64x48"])
    assert reports == [(640, 480), (64, 48)]


def test_a_size_that_cannot_fit_in_memory_is_one_line_before_anything_is_allocated(monkeypatch, capsys) -> None:
    # 8192x8192 took its 30 frames (6 GB) and more before anything said the machine had not that much
    monkeypatch.setattr(streamfuse.bench, "memory_available", lambda: 2 * 10**9)
    monkeypatch.setattr(bench_transport, "_demo_frames", lambda *a: pytest.fail("allocated a size that cannot fit"))
    with pytest.raises(SystemExit) as exc:
        bench_transport.main(["--sizes", "640x480,8192x8192"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err == ("streamfuse bench transport: error: --sizes 8192x8192 would hold about "
                                           "15.0 GB of memory, and 2.0 GB is available\n")


def test_memory_available_is_what_the_kernel_reckons_where_it_says() -> None:
    free = memory_available()
    assert free is None if not Path("/proc/meminfo").exists() else 0 < free <= os.sysconf("SC_PHYS_PAGES") * \
        os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        if ppid == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.timeout(180)
@pytest.mark.skipif(not shm_supported(), reason="shared-memory pools need Linux with /dev/shm and /proc")
@pytest.mark.parametrize("stop, line", [("sigterm", "interrupted (SIGTERM)"), ("ctrl_c", "interrupted (Ctrl-C)")])
def test_a_stop_mid_run_is_one_line_and_leaves_no_receiver_and_no_shared_memory(stop: str, line: str) -> None:
    # killed by SIGTERM (143), its spawned receiver ran on for good, holding the pool's segment and multiprocessing's
    # semaphores; a terminal's Ctrl-C, which reaches the receiver too, printed a line of the receiver's
    proc = subprocess.Popen([sys.executable, "-m", "streamfuse", "bench", "transport", "--sizes", "64x48",
                             "--seconds", "3", "--rounds", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    receivers: set[int] = set()
    try:
        def pool() -> list[Path]:
            return list(Path("/dev/shm").glob(f"streamfuse_pub_{proc.pid}_*"))

        wait_until(lambda: proc.poll() is not None or (pool() and _children(proc.pid)), "a receiver reading the pool",
                   timeout_s=150)
        assert proc.poll() is None, "the benchmark ended before its shared-memory rows"
        receivers = _children(proc.pid)
        if stop == "sigterm":
            proc.terminate()
        else:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        for pid in receivers & _children(1):  # left running (reparented to init) by a benchmark that died
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130 and err == f"streamfuse bench: {line}\n", err
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in receivers), "the receivers gone")
    assert not pool()


def _hub_that_dies_mid_round(endpoint, ready, done, results) -> None:
    """imagezmq's hub that replies to the warm-up frame, then dies with the next one taken (killed, out of memory)."""
    hub = bench_transport.imagezmq.ImageHub(open_port=endpoint)
    results.put(hub.zmq_socket.getsockopt_string(zmq.LAST_ENDPOINT))
    ready.set()
    hub.recv_image()
    hub.send_reply(b"OK")
    hub.recv_image()
    os._exit(3)


@pytest.mark.skipif(bench_transport.imagezmq is None, reason="needs imagezmq")
@pytest.mark.timeout(180, method="thread")  # a wait in libzmq takes no signal: the old code's hang must still end
def test_an_imagezmq_hub_that_dies_mid_round_is_one_line_not_a_wait_for_ever(monkeypatch) -> None:
    # imagezmq's REQ sender has no timeout: the benchmark waited for the dead hub's reply for ever
    monkeypatch.setattr(bench_transport, "_hub_receiver", _hub_that_dies_mid_round)
    with pytest.raises(SystemExit) as exc:
        bench_transport._imagezmq(bench_transport._demo_frames(64, 48, 1), 5.0, 0.0)
    assert exc.value.code == ("streamfuse bench transport: error: its imagezmq hub ended before it replied (exit "
                              "status 3)")
