"""Train HCLFuse (VBE + latent denoiser) on registered IR/visible pairs, keeping EMA weights for inference.

Reads every pair under DATA (msrs/train, roadscene, llvip/train and llvip/test, sequences/*), never msrs/test,
which is kept for evaluation. Each IR image is aligned to its visible image with the same OT lookup table as at
inference (streamfuse.align, computed on the whole frame), then random crops and flips feed the net. Checkpoints
(model, EMA, optimiser, step, random state) are written every --ckpt-minutes to OUT/checkpoint.pt; --resume
continues from there; --init starts a new run from the tensors of a weights file whose names and shapes match
(fine-tuning; the rest keep their initialisation, a missing student starts as a copy of the teacher). At the end
OUT/<the shipped weights' file name> holds the EMA weights and OUT/train_config.yaml the resolved configuration.

Two stages, one script:

1. ``tools/train.py --out runs/a`` trains the VBE, the decoder and the teacher denoiser with the method's losses
   (streamfuse.model.losses).
2. ``tools/train.py --distill --init runs/a/hclfuse_v3.pt --out runs/b`` freezes them and distils the student: from
   the same noise and posterior mean, its ``student_steps``-step guided sample must match the teacher's
   ``--teacher-steps``-step guided sample (MSE on the latent plus L1 on the decoded image).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from streamfuse.align import AlignConfig, align, histogram, identity_lut
from streamfuse.engine import tune_malloc
from streamfuse.model.net import HCLFuseNet, ModelConfig
from streamfuse.model.weights import DEFAULT_WEIGHTS, read_weights, save_weights
from streamfuse.model.losses import LossConfig, hclfuse_losses

# after streamfuse, whose import sets the OpenMP wait policy that torch reads once when it loads
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

log = logging.getLogger("train")

REPO = Path(__file__).resolve().parents[1]
SETS = ("msrs/train", "roadscene", "llvip/train", "llvip/test", "sequences/*")  # msrs/test is for evaluation only
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the model, loss and align configs are saved beside them)."""

    steps: int = 20000
    minutes: float = 0.0  # wall-clock budget; the schedule ends at whichever of steps / minutes comes first (0: none)
    batch: int = 8
    crop: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    ema: float = 0.999
    seed: int = 0
    threads: int = 2
    distill: bool = False  # stage 2: distil the student from the frozen teacher (see the module docstring)
    teacher_steps: int = 20
    guidance_scale: float = 1.0  # of the guided samplers the student is distilled from and with


def load_pairs(data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """All (name, IR grey uint8, visible Y uint8) pairs of the training sets under ``data``."""
    pairs = []
    for pattern in SETS:
        for root in sorted(data.glob(pattern)):
            for ir_path in sorted((root / "ir").glob("*")):
                vis_path = root / "vi" / ir_path.name
                if ir_path.suffix.lower() not in IMAGE_EXT or not vis_path.exists():
                    continue
                ir = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE)  # LLVIP IR is 3-channel: read as grey
                vis = cv2.imread(str(vis_path), cv2.IMREAD_COLOR)
                if ir is None or vis is None or ir.shape != vis.shape[:2]:
                    raise ValueError(f"unreadable or mismatched pair: {ir_path} / {vis_path}")
                pairs.append((str(ir_path.relative_to(data)), ir, cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb)[..., 0]))
    if not pairs:
        raise FileNotFoundError(f"no training pairs (<set>/ir/<name> + <set>/vi/<name>) under {data}")
    return pairs


class PairSampler:
    """Random crops and flips of OT-aligned pairs; every image weighs the same, whatever its size.

    Args:
        pairs: from :func:`load_pairs`.
        align_cfg: OT settings (the same as at inference).
        crop: square crop side (px); smaller images are upscaled to fit.
        rng: numpy random generator.
    """

    def __init__(self, pairs: list[tuple[str, np.ndarray, np.ndarray]], align_cfg: AlignConfig, crop: int,
                 rng: np.random.Generator):
        self.crop, self.rng = crop, rng
        self.items = []
        for _, ir, vis in pairs:
            scale = max(1.0, crop / min(ir.shape))
            if scale > 1.0:
                size = (math.ceil(ir.shape[1] * scale), math.ceil(ir.shape[0] * scale))
                ir, vis = cv2.resize(ir, size), cv2.resize(vis, size)
            lut = align(histogram(ir), histogram(vis), align_cfg).lut if align_cfg.enabled else identity_lut()
            self.items.append(np.stack([lut[ir], vis / np.float32(255), ir / np.float32(255)]))

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ir01, vis01, ir_raw01)``, each (n, 1, crop, crop) float32; ``ir01`` is the aligned IR'."""
        crops = []
        for i in self.rng.integers(len(self.items), size=n):
            item = self.items[i]  # (3, H, W): IR', VIS, raw IR
            y = self.rng.integers(item.shape[1] - self.crop + 1)
            x = self.rng.integers(item.shape[2] - self.crop + 1)
            c = item[:, y:y + self.crop, x:x + self.crop]
            if self.rng.random() < 0.5:
                c = c[:, :, ::-1]
            if self.rng.random() < 0.2:
                c = c[:, ::-1]
            crops.append(c)
        b = torch.from_numpy(np.ascontiguousarray(np.stack(crops)))  # (n, 3, crop, crop)
        return b[:, 0:1], b[:, 1:2], b[:, 2:3]


def _progress(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """Fraction of the run done: by steps, or by the wall-clock budget when that comes first."""
    p = step / cfg.steps
    return max(p, elapsed / (cfg.minutes * 60.0)) if cfg.minutes > 0 else p


def _lr(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay (over ``progress``) to 5% of ``lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(data: Path, out: Path, cfg: TrainConfig, model_cfg: ModelConfig, loss_cfg: LossConfig,
          align_cfg: AlignConfig, *, resume: bool = False, ckpt_minutes: float = 3.0, init: Path | None = None) -> Path:
    """Run the training loop; returns the path of the EMA weights file."""
    torch.set_num_threads(cfg.threads)
    tune_malloc()
    out.mkdir(parents=True, exist_ok=True)
    resolved = {"train": {**dataclasses.asdict(cfg), "init": str(init) if init else None},
                "model": dataclasses.asdict(model_cfg),
                "loss": dataclasses.asdict(loss_cfg), "align": dataclasses.asdict(align_cfg)}
    (out / "train_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    torch.manual_seed(cfg.seed)  # script, not library: seeds the weight initialisation
    net = HCLFuseNet(model_cfg)
    if init is not None:
        _load_matching(net, init)
    if cfg.distill:  # only the student learns; the teacher, encoder and decoder stay as loaded
        net.requires_grad_(False).student.requires_grad_(True)
    ema = HCLFuseNet(model_cfg).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    step, elapsed = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        rng.bit_generator.state = state["rng"]
        step, elapsed = state["step"], state["elapsed"]
        log.info("resumed from %s at step %d", ckpt, step)

    pairs = load_pairs(data)
    sampler = PairSampler(pairs, align_cfg, cfg.crop, rng)
    log.info("%d training pairs from %s", len(pairs), data)

    def save_checkpoint() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "rng": rng.bit_generator.state, "step": step, "elapsed": elapsed, "config": resolved}, str(tmp))
        tmp.replace(ckpt)

    T = model_cfg.num_train_timesteps
    c, s = model_cfg.latent_channels, cfg.crop // HCLFuseNet.stride
    t_start = time.perf_counter() - elapsed
    last_ckpt = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, mininterval=10.0, dynamic_ncols=True)
    net.train()
    while _progress(step, elapsed, cfg) < 1.0:
        ir01, vis01, ir_raw = sampler.batch(cfg.batch)
        eps = torch.randn((cfg.batch, c, s, s), generator=gen)
        if cfg.distill:
            losses = distill_losses(net, ir01, vis01, ir_raw, eps, cfg)
        else:
            t = torch.randint(0, T, (cfg.batch,), generator=gen)
            e0 = torch.randn((cfg.batch, c, s, s), generator=gen)
            losses = hclfuse_losses(net.train_outputs(ir01, vis01, ir_raw, t, eps, e0), ir01, vis01, ir_raw, eps,
                                    loss_cfg, model_cfg.image_channels)
        for group in opt.param_groups:
            group["lr"] = _lr(step, _progress(step, elapsed, cfg), cfg)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1.0 - decay)
        step += 1
        elapsed = time.perf_counter() - t_start
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in losses.items()})
        if time.perf_counter() - last_ckpt > ckpt_minutes * 60 or _progress(step, elapsed, cfg) >= 1.0:
            save_checkpoint()
            save_weights(out / DEFAULT_WEIGHTS.name, ema, extra={"align": dataclasses.asdict(align_cfg), "step": step,
                                                            "train_seconds": round(elapsed, 1), "config": resolved})
            last_ckpt = time.perf_counter()
            log.info("step %d  %.0f s  %s", step, elapsed, {k: round(v.item(), 5) for k, v in losses.items()})
    bar.close()
    return out / DEFAULT_WEIGHTS.name


def _load_matching(net: HCLFuseNet, path: Path) -> None:
    """Copy the tensors of a weights file whose names and shapes match ``net``'s; a missing student copies the
    teacher. Logs what was left at its initialisation."""
    _, state, _ = read_weights(path, any_version=True, check_model=False)
    own = net.state_dict()
    if not any(k.startswith("student.") for k in state):
        state.update({"student." + k[len("denoiser."):]: v for k, v in state.items() if k.startswith("denoiser.")})
    taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if 2 * len(taken) < len(state):  # another architecture: a few coincident bias shapes are no starting point
        raise ValueError(f"{path}: only {len(taken)} of its {len(state)} tensors match the model config {net.cfg}")
    net.load_state_dict(taken, strict=False)
    left = sorted(set(own) - set(taken))
    log.info("init from %s: %d tensors loaded, %d left at initialisation %s", path, len(taken), len(left), left[:6])


def distill_losses(net: HCLFuseNet, ir01: torch.Tensor, vis01: torch.Tensor, ir_raw: torch.Tensor,
                   noise: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Student vs teacher from the same noise: MSE of the latents and L1 of the decoded images (0..1)."""
    with torch.no_grad():
        mu, _, skips = net.encoder(torch.cat([ir01, vis01], dim=1))
        net.set_sampling(cfg.teacher_steps, True, cfg.guidance_scale)
        z_teacher = net.sample_latent(mu, ir01, vis01, noise)
        f_teacher = net.decoder(z_teacher, skips, ir_raw, vis01)
    net.set_sampling(1, True, cfg.guidance_scale, student=True)
    z_student = net.sample_latent(mu, ir01, vis01, noise)
    terms = {"latent": F.mse_loss(z_student, z_teacher),
             "image": F.l1_loss(net.decoder(z_student, skips, ir_raw, vis01), f_teacher)}
    terms["total"] = terms["latent"] + 10.0 * terms["image"]
    return terms


def _override(cls: type, args: argparse.Namespace, prefix: str) -> object:
    """Build a config dataclass from ``--prefix.key=value`` style arguments."""
    kw = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f"{prefix}_{f.name}", None)
        if value is not None:
            kw[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kw)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "hclfuse", help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--ckpt-minutes", type=float, default=3.0, help="checkpoint interval")
    parser.add_argument("--init", type=Path, help="weights file whose tensors start the run (fine-tuning)")
    for prefix, cls in (("train", TrainConfig), ("model", ModelConfig), ("loss", LossConfig), ("align", AlignConfig)):
        for f in dataclasses.fields(cls):
            flag = f"--{f.name}" if prefix == "train" else f"--{prefix}.{f.name}"
            kind = {int: int, float: float, str: str, bool: lambda s: s.lower() in ("1", "true", "yes")}.get(
                type(f.default), int)
            nargs = "+" if isinstance(f.default, tuple) else "?" if isinstance(f.default, bool) else None
            const = True if isinstance(f.default, bool) else None  # a bare boolean flag means true
            parser.add_argument(flag, dest=f"{prefix}_{f.name}", type=kind, nargs=nargs, const=const, default=None,
                                help=f"default {f.default}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfgs = [_override(cls, args, p) for p, cls in (("train", TrainConfig), ("model", ModelConfig),
                                                   ("loss", LossConfig), ("align", AlignConfig))]
    try:
        path = train(args.data, args.out, *cfgs, resume=args.resume, ckpt_minutes=args.ckpt_minutes, init=args.init)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"train: {exc}") from None
    log.info("EMA weights: %s", path)


if __name__ == "__main__":
    main()
