"""The training loop (nanoGPT-style, one loop for both stages): AdamW with warm-up and cosine decay, EMA weights
for inference, checkpoints that resume exactly, the resolved configuration written beside the outputs.

Stage 1 trains the VBE, the decoder and the teacher denoiser with the method's losses
(:func:`streamfuse.model.losses.hclfuse_losses`); stage 2 (``train.distill``) freezes them and distils the student
(:mod:`streamfuse.train.distill`). ``init`` starts a run from the tensors of a weights file whose names and shapes
match (fine-tuning; the rest keep their initialisation, a missing student starts as a copy of the teacher).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from streamfuse.atomic_write import durable_replace
from streamfuse.device import available_cores, tune_malloc
from streamfuse.errors import io_reason
from streamfuse.model.losses import hclfuse_losses
from streamfuse.model.net import HCLFuseNet
from streamfuse.model.weights import DEFAULT_WEIGHTS, read_weights, save_weights
from streamfuse.output_lock import output_lock
from streamfuse.signals import handled, raise_interrupt
from streamfuse.train.checkpoint_file import read_checkpoint
from streamfuse.train.config import TrainConfig, TrainSetup
from streamfuse.train.data import PairSampler, check_digest_version, data_record, load_pairs
from streamfuse.train.distill import distill_losses
from streamfuse.train.settings_file import new_settings_file, settings_file, settle

__all__ = ["run_training"]

log = logging.getLogger("train")


@dataclass
class _Run:
    """The mutable state of a run: what a checkpoint holds."""

    net: HCLFuseNet
    ema: HCLFuseNet
    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    gen: torch.Generator
    rng: np.random.Generator
    step: int = 0
    elapsed: float = 0.0

    def state(self, resolved: dict) -> dict:
        return {"net": self.net.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "gen": self.gen.get_state(), "rng": self.rng.bit_generator.state, "step": self.step,
                "elapsed": self.elapsed, "config": resolved}

    def restore(self, state: dict) -> None:
        """Raises ValueError for a file that torch reads but that holds no checkpoint of this project's."""
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0 \
                or not isinstance(state.get("elapsed"), (int, float)) or not 0 <= state["elapsed"] < math.inf:
            raise ValueError("it holds no training checkpoint (no step count)")
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        if not all(v.isfinite().all() for m in (self.net, self.ema) for v in m.state_dict().values()):
            raise ValueError("its weights hold NaN or infinite values")  # a weights file no fuser loads would follow
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.rng.bit_generator.state = state["rng"]
        self.step, self.elapsed = state["step"], state["elapsed"]


def _progress(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """Fraction of the run done: by steps, or by the wall-clock budget when that comes first."""
    p = step / cfg.steps
    return max(p, elapsed / (cfg.minutes * 60.0)) if cfg.minutes > 0 else p


def _lr(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay (over ``progress``) to 5% of ``lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


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


def _start(setup: TrainSetup, init: Path | None) -> _Run:
    """A fresh run: seeded initialisation (or ``init``'s tensors), EMA copy, optimiser over what learns."""
    cfg = setup.train
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the caller's generator alone
        torch.manual_seed(cfg.seed)
        net = HCLFuseNet(setup.model)
    if init is not None:
        _load_matching(net, init)
    if cfg.distill:  # only the student learns; the teacher, encoder and decoder stay as loaded
        net.requires_grad_(False).student.requires_grad_(True)
    elif cfg.decoder_only:
        net.requires_grad_(False).decoder.requires_grad_(True)
    ema = HCLFuseNet(setup.model).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return _Run(net, ema, opt, params, torch.Generator().manual_seed(cfg.seed), np.random.default_rng(cfg.seed))


def _losses(run: _Run, sampler: PairSampler, setup: TrainSetup) -> dict[str, torch.Tensor]:
    """The loss terms of one batch, of the stage ``setup`` trains."""
    cfg, model = setup.train, setup.model
    ir01, vis01, ir_raw = sampler.batch(cfg.batch)
    c, s = model.latent_channels, cfg.crop // HCLFuseNet.stride
    eps = torch.randn((cfg.batch, c, s, s), generator=run.gen)
    if cfg.distill:
        return distill_losses(run.net, ir01, vis01, ir_raw, eps, cfg)
    t = torch.randint(0, model.num_train_timesteps, (cfg.batch,), generator=run.gen)
    e0 = torch.randn((cfg.batch, c, s, s), generator=run.gen)
    out = run.net.train_outputs(ir01, vis01, ir_raw, t, eps, e0)
    return hclfuse_losses(out, ir01, vis01, ir_raw, eps, setup.loss, model.image_channels)


def _optimise(run: _Run, total: torch.Tensor, cfg: TrainConfig) -> None:
    """One AdamW step on ``total`` (gradients clipped to norm 1), then the EMA update."""
    for group in run.opt.param_groups:
        group["lr"] = _lr(run.step, _progress(run.step, run.elapsed, cfg), cfg)
    run.opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.opt.step()
    with torch.no_grad():
        decay = min(cfg.ema, (1 + run.step) / (10 + run.step))
        for pe, p in zip(run.ema.parameters(), run.net.parameters()):
            pe.lerp_(p, 1.0 - decay)


def _save(run: _Run, out: Path, setup: TrainSetup, resolved: dict, *, weights: bool) -> None:
    """Write the checkpoint, and with ``weights`` (a completed schedule) the EMA weights, each atomically: a kill or
    a full disk mid-write leaves the previous file, and a stopped run no weights file that looks finished."""
    _atomic(out / "checkpoint.pt", lambda tmp: torch.save(run.state(resolved), str(tmp)))
    if weights:
        extra = {"align": asdict(setup.align), "step": run.step, "train_seconds": round(run.elapsed, 1),
                 "config": resolved}
        _atomic(out / DEFAULT_WEIGHTS.name, lambda tmp: save_weights(tmp, run.ema, extra=extra))
        settle(out)


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``path``, then rename it to ``path``; OSError (one line) on failure."""
    tmp = path.with_suffix(".tmp")
    try:
        write(tmp)
        durable_replace(tmp, path)  # a power loss leaves the last checkpoint whole, never an empty one
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write (a full disk) as RuntimeError
        tmp.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) else None
        raise OSError(f"cannot write {path}: {reason or 'the write failed (is the disk full?)'}") from None
    except BaseException:  # Ctrl-C while the run starts: no temporary file left beside the outputs
        tmp.unlink(missing_ok=True)
        raise


def _check_run(data: Path, out: Path, init: Path | None, resume: bool, cfg: TrainConfig) -> None:
    """Refuse (ValueError, one line, before anything is written) a run that would write into its data, over its
    ``init`` file or over an earlier run, or that cannot do what it says."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    real_out, real_data = out.resolve(), data.resolve()
    if real_data == real_out or real_data in real_out.parents:
        raise ValueError(f"--out {out} is in the data folder {data}; write runs elsewhere")
    if init is not None and not init.is_file():
        what = "a folder" if init.is_dir() else "a pipe or a device" if init.exists() else "not found"
        raise ValueError(f"--init {init} is not a weights file ({what})")
    if init is not None and real_out in init.resolve().parents:
        raise ValueError(f"--init {init} is in --out {out}, whose weights the run writes over; copy it elsewhere")
    earlier = [p.name for p in (out / "checkpoint.pt", out / DEFAULT_WEIGHTS.name) if p.exists()]
    if earlier and not resume:
        raise ValueError(f"--out {out} holds an earlier run ({earlier[0]}): --resume it, or choose another folder")
    if resume and not (ckpt := out / "checkpoint.pt").is_file():  # a pipe would hang torch.load
        raise ValueError(f"nothing to resume: {ckpt} " + ("is not a file (a folder, a pipe or a device)"
                                                           if ckpt.exists() else "does not exist"))
    if (cfg.distill or cfg.decoder_only) and init is None and not resume:
        raise ValueError("--distill and --decoder_only train part of a trained model: give it with --init WEIGHTS")
    base = next(p for p in (real_out, *real_out.parents) if p.exists())  # the folder that out is, or is made in
    if not base.is_dir():
        raise ValueError(f"--out {out} cannot be made: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} cannot be written: {base} is read-only")


def _resume(run: _Run, ckpt: Path) -> object:
    """Continue ``run`` from ``ckpt``; one line (ValueError) when it is damaged or made by another setup. Returns the
    settings the checkpoint was saved with."""
    state = read_checkpoint(ckpt)
    try:
        run.restore(state)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot resume from {ckpt} (damaged, or another architecture or stage): {reason}") from None
    return state.get("config")


def run_training(data: Path, out: Path, setup: TrainSetup, *, resume: bool = False, ckpt_minutes: float = 3.0,
                 init: Path | None = None) -> Path:
    """Train on the pairs under ``data``, writing checkpoints, EMA weights and the resolved config to ``out``.

    Ctrl-C, SIGTERM or SIGHUP (in the main thread) while it starts stops it with nothing written; during the loop they
    let the step in flight finish, save the checkpoint and stop, so that ``resume`` continues as if never stopped.

    Args:
        data: the data folder (see :mod:`streamfuse.train.data`).
        out: output folder (created).
        setup: the run's configuration.
        resume: continue from ``out/checkpoint.pt`` (it must exist).
        ckpt_minutes: wall-clock interval between checkpoints (0: every step).
        init: weights file whose matching tensors start the run.

    Returns:
        The path of the EMA weights file, written when the schedule is complete.

    Raises:
        ValueError: a run that cannot start or go on (one line).
        OSError: unreadable data or unwritable ``out``; InterruptedError (an OSError) when stopped by a signal.
    """
    if math.isnan(ckpt_minutes) or ckpt_minutes < 0:
        raise ValueError(f"--ckpt-minutes {ckpt_minutes} is out of range; allowed: >= 0 (0: every step)")
    # one run per --out: a second one started before the first's checkpoint would write over its weights. The lock
    # sits in --out's folder, made for it where new (runs/a on a fresh checkout), and removed again if left empty
    made = [folder for folder in reversed(out.parents) if not folder.exists()]
    with contextlib.suppress(OSError):  # a file in the way, no permission: the run's own checks name it
        out.parent.mkdir(parents=True, exist_ok=True)
    try:
        # by its real path: `--out .` has no name to put a lock beside, and a link spells the folder another way
        with output_lock(out.resolve(), label=f"output {out}") if out.parent.is_dir() else contextlib.nullcontext():
            return _train(data, out, setup, resume, ckpt_minutes, init)
    finally:
        for folder in reversed(made):  # a run that wrote nothing leaves no folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()


def _train(data: Path, out: Path, setup: TrainSetup, resume: bool, ckpt_minutes: float, init: Path | None) -> Path:
    """:func:`run_training` holding its output's lock."""
    _check_run(data, out, init, resume, setup.train)
    try:
        with handled(raise_interrupt):
            run, sampler, resolved = _prepare(data, out, setup, resume, init)
    except KeyboardInterrupt:
        raise InterruptedError("interrupted before the first step; no checkpoint written") from None
    stop = threading.Event()
    bar = tqdm(total=setup.train.steps, initial=run.step, mininterval=10.0, dynamic_ncols=True)
    try:
        with handled(lambda *_: stop.set()):
            losses = _loop(run, sampler, setup, out, resolved, ckpt_minutes, bar, stop)
            done = _progress(run.step, run.elapsed, setup.train) >= 1.0
            _save(run, out, setup, resolved, weights=done)
            log.info("step %d  %.0f s  %s", run.step, run.elapsed, {k: round(v.item(), 5) for k, v in losses.items()})
            if done and run.step < setup.train.steps:  # the time budget ended it: a bar stopped part-way looks failed
                bar.total = run.step
                bar.set_description_str(f"time budget spent (--minutes {setup.train.minutes:g})", refresh=False)
    except KeyboardInterrupt:  # raised inside a step, not by the handlers above: keep what was learnt so far
        _save(run, out, setup, resolved, weights=False)
        done = False
    finally:
        bar.close()
    if not done:  # a finished run trained further keeps its weights file until this run completes: say whose it is
        kept = "; the one there is still the earlier run's" if (out / DEFAULT_WEIGHTS.name).exists() else ""
        raise InterruptedError(f"stopped at step {run.step}; {out / 'checkpoint.pt'} saved: --resume continues "
                               f"(the weights file is written when the run completes{kept})")
    return out / DEFAULT_WEIGHTS.name


def _prepare(data: Path, out: Path, setup: TrainSetup, resume: bool,
             init: Path | None) -> tuple[_Run, PairSampler, dict]:
    """Load the data and the start (or the checkpoint), then create ``out`` with the resolved config in it."""
    cfg = setup.train
    log.info("reading the training pairs under %s", data)  # tens of seconds on the full data
    pairs = load_pairs(data)  # before anything is written: a run without data leaves no output folder behind
    resolved = setup.to_dict()
    resolved["train"]["init"] = str(init) if init else None
    resolved["data"] = data_record(data, pairs)
    resolved["machine"] = {"cores": available_cores()}  # a resume on another takes its default threads (cli)
    settings = settings_file(out)
    if early := resume and settings.exists():  # before the checkpoint: another model or stage named, not a failed load
        _check_unchanged(settings, resolved)
    torch.set_num_threads(cfg.threads)
    tune_malloc()
    run = _start(setup, init)
    if resume:
        saved = _resume(run, out / "checkpoint.pt")
        if not early:  # no settings file: a damaged checkpoint is named first
            _check_unchanged(settings, resolved)
        _check_saved(out / "checkpoint.pt", saved, resolved)
        if run.step > cfg.steps:
            raise ValueError(f"cannot resume with --steps {cfg.steps}: the run has done {run.step} steps already")
        log.info("resumed from %s at step %d", out / "checkpoint.pt", run.step)
    if setup.align.enabled:  # one OT solve a pair: minutes of silence on the full data otherwise
        log.info("aligning the IR of the %d pairs to their visible images (OT)", len(pairs))
    sampler = PairSampler(pairs, setup.align, cfg.crop, run.rng)
    log.info("%d training pairs from %s", len(pairs), data)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot make --out {out}: {io_reason(exc)}") from None
    _atomic(new_settings_file(out), lambda tmp: tmp.write_text(yaml.safe_dump(resolved, sort_keys=False)))
    run.net.train()
    return run, sampler, resolved


def _check_unchanged(earlier: Path, resolved: dict) -> None:
    """Refuse (one line) to resume a run with other settings or data than it started with: its batches and losses
    would no longer be those of one run, yet its config file would say they were. CPU threads may change, the data
    folder's name (the same pairs moved), and so may the budget (``steps``, ``minutes``: a finished run trained further;
    warned, as the schedule's remainder changes). ``--init`` is not compared (the run's record of it is kept in
    ``resolved``): it only started the run, whose weights the checkpoint holds."""
    try:
        before = yaml.safe_load(earlier.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot resume: {earlier}, the run's settings, is unreadable ({io_reason(exc)})") from None
    if not isinstance(before, dict) or not all(isinstance(v, dict) for v in before.values()):
        raise ValueError(f"cannot resume: {earlier}, the run's settings, is damaged (not a mapping of sections)")
    if "init" in (before.get("train") or {}):  # what the run started from: the checkpoint holds its weights since,
        resolved["train"]["init"] = before["train"]["init"]  # so --init may be left out, spelt otherwise, or moved
    now = yaml.safe_load(yaml.safe_dump(resolved))  # as the file holds it: a tuple reads back as a list
    changed = _changes(before, now)
    if budget := [c for c in changed if c.startswith(("train.steps ", "train.minutes "))]:
        weights = earlier.parent / DEFAULT_WEIGHTS.name  # a finished run's, until this one completes
        kept = f"; {weights} stays the earlier run's until this one completes" if weights.exists() else ""
        log.warning("resuming with another budget (%s): the learning rate's schedule follows it from here%s",
                    ", ".join(budget), kept)
        changed = [c for c in changed if c not in budget]
    if changed:
        raise ValueError(f"cannot resume with other settings than the run started with ({', '.join(changed)}): give "
                         f"the same, or start another --out")


def _check_saved(ckpt: Path, saved: object, resolved: dict) -> None:
    """Refuse (one line) a checkpoint saved with other settings than ``resolved`` (the budget and ``--init`` aside):
    one copied in from another run would be continued as this one's, and its weights file would say so."""
    try:  # as the file holds it (a tuple read back as a list); a record that yaml cannot hold is no record
        saved, now = (yaml.safe_load(yaml.safe_dump(x)) for x in (saved, resolved))
    except yaml.YAMLError:
        return
    if isinstance(saved, dict) and (other := [c for c in _changes(saved, now) if not c.startswith(
            ("train.steps ", "train.minutes ", "train.init "))]):
        raise ValueError(f"cannot resume: {ckpt} was saved by a run with other settings ({', '.join(other)}); it is "
                         f"not this run's checkpoint")


def _changes(before: dict, now: dict) -> list[str]:
    """``section.key old -> new`` for each setting of ``now`` that ``before`` holds otherwise (CPU threads, the machine
    and the data folder's name may change; a data digest of an earlier version is told apart)."""
    check_digest_version(before, now)
    return [f"{section}.{key} {before[section][key]!r} -> {value!r}" for section, values in now.items()
            for key, value in values.items() if (section, key) not in (("train", "threads"), ("data", "folder"))
            and section != "machine"
            and isinstance(before.get(section), dict) and key in before[section] and before[section][key] != value]


def _loop(run: _Run, sampler: PairSampler, setup: TrainSetup, out: Path, resolved: dict, ckpt_minutes: float,
          bar: tqdm, stop: threading.Event) -> dict[str, torch.Tensor]:
    """Optimise until the step or time budget is spent or ``stop`` is set (checked between steps, so a checkpoint
    never holds half a step), checkpointing every ``ckpt_minutes``; the last step's losses (none: no step)."""
    cfg, losses = setup.train, {}
    t_start, last_ckpt = time.perf_counter() - run.elapsed, time.perf_counter()
    while _progress(run.step, run.elapsed, cfg) < 1.0 and not stop.is_set():
        losses = _losses(run, sampler, setup)
        if not torch.isfinite(losses["total"]):  # NaN weights would follow: stop while the last checkpoint is sane
            raise ValueError(f"training diverged: the loss is {losses['total'].item()} at step {run.step + 1} "
                             f"(lr or a loss weight too high?); stopped, no weights written")
        _optimise(run, losses["total"], cfg)
        run.step += 1
        run.elapsed = time.perf_counter() - t_start
        bar.update(1)
        if run.step % 20 == 0:
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in losses.items()})
        if time.perf_counter() - last_ckpt > ckpt_minutes * 60 and _progress(run.step, run.elapsed, cfg) < 1.0 \
                and not stop.is_set():  # the run's last checkpoint is saved after the loop
            _save(run, out, setup, resolved, weights=False)
            last_ckpt = time.perf_counter()
            log.info("step %d  %.0f s  %s", run.step, run.elapsed, {k: round(v.item(), 5) for k, v in losses.items()})
    return losses
