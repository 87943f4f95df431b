"""Engine: CPU path against direct net calls (padding, LUT, batching), device errors, and the GPU path (marked gpu)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from streamfuse.engine import DEPTH, MAX_SHAPES, Engine
from streamfuse.model import weights as hclfuse

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class TinyNet(nn.Module):
    """Stand-in with the agreed interface: full-res features, an H/8 latent that adds the noise, and a decoder."""

    stride = 8
    latent_channels = 2

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():  # same weights for every instance, global RNG untouched
            torch.manual_seed(seed)
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.down = nn.Conv2d(4, 2, 8, stride=8)  # needs H, W multiples of 8: padding is exercised
            self.head = nn.Conv2d(6, 1, 3, padding=1)

    def forward(self, ir01: torch.Tensor, vis01: torch.Tensor, noise: torch.Tensor,
                ir_raw01: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.stem(torch.cat([ir01, vis01, ir_raw01], 1)))  # (B,4,H,W)
        z = self.down(f) + noise  # (B,2,H/8,W/8)
        return torch.sigmoid(self.head(torch.cat([f, F.interpolate(z, scale_factor=8.0)], 1)))  # (B,1,H,W)


def tiny_flops(h: int, w: int) -> int:
    """Conv FLOPs of TinyNet at (h, w), both multiples of 8: 2 * MACs."""
    return 2 * (4 * 3 * 9 * h * w + 2 * 4 * 64 * (h // 8) * (w // 8) + 1 * 6 * 9 * h * w)


def make_batch(rng: np.random.Generator, b: int, h: int, w: int):
    ir = rng.integers(0, 256, (b, h, w), dtype=np.uint8)
    vis = rng.integers(0, 256, (b, h, w), dtype=np.uint8)
    luts = np.sort(rng.random((b, 256), dtype=np.float32), axis=1)
    noise = torch.from_numpy(rng.standard_normal((b, 2, -(-h // 8), -(-w // 8)), dtype=np.float32))
    return ir, vis, luts, noise.clone()  # made by a torch op: on the emulated GPU, written by the caller's stream


def reference(net: nn.Module, ir: np.ndarray, vis: np.ndarray, luts: np.ndarray, noise: torch.Tensor,
              pad: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """What the engine must compute, written directly: LUT, replicate pad (left, right, top, bottom; default: to a
    multiple of 8 at the right and bottom), net, crop, x255."""
    b, h, w = ir.shape
    ir01 = torch.from_numpy(np.take_along_axis(luts, ir.reshape(b, -1).astype(np.int64), 1).reshape(b, 1, h, w))
    vis01 = torch.from_numpy(vis.astype(np.float32).reshape(b, 1, h, w) / 255.0)
    raw01 = torch.from_numpy(ir.astype(np.float32).reshape(b, 1, h, w) / 255.0)
    left, _, top, _ = pad = pad or (0, -w % 8, 0, -h % 8)
    ir01, vis01, raw01 = (F.pad(x, pad, mode="replicate") for x in (ir01, vis01, raw01))
    with torch.no_grad():
        return net(ir01, vis01, noise, raw01)[:, 0, top:top + h, left:left + w].numpy() * 255.0


@pytest.fixture
def net() -> TinyNet:
    return TinyNet()


def test_cpu_equals_direct_net(net, rng):
    engine = Engine(net, device="cpu", threads=1)
    batch = make_batch(rng, 1, 48, 64)
    out = engine.run(*batch)
    assert out.shape == (1, 48, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(net, *batch), atol=1e-4)
    assert 0 <= out.min() and out.max() <= 255


def test_padding_and_crop_for_sizes_not_multiple_of_stride(net, rng):
    engine = Engine(net, device="cpu", threads=1)
    assert engine.padded(173, 250) == (176, 256)
    assert engine.latent_shape(173, 250) == (2, 22, 32)
    batch = make_batch(rng, 1, 173, 250)
    out = engine.run(*batch)
    assert out.shape == (1, 173, 250)
    np.testing.assert_allclose(out, reference(net, *batch), atol=1e-4)


class SmallestNet(TinyNet):
    min_size = 32


def test_a_side_under_the_nets_min_size_is_padded_on_both_ends_and_cropped_back(rng):
    # a frame in the corner of its padding sat in the border the net fuses darker: the padding goes all round it
    net = SmallestNet()
    engine = Engine(net, device="cpu", threads=1)
    assert (engine.padded(10, 40), engine.frame(10, 40)) == ((32, 40), (slice(11, 21), slice(0, 40)))
    assert (engine.padded(173, 250), engine.frame(173, 250)) == ((176, 256), (slice(0, 173), slice(0, 250)))
    ir, vis, luts, _ = make_batch(rng, 1, 10, 40)
    noise = torch.from_numpy(rng.standard_normal((1, *engine.latent_shape(10, 40)), dtype=np.float32))
    out = engine.run(ir, vis, luts, noise)
    assert out.shape == (1, 10, 40)
    np.testing.assert_allclose(out, reference(net, ir, vis, luts, noise, pad=(0, 0, 11, 11)), atol=1e-4)


def test_lut_is_applied(net, rng):
    engine = Engine(net, device="cpu", threads=1)
    ir, vis, _, noise = make_batch(rng, 1, 32, 40)
    identity = np.linspace(0, 1, 256, dtype=np.float32)[None]
    inverted = identity[:, ::-1].copy()
    plain = engine.run(ir, vis, identity, noise)
    ir01 = torch.from_numpy(ir[:, None] / 255.0).float()
    with torch.no_grad():
        direct = net(ir01, torch.from_numpy(vis[:, None] / 255.0).float(), noise, ir01)[:, 0].numpy() * 255.0
    np.testing.assert_allclose(plain, direct, atol=1e-4)
    swapped = engine.run(ir, vis, inverted, noise)  # the table changes IR' only; the raw IR still reaches the net
    assert np.abs(swapped - plain).mean() > 1.0
    np.testing.assert_allclose(swapped, reference(net, ir, vis, inverted, noise), atol=1e-4)


def test_batch_equals_singles(net, rng):
    engine = Engine(net, device="cpu", threads=1, max_batch=3)
    ir, vis, luts, noise = make_batch(rng, 3, 40, 56)
    batched = engine.run(ir, vis, luts, noise)
    for i in range(3):
        single = engine.run(ir[i:i + 1], vis[i:i + 1], luts[i:i + 1], noise[i:i + 1])
        np.testing.assert_allclose(batched[i:i + 1], single, atol=1e-4)


def test_submit_result_keeps_order_on_cpu(net, rng):
    engine = Engine(net, device="cpu", threads=1)
    batches = [make_batch(rng, 1, 16, 24) for _ in range(DEPTH + 2)]
    handles = [engine.submit(*b) for b in batches]
    assert [h.seq for h in handles] == sorted(h.seq for h in handles)
    for handle, batch in zip(reversed(handles), reversed(batches)):
        np.testing.assert_allclose(engine.result(handle), reference(net, *batch), atol=1e-4)


def test_flops_counts_the_padded_net(net):
    engine = Engine(net, device="cpu", threads=1)
    assert engine.flops(48, 64) == tiny_flops(48, 64)
    assert engine.flops(173, 250) == tiny_flops(176, 256)
    assert engine.flops(48, 64, batch=2) == 2 * tiny_flops(48, 64)


def test_bf16_autocast_on_cpu_is_close(net, rng):
    batch = make_batch(rng, 1, 32, 32)
    full = Engine(net, device="cpu", threads=1).run(*batch)
    half = Engine(net, device="cpu", threads=1, precision="bf16").run(*batch)
    assert np.abs(half - full).max() < 4.0
    assert not np.array_equal(half, full)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_one_clear_line(net):
    version = ".".join(torch.__version__.split(".")[:2])
    built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
    expected = f"device 'cuda' requested but torch sees no CUDA GPU (torch {version}, {built})"
    with pytest.raises(ValueError) as info:
        Engine(net, device="cuda")
    assert str(info.value) == expected and "\n" not in str(info.value)


@pytest.mark.parametrize("bad, match", [
    ({"ir": np.zeros((1, 16, 16), np.float32)}, "ir_u8 must be"),
    ({"vis": np.zeros((1, 16, 8), np.uint8)}, "vis_u8 must be"),
    ({"luts": np.zeros((1, 255), np.float32)}, "luts must have shape"),
    ({"noise": torch.zeros(1, 2, 3, 2)}, "noise must be a floating-point tensor of shape"),
    ({"noise": torch.zeros(1, 2, 2, 2, dtype=torch.int64)}, r"got Tensor \(1, 2, 2, 2\) torch.int64"),
    ({"ir": np.zeros((2, 16, 16), np.uint8), "vis": np.zeros((2, 16, 16), np.uint8)}, "batch of 2"),
])
def test_bad_inputs_are_one_line(net, bad, match):
    args = {"ir": np.zeros((1, 16, 16), np.uint8), "vis": np.zeros((1, 16, 16), np.uint8),
            "luts": np.zeros((1, 256), np.float32), "noise": torch.zeros(1, 2, 2, 2)} | bad
    engine = Engine(net, device="cpu", threads=1)
    with pytest.raises(ValueError, match=match):
        engine.run(args["ir"], args["vis"], args["luts"], args["noise"])


def test_bad_construction(net):
    with pytest.raises(ValueError, match="precision='fp8'"):
        Engine(net, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="no attribute 'stride'"):
        Engine(nn.Identity(), device="cpu")


class HostToDevice(TorchDispatchMode):
    """Records ops that turn a host tensor into a device tensor: on CUDA such a copy breaks graph capture."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        host = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.device.type == "cpu"]
        copies = func.overloadpacket.__name__ in ("to", "_to_copy", "copy_")
        if (copies and host or any(t.numel() > 1 for t in host)) and any(
                isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tree_leaves(out)):
            self.ops.append(str(func))
        return out


def test_hclfuse_net_is_graph_capturable():
    """Run the real net on the meta device: host-to-device copies (and .item(), which raises there) after the
    warm-up call are caught on CPU before a GPU ever tries to capture the forward (the engine warms up first)."""
    net = hclfuse.HCLFuseNet(hclfuse.ModelConfig(), steps=2).to("meta")
    frame = torch.zeros(1, 1, 48, 64, device="meta")
    noise = torch.zeros(1, net.latent_channels, 6, 8, device="meta")
    with torch.inference_mode():
        net(frame, frame, noise, frame)
        with HostToDevice() as mode:
            out = net(frame, frame, noise, frame)
    assert out.shape == (1, 1, 48, 64)
    assert mode.ops == [], f"host tensors copied to the device inside forward: {sorted(set(mode.ops))}"


# -- GPU path, on a real GPU (pytest -m gpu) and emulated on CPU: slots, staging, events, graphs, stream order --

def _merge(clock: dict, other: dict) -> None:
    for stream, t in other.items():
        clock[stream] = max(clock.get(stream, 0), t)


class FakeStream:
    """A stream with a vector clock: ``vc[s]`` is how far stream s's work is known to be done before this
    stream's next op. Waits merge clocks; the host's clock (what it waited for) flows into every op it enqueues."""

    current: FakeStream | None = None
    host: FakeStream | None = None
    every: list[FakeStream] = []

    def __init__(self, device: object = None):
        self.vc: dict[FakeStream, int] = {}
        FakeStream.every.append(self)

    def tick(self) -> int:
        _merge(self.vc, FakeStream.host.vc)
        self.vc[self] = self.vc.get(self, 0) + 1
        return self.vc[self]

    def sees(self, other: FakeStream | None, t: int) -> bool:
        return other is None or other is self or self.vc.get(other, 0) >= t

    def wait_event(self, event: FakeEvent):
        assert event.stream is not self, "stream waits on its own event"
        _merge(self.vc, event.vc)

    def wait_stream(self, stream: FakeStream):
        assert stream is not self, "stream waits on itself"
        _merge(self.vc, stream.vc)

    @classmethod
    @contextlib.contextmanager
    def use(cls, stream: FakeStream):
        previous, cls.current = cls.current, stream
        try:
            yield
        finally:
            cls.current = previous


class FakeEvent:
    def __init__(self, enable_timing: bool = False, blocking: bool = False):
        self.stream, self.vc = None, {}

    def record(self, stream=None):
        self.stream, self.vc = FakeStream.current, dict(FakeStream.current.vc)

    def synchronize(self):
        assert self.stream is not None, "host waited on an event that was never recorded"
        _merge(FakeStream.host.vc, self.vc)

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.stream is not None and end.stream is not None
        return 0.0


def _device_synchronize(device=None):
    for stream in FakeStream.every:
        _merge(FakeStream.host.vc, stream.vc)


class RaceChecker(TorchDispatchMode):
    """Attributes every aten op to the current fake stream and fails on an access to a tensor's storage that is not
    ordered (by events, stream waits or host waits) after the last conflicting access from another stream."""

    _NO_KERNEL = ("empty", "empty_strided")  # allocation only: no access to order

    def __init__(self):
        super().__init__()
        self.history: dict[int, tuple[FakeStream | None, int, dict]] = {}  # storage -> (writer, t, readers)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        stream = FakeStream.current
        t = stream.tick()
        reads, writes = set(), set()
        schema = func._schema.arguments
        for arg, value in zip(schema, list(args) + [kwargs.get(a.name) for a in schema[len(args):]]):
            for x in tree_leaves(value):
                if isinstance(x, torch.Tensor) and x.numel():
                    (writes if arg.alias_info is not None and arg.alias_info.is_write else reads).add(_storage(x))
        out = func(*args, **kwargs)
        for ptr in reads - writes:
            writer, tw, readers = self.history.setdefault(ptr, (None, 0, {}))
            assert stream.sees(writer, tw), f"{func} reads a tensor before another stream's write is ordered"
            readers[stream] = t
        for ptr in writes:
            writer, tw, readers = self.history.get(ptr, (None, 0, {}))
            assert stream.sees(writer, tw) and all(stream.sees(r, tr) for r, tr in readers.items()), \
                f"{func} overwrites a tensor another stream may still use"
            self.history[ptr] = (stream, t, {})
        for x in tree_leaves(out):
            if isinstance(x, torch.Tensor) and x.numel() and _storage(x) not in reads | writes:
                fresh = func.overloadpacket.__name__ in self._NO_KERNEL
                self.history[_storage(x)] = (None, 0, {}) if fresh else (stream, t, {})
        return out


def _storage(x: torch.Tensor) -> int:
    return x.untyped_storage().data_ptr()


class FakeGraph:
    """Records the aten ops run while capturing; replay re-runs them and writes into the captured tensors."""

    def __init__(self):
        self.ops: list = []

    def replay(self):
        for func, args, kwargs, outs in self.ops:
            for old, new in zip(outs, tree_leaves(func(*args, **kwargs))):
                if isinstance(old, torch.Tensor) and old.data_ptr() != new.data_ptr():
                    old.copy_(new)


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: FakeGraph):
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.graph.ops.append((func, args, kwargs or {}, tree_leaves(out)))
        return out


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=[gpu, needs_cuda])])
def gpu_engine(request, monkeypatch):
    """Builds GPU-path engines: on a real GPU (marked gpu), or emulated on CPU (CPU tensors, fake streams, events
    and graphs) with every tensor access in the test checked for cross-stream ordering by RaceChecker."""
    if request.param == "cuda":
        yield lambda net, **kwargs: Engine(net, device="cuda", **kwargs)
        return
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: empty(*a, **k))
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g, **_: _Recorder(g))
    monkeypatch.setattr(FakeStream, "every", [])
    monkeypatch.setattr(FakeStream, "host", FakeStream())  # the CPU thread
    monkeypatch.setattr(FakeStream, "current", FakeStream())  # the caller's (default) stream
    monkeypatch.setattr(torch.cuda, "stream", FakeStream.use)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream.current)
    monkeypatch.setattr(torch.cuda, "synchronize", _device_synchronize)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "fake GPU")

    def build(net: nn.Module, *, cuda_graphs: bool = True, max_batch: int = 1, profile: bool = False) -> Engine:
        engine = Engine(net, device="cpu", threads=1, max_batch=max_batch)
        engine._cuda, engine.cuda_graphs, engine.profile = True, cuda_graphs, profile
        engine._up, engine._comp, engine._down = FakeStream(), FakeStream(), FakeStream()
        engine._shapes = OrderedDict()
        return engine

    with RaceChecker():
        yield build


@pytest.mark.parametrize("graphs", [True, False])
def test_gpu_path_equals_cpu(net, rng, gpu_engine, graphs):
    engine = gpu_engine(TinyNet(), cuda_graphs=graphs, max_batch=2)
    for b, h, w in [(1, 173, 250), (2, 48, 64), (1, 173, 250)]:
        batch = make_batch(rng, b, h, w)
        # fp32 on both sides (TF32 off): only the order of summation differs
        np.testing.assert_allclose(engine.run(*batch), reference(net, *batch), atol=1e-3)
    assert list(engine._shapes) == [(2, 48, 64), (1, 173, 250)]
    assert all((state.graph is not None) == graphs for state in engine._shapes.values())


@pytest.mark.parametrize("graphs", [True, False])
def test_gpu_pipeline_keeps_every_result_in_order(net, rng, gpu_engine, graphs):
    engine = gpu_engine(TinyNet(), cuda_graphs=graphs, profile=True)
    batches = [make_batch(rng, 1, 24, 32) for _ in range(3 * DEPTH + 1)]
    handles = [engine.submit(*b) for b in batches]  # more than DEPTH in flight: the oldest are collected on reuse
    for i in list(range(len(handles)))[::-2] + list(range(len(handles)))[-2::-2]:
        np.testing.assert_allclose(engine.result(handles[i]), reference(net, *batches[i]), atol=1e-3)
    assert [h.seq for h in handles] == list(range(len(batches)))
    assert set(handles[0].timings) == {"h2d", "compute", "d2h"} and min(handles[0].timings.values()) >= 0


def test_gpu_submitting_up_to_depth_batches_waits_for_none_of_them(rng, gpu_engine):
    # the upload of one batch, the compute of the one before and the download of the one before that overlap: a
    # submit that waited for the previous batch's result would run them one after another
    engine = gpu_engine(TinyNet())
    handles = [engine.submit(*make_batch(rng, 1, 24, 32)) for _ in range(DEPTH)]
    assert [h.out is None for h in handles] == [True] * DEPTH
    engine.submit(*make_batch(rng, 1, 24, 32))  # a batch more than the ring holds: the oldest is collected for it
    assert [h.out is None for h in handles] == [False] + [True] * (DEPTH - 1)


def test_gpu_graphs_kept_for_recent_shapes(rng, gpu_engine, monkeypatch):
    engine = gpu_engine(TinyNet(), cuda_graphs=True)
    captures = []
    capture = engine._capture
    monkeypatch.setattr(engine, "_capture", lambda state, *shape: (captures.append(shape), capture(state, *shape)))
    pending = engine.submit(*make_batch(rng, 1, 8, 16))
    sizes = [(16, 24), (24, 16)] * 3 + [(8 * (i + 2), 8) for i in range(MAX_SHAPES)]
    for h, w in sizes:
        assert engine.run(*make_batch(rng, 1, h, w)).shape == (1, h, w)
    assert captures[:3] == [(1, 8, 16), (1, 16, 24), (1, 24, 16)] and len(captures) == 3 + MAX_SHAPES
    assert len(engine._shapes) == MAX_SHAPES
    assert pending.out is not None and pending.out.shape == (1, 8, 16)  # collected when its shape was dropped


@gpu
@needs_cuda
def test_gpu_hclfuse_matches_cpu(rng):
    """The shipped net at 640x480: GPU fp32 vs CPU. Guidance masks are thresholds, so a few latent pixels may flip:
    the tolerance is on the mean and the 99.9th percentile."""
    net, _ = hclfuse.load_weights(hclfuse.DEFAULT_WEIGHTS)
    cpu_engine = Engine(net, device="cpu")
    noise = torch.randn(1, *cpu_engine.latent_shape(480, 640), generator=torch.Generator().manual_seed(0))
    batch = (*make_batch(rng, 1, 480, 640)[:3], noise)
    cpu = cpu_engine.run(*batch)
    diff = np.abs(Engine(net, device="cuda").run(*batch) - cpu)
    assert diff.mean() < 0.05 and np.percentile(diff, 99.9) < 1.0, (diff.mean(), np.percentile(diff, 99.9))


@gpu
@needs_cuda
def test_gpu_graphs_on_off_equal(rng):
    batch = make_batch(rng, 2, 96, 128)
    on = Engine(TinyNet(), device="cuda", cuda_graphs=True, max_batch=2).run(*batch)
    off = Engine(TinyNet(), device="cuda", cuda_graphs=False, max_batch=2).run(*batch)
    np.testing.assert_allclose(on, off, atol=1e-3)


@gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_half_precision_within_tolerance(rng, precision):
    batch = make_batch(rng, 1, 96, 128)
    full = Engine(TinyNet(), device="cuda").run(*batch)
    half = Engine(TinyNet(), device="cuda", precision=precision).run(*batch)
    assert np.abs(half - full).max() < (1.0 if precision == "fp16" else 4.0)
