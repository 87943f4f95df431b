"""HCLFuseNet (encode -> K-step physics-guided DDIM on the latent -> decode), weights loading and the Fuser.

Two denoisers share the encoder and decoder: the *teacher*, sampled with K = 1..20 guided DDIM steps, and the
*student*, distilled from the teacher's guided K-step samples to ``student_steps`` steps (the live default).

``HCLFuseNet.forward(ir01, vis01, noise, ir_raw01)`` is pure tensor code without host synchronisation, so the engine
can capture it in a CUDA graph. Channel order is ``[IR', VIS]`` everywhere, in training and inference: the encoder
and the guides see the OT-aligned IR', the decoder takes its fine IR detail from the raw IR (the alignment's lookup
table rescales local contrast, which the fused image should not inherit).
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamfuse.config import check
from streamfuse.diffusion.guidance import ComposedGuide, default_guides, energies, guide_inputs
from streamfuse.diffusion.sampling import sample_ddim
from streamfuse.diffusion.schedules import alphas_cumprod, ddim_timesteps, eps_to_x0, linear_betas
from streamfuse.model.denoiser import Denoiser
from streamfuse.model.vbe import Decoder, Encoder

__all__ = ["DEFAULT_WEIGHTS", "HCLFuseNet", "HCLFuser", "ModelConfig", "build_hclfuse", "load_weights",
           "read_weights", "save_weights"]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "hclfuse_v3.pt"
FORMAT = "streamfuse-hclfuse"
FORMAT_VERSION = 3  # 3: latent-borne base, gated detail, distilled student (2: basis decoder)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of HCLFuseNet (stored in the weights file).

    Args:
        widths: VBE channels at H/4 and H/8.
        latent_channels: latent channels C at H/8.
        image_channels: latent channels trained to be image-like (the physics guides act on them).
        denoiser_width: denoiser channels at H/8 (twice that at H/16), teacher and student alike.
        student_steps: DDIM steps of the distilled student.
        num_train_timesteps: T of the linear beta schedule.
        beta_start: first beta.
        beta_end: last beta.
    """

    widths: tuple[int, int] = (16, 24)
    latent_channels: int = 4
    image_channels: int = 1
    denoiser_width: int = 16
    student_steps: int = 1
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        check(len(self.widths) == 2 and min(self.widths) >= 1, "widths", self.widths, "2 positive ints")
        check(1 <= self.image_channels <= self.latent_channels, "image_channels", self.image_channels,
              "1..latent_channels")
        check(self.denoiser_width >= 1, "denoiser_width", self.denoiser_width, ">= 1")
        check(1 <= self.student_steps <= 4, "student_steps", self.student_steps, "1..4")
        check(0 < self.beta_start < self.beta_end < 1, "beta_end", self.beta_end, "0 < beta_start < beta_end < 1")


class HCLFuseNet(nn.Module):
    """``(ir01, vis01, noise (B,C,H/8,W/8), ir_raw01) -> fused01 (B,1,H,W)`` in [0, 1]; images are (B,1,H,W) 0..1.

    Args:
        cfg: architecture.
        steps: DDIM steps K of the teacher at inference (ignored with ``student``).
        guidance: apply the physics guides during sampling.
        guidance_scale: multiplies the method's guide weights.
        student: sample with the distilled student (``cfg.student_steps`` steps) instead of the K-step teacher.
    """

    stride = 8

    def __init__(self, cfg: ModelConfig, *, steps: int = 4, guidance: bool = True, guidance_scale: float = 1.0,
                 student: bool = False):
        super().__init__()
        self.cfg = cfg
        self.latent_channels = cfg.latent_channels
        self.encoder = Encoder(cfg.widths, cfg.latent_channels)
        self.decoder = Decoder(cfg.widths, cfg.latent_channels)
        abar = alphas_cumprod(linear_betas(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end))
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.denoiser = Denoiser(cfg.latent_channels, cfg.denoiser_width, abar)
        self.student = Denoiser(cfg.latent_channels, cfg.denoiser_width, abar)
        self.guide: ComposedGuide | None = None
        self.set_sampling(steps, guidance, guidance_scale, student)

    def set_sampling(self, steps: int, guidance: bool = True, guidance_scale: float = 1.0,
                     student: bool = False) -> None:
        """Choose the sampler (teacher with K steps, or the student) and the guides (no weights change)."""
        self.steps = self.cfg.student_steps if student else steps
        self.timesteps = ddim_timesteps(self.steps, self.cfg.num_train_timesteps)
        self.use_student = student
        self.guide = (default_guides(self.timesteps, guidance_scale, channels=self.cfg.image_channels) if guidance
                      else None)

    def _eps(self, x: torch.Tensor, t: torch.Tensor, *, mu: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return (self.student if self.use_student else self.denoiser)(x, t, mu)

    def forward(self, ir01: torch.Tensor, vis01: torch.Tensor, noise: torch.Tensor,
                ir_raw01: torch.Tensor) -> torch.Tensor:
        z, skips = self.sample(ir01, vis01, noise)
        return self.decode(z, skips, ir_raw01, vis01)

    def sample(self, ir01: torch.Tensor, vis01: torch.Tensor,
               noise: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode the pair and run the sampler: the latent (B, C, H/8, W/8) and the encoder's skips."""
        mu, _, skips = self.encoder(torch.cat([ir01, vis01], dim=1))  # (B, C, H/8, W/8)
        return self.sample_latent(mu, ir01, vis01, noise), skips

    def sample_latent(self, mu: torch.Tensor, ir01: torch.Tensor, vis01: torch.Tensor, noise: torch.Tensor, *,
                      callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """Guided DDIM from ``noise`` conditioned on the posterior mean ``mu`` (B, C, H/8, W/8)."""
        cond = {"mu": mu}
        if self.guide is not None:
            cond.update(guide_inputs(ir01, vis01, mu.shape[-2:]))
        return sample_ddim(self._eps, noise.to(mu.dtype), self.timesteps, self.alphas_cumprod.to(mu.dtype),
                           cond=cond, guide=self.guide, callback=callback)

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor], ir_raw01: torch.Tensor,
               vis01: torch.Tensor) -> torch.Tensor:
        """The fused Y (B, 1, H, W) in [0, 1] from a latent and the pair's skips and sources."""
        return self.decoder(z, skips, ir_raw01, vis01).clamp(0.0, 1.0)

    def train_outputs(self, ir01: torch.Tensor, vis01: torch.Tensor, ir_raw01: torch.Tensor, t: torch.Tensor,
                      eps: torch.Tensor, e0: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the training losses need for one batch.

        Args:
            ir01, vis01, ir_raw01: (B, 1, H, W) in 0..1 (aligned IR', visible, raw IR).
            t: (B,) timesteps.
            eps: (B, C, H/8, W/8) diffusion noise added to the latent.
            e0: (B, C, H/8, W/8) reparameterisation noise of the posterior sample.

        Returns:
            ``mu``, ``logvar``, ``z`` (posterior sample), ``eps_pred`` and ``fused`` (2B, 1, H, W): the decoded
            posterior sample, then the decoded one-step prediction ``x0_pred`` of the noisy latent.
        """
        mu, logvar, skips = self.encoder(torch.cat([ir01, vis01], dim=1))
        z = mu + (0.5 * logvar).exp() * e0  # posterior sample
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * z + (1.0 - abar).sqrt() * eps
        eps_pred = self.denoiser(x_t, t, mu.detach())
        # what a one-step sampler at t produces: the decoder is trained on it as well as on the posterior sample
        x0_pred = eps_to_x0(x_t, eps_pred, abar).clamp(-1.0, 1.0)
        twice = [x.repeat(2, 1, 1, 1) for x in (*skips, ir_raw01, vis01)]
        fused = self.decoder(torch.cat([z, x0_pred]), twice[:-2], *twice[-2:])
        return {"mu": mu, "logvar": logvar, "z": z, "eps_pred": eps_pred, "fused": fused}

    @torch.no_grad()
    def fold_gates(self) -> None:
        """Fold the VBE gates into the convolutions (inference only)."""
        self.encoder.fold_gates()


def save_weights(path: str | Path, net: HCLFuseNet, extra: dict | None = None, *, half: bool = False) -> None:
    """Write the state dict with the architecture config (and training metadata) to ``path``."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in net.state_dict().items()}
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "model": asdict(net.cfg), "state_dict": state,
                "extra": extra or {}}, str(path))


def read_weights(path: str | Path, *, any_version: bool = False,
                 check_model: bool = True) -> tuple[ModelConfig, dict, dict]:
    """Read and check a weights file without building a net.

    Args:
        path: the file.
        any_version: accept older format versions (to initialise a fine-tuning run from their tensors).
        check_model: require the tensors to match the file's model config exactly.

    Returns:
        ``(model config, state dict as float32, extra metadata)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file and what is wrong (not a weights file, config and tensors disagree).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HCLFuse weights not found: {path}")
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises anything (IndexError, KeyError, ...) on a foreign file
        raise ValueError(f"{path}: not a readable torch weights file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state_dict" not in blob:
        raise ValueError(f"{path}: not an HCLFuse weights file (expected format {FORMAT!r})")
    if blob.get("format_version") != FORMAT_VERSION and not any_version:
        raise ValueError(f"{path}: weights format version {blob.get('format_version')} is not supported"
                         f" (expected {FORMAT_VERSION})")
    known = {f.name for f in fields(ModelConfig)}
    raw = dict(blob.get("model", {}))
    if set(raw) - known:
        raise ValueError(f"{path}: unknown model config keys {sorted(set(raw) - known)}")
    try:
        cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: bad model config: {exc}") from None
    state = blob["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: its state_dict is not a mapping of tensors")
    expected = HCLFuseNet(cfg).state_dict() if check_model else state
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model config {cfg}: missing {missing[:3]},"
                         f" unexpected {unexpected[:3]}")
    bad = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"{path}: weights do not match the model config: {bad[0]} has shape"
                         f" {tuple(state[bad[0]].shape)}, the config needs {tuple(expected[bad[0]].shape)}")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ValueError(f"{path}: weights contain NaN or infinite values")
    return cfg, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, dict(blob.get("extra", {}))


def load_weights(path: str | Path, **net_kwargs: object) -> tuple[HCLFuseNet, dict]:
    """Load a weights file (see :func:`read_weights`) into a new HCLFuseNet.

    Returns:
        The net (eval mode, gates folded) and the file's ``extra`` metadata.
    """
    cfg, state, extra = read_weights(path)
    net = HCLFuseNet(cfg, **net_kwargs)
    net.load_state_dict(state)
    net.eval().requires_grad_(False)
    net.fold_gates()
    return net, extra


def _sha8(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


class HCLFuser:
    """The ``hclfuse`` Fuser: cached OT alignment, then the net on the engine's device.

    Args:
        net: loaded HCLFuseNet.
        engine: a ``streamfuse.engine.Engine`` running ``net``.
        align_cfg: the OT alignment settings.
        seed: seed of the per-stream fixed noise.
        version: reported version string.
    """

    name = "hclfuse"

    def __init__(self, net: HCLFuseNet, engine: object, align_cfg: object, seed: int, version: str):
        from streamfuse.align import AlignCache

        self.net = net
        self.engine = engine
        self.cache = AlignCache(align_cfg)
        self.seed = seed
        self.version = version
        self._noise: dict[tuple[str, int, int], torch.Tensor] = {}

    def noise(self, stream: str, height: int, width: int) -> torch.Tensor:
        """The fixed latent noise (1, C, h, w) of a stream and frame size, on the engine's device."""
        key = (stream, height, width)
        if key not in self._noise:
            gen = torch.Generator().manual_seed((self.seed << 32) ^ zlib.crc32(stream.encode()))
            shape = self.engine.latent_shape(height, width)
            self._noise[key] = torch.randn((1, *shape), generator=gen).to(self.engine.device)
        return self._noise[key]

    def fuse(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
        """Fuse ``(H, W)`` uint8 IR and visible Y into ``(H, W)`` float32 Y on 0..255."""
        return self.fuse_batch([ir], [vis_y], [stream])[0]

    def fuse_batch(self, irs: list[np.ndarray], vis_ys: list[np.ndarray], streams: list[str]) -> np.ndarray:
        """Fuse same-sized pairs, ``max_batch`` per engine call; returns ``(B, H, W)`` float32 on 0..255."""
        for ir, vis in zip(irs, vis_ys):
            if ir.dtype != np.uint8 or vis.dtype != np.uint8 or ir.ndim != 2 or ir.shape != vis.shape:
                raise ValueError(f"hclfuse needs two (H, W) uint8 images of one size, got IR {ir.shape} {ir.dtype}"
                                 f" and visible Y {vis.shape} {vis.dtype}")
        luts, noise = self.engine_inputs(irs, vis_ys, streams)
        n = self.engine.max_batch
        return np.concatenate([self.engine.run(np.stack(irs[i:i + n]), np.stack(vis_ys[i:i + n]), luts[i:i + n],
                                               noise[i:i + n]) for i in range(0, len(irs), n)])

    def engine_inputs(self, irs: list[np.ndarray], vis_ys: list[np.ndarray],
                      streams: list[str]) -> tuple[np.ndarray, torch.Tensor]:
        """Per-stream OT tables ``(B, 256)`` and fixed noise ``(B, *latent_shape)`` for :meth:`Engine.submit`."""
        h, w = irs[0].shape
        luts = np.stack([self.cache.lut(ir, vis, s) for ir, vis, s in zip(irs, vis_ys, streams)])
        return luts, torch.cat([self.noise(s, h, w) for s in streams])

    def latent(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> torch.Tensor:
        """The sampled latent (1, C, h, w) of one pair, on the engine's device (for ablations: see
        :meth:`decode_with`)."""
        ir01, vis01, _ = self._inputs(ir, vis_y, stream)
        with torch.inference_mode():
            return self.net.sample(ir01, vis01, self.noise(stream, *ir.shape))[0]

    def decode_with(self, ir: np.ndarray, vis_y: np.ndarray, z: torch.Tensor, stream: str = "default") -> np.ndarray:
        """Fuse a pair with the latent ``z`` (e.g. zeroed, or another pair's) in place of its own: (H, W) float32."""
        ir01, vis01, raw01 = self._inputs(ir, vis_y, stream)
        h, w = ir.shape
        with torch.inference_mode():
            skips = self.net.encoder(torch.cat([ir01, vis01], dim=1))[2]  # no sampling: only the skips are needed
            out = self.net.decode(z.to(vis01.device, vis01.dtype), skips, raw01, vis01)
        return out[0, 0, :h, :w].float().cpu().numpy() * 255.0

    def energies(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> dict[str, float]:
        """The physics energies (heat, structure, consistency) of the sampled latent's image channel: what the
        guides lower."""
        ir01, vis01, _ = self._inputs(ir, vis_y, stream)
        with torch.inference_mode():
            z = self.net.sample(ir01, vis01, self.noise(stream, *ir.shape))[0]
        return energies(z, guide_inputs(ir01, vis01, z.shape[-2:]), self.net.cfg.image_channels)

    def _inputs(self, ir: np.ndarray, vis_y: np.ndarray,
                stream: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The net's inputs for one pair on the engine's device, padded to the stride: (IR', visible, raw IR)."""
        lut = torch.from_numpy(self.cache.lut(ir, vis_y, stream)).float()
        hp, wp = self.engine.padded(*ir.shape)
        pad = (0, wp - ir.shape[1], 0, hp - ir.shape[0])
        raw = torch.from_numpy(ir).view(1, 1, *ir.shape)
        vis = torch.from_numpy(vis_y).view(1, 1, *ir.shape)
        ir01, vis01, raw01 = (torch.nn.functional.pad(x.to(self.engine.device), pad, mode="replicate")
                              for x in (lut[raw.long()], vis.float() / 255.0, raw.float() / 255.0))
        return ir01, vis01, raw01

    def stats(self) -> dict[str, float]:
        """OT cache counters (hits, misses, solve ms)."""
        return self.cache.stats()


def build_hclfuse(fuse_cfg: object, align_cfg: object | None = None) -> HCLFuser:
    """Load the weights named by ``fuse_cfg.weights`` (default: the shipped file) and build the Fuser."""
    from streamfuse.align import AlignConfig
    from streamfuse.engine import Engine

    align_cfg = align_cfg if align_cfg is not None else AlignConfig()
    path = Path(fuse_cfg.weights) if fuse_cfg.weights else DEFAULT_WEIGHTS
    net, extra = load_weights(path, steps=fuse_cfg.steps, guidance=fuse_cfg.guidance,
                              guidance_scale=fuse_cfg.guidance_scale, student=fuse_cfg.sampler == "student")
    trained = extra.get("align", {})
    used = {k: getattr(align_cfg, k) for k in ("reg", "blend")}
    if align_cfg.enabled and trained and any(abs(trained[k] - used[k]) > 1e-12 for k in used if k in trained):
        log.warning("%s was trained with align %s, running with %s", path.name,
                    {k: trained[k] for k in used if k in trained}, used)
    engine = Engine(net, device=fuse_cfg.device, precision=fuse_cfg.precision, cuda_graphs=fuse_cfg.cuda_graphs,
                    max_batch=fuse_cfg.max_batch, threads=fuse_cfg.threads)
    return HCLFuser(net, engine, align_cfg, fuse_cfg.seed, version=f"{FORMAT_VERSION}.0+{_sha8(path)}")
