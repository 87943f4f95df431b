"""Benchmark the fusion stage from input uint8 arrays to output Y: latency (median, p99), frames/s, GFLOPs per frame.

For ``hclfuse`` each frame goes through the OT cache lookup (per stream), the engine's upload, LUT, net and
download, through the calls the pipeline makes (batch 1; a batch of B feeds B rigs' pairs to one engine call). On the
CPU frames/s is the inverse of the median latency; on the GPU throughput keeps two batches in flight with the engine's
submit/result API (overlapping upload, compute and download). On the GPU every figure is printed with the GPU's name,
the share of time in copies vs compute comes from CUDA events, and the output at each size is compared with the CPU
path's. Baseline fusers (max, average, laplacian, rule) run on the CPU, one frame at a time.

Example: ``python -m streamfuse bench fuse --device cpu --sizes 640x480 --frames 50``
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import time
from collections import deque
from pathlib import Path

import cv2
import numba
import numpy as np
import torch  # after the package's import, which sets the OpenMP wait policy torch reads once when it loads

from streamfuse.bench import parse_sizes, refuse_beyond_memory
from streamfuse.cli.args import DefaultsFormatter, Parser, config_value, given, int_at_least
from streamfuse.device import resolve_device
from streamfuse.engine import Engine, Handle
from streamfuse.errors import printable
from streamfuse.fusers import FuseConfig
from streamfuse.openmp import LATE_WAIT_POLICY
from streamfuse.registry import available
from streamfuse.inference import PRECISIONS, EngineConfig, HCLFuseConfig
from streamfuse.model.fuser import HCLFuser, build_hclfuse
from streamfuse.postprocess import PostConfig
from streamfuse.processor import FrameProcessor, build_fuser, still_pair
from streamfuse.stabilize import StabilizeConfig

_PROG = "streamfuse bench fuse"  # as its usage errors and every command's own lines start
__all__ = ["main"]

POOL = 8  # distinct synthetic frames per size, cycled (a moving scene, so the OT cache sees real lookups)
# peak bytes a pixel of a size, measured at 1024x1024 and 2048x2048: the pool's making (float64 scenes) and the post
# stage; the net's activations for each frame of a batch
BASELINE_BYTES_PER_PIXEL, HCLFUSE_BYTES_PER_PIXEL = 140, 150


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(prog="python -m streamfuse bench fuse", description=__doc__,
               formatter_class=DefaultsFormatter)
    p.add_argument("--device", type=config_value(EngineConfig, "device", str, zero_is_off=False), default="auto",
                   help="cpu | cuda | cuda:N | auto")
    p.add_argument("--sizes", type=parse_sizes, default="640x480,1280x1024", help="comma-separated WIDTHxHEIGHT")
    p.add_argument("--frames", type=int_at_least(1), default=None,
                   help="timed frames per case; default 1000 on a GPU, 50 on CPU")
    p.add_argument("--sampler", default="student", choices=("student", "teacher"),
                   help="student (the distilled live default) | teacher")
    p.add_argument("--steps", type=config_value(HCLFuseConfig, "steps"), default=0,
                   help="teacher's DDIM steps K; 0 = the hclfuse section's default")
    p.add_argument("--image-guidance", type=config_value(HCLFuseConfig, "image_guidance"), default=None,
                   help="steps of the structure guide on the decoded image (hclfuse.image_guidance; 0 = off); default: "
                        "the hclfuse section's default")
    p.add_argument("--batch", type=batch_sizes, default=None,
                   help="comma-separated batch sizes; default 1,8 on a GPU, 1 on CPU")
    p.add_argument("--graphs", type=on_off, default=None, help="CUDA graphs on,off (GPU only); default on,off on a GPU")
    p.add_argument("--precision", type=precision_list, default=None,
                   help="fp32,fp16,bf16; default fp32,fp16 on a GPU, fp32 on CPU")
    p.add_argument("--fuser", default="hclfuse", choices=("hclfuse", *available("fuser")),
                   help="the fuser to time: hclfuse or a baseline (on the CPU)")
    p.add_argument("--threads", type=config_value(EngineConfig, "threads"), default=0,
                   help="torch CPU threads; 0 = all cores")
    p.add_argument("--weights", default="", help="HCLFuse weights file; '' = shipped; 'random' = untrained")
    p.add_argument("--tiny", action="store_true", help="smoke run: 64x48 frames, 3 per case, 1 warm-up")
    args = p.parse_args(argv)
    set_here = given(p, argv, {*_MODEL_OPTIONS, "sizes"})
    if args.steps and args.sampler == "student":
        p.error("--steps are the teacher's DDIM steps: add --sampler teacher (the student takes one)")
    if args.fuser != "hclfuse" and (model := set_here & _MODEL_OPTIONS):
        p.error(f"--{sorted(model)[0].replace('_', '-')} is an option of --fuser hclfuse; --fuser {args.fuser} runs "
                f"on the CPU, one frame at a time")
    if args.tiny and "sizes" in set_here:
        p.error("--tiny runs 64x48 frames: give --tiny or --sizes")
    return args


_MODEL_OPTIONS = {"sampler", "steps", "image_guidance", "batch", "graphs", "precision", "weights"}  # a baseline's not


def batch_sizes(text: str) -> list[int]:
    """An argparse ``type``: comma-separated batch sizes, each >= 1."""
    return [int_at_least(1)(b) for b in text.split(",")]


def precision_list(text: str) -> list[str]:
    """An argparse ``type``: comma-separated precisions of the ``engine`` section."""
    values = text.split(",")
    if bad := [v for v in values if v not in PRECISIONS]:
        raise argparse.ArgumentTypeError(f"{bad[0]!r} is not one of {', '.join(PRECISIONS)}")
    return values


def on_off(text: str) -> list[bool]:
    """An argparse ``type``: comma-separated ``on`` / ``off`` -> True / False."""
    values = text.split(",")
    if not set(values) <= {"on", "off"}:
        raise argparse.ArgumentTypeError(f"{text!r}: give on, off or on,off")
    return [v == "on" for v in values]


def synthetic_pairs(h: int, w: int, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` frames of a drifting scene: warm blobs in IR, a textured, darker visible Y."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), 2.0)
    blobs = cv2.GaussianBlur((rng.random((h, w)) > 0.999).astype(np.float32), (0, 0), max(h, w) / 40)
    ir0 = 40 + 200 * blobs / max(float(blobs.max()), 1e-6)
    vis0 = 20 + 150 * (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6)
    pairs = []
    for i in range(n):
        ir = np.roll(ir0, 2 * i, axis=1) + rng.normal(0, 2, (h, w))
        vis = np.roll(vis0, i, axis=0) + rng.normal(0, 4, (h, w))
        pairs.append(tuple(np.clip(x, 0, 255).astype(np.uint8) for x in (ir, vis)))
    return pairs


def device_label(device: torch.device, threads: int) -> str:
    """GPU name, or the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        name = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                     if ln.startswith("model name")), name)
    return f"{name}, {threads} threads"


def stats_ms(samples_ms: list[float]) -> tuple[float, float]:
    """(median, p99) of latencies in ms."""
    return float(np.median(samples_ms)), float(np.percentile(samples_ms, 99))


def ms(value: float) -> str:
    """A latency in ms with two decimals, or three significant digits below 1 ms (a baseline at 64x48 takes ~2 us)."""
    return f"{value:.2f}" if value >= 1.0 else f"{value:.3g}"


def weights_file(arg: str, workdir: Path) -> str:
    """The weights to load: ``''`` = shipped, a path, or ``random`` (untrained default architecture, saved to
    ``workdir``: timing does not depend on weight values)."""
    if arg != "random":
        return arg
    from streamfuse.model import HCLFuseNet, ModelConfig, save_weights

    path = workdir / "random.pt"
    save_weights(path, HCLFuseNet(ModelConfig()))
    return str(path)


class Case:
    """One fuser configuration fed with ``batch`` synthetic rigs (streams ``rig0..``), one pair each per batch."""

    def __init__(self, fuser: HCLFuser, pairs: list[tuple[np.ndarray, np.ndarray]], batch: int):
        self.fuser, self.engine, self.pairs, self.batch = fuser, fuser.engine, pairs, batch
        self.streams = [f"rig{j}" for j in range(batch)]
        self.i = 0

    def frames(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The next pair of every rig."""
        pairs = [self.pairs[(self.i + j) % len(self.pairs)] for j in range(self.batch)]
        self.i += 1
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def submit(self, engine: Engine) -> Handle:
        """Start one batch on ``engine`` the way ``fuse_batch`` runs it: OT lookup per rig, fixed noise, engine."""
        irs, viss = self.frames()
        luts, noise = self.fuser.engine_inputs(irs, viss, self.streams)
        return engine.submit(np.stack(irs), np.stack(viss), luts, noise)

    def latency(self, batches: int) -> list[float]:
        """Per-batch ms of ``fuser.fuse_batch`` (``fuse`` calls it with one pair), one batch at a time."""
        samples = []
        for _ in range(batches):
            irs, viss = self.frames()
            t0 = time.perf_counter_ns()
            self.fuser.fuse_batch(irs, viss, self.streams)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        return samples

    def throughput(self, batches: int) -> float:
        """Fused frames per second with two batches in flight (submit/result)."""
        pending: deque = deque()
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)  # work queued before (the FLOP count's forward) is not timed
        t0 = time.perf_counter()
        for _ in range(batches):
            pending.append(self.submit(self.engine))
            if len(pending) == 2:
                self.engine.result(pending.popleft())
        while pending:
            self.engine.result(pending.popleft())
        return batches * self.batch / (time.perf_counter() - t0)

    def split(self, engine: Engine, batches: int) -> dict[str, float]:
        """Mean ms of h2d, compute and d2h per batch from CUDA events (``engine`` built with profile=True)."""
        totals = dict.fromkeys(("h2d", "compute", "d2h"), 0.0)
        for _ in range(batches):
            handle = self.submit(engine)
            engine.result(handle)
            for key, value in handle.timings.items():
                totals[key] += value / batches
        return totals


def measure(fuser: HCLFuser, pairs: list[tuple[np.ndarray, np.ndarray]], batch: int, frames: int, warmup: int,
            expected: np.ndarray | None) -> str:
    """One line of figures for one fuser configuration; on the GPU also the copy/compute split and, at batch 1,
    the difference to the CPU path's output ``expected`` for ``pairs[0]``."""
    engine = fuser.engine
    gpu = engine.device.type == "cuda"
    case = Case(fuser, pairs, batch)
    n = -(-frames // batch)  # batches timed, so every case fuses about `frames` frames
    case.latency(warmup)
    med, p99 = stats_ms(case.latency(n))
    sampler = "student" if fuser.net.use_student else "teacher"
    line = (f"[{device_label(engine.device, engine.threads)}] hclfuse {sampler} K={fuser.net.steps}"
            f" image-guidance={fuser.net.image_steps} {pairs[0][0].shape[1]}x{pairs[0][0].shape[0]} batch={batch}"
            f" precision={engine.precision}"
            + (f" graphs={'on' if engine.cuda_graphs else 'off'}" if gpu else "")
            + f": latency median {ms(med)} ms p99 {ms(p99)} ms per batch")
    ot = fuser.stats()
    flops = (f" | {engine.flops(*pairs[0][0].shape) / 1e9:.3g} GFLOPs/frame | threads {engine.threads}"
             f" | OT cache {ot['ot_hits']:.0f} hits {ot['ot_misses']:.0f} misses")
    if not gpu:  # submit is synchronous on the CPU: throughput is the latency's inverse
        return line + f" | {1000 * batch / med:.1f} frames/s (at the median latency)" + flops
    line += (f" | {case.throughput(n):.1f} frames/s with 2 batches in flight ({1000 * batch / med:.1f} at the median"
             f" latency)" + flops)
    prof = Engine(fuser.net, device=str(engine.device), precision=engine.precision, cuda_graphs=engine.cuda_graphs,
                  max_batch=batch, threads=engine.threads, profile=True)
    case.split(prof, warmup)
    t = case.split(prof, min(n, 200))
    copies, compute = t["h2d"] + t["d2h"], t["compute"]
    line += (f" | copies {100 * copies / (copies + compute):.0f}% compute {100 * compute / (copies + compute):.0f}%"
             f" (h2d {t['h2d']:.3f} ms, compute {compute:.3f} ms, d2h {t['d2h']:.3f} ms per batch, CUDA events)")
    if batch == 1:
        diff = np.abs(fuser.fuse(*pairs[0], "rig0") - expected)
        line += (f" | vs CPU (0..255): mean |diff| {diff.mean():.4f} p99.9 {np.percentile(diff, 99.9):.3f}"
                 f" max {diff.max():.3f}")
    return line


def bench_hclfuse(args: argparse.Namespace, device: torch.device, sizes: list[tuple[int, int]], frames: int,
                  warmup: int, weights: str) -> None:
    """Every size x precision x graphs x batch case (graphs and half precision only on the GPU by default)."""
    gpu = device.type == "cuda"
    batches = args.batch or ([1, 8] if gpu else [1])
    graphs = args.graphs or ([True, False] if gpu else [False])
    precisions = args.precision or (["fp32", "fp16"] if gpu else ["fp32"])
    model = HCLFuseConfig(weights=weights, sampler=args.sampler, **({"steps": args.steps} if args.steps else {}),
                          **({} if args.image_guidance is None else {"image_guidance": args.image_guidance}))

    def fuser_for(dev: str, precision: str = "fp32", graph: bool = False, batch: int = 1) -> HCLFuser:
        engine = EngineConfig(device=dev, precision=precision, cuda_graphs=graph, threads=args.threads)
        return build_hclfuse(model, engine, max_batch=batch)

    reference = fuser_for("cpu") if gpu else None
    cases = len(precisions) * (len(graphs) if gpu else 1) * len(batches)
    for h, w in sizes:
        pairs = announced_pairs(h, w, f"then {cases} case(s) of {warmup} warm-up and {frames} timed frames")
        expected = reference.fuse(*pairs[0], "rig0") if gpu else None
        for precision, graph, batch in itertools.product(precisions, graphs if gpu else [False], batches):
            print(measure(fuser_for(str(device), precision, graph, batch), pairs, batch, frames, warmup, expected),
                  flush=True)


def bench_baseline(args: argparse.Namespace, sizes: list[tuple[int, int]], frames: int, warmup: int) -> None:
    fuser = build_fuser(FuseConfig(name=args.fuser))
    for h, w in sizes:
        pairs = announced_pairs(h, w, f"then {warmup} warm-up and {frames} timed frames of {fuser.name}")
        samples = []
        for i in range(warmup + frames):
            ir, vis = pairs[i % POOL]
            t0 = time.perf_counter_ns()
            fuser.fuse(ir, vis)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        med, p99 = stats_ms(samples[warmup:])
        print(f"[{device_label(torch.device('cpu'), cv2.getNumThreads())}] {fuser.name} {w}x{h} batch=1: latency "
              f"median {ms(med)} ms p99 {ms(p99)} ms | {1000 / med:.1f} frames/s | GFLOPs n/a (not a torch net)",
              flush=True)


def announced_pairs(h: int, w: int, then: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``synthetic_pairs`` after a line saying what comes: at a large size making them alone takes minutes."""
    print(f"{w}x{h}: making {POOL} synthetic pairs, {then}", flush=True)
    return synthetic_pairs(h, w, POOL)


def bytes_per_pixel(args: argparse.Namespace, gpu: bool) -> int:
    """Peak host memory a pixel of the largest size takes: the net's for its largest batch on the CPU (on a GPU the
    host runs only the CPU reference, batch 1), else the baseline's."""
    if args.fuser != "hclfuse":
        return BASELINE_BYTES_PER_PIXEL
    return max(BASELINE_BYTES_PER_PIXEL, HCLFUSE_BYTES_PER_PIXEL * (1 if gpu else max(args.batch or [1])))


class PassThrough:
    """A fuser that returns the IR as it comes: what the frame processor costs around any fuser."""

    name, version = "passthrough", "1"

    def fuse(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
        return ir.astype(np.float32)

    def stats(self) -> dict[str, float]:
        return {}


def bench_post(sizes: list[tuple[int, int]], frames: int, warmup: int) -> None:
    """The frame processor's stages around the fuser, at the live configs' settings: IR level stabilizer (0.8)
    before it (with the visible luma), temporal denoiser (0.85) and colour restore (numba) after it."""
    for h, w in sizes:
        pairs = [still_pair(ir, cv2.cvtColor(vis, cv2.COLOR_GRAY2BGR), k)
                 for k, (ir, vis) in enumerate(announced_pairs(h, w, "then the stages around the fuser"))]
        processor = FrameProcessor(PassThrough(), stabilize=StabilizeConfig(0.8), post=PostConfig(denoise=0.85))
        times = [processor(pairs[i % POOL]).timings for i in range(warmup + frames)][warmup:]
        (pre_med, pre_p99), (med, p99) = (stats_ms([t[k] for t in times]) for k in ("fuse", "postprocess"))
        print(f"[cpu, numba {numba.get_num_threads()} threads] {w}x{h}: before the fuser (visible luma, IR stabilizer"
              f" 0.8) median {ms(pre_med)} ms p99 {ms(pre_p99)} ms | postprocess (denoise 0.85 + bgr8 colour) median"
              f" {ms(med)} ms p99 {ms(p99)} ms", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one line of figures per case."""
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"{_PROG}: error: {printable(exc)}") from None
    gpu = device.type == "cuda"
    sizes = [(48, 64)] if args.tiny else args.sizes
    frames = 3 if args.tiny else args.frames or (1000 if gpu else 50)
    warmup = 1 if args.tiny else 5
    refuse_beyond_memory(_PROG, [(w, h) for h, w in sizes], bytes_per_pixel(args, gpu))
    policy = os.environ.get("OMP_WAIT_POLICY", "unset") + (" (not in effect: torch came first)" if LATE_WAIT_POLICY
                                                            else "")
    print(f"bench fuse: torch {torch.__version__}, device {device}, fuser {args.fuser}, {frames} frames per case, "
          f"{warmup} warm-up, load average {os.getloadavg()[0]:.2f}, OMP_WAIT_POLICY={policy}", flush=True)
    try:
        if args.fuser == "hclfuse":
            with tempfile.TemporaryDirectory() as tmp:
                bench_hclfuse(args, device, sizes, frames, warmup, weights_file(args.weights, Path(tmp)))
        else:
            bench_baseline(args, sizes, frames, warmup)
        bench_post(sizes, frames, warmup)
    except (ValueError, OSError) as exc:  # --weights not found or not a weights file
        raise SystemExit(f"{_PROG}: error: {printable(exc)}") from None
