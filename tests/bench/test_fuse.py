"""Smoke test of ``python -m streamfuse bench fuse``: tiny sizes, few frames, CPU; checks the printed figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FUSE_ERROR = "streamfuse bench fuse: error: "  # how the command's error lines start

FIGURES = re.compile(r"latency median (\d+\.\d+) ms p99 (\d+\.\d+) ms.*\| (\d+\.\d+) frames/s")


def bench(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "streamfuse", "bench", "fuse", "--device", "cpu", "--tiny",
                           "--threads", "1", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# run by Python's start-up (site): a SIGTERM as the post stage's numba kernels begin to load, held until the import
# ends; the thread that sends it again then gets no turn before the command ends, as on a loaded machine
_STOP_AS_THE_KERNELS_LOAD = """
import os, signal, sys


class Stop:
    def find_spec(self, name, path=None, target=None):
        if name == "streamfuse.post_kernels":
            sys.meta_path.remove(self)
            sys.modules["streamfuse.signals"]._runs = lambda frame: True
            os.kill(os.getpid(), signal.SIGTERM)
        return None


sys.meta_path.insert(0, Stop())
"""


def test_a_sigterm_as_the_numba_kernels_load_ends_the_bench_with_its_stop_line(tmp_path):
    # seen: 2 of 30 SIGTERMs at random moments of its start ended it with 0 and every figure, no stop line
    (tmp_path / "sitecustomize.py").write_text(_STOP_AS_THE_KERNELS_LOAD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "streamfuse", "bench", "fuse", "--device", "cpu", "--tiny",
                           "--threads", "1", "--fuser", "max"], capture_output=True, text=True, timeout=120, env=env)
    assert (proc.returncode, proc.stderr.splitlines()[-1:]) == (130, ["streamfuse bench: interrupted (SIGTERM)"]), \
        proc.stderr


def test_hclfuse_prints_latency_fps_gflops_threads():
    # untrained weights of the default architecture: the figures do not depend on weight values
    lines = [ln for ln in bench("--batch", "1,2", "--weights", "random").splitlines() if " hclfuse " in ln]
    assert [re.search(r"batch=(\d)", ln).group(1) for ln in lines] == ["1", "2"]
    for line in lines:
        assert line.startswith("[") and "64x48" in line and "threads 1" in line
        median, p99, fps = (float(v) for v in FIGURES.search(line).groups())
        assert 0 < median <= p99 and fps > 0
        assert float(re.search(r"([0-9.e+-]+) GFLOPs/frame", line).group(1)) > 0


@pytest.fixture(scope="module")
def max_out() -> str:
    """The max fuser's run, read by the tests of its figures and of its header (one start of the package)."""
    return bench("--fuser", "max")


def test_baseline_fuser(max_out):
    # the README's figures name the load they were measured under
    assert re.search(r"^bench fuse: .*, load average [0-9.]+, OMP_WAIT_POLICY=", max_out, re.M), max_out
    line = next(ln for ln in max_out.splitlines() if " max 64x48 " in ln)
    median, p99, fps = (float(v) for v in FIGURES.search(line).groups())
    assert 0 < median <= p99 and fps > 0


def test_the_header_says_when_the_wait_policy_came_too_late(max_out):
    # torch imported before streamfuse: the header showed OMP_WAIT_POLICY=PASSIVE beside the warning that it was not
    code = ("import os, sys, torch; os.environ.pop('OMP_WAIT_POLICY', None); from streamfuse.bench.fuse import main; "
            "main(['--device', 'cpu', '--tiny', '--threads', '1', '--fuser', 'max'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    assert proc.returncode == 0, proc.stderr
    assert "OMP_WAIT_POLICY=PASSIVE (not in effect: torch came first)" in proc.stdout.splitlines()[0]
    assert max_out.splitlines()[0].endswith("OMP_WAIT_POLICY=PASSIVE")  # streamfuse first: in effect


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "streamfuse", "bench", "fuse", "--device", "cuda"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        next(ln for ln in proc.stderr.splitlines() if ln.startswith(f"{FUSE_ERROR}device 'cuda' requested"))]


@pytest.mark.parametrize("args, message", [
    (["--sizes", "0x0", "--frames", "1"], "argument --sizes: size '0x0': width and height must be in 1..8192"),
    (["--sizes", "640x480,-2x4"], "argument --sizes: size '-2x4': width and height must be in 1..8192"),
    (["--sizes", "640"], "argument --sizes: size '640' is not WIDTHxHEIGHT"),
    (["--frames", "0"], "argument --frames: must be >= 1, got 0"),
    (["--batch", "0"], "argument --batch: must be >= 1, got 0"),
    (["--batch", "1,x"], "argument --batch: 'x' is not an integer"),
    (["--graphs", "maybe"], "argument --graphs: 'maybe': give on, off or on,off"),
    (["--sampler", "bogus"], "argument --sampler: invalid choice: 'bogus' (choose from 'student', 'teacher')"),
    (["--steps", "100"], "argument --steps: steps=100 is out of range; allowed: 1..20"),
    (["--image-guidance", "-1"], "argument --image-guidance: image_guidance=-1 is out of range; allowed: 0 .. 20"),
    (["--threads", "5000"], "argument --threads: threads=5000 is out of range; allowed: 0 (all cores) .. 1024"),
    (["--precision", "fp32,fp64"], "argument --precision: 'fp64' is not one of fp32, fp16, bf16"),
    (["--fuser", "bogus"], "argument --fuser: invalid choice: 'bogus' (choose from 'hclfuse', 'average', "
                           "'laplacian', 'max', 'rule')"),
    (["--steps", "4"], "--steps are the teacher's DDIM steps: add --sampler teacher (the student takes one)"),
    (["--fuser", "max", "--batch", "2"], "--batch is an option of --fuser hclfuse; --fuser max runs on the CPU, one "
                                         "frame at a time"),
    (["--fuser", "rule", "--weights=w.pt"], "--weights is an option of --fuser hclfuse; --fuser rule runs on the CPU, "
                                            "one frame at a time"),
    (["--tiny", "--sizes", "320x240"], "--tiny runs 64x48 frames: give --tiny or --sizes"),
    # abbreviated, they were let through and passed over: batch 1 ran, at 64x48
    (["--fuser", "max", "--bat", "8"], "--batch is an option of --fuser hclfuse; --fuser max runs on the CPU, one "
                                       "frame at a time"),
    (["--fuser", "rule", "--image-g=2"], "--image-guidance is an option of --fuser hclfuse; --fuser rule runs on the "
                                         "CPU, one frame at a time"),
    (["--tiny", "--size", "1280x1024"], "--tiny runs 64x48 frames: give --tiny or --sizes"),
])
def test_bad_sizes_and_frames_are_refused_when_parsing(args, message, capsys):
    from streamfuse.bench.fuse import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().splitlines()[-1].endswith(message) and "Traceback" not in err


@pytest.mark.parametrize("given, graphs", [("on", [True]), ("off", [False]), ("on,off", [True, False])])
def test_graphs_on_and_off_are_read_as_said(given, graphs):
    from streamfuse.bench.fuse import parse_args

    assert parse_args(["--graphs", given]).graphs == graphs


@pytest.mark.parametrize("device", ["nope", "mps", ""])
def test_an_unknown_device_is_refused_when_parsing(device, capsys):
    # "nope" was one line with exit status 1, after torch's import, as for a machine without the GPU asked for
    from streamfuse.bench.fuse import main

    with pytest.raises(SystemExit) as exc:
        main(["--device", device, "--tiny"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and err == (f"{FUSE_ERROR}argument --device: device={device!r} is out of range; "
                                           f"allowed: auto | cpu | cuda | cuda:N")


def test_missing_weights_are_one_line():
    from streamfuse.bench.fuse import main

    with pytest.raises(SystemExit) as exc:
        main(["--device", "cpu", "--tiny", "--threads", "1", "--weights", "nowhere.pt"])
    assert str(exc.value.code) == "streamfuse bench fuse: error: HCLFuse weights not found: nowhere.pt"


def test_a_size_that_cannot_fit_in_memory_is_one_line_before_anything_is_allocated(monkeypatch, capsys):
    # 8192x8192 made its synthetic frames for minutes, without a word, before the machine could run out of memory
    import streamfuse.bench
    from streamfuse.bench import fuse as bench_fuse

    monkeypatch.setattr(streamfuse.bench, "memory_available", lambda: 2 * 10**9)
    monkeypatch.setattr(bench_fuse, "synthetic_pairs", lambda *a: pytest.fail("allocated a size that cannot fit"))
    with pytest.raises(SystemExit) as exc:
        bench_fuse.main(["--device", "cpu", "--sizes", "64x48,8192x8192", "--fuser", "max", "--frames", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err == (f"{FUSE_ERROR}--sizes 8192x8192 would hold about 9.4 GB of memory, and "
                                           "2.0 GB is available\n")


@pytest.mark.parametrize("fuser", ["max", "hclfuse"])
def test_each_long_step_is_said_before_it_starts(fuser, monkeypatch, capsys):
    # a large size ran for minutes with nothing printed after the header
    from streamfuse.bench import fuse as bench_fuse

    said = []
    making = bench_fuse.synthetic_pairs

    def spy(h, w, n, seed=0):
        said.append(capsys.readouterr().out.splitlines()[-1])
        return making(h, w, n, seed)

    monkeypatch.setattr(bench_fuse, "synthetic_pairs", spy)
    bench_fuse.main(["--device", "cpu", "--tiny", "--threads", "1", "--fuser", fuser,
                     *(["--weights", "random"] if fuser == "hclfuse" else [])])
    timed = "1 case(s) of 1 warm-up and 3 timed frames" if fuser == "hclfuse" else "1 warm-up and 3 timed frames of max"
    assert said == [f"64x48: making 8 synthetic pairs, then {timed}",
                    "64x48: making 8 synthetic pairs, then the stages around the fuser"]


@pytest.mark.parametrize("args, gpu, need", [
    (["--fuser", "max"], False, 140), (["--weights", "random"], False, 150), (["--batch", "1,4"], False, 600),
    (["--batch", "1,8"], True, 150)])  # a GPU's batches are in its own memory: the host runs the reference alone
def test_the_memory_a_pixel_takes_follows_the_fuser_and_the_hosts_batches(args, gpu, need):
    from streamfuse.bench.fuse import bytes_per_pixel, parse_args

    assert bytes_per_pixel(parse_args(args), gpu) == need
