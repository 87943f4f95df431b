"""AlignConfig and optimal-transport alignment of IR intensities to the visible intensity distribution.

HCLFuse aligns the IR image to the visible one with an entropic OT plan between *pixel intensities* and the
barycentric projection ``T(X)_i = sum_j P_ij Y_j / sum_j P_ij``. The cost depends on grey levels only, so the plan
between pixels collapses exactly onto a 256 x 256 plan between the two intensity histograms, and ``T`` is a 256-entry
lookup table. The blended table ``lut = blend * T + (1 - blend) * x`` maps IR uint8 to
``IR'`` in 0..1; it is used identically in training (:mod:`streamfuse.train`) and inference
(:mod:`streamfuse.model.fuser`).

:class:`AlignCache` keeps one plan per stream and solves again only when the histograms drift (Wasserstein-1) or
after ``refresh`` frames, warm-starting Sinkhorn from the previous dual potentials. With ``background`` the re-solve
runs on a worker thread and the previous table keeps serving until the new one is ready, so the live loop never waits.
The IR level stabilizer that runs before any fuser on video is :mod:`streamfuse.stabilize`.
"""

from __future__ import annotations

import importlib
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from streamfuse.checks import check

__all__ = ["AlignCache", "AlignConfig", "AlignResult", "align", "histogram", "identity_lut", "wasserstein1"]

LEVELS = np.arange(256, dtype=np.float64) / 255.0  # grey levels in 0..1, the support of both histograms
_COST = (LEVELS[:, None] - LEVELS[None, :]) ** 2  # (256, 256) squared Euclidean cost, as ot.dist on pixels
_FLOOR = 1e-9  # mass added to empty bins so the log-domain solver never sees log(0)
# A solve takes about 1/reg iterations (msrs/test pairs: 71-131 at reg 0.01, 611-1241 at 0.001), up to 10 ms each in
# the log domain on a busy machine: the cap lets reg reach 1e-4 and keeps a solve that cannot converge to a minute or
# two, not a frame that never ends
_MAX_ITER = 10_000


@dataclass(frozen=True)
class AlignConfig:
    """The OT alignment stage.

    Args:
        enabled: align IR to the visible histogram; False passes IR through (``lut = x``, the "no OT" ablation).
        reg: entropic regularisation on the squared-intensity cost in 0..1 (the reference uses 0.2, which compresses
            IR contrast strongly; smaller keeps more of it).
        blend: weight of the transported intensities, ``IR' = blend * T(IR) + (1 - blend) * IR`` (reference 0.8).
            The metrics compare the fused image with the raw IR and rise as the blend falls (measured from 0.3 to
            0.15 and to no OT on msrs/test and held-out video frames); the shipped weights are trained at 0.15
            (model card).
        method: POT Sinkhorn solver (``sinkhorn_log`` works in the log domain, POT's advice for GPUs and gradients,
            and stays finite at this small ``reg``, where plain ``sinkhorn`` underflows below about 0.01).
        max_iter: Sinkhorn iteration cap, 1..10000.
        tol: Sinkhorn stopping threshold on the marginal error.
        drift: re-solve when the Wasserstein-1 distance (grey levels in 0..1) between the current and the cached IR
            or visible histogram exceeds this.
        refresh: re-solve at least every this many frames of a stream; 1 solves every frame afresh, without a warm
            start from the previous frame's plan, so that no frame depends on the one before (still images; with
            ``background`` a frame is served an earlier frame's table all the same).
        background: refresh the plan on a worker thread; the stale LUT serves until the new one is ready (the live
            configs turn it on), and after, where the frame it was solved for has passed and the stale one fits again
            (a flash, a shutter frame). Off by default: bit-reproducible replay and evaluation, and less flicker when
            the IR gain jumps, since a late swap to a new table is a bigger step (flicker ratio on sequences with the
            demo config 1.057 vs 1.029, tools/temporal.py).
            A stream's first frame always solves synchronously.
    """

    enabled: bool = True
    reg: float = 0.01
    blend: float = 0.15
    method: Literal["sinkhorn_log", "sinkhorn"] = "sinkhorn_log"
    max_iter: int = 1000
    tol: float = 1e-6
    drift: float = 0.01
    refresh: int = 300
    background: bool = False

    def __post_init__(self) -> None:
        check(0 < self.reg <= 10, "reg", self.reg, "0 < reg <= 10")
        check(0 <= self.blend <= 1, "blend", self.blend, "0..1")
        check(1 <= self.max_iter <= _MAX_ITER, "max_iter", self.max_iter, f"1..{_MAX_ITER}")
        check(0 < self.tol <= 1, "tol", self.tol, "0 < tol <= 1")
        check(0 <= self.drift <= 1, "drift", self.drift, "0 .. 1 (the W1 distance of grey levels in 0..1; 1: never)")
        check(self.refresh >= 1, "refresh", self.refresh, ">= 1")


@dataclass(frozen=True)
class AlignResult:
    """Outcome of one histogram OT solve (in the spirit of POT's ``OTResult``).

    Attributes:
        plan: ``(256, 256)`` transport plan between IR (rows) and visible (columns) grey levels; sums to 1.
        lut: ``(256,)`` float32 in 0..1, the blended barycentric map applied to IR uint8.
        potentials: dual potentials ``(f, g)``, each ``(256,)`` float64, for warm starts.
        n_iter: Sinkhorn iterations used.
        err: final marginal error.
        converged: ``err <= tol`` within ``max_iter`` iterations.
    """

    plan: np.ndarray
    lut: np.ndarray
    potentials: tuple[np.ndarray, np.ndarray]
    n_iter: int
    err: float
    converged: bool


def histogram(img: np.ndarray) -> np.ndarray:
    """Normalised 256-bin histogram ``(256,)`` float64 of a uint8 image."""
    if img.dtype != np.uint8:
        raise ValueError(f"histogram needs a uint8 image, got {img.dtype}")
    # cv2.calcHist is about 3x faster than np.bincount at 640x480 (measured 0.18 vs 0.55 ms); it runs twice per frame.
    h = cv2.calcHist([np.ascontiguousarray(img)], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    return h / h.sum()


def wasserstein1(p: np.ndarray, q: np.ndarray) -> float:
    """Wasserstein-1 distance between two 256-bin histograms, in grey levels scaled to 0..1."""
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() / 255.0)


def identity_lut() -> np.ndarray:
    """The ``(256,)`` float32 table ``x / 255`` (no alignment)."""
    return LEVELS.astype(np.float32)


def align(ir_hist: np.ndarray, vis_hist: np.ndarray, cfg: AlignConfig, *,
          warmstart: tuple[np.ndarray, np.ndarray] | None = None) -> AlignResult:
    """Entropic OT between the IR and visible intensity histograms, and the blended barycentric lookup table.

    Solves ``min_P <P, C> - reg * H(P)`` s.t. ``P 1 = a``, ``P^T 1 = b`` with ``C_ij = (i/255 - j/255)^2`` using POT,
    then ``T(i) = sum_j P_ij y_j / sum_j P_ij``. For grey levels absent from the IR histogram the row of ``P`` is
    empty; ``T`` there uses the Gibbs kernel row ``exp((g_j - C_ij) / reg)``, which equals the normalised plan row
    wherever the row is not empty, so the table is defined (and non-decreasing) on all 256 levels.

    Args:
        ir_hist: ``(256,)`` IR histogram (any positive scale; normalised here).
        vis_hist: ``(256,)`` visible-Y histogram.
        cfg: regularisation, blend and solver settings.
        warmstart: dual potentials ``(f, g)`` of a previous solve (``AlignResult.potentials``); dropped for a solve
            from scratch where the solver stops on a numerical error from them.

    Returns:
        The plan, the lookup table and solver diagnostics. Non-convergence warns and sets ``converged=False``.

    References:
        M. Cuturi, "Sinkhorn distances", NeurIPS 2013; HCLFuse (arXiv 2510.26268) for the blend.
    """
    # here, not at the top: scipy.special takes 0.2 s, and loading a config imports this module
    from scipy.special import logsumexp

    a = _normalise(ir_hist, "ir_hist")
    b = _normalise(vis_hist, "vis_hist")
    plan, (f, g), err, n_iter = _sinkhorn(a, b, cfg, warmstart)
    # A solve that stopped before max_iter unconverged met a numerical error: plain sinkhorn at a small reg overflows
    # from the potentials of a very different frame (a saturated one), and its infinite potentials, the next warm
    # start, stopped every later solve at once on that frame's table. Such a warm start is dropped: from scratch.
    stopped = not (err <= cfg.tol or n_iter >= cfg.max_iter) or not (np.isfinite(f).all() and np.isfinite(g).all())
    if warmstart is not None and stopped:
        plan, (f, g), err, n_iter = _sinkhorn(a, b, cfg, None)
    converged = bool(err <= cfg.tol)
    if not converged:
        warnings.warn(f"align: Sinkhorn did not converge (err={err:.2e} > tol={cfg.tol:g} after {n_iter} "
                      f"iteration{'s' * (n_iter != 1)}, reg={cfg.reg:g})", RuntimeWarning, stacklevel=2)
    logk = (g[None, :] - _COST) / cfg.reg  # (256, 256) log Gibbs-kernel rows scaled by the column potential
    transported = np.exp(logsumexp(logk, axis=1, b=LEVELS[None, :]) - logsumexp(logk, axis=1))
    lut = cfg.blend * transported + (1.0 - cfg.blend) * LEVELS
    return AlignResult(plan=plan, lut=np.clip(lut, 0.0, 1.0).astype(np.float32), potentials=(f, g), n_iter=n_iter,
                       err=err, converged=converged)


def _sinkhorn(a: np.ndarray, b: np.ndarray, cfg: AlignConfig, warmstart: tuple[np.ndarray, np.ndarray] | None
              ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], float, int]:
    """POT's solve of normalised histograms: the plan, the potentials ``(f, g)``, the final error and the iterations."""
    import ot  # here, not at the top: POT imports torch (seconds)

    ws = None if warmstart is None else (warmstart[0] / cfg.reg, warmstart[1] / cfg.reg)  # POT takes log-scalings
    # warn=False rather than catch_warnings: that swaps process-global filters, racy on AlignCache's worker thread.
    # align's warning says what and where.
    plan, log = ot.sinkhorn(a, b, _COST, cfg.reg, method=cfg.method, numItermax=cfg.max_iter, stopThr=cfg.tol,
                            log=True, warmstart=ws, warn=False)
    err = float(log["err"][-1]) if len(log["err"]) else float("nan")
    return plan, _potentials(log, cfg.reg), err, int(log["niter"]) + 1  # POT's niter: the last loop index


def _normalise(h: np.ndarray, name: str) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    if h.shape != (256,) or not np.all(np.isfinite(h)) or (h < 0).any() or h.sum() <= 0:
        raise ValueError(f"align: {name} must be a finite non-negative (256,) histogram with positive mass")
    h = h / h.sum() + _FLOOR
    return h / h.sum()


def _potentials(log: dict, reg: float) -> tuple[np.ndarray, np.ndarray]:
    """Dual potentials ``(f, g)`` from POT's log of any Sinkhorn variant."""
    if "log_u" in log:  # sinkhorn_log
        return np.asarray(log["log_u"]) * reg, np.asarray(log["log_v"]) * reg
    return reg * np.log(np.asarray(log["u"])), reg * np.log(np.asarray(log["v"]))


@dataclass
class _Entry:
    """A stream's cached solve: what its next frames need, not the plan (0.5 MB)."""

    ir_hist: np.ndarray
    vis_hist: np.ndarray
    lut: np.ndarray
    potentials: tuple[np.ndarray, np.ndarray]  # the next solve's warm start
    age: int = 0
    pending: Future[tuple[_Entry, float]] | None = None  # the background re-solve replacing this entry


def _solve(ir_hist: np.ndarray, vis_hist: np.ndarray, cfg: AlignConfig,
           warmstart: tuple[np.ndarray, np.ndarray] | None) -> tuple[_Entry, float]:
    """A fresh entry for these histograms and the solve time in ms."""
    t0 = time.perf_counter()
    result = align(ir_hist, vis_hist, cfg, warmstart=warmstart)
    return _Entry(ir_hist, vis_hist, result.lut, result.potentials), (time.perf_counter() - t0) * 1e3


class AlignCache:
    """Per-stream OT lookup tables, re-solved only when the histograms drift or the entry gets old.

    Each enabled frame counts as exactly one of: a hit (cached table still valid), a miss (a solve started; with
    ``background`` the frame is served the old table) or stale (served the old table while that solve runs).

    Args:
        cfg: alignment settings (``drift``, ``refresh`` control the cache, ``background`` where it solves).
    """

    def __init__(self, cfg: AlignConfig):
        self.cfg = cfg
        self._entries: dict[str, _Entry] = {}
        self._pool: ThreadPoolExecutor | None = None  # created on the first background solve
        if cfg.enabled:  # POT's import (1-3 s) here, with the model's load, not while a live run's first frames wait
            for module in ("ot", "scipy.special"):
                importlib.import_module(module)
        self.hits = 0
        self.misses = 0
        self.stale = 0
        self.solves = 0  # finished solves, the denominator of the mean
        self.solve_ms = 0.0

    def lut(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
        """The ``(256,)`` float32 table mapping this frame's IR uint8 to ``IR'`` in 0..1."""
        if not self.cfg.enabled:
            return identity_lut()
        ir_hist, vis_hist = histogram(ir), histogram(vis_y)
        entry = self._entries.get(stream)
        if entry is not None and entry.pending is not None:
            if not entry.pending.done():
                self.stale += 1
                return entry.lut
            future, entry.pending = entry.pending, None  # cleared first: a solve that raised is retried, not re-raised
            solved = self._install(stream, future.result())  # then judged against this frame like any cached entry
            # A solve of a frame that has passed (a flash, a shutter frame) whose table does not fit this one, while the
            # table it replaces does: that one stays, rather than the passing frame's serving until another solve.
            if self._fits(solved, ir_hist, vis_hist) or not self._fits(entry, ir_hist, vis_hist):
                entry = solved
            self._entries[stream] = entry
        if entry is not None and self._fits(entry, ir_hist, vis_hist):
            entry.age += 1
            self.hits += 1
            return entry.lut
        self.misses += 1
        # refresh 1 (still images): a warm start from the previous image's plan would move this one's within the tol
        warmstart = None if entry is None or self.cfg.refresh == 1 else entry.potentials
        if entry is not None and self.cfg.background:
            if self._pool is None:
                # One worker for all streams: solves are CPU-bound, a second one would only steal the live loop's core.
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="align")
            entry.pending = self._pool.submit(_solve, ir_hist, vis_hist, self.cfg, warmstart)
            return entry.lut
        entry = self._install(stream, _solve(ir_hist, vis_hist, self.cfg, warmstart))
        entry.age = 1  # this frame
        return entry.lut

    def _fits(self, entry: _Entry, ir_hist: np.ndarray, vis_hist: np.ndarray) -> bool:
        """The entry's table still serves a frame of these histograms: young enough, and neither has drifted."""
        return entry.age < self.cfg.refresh and max(
            wasserstein1(ir_hist, entry.ir_hist), wasserstein1(vis_hist, entry.vis_hist)) <= self.cfg.drift

    def pending(self, stream: str = "default") -> Future[tuple[_Entry, float]] | None:
        """The background solve under way for ``stream``, if any (it is swapped in by the next :meth:`lut` call)."""
        entry = self._entries.get(stream)
        return None if entry is None else entry.pending

    def _install(self, stream: str, solved: tuple[_Entry, float]) -> _Entry:
        """Make a finished solve the stream's entry and count its time."""
        entry, ms = solved
        self.solve_ms += ms
        self.solves += 1
        self._entries[stream] = entry
        return entry

    def stats(self) -> dict[str, float]:
        """Cache counters: hits, misses (solves started), stale frames, total and mean solve time in ms."""
        return {"ot_hits": self.hits, "ot_misses": self.misses, "ot_stale": self.stale,  # counts stay ints
                "ot_solve_ms": self.solve_ms, "ot_solve_ms_mean": self.solve_ms / max(self.solves, 1)}
