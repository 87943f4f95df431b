"""The ``hclfuse`` Fuser: per-stream cached OT alignment, fixed latent noise shared by all streams, the engine.

:func:`build_hclfuse` loads a weights file (:mod:`streamfuse.model.weights`) into an :class:`~streamfuse.engine.Engine`;
:class:`HCLFuser` turns uint8 frame pairs into the net's inputs and also exposes the pieces the ablations need
(the sampled latent, decoding with another latent, the guides' energies).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import torch

from streamfuse.align import AlignCache, AlignConfig
from streamfuse.diffusion.guidance import cpu_kernels, energies, guide_inputs, structure_energy, structure_inputs
from streamfuse.engine import Engine
from streamfuse.inference import EngineConfig, HCLFuseConfig
from streamfuse.model.net import HCLFuseNet
from streamfuse.model import weights

__all__ = ["HCLFuser", "build_hclfuse"]

log = logging.getLogger(__name__)


class HCLFuser:
    """The ``hclfuse`` Fuser: cached OT alignment, then the net on the engine's device.

    Args:
        net: loaded HCLFuseNet.
        engine: the engine running ``net``.
        align_cfg: the OT alignment settings.
        seed: seed of the fixed latent noise (one for every stream).
        version: reported version string.
    """

    name = "hclfuse"

    def __init__(self, net: HCLFuseNet, engine: Engine, align_cfg: AlignConfig, seed: int, version: str):
        self.net = net
        self.engine = engine
        self.cache = AlignCache(align_cfg)
        self.seed = seed
        self.version = version
        self._noise: dict[tuple[int, int], torch.Tensor] = {}

    def noise(self, height: int, width: int) -> torch.Tensor:
        """The fixed latent noise (1, C, h, w) of a frame size, on the engine's device: the same for every stream
        (not keyed by its name, which differs between a live run's topic and its replay's), so a replay fuses as
        the live run did."""
        key = (height, width)
        if key not in self._noise:
            # crc32(b"default") at seed 0: the noise the model card's figures were measured with; the seed is XORed
            # into the low 32 bits, the only ones the CPU generator's Mersenne Twister keeps
            gen = torch.Generator().manual_seed(zlib.crc32(b"default") ^ self.seed)
            shape = self.engine.latent_shape(height, width)
            self._noise[key] = torch.randn((1, *shape), generator=gen).to(self.engine.device)
        return self._noise[key]

    def fuse(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
        """Fuse ``(H, W)`` uint8 IR and visible Y into ``(H, W)`` float32 Y on 0..255."""
        return self.fuse_batch([ir], [vis_y], [stream])[0]

    def fuse_batch(self, irs: list[np.ndarray], vis_ys: list[np.ndarray], streams: list[str]) -> np.ndarray:
        """Fuse same-sized pairs, ``max_batch`` per engine call; returns ``(B, H, W)`` float32 on 0..255."""
        if not irs or not len(irs) == len(vis_ys) == len(streams):
            raise ValueError(f"hclfuse needs a batch of at least one pair, with an IR image, a visible Y and a stream "
                             f"name each, got {len(irs)}, {len(vis_ys)} and {len(streams)}")
        for k, (ir, vis) in enumerate(zip(irs, vis_ys)):
            if ir.dtype != np.uint8 or vis.dtype != np.uint8 or ir.ndim != 2 or ir.shape != vis.shape:
                raise ValueError(f"hclfuse needs two (H, W) uint8 images of one size, got IR {ir.shape} {ir.dtype}"
                                 f" and visible Y {vis.shape} {vis.dtype}")
            if ir.shape != irs[0].shape:  # one engine call, one noise tensor: fuse other sizes in batches of their own
                raise ValueError(f"hclfuse fuses a batch of one frame size: pair 0 is {irs[0].shape}, pair {k} "
                                 f"{ir.shape}")
        luts, noise = self.engine_inputs(irs, vis_ys, streams)
        n = self.engine.max_batch
        return np.concatenate([self.engine.run(np.stack(irs[i:i + n]), np.stack(vis_ys[i:i + n]), luts[i:i + n],
                                               noise[i:i + n]) for i in range(0, len(irs), n)])

    def engine_inputs(self, irs: list[np.ndarray], vis_ys: list[np.ndarray],
                      streams: list[str]) -> tuple[np.ndarray, torch.Tensor]:
        """Per-stream OT tables ``(B, 256)`` and the fixed noise ``(B, *latent_shape)`` for :meth:`Engine.submit`."""
        h, w = irs[0].shape
        luts = np.stack([self.cache.lut(ir, vis, s) for ir, vis, s in zip(irs, vis_ys, streams)])
        return luts, torch.cat([self.noise(h, w)] * len(streams))

    def latent(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> torch.Tensor:
        """The sampled latent (1, C, h, w) of one pair, on the engine's device (for ablations: see
        :meth:`decode_with`)."""
        ir01, vis01, _ = self._inputs(ir, vis_y, stream)
        with torch.inference_mode():
            return self.net.sample(ir01, vis01, self.noise(*ir.shape))[0]

    def decode_with(self, ir: np.ndarray, vis_y: np.ndarray, z: torch.Tensor, stream: str = "default") -> np.ndarray:
        """Fuse a pair with the latent ``z`` (e.g. zeroed, or another pair's) in place of its own, the decoded-image
        guide's steps included: (H, W) float32."""
        ir01, vis01, raw01 = self._inputs(ir, vis_y, stream)
        rows, cols = self.engine.frame(*ir.shape)
        with torch.inference_mode():
            skips = self.net.encoder(torch.cat([ir01, vis01], dim=1))[2]  # no sampling: only the skips are needed
            out = self.net.decode(z.to(vis01.device, vis01.dtype), skips, raw01, vis01)
        return out[0, 0, rows, cols].float().cpu().numpy() * 255.0

    def energies(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> dict[str, float]:
        """What the guides lower: the physics energies (heat, structure, consistency) of the sampled latent's image
        channel, and ``image_structure``, the structure energy of the fused image against the raw IR and the visible
        (the decoded-image guide's)."""
        ir01, vis01, raw01 = self._inputs(ir, vis_y, stream)
        noise = self.noise(*ir.shape)
        frame = (..., *self.engine.frame(*ir.shape))  # the image energy is the frame's, not its padding's
        with torch.inference_mode():
            z, skips = self.net.sample(ir01, vis01, noise)
            fused = self.net.decode(z, skips, raw01, vis01) * 2.0 - 1.0
            image = structure_energy(fused[frame], structure_inputs(raw01[frame], vis01[frame]))
        return {**energies(z, guide_inputs(ir01, vis01, z.shape[-2:]), self.net.cfg.image_channels),
                "image_structure": image}

    def _inputs(self, ir: np.ndarray, vis_y: np.ndarray,
                stream: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The net's inputs for one pair on the engine's device, padded to the stride: (IR', visible, raw IR)."""
        lut = torch.from_numpy(self.cache.lut(ir, vis_y, stream)).float()[None]
        return self.engine.net_inputs(*(x.to(self.engine.device) for x in (lut, torch.from_numpy(ir)[None],
                                                                            torch.from_numpy(vis_y)[None])))

    def stats(self) -> dict[str, float]:
        """OT cache counters (hits, misses, solve ms)."""
        return self.cache.stats()

    def warm_up(self, height: int, width: int) -> None:
        """One engine call on a blank frame of this size, outside every stream's state (no OT solve): the CUDA graph
        capture and the kernels' first-call set-up then happen before a live run's capture starts. On a GPU they took
        0.9 s of the first frame, over which the cameras' frames were dropped and the first one published was stale."""
        blank = np.zeros((1, height, width), np.uint8)
        self.engine.run(blank, blank, np.arange(256, dtype=np.float32)[None], self.noise(height, width))


def build_hclfuse(model: HCLFuseConfig = HCLFuseConfig(), engine: EngineConfig = EngineConfig(),
                  align: AlignConfig = AlignConfig(), *, max_batch: int = 1) -> HCLFuser:
    """Load the weights named by ``model.weights`` (default: the shipped file) onto an engine and build the Fuser.

    ``max_batch`` pairs go through one engine call of :meth:`HCLFuser.fuse_batch` (the benchmark's batches); the
    pipelines fuse one pair at a time, the newest, so they keep the default.
    """
    path = Path(model.weights) if model.weights else weights.DEFAULT_WEIGHTS
    net, extra = weights.load_weights(path, steps=model.steps, guidance=model.guidance,
                                      guidance_scale=model.guidance_scale, student=model.sampler == "student",
                                      image_steps=model.image_guidance)
    used = {k: getattr(align, k) for k in ("reg", "blend")}
    trained = extra.get("align")  # the file's record: numbers only (a hand-edited one may hold anything)
    trained = {k: v for k, v in trained.items() if k in used and type(v) in (int, float)} \
        if isinstance(trained, dict) else {}
    if align.enabled and any(abs(trained[k] - used[k]) > 1e-12 for k in trained):
        log.warning("%s was trained with align %s, running with %s", path.name, trained, used)
    stage = extra.get("config", {}).get("train") if isinstance(extra.get("config"), dict) else None
    if model.sampler == "student" and isinstance(stage, dict) and stage.get("distill") is False:  # said by its run
        log.warning("%s holds an untrained student (its run had no --distill): use hclfuse.sampler: teacher, or "
                    "distill it (python -m streamfuse train --distill --init %s --out DIR)", path.name, path)
    graphs = engine.cuda_graphs and not net.image_steps  # a graph would have to capture the guide's autograd
    runner = Engine(net, device=engine.device, precision=engine.precision, cuda_graphs=graphs,
                    max_batch=max_batch, threads=engine.threads)
    if runner.device.type == "cpu" and model.guidance:
        cpu_kernels()  # load (or, once per install, compile) the guides' numba kernels now, not on the first frame
    return HCLFuser(net, runner, align, model.seed, version=weights.weights_version(path))
