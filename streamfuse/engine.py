"""The fusion stage on a device: OT lookup, padding, the net, on CPU or one CUDA GPU, with the same API.

The engine runs a torch module ``net(ir01, vis01, noise (B,C,Hp/s,Wp/s), ir_raw01) -> fused01 (B,1,Hp,Wp)`` (images
(B,1,Hp,Wp) on 0..1; ``ir01`` aligned, ``ir_raw01`` as captured) on frames given as uint8 arrays. ``net`` exposes
``stride`` s (the engine pads H, W up to a multiple of it by replicating the border, and crops back; the latent noise
is s times smaller), ``latent_channels`` and optionally ``min_size`` (a smaller side is padded to it, on both ends).
The OT lookup table is applied on the device (``ir01 = lut[ir_u8]``), so only uint8 pixels and 256 floats per frame
cross the bus.

CPU path: all cores (``torch.set_num_threads``), ``torch.inference_mode``, and glibc malloc told to keep freed
activation buffers (see :mod:`streamfuse.device`).

GPU path, per submitted batch (slot ``k`` of a ring of ``DEPTH`` per frame shape)::

    host           : numpy -> pinned host_in[k]                       (slot k's previous batch already collected)
    upload stream  : host_in[k] -> dev_in[k] ; record uploaded[k]
    compute stream : wait caller's stream, uploaded[k] ; dev_in[k] -> static input ; replay the CUDA graph (or run
                     eagerly) ; static output -> dev_out[k] ; record computed[k]
    download stream: wait computed[k] ; dev_out[k] -> pinned host_out[k] ; record downloaded[k]
    host           : result() waits on downloaded[k] only, then copies host_out[k] out

so the upload of frame n+1, the compute of frame n and the download of frame n-1 overlap, and nothing synchronises
the whole device on the hot path. A CUDA graph of the whole forward (LUT, padding, net, crop) is captured once per
(B, H, W) and kept for the last ``MAX_SHAPES`` shapes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from streamfuse.device import available_cores, prepare_cpu, resolve_device

__all__ = ["DEPTH", "MAX_SHAPES", "Engine", "Handle"]

log = logging.getLogger(__name__)

_AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # inference.PRECISIONS -> autocast dtype
DEPTH = 3  # batches in flight per shape on the GPU: upload n+1, compute n, download n-1
MAX_SHAPES = 4  # frame shapes whose graphs and buffers are kept (a rig switching among a few sizes rebuilds nothing)
_WARMUP = 3  # eager runs before capture: cuDNN autotuning and lazy initialisation must not happen while capturing


class Handle:
    """A submitted batch; :meth:`Engine.result` turns it into the fused ``(B, H, W)`` float32 array.

    Attributes:
        seq: submission number (0, 1, ...), for checking order.
        out: the result once collected, else None.
        timings: on the GPU with ``profile=True``, milliseconds of ``h2d``, ``compute`` and ``d2h`` from CUDA events
            (filled by ``result``); empty otherwise.
    """

    __slots__ = ("seq", "out", "timings", "_slot")

    def __init__(self, seq: int, out: np.ndarray | None = None, slot: _Slot | None = None):
        self.seq = seq
        self.out = out
        self.timings: dict[str, float] = {}
        self._slot = slot


@dataclass(eq=False)
class _Slot:
    """Buffers and events of one batch in flight (GPU)."""

    host_in: torch.Tensor  # pinned uint8: B*256 float32 LUT bytes, then IR (B,H,W), then visible (B,H,W)
    host_out: torch.Tensor  # pinned float32 (B,H,W)
    dev_in: torch.Tensor
    dev_out: torch.Tensor
    events: dict[str, torch.cuda.Event]  # uploaded, computed, downloaded (+ *_start when profiling)
    host_views: tuple[np.ndarray, np.ndarray, np.ndarray] = ()  # numpy views of host_in: luts, ir, vis
    pending: Handle | None = None


@dataclass(eq=False)
class _ShapeState:
    """Everything kept per (B, H, W) on the GPU: the slot ring and, with graphs, the captured forward."""

    slots: list[_Slot]
    next_slot: int = 0
    graph: torch.cuda.CUDAGraph | None = None
    static_in: torch.Tensor | None = None
    static_noise: torch.Tensor | None = None
    static_out: torch.Tensor | None = None


def _split(buf: torch.Tensor, b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views (luts (B,256) float32, ir (B,H,W) uint8, vis (B,H,W) uint8) of one packed uint8 buffer."""
    nl, n = b * 256 * 4, b * h * w
    return buf[:nl].view(torch.float32).view(b, 256), buf[nl:nl + n].view(b, h, w), buf[nl + n:].view(b, h, w)


class Engine:
    """Runs the fusion net on uint8 frames on CPU or a CUDA GPU.

    Args:
        net: module with attributes ``stride`` and ``latent_channels``; called as ``net(ir01, vis01, noise, ir_raw01)``.
        device: ``auto | cpu | cuda | cuda:N`` (see :func:`streamfuse.device.resolve_device`).
        precision: ``fp32``, or ``fp16``/``bf16`` autocast.
        cuda_graphs: on the GPU, capture the whole forward once per (B, H, W) and replay it.
        max_batch: largest B accepted by :meth:`run` / :meth:`submit`.
        threads: torch CPU threads; 0 means all cores available to this process.
        profile: on the GPU, time upload, compute and download of each batch with CUDA events (``Handle.timings``).

    The engine is not thread-safe: submit and collect from one thread.
    """

    def __init__(self, net: nn.Module, *, device: str = "auto", precision: str = "fp32", cuda_graphs: bool = True,
                 max_batch: int = 1, threads: int = 0, profile: bool = False):
        if precision not in _AUTOCAST:
            raise ValueError(f"precision={precision!r} is not supported; allowed: {' | '.join(_AUTOCAST)}")
        if max_batch < 1 or threads < 0:
            raise ValueError(f"max_batch={max_batch} must be >= 1 and threads={threads} >= 0")
        for attr in ("stride", "latent_channels"):
            if not hasattr(net, attr):
                raise ValueError(f"net {type(net).__name__} has no attribute {attr!r}, which the engine needs")
        self.device = resolve_device(device)
        self.precision = precision
        self.max_batch = max_batch
        self._cuda = self.device.type == "cuda"
        self.cuda_graphs = cuda_graphs and self._cuda
        self.profile = profile and self._cuda
        self.threads = threads or available_cores()
        self.net = net.eval().to(self.device)
        self._amp = _AUTOCAST[precision]
        self._seq = 0
        if not self._cuda:
            prepare_cpu(self.threads)
            return
        if threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = True  # shapes are fixed per stream, so autotuning pays once
        if precision == "fp32":
            # fp32 means fp32: cuDNN's default TF32 convolutions would differ from the CPU path by ~1e-3 relative,
            # and this net's thin convolutions are memory-bound, so TF32 buys no speed.
            torch.backends.cudnn.allow_tf32 = False
        self._up, self._comp, self._down = (torch.cuda.Stream(self.device) for _ in range(3))
        self._shapes: OrderedDict[tuple[int, int, int], _ShapeState] = OrderedDict()

    @property
    def device_name(self) -> str:
        """The GPU's name, or ``cpu (N threads)``."""
        if self._cuda:
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({self.threads} threads)"

    def padded(self, height: int, width: int) -> tuple[int, int]:
        """Frame size padded up to a multiple of ``net.stride``, and up to ``net.min_size`` where the net has one."""
        s, least = int(self.net.stride), int(getattr(self.net, "min_size", 0))
        return max(-(-height // s) * s, least), max(-(-width // s) * s, least)

    def frame(self, height: int, width: int) -> tuple[slice, slice]:
        """The rows and columns a frame takes in its padded frame: a side padded up to ``net.min_size`` is centred,
        away from the border the net fuses a little darker; any other starts at 0."""
        s = int(self.net.stride)
        hp, wp = self.padded(height, width)
        top, left = _lead(hp, height, s), _lead(wp, width, s)
        return slice(top, top + height), slice(left, left + width)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Shape ``(C, Hp / stride, Wp / stride)`` of the noise the net takes for one frame of ``height x width``."""
        hp, wp = self.padded(height, width)
        s = int(self.net.stride)
        return int(self.net.latent_channels), hp // s, wp // s

    def run(self, ir_u8: np.ndarray, vis_u8: np.ndarray, luts: np.ndarray, noise: torch.Tensor) -> np.ndarray:
        """Fuse a batch of pairs.

        Args:
            ir_u8: IR frames, ``(B, H, W)`` uint8, B <= max_batch.
            vis_u8: visible Y, ``(B, H, W)`` uint8.
            luts: per-pair OT lookup tables, ``(B, 256)`` float32 on 0..1 (IR grey level -> aligned IR).
            noise: latent noise ``(B, *latent_shape(H, W))``, best already on the engine's device.

        Returns:
            Fused Y, ``(B, H, W)`` float32 on 0..255 (the net's output times 255; postprocess clips).
        """
        return self.result(self.submit(ir_u8, vis_u8, luts, noise))

    def submit(self, ir_u8: np.ndarray, vis_u8: np.ndarray, luts: np.ndarray, noise: torch.Tensor) -> Handle:
        """Start fusing a batch (arguments as :meth:`run`); on the GPU this returns before the work is done.

        Up to ``DEPTH`` batches of one shape overlap; submitting more first collects the oldest one's result
        (kept in its handle), so no result is lost and order is preserved. The input arrays may be reused at once
        (they are staged before this returns); ``noise`` must not be changed in place until the result is collected.
        """
        luts = self._check(ir_u8, vis_u8, luts, noise)
        seq, self._seq = self._seq, self._seq + 1
        with torch.inference_mode():
            if not self._cuda:
                ir, vis = (torch.from_numpy(np.require(a, requirements=("C", "W"))) for a in (ir_u8, vis_u8))
                out = self._forward(torch.from_numpy(luts), ir, vis, noise.to(self.device))
                return Handle(seq, out=out.numpy())
            return self._submit_cuda(seq, ir_u8, vis_u8, luts, noise)

    def result(self, handle: Handle) -> np.ndarray:
        """The fused ``(B, H, W)`` float32 of a submitted batch; on the GPU waits for that batch's download only."""
        if handle.out is None:
            self._collect(handle)
        return handle.out

    def flops(self, height: int, width: int, batch: int = 1) -> float:
        """FLOPs of one forward (LUT, padding, net) at ``batch x height x width``, by torch's FlopCounterMode."""
        luts = torch.linspace(0, 1, 256, device=self.device).expand(batch, 256).contiguous()
        frames = torch.zeros(batch, height, width, dtype=torch.uint8, device=self.device)
        noise = torch.zeros(batch, *self.latent_shape(height, width), device=self.device)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            self._forward(luts, frames, frames, noise)
        return float(counter.get_total_flops())

    # -- shared forward: the same code runs eagerly on CPU/GPU and inside the CUDA graph ------------------------

    def _forward(self, luts: torch.Tensor, ir_u8: torch.Tensor, vis_u8: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        """(B,256) float32, (B,H,W) uint8 x2, (B,C,h,w) -> fused (B,H,W) float32 on 0..255, all on the device."""
        b, h, w = ir_u8.shape
        hp, wp = self.padded(h, w)
        rows, cols = self.frame(h, w)
        ir01, vis01, raw01 = self.net_inputs(luts, ir_u8, vis_u8)
        # cache_enabled=False: cached weight casts would outlive the autocast block and dangle inside a CUDA graph
        with torch.autocast(self.device.type, dtype=self._amp or torch.float32, enabled=self._amp is not None,
                            cache_enabled=False):
            fused = self.net(ir01, vis01, noise, raw01)  # (B,1,Hp,Wp)
        if fused.shape != (b, 1, hp, wp):
            raise RuntimeError(f"net {type(self.net).__name__} returned shape {tuple(fused.shape)}; "
                               f"expected {(b, 1, hp, wp)}")
        return fused[:, 0, rows, cols].float() * 255.0

    def net_inputs(self, luts: torch.Tensor, ir_u8: torch.Tensor,
                   vis_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The net's inputs (IR', visible, raw IR), each (B, 1, Hp, Wp) on 0..1, padded to the stride, from (B, 256)
        float32 lookup tables and (B, H, W) uint8 frames, all on the device (also what the ablations decode)."""
        b, h, w = ir_u8.shape
        ir01 = torch.gather(luts, 1, ir_u8.reshape(b, h * w).long()).view(b, 1, h, w)
        vis01 = vis_u8.reshape(b, 1, h, w).float() / 255.0
        raw01 = ir_u8.reshape(b, 1, h, w).float() / 255.0
        hp, wp = self.padded(h, w)
        if (hp, wp) == (h, w):
            return ir01, vis01, raw01
        rows, cols = self.frame(h, w)
        pad = (cols.start, wp - cols.stop, rows.start, hp - rows.stop)
        return tuple(F.pad(x, pad, mode="replicate") for x in (ir01, vis01, raw01))

    def _check(self, ir_u8: np.ndarray, vis_u8: np.ndarray, luts: np.ndarray, noise: torch.Tensor) -> np.ndarray:
        """Validate a batch at the boundary (one line per problem); returns luts as contiguous float32."""
        if not (isinstance(ir_u8, np.ndarray) and ir_u8.dtype == np.uint8 and ir_u8.ndim == 3):
            raise ValueError(f"engine: ir_u8 must be a (B,H,W) uint8 array, got {_describe(ir_u8)}")
        if not (isinstance(vis_u8, np.ndarray) and vis_u8.dtype == np.uint8 and vis_u8.shape == ir_u8.shape):
            raise ValueError(f"engine: vis_u8 must be uint8 of IR's shape {ir_u8.shape}, got {_describe(vis_u8)}")
        b, h, w = ir_u8.shape
        if not 1 <= b <= self.max_batch:
            raise ValueError(f"engine: batch of {b} pairs; allowed 1..max_batch={self.max_batch}")
        luts = np.ascontiguousarray(luts, dtype=np.float32)
        if luts.shape != (b, 256):
            raise ValueError(f"engine: luts must have shape {(b, 256)}, got {luts.shape}")
        want = (b, *self.latent_shape(h, w))
        if not (isinstance(noise, torch.Tensor) and tuple(noise.shape) == want and noise.is_floating_point()):
            raise ValueError(f"engine: noise must be a floating-point tensor of shape {want} for {h}x{w} frames, "
                             f"got {_describe(noise)}")
        return luts

    # -- GPU path ------------------------------------------------------------------------------------------------

    def _submit_cuda(self, seq: int, ir_u8: np.ndarray, vis_u8: np.ndarray, luts: np.ndarray,
                     noise: torch.Tensor) -> Handle:
        caller = torch.cuda.current_stream(self.device)  # produced the noise (and the weights)
        state = self._state(ir_u8.shape)
        slot = state.slots[state.next_slot]
        state.next_slot = (state.next_slot + 1) % DEPTH
        if slot.pending is not None:  # all DEPTH slots busy: keep the oldest result in its handle before reuse
            self._collect(slot.pending)
        # The host has waited for the download of the slot's previous batch (hence its compute and upload), so all
        # four buffers of the slot are free: only the new batch's own steps need ordering.
        ev = slot.events
        # 1. Stage on the host.
        for dst, src in zip(slot.host_views, (luts, ir_u8, vis_u8)):
            np.copyto(dst, src)
        # 2. Upload, after the caller's stream: a slot's buffers, when new, may sit in memory that the caller's stream
        # freed while its kernels still run (the caching allocator hands it out at once).
        with torch.cuda.stream(self._up):
            self._up.wait_stream(caller)
            self._mark(ev, "uploaded_start")
            slot.dev_in.copy_(slot.host_in, non_blocking=True)
            ev["uploaded"].record()
        # 3. Compute, after the upload and after the caller's stream (which made the noise).
        with torch.cuda.stream(self._comp):
            self._comp.wait_stream(caller)
            self._comp.wait_event(ev["uploaded"])
            self._mark(ev, "computed_start")
            noise = noise.to(self.device, non_blocking=True)
            if state.graph is not None:
                state.static_in.copy_(slot.dev_in)
                state.static_noise.copy_(noise)
                state.graph.replay()
                slot.dev_out.copy_(state.static_out)
            else:
                slot.dev_out.copy_(self._forward(*_split(slot.dev_in, *ir_u8.shape), noise))
            ev["computed"].record()
        noise.record_stream(self._comp)  # the caller may free it while the compute stream still reads it
        # 4. Download.
        with torch.cuda.stream(self._down):
            self._down.wait_event(ev["computed"])
            self._mark(ev, "downloaded_start")
            slot.host_out.copy_(slot.dev_out, non_blocking=True)
            ev["downloaded"].record()
        handle = Handle(seq, slot=slot)
        slot.pending = handle
        return handle

    def _mark(self, events: dict[str, torch.cuda.Event], name: str) -> None:
        if self.profile:
            events[name].record()

    def _collect(self, handle: Handle) -> None:
        """Wait for one batch's download, copy it out of the pinned buffer and free its slot."""
        slot = handle._slot
        assert slot.pending is handle, "slot reused before its result was collected"
        ev = slot.events
        ev["downloaded"].synchronize()
        handle.out = slot.host_out.numpy().copy()
        if self.profile:
            handle.timings = {name: ev[f"{stage}_start"].elapsed_time(ev[stage])
                              for name, stage in (("h2d", "uploaded"), ("compute", "computed"), ("d2h", "downloaded"))}
        slot.pending = None
        handle._slot = None

    def _state(self, shape: tuple[int, int, int]) -> _ShapeState:
        """The slot ring (and graph) of one (B, H, W), built on first use; the least recently used shape is dropped."""
        state = self._shapes.get(shape)
        if state is not None:
            self._shapes.move_to_end(shape)
            return state
        if len(self._shapes) >= MAX_SHAPES:
            _, old = self._shapes.popitem(last=False)
            for slot in old.slots:
                if slot.pending is not None:
                    self._collect(slot.pending)
        log.info("engine: building buffers%s for %s on %s", " and CUDA graph" if self.cuda_graphs else "", shape,
                 self.device_name)
        state = _ShapeState(slots=[self._new_slot(*shape) for _ in range(DEPTH)])
        if self.cuda_graphs:
            self._capture(state, *shape)
        self._shapes[shape] = state
        return state

    def _new_slot(self, b: int, h: int, w: int) -> _Slot:
        n = b * 256 * 4 + 2 * b * h * w
        host_in = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        names = ["uploaded", "computed", "downloaded"]
        if self.profile:
            names += [f"{name}_start" for name in names]
        views = tuple(t.numpy() for t in _split(host_in, b, h, w))  # numpy views sharing host_in's memory
        return _Slot(host_in=host_in, host_out=torch.empty((b, h, w), dtype=torch.float32, pin_memory=True),
                     dev_in=torch.empty(n, dtype=torch.uint8, device=self.device),
                     dev_out=torch.empty((b, h, w), dtype=torch.float32, device=self.device),
                     # the host waits on "downloaded": blocking, so that it sleeps instead of spinning a core
                     events={name: torch.cuda.Event(enable_timing=self.profile, blocking=name == "downloaded")
                             for name in names}, host_views=views)

    def _capture(self, state: _ShapeState, b: int, h: int, w: int) -> None:
        """Warm up on the compute stream, then capture the whole forward on it (setup only, so syncs are fine)."""
        state.static_in = torch.zeros(b * 256 * 4 + 2 * b * h * w, dtype=torch.uint8, device=self.device)
        state.static_noise = torch.zeros((b, *self.latent_shape(h, w)), device=self.device)
        inputs = (*_split(state.static_in, b, h, w), state.static_noise)
        graph = torch.cuda.CUDAGraph()
        self._comp.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(self._comp), torch.inference_mode():
                for _ in range(_WARMUP):
                    self._forward(*inputs)
                with torch.cuda.graph(graph, stream=self._comp):
                    state.static_out = self._forward(*inputs)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(f"CUDA graph capture of {type(self.net).__name__} at {b}x{h}x{w} failed ({reason}); "
                               "set engine.cuda_graphs=false, or keep the forward free of .item(), host tensors and "
                               "data-dependent shapes") from exc
        torch.cuda.synchronize(self.device)
        state.graph = graph


def _lead(padded: int, size: int, stride: int) -> int:
    """The padding before a side of ``size``: half of it where the side was padded beyond the stride's multiple."""
    return (padded - size) // 2 if padded > -(-size // stride) * stride else 0


def _describe(x: object) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__name__} {tuple(x.shape)} {x.dtype}"
    return type(x).__name__
