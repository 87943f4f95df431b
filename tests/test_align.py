"""OT alignment: marginals, LUT monotonicity, identity, warm start, per-stream cache behaviour, background refresh."""

from __future__ import annotations

import re
import threading
import tracemalloc
import warnings

import numpy as np
import pytest

from streamfuse import align as align_module
from streamfuse.align import AlignCache, AlignConfig, align, histogram, identity_lut, wasserstein1


def _image(rng: np.random.Generator, mean: float, std: float, shape=(48, 64)) -> np.ndarray:
    return np.clip(rng.normal(mean, std, shape), 0, 255).astype(np.uint8)


def _brighter(img: np.ndarray, by: int = 40) -> np.ndarray:
    return np.clip(img.astype(int) + by, 0, 255).astype(np.uint8)


def test_plan_marginals_match_histograms(rng):
    a, b = histogram(_image(rng, 60, 20)), histogram(_image(rng, 150, 40))
    res = align(a, b, AlignConfig(reg=0.05, tol=1e-9, max_iter=5000))
    assert res.converged
    np.testing.assert_allclose(res.plan.sum(), 1.0, atol=1e-8)
    np.testing.assert_allclose(res.plan.sum(axis=1), a, atol=1e-6)
    np.testing.assert_allclose(res.plan.sum(axis=0), b, atol=1e-6)


@pytest.mark.parametrize("method", ["sinkhorn_log", "sinkhorn"])
def test_plan_is_the_gibbs_kernel_of_the_squared_cost_scaled_by_the_potentials(rng, method):
    """``P_ij = exp((f_i + g_j - C_ij) / reg)`` with ``C_ij = (i/255 - j/255)^2``: the potentials are on the cost's
    scale for either solver (a warm start reads them back), and the cost is the squared one the docstring gives."""
    cfg = AlignConfig(reg=0.05, method=method, tol=1e-9, max_iter=5000)
    res = align(histogram(_image(rng, 60, 20)), histogram(_image(rng, 150, 40)), cfg)
    f, g = res.potentials
    levels = np.arange(256) / 255.0
    cost = (levels[:, None] - levels[None, :]) ** 2
    np.testing.assert_allclose(res.plan, np.exp((f[:, None] + g[None, :] - cost) / cfg.reg), rtol=1e-6, atol=1e-15)


@pytest.mark.parametrize("reg", [0.2, 0.05, 0.01])
def test_lut_is_monotone_and_in_range(rng, reg):
    res = align(histogram(_image(rng, 40, 10)), histogram(_image(rng, 200, 30)), AlignConfig(reg=reg))
    assert res.lut.shape == (256,) and res.lut.dtype == np.float32
    assert np.all(np.diff(res.lut) >= -1e-6)
    assert res.lut.min() >= 0.0 and res.lut.max() <= 1.0


def test_blend_zero_and_disabled_are_identity(rng):
    a, b = histogram(_image(rng, 40, 10)), histogram(_image(rng, 200, 30))
    np.testing.assert_allclose(align(a, b, AlignConfig(blend=0.0)).lut, identity_lut(), atol=1e-6)
    cache = AlignCache(AlignConfig(enabled=False))
    np.testing.assert_array_equal(cache.lut(_image(rng, 40, 10), _image(rng, 200, 30)), identity_lut())


def test_transport_moves_ir_toward_visible_mean(rng):
    ir, vis = _image(rng, 50, 10), _image(rng, 180, 10)
    res = align(histogram(ir), histogram(vis), AlignConfig(reg=0.01, blend=1.0))
    assert abs(res.lut[ir].mean() * 255 - vis.mean()) < 3.0


def test_identical_histograms_give_near_identity(rng):
    img = _image(rng, 120, 40)
    res = align(histogram(img), histogram(img), AlignConfig(reg=1e-3, blend=1.0, max_iter=5000))
    levels = np.unique(img)
    np.testing.assert_allclose(res.lut[levels], levels / 255.0, atol=0.02)


def test_warm_start_needs_fewer_iterations(rng):
    cfg = AlignConfig(reg=0.01, tol=1e-7, max_iter=5000)
    a, b = histogram(_image(rng, 60, 20)), histogram(_image(rng, 150, 40))
    cold = align(a, b, cfg)
    a2 = histogram(_image(rng, 62, 20))  # the next frame: almost the same histogram
    warm = align(a2, b, cfg, warmstart=cold.potentials)
    assert warm.converged and warm.n_iter < align(a2, b, cfg).n_iter


def test_refresh_one_solves_every_frame_afresh_so_none_depends_on_the_one_before(rng):
    """``refresh: 1`` (the eval config's still images): a frame's table is the one a new cache gives it, whatever came
    before; warm-started from the previous image's plan, it moved within the solver's tolerance, and the fused
    image with it by a grey level in places, so an image scored with others differed from the same image alone."""
    cfg = AlignConfig(refresh=1)
    ir, vis = _image(rng, 60, 20), _image(rng, 150, 40)
    after_another = AlignCache(cfg)
    after_another.lut(_image(rng, 120, 30), _image(rng, 90, 30))
    np.testing.assert_array_equal(after_another.lut(ir, vis), AlignCache(cfg).lut(ir, vis))


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")  # POT's and numpy's overflow lines
def test_a_saturated_frame_does_not_stall_the_plan_of_plain_sinkhorn_at_a_small_reg(rng):
    """``method: sinkhorn`` at a small ``reg`` overflows from the potentials of a saturated frame; they were the next
    frame's warm start, whose solve then stopped at once with infinite potentials, and so on: every later frame kept
    a table up to 30 grey levels off its own (a lens cap or a floodlight, and the rest of the run was off)."""
    cfg = AlignConfig(method="sinkhorn", reg=0.0015)
    ir, vis = _image(rng, 60, 20), _image(rng, 150, 40)
    want = AlignCache(cfg).lut(ir, vis)
    cache = AlignCache(cfg)
    for ir_k, vis_k in ((np.full_like(ir, 255), vis), (ir, np.full_like(vis, 255)), (np.zeros_like(ir), vis)):
        cache.lut(ir_k, vis_k)  # a saturated or black frame: a scene change, a new solve
        np.testing.assert_allclose(cache.lut(ir, vis), want, atol=1e-5)  # and back: the frame's own table


def test_non_convergence_warns_and_flags(rng):
    a, b = histogram(_image(rng, 20, 5)), histogram(_image(rng, 230, 5))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = align(a, b, AlignConfig(reg=0.001, max_iter=2, tol=1e-12))
    assert not res.converged


def test_bad_histogram_raises_one_line():
    with pytest.raises(ValueError, match="ir_hist"):
        align(np.zeros(256), np.ones(256), AlignConfig())
    negative = np.ones(256)
    negative[7] = -1.0  # positive mass overall, but no histogram
    with pytest.raises(ValueError, match="vis_hist must be a finite non-negative"):
        align(np.ones(256), negative, AlignConfig())
    with pytest.raises(ValueError, match="uint8"):
        histogram(np.zeros((4, 4), np.float32))


def test_histogram_counts_every_level_the_saturated_one_too():
    img = np.array([[0, 0, 128, 255], [255, 255, 255, 7]], np.uint8)  # hot IR saturates at 255
    want = np.bincount(img.ravel(), minlength=256) / img.size
    np.testing.assert_array_equal(histogram(img), want)
    np.testing.assert_array_equal(histogram(img[:, ::2]), np.bincount(img[:, ::2].ravel(), minlength=256) / 4)


def test_wasserstein1_of_shift():
    p, q = np.zeros(256), np.zeros(256)
    p[10], q[61] = 1.0, 1.0
    assert wasserstein1(p, q) == pytest.approx(51 / 255)
    assert wasserstein1(p, p) == 0.0


def test_cache_hits_misses_drift_and_refresh(rng):
    cache = AlignCache(AlignConfig(drift=0.02, refresh=5, background=False))
    ir, vis = _image(rng, 60, 20), _image(rng, 150, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = cache.lut(ir, vis, "a")
    assert cache.lut(ir, vis, "a") is first  # same frame: a hit returns the cached table
    assert (cache.hits, cache.misses) == (1, 1)
    cache.lut(ir, vis, "b")  # another stream has its own entry
    assert cache.misses == 2
    cache.lut(_brighter(ir), vis, "a")  # drift: IR got brighter
    assert cache.misses == 3
    misses = []
    for _ in range(5):
        cache.lut(ir, vis, "b")
        misses.append(cache.misses)
    assert misses == [3, 3, 3, 3, 4]  # stream b's table served its refresh interval of 5 frames, then is solved anew
    stats = cache.stats()
    assert stats["ot_hits"] == cache.hits and stats["ot_misses"] == 4 and stats["ot_solve_ms"] > 0
    assert stats["ot_stale"] == 0 and cache.pending("a") is None and cache.pending("b") is None


def test_cache_re_solves_when_only_the_visible_scene_changes(rng):
    # Same IR frame, but the visible scene got 60 grey levels brighter (lights on, a cloud passing): the cached plan
    # maps IR onto the old visible histogram. Without this check the IR alignment would stay on the old scene until
    # the refresh interval or an IR change.
    cache = AlignCache(AlignConfig(drift=0.02, refresh=300, background=False))
    ir, vis = _image(rng, 60, 20), _image(rng, 100, 30)
    first = cache.lut(ir, vis).copy()
    second = cache.lut(ir, _brighter(vis, 60))
    assert (cache.hits, cache.misses, cache.solves) == (0, 2, 2)
    assert np.abs(second - first).max() > 0.01  # the new table follows the brighter scene
    assert second[ir].mean() > first[ir].mean()


def test_a_stream_s_cached_table_holds_no_transport_plan(rng):
    """The cache keeps what the next frames need (the table, the potentials and the histograms: a few kB a stream), not
    the solve's 256 x 256 plan: ablate's guide energies name a stream after each pair, and each one held 0.5 MB for
    the fuser's life (a folder of 10,000 pairs, 5 GB)."""
    cache = AlignCache(AlignConfig())
    ir, vis = _image(rng, 60, 20), _image(rng, 150, 40)
    cache.lut(ir, vis, "warm")  # POT's first call allocates what it keeps
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(20):
            cache.lut(ir, vis, f"pair{k}")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 20 * 32 * 1024, held


def test_background_refresh_serves_stale_lut_until_solved(rng, monkeypatch):
    cfg = AlignConfig(drift=0.02, background=True)
    ir, vis = _image(rng, 60, 20), _image(rng, 150, 40)
    cache = AlignCache(cfg)
    first = cache.lut(ir, vis, "a")  # no entry yet: solved synchronously, nothing else to serve
    cache.lut(ir, vis, "b")
    assert cache.pending("a") is None and cache.misses == 2
    release, solve = threading.Event(), align_module._solve
    # Hold the worker until released: a lut call that waited on the solve would hang here instead of returning.
    monkeypatch.setattr(align_module, "_solve", lambda *args: release.wait(10) and solve(*args))
    bright = _brighter(ir)
    assert cache.lut(bright, vis, "a") is first  # drift miss: the solve starts, the old table serves
    future = cache.pending("a")
    assert future is not None and not future.done()
    assert cache.lut(bright, vis, "a") is first
    assert cache.lut(_brighter(ir, 80), vis, "a") is first  # drifts further, but one solve per stream at a time
    assert cache.pending("a") is future
    cache.lut(bright, vis, "b")  # each stream has its own pending solve
    assert cache.pending("b") not in (None, future)
    assert (cache.hits, cache.misses, cache.stale) == (0, 4, 2)
    release.set()
    future.result(timeout=30)
    new = cache.lut(bright, vis, "a")  # swapped in, then a hit for this frame
    warm = align(histogram(ir), histogram(vis), cfg).potentials
    np.testing.assert_allclose(new, align(histogram(bright), histogram(vis), cfg, warmstart=warm).lut, atol=1e-6)
    assert np.abs(new - first).max() > 0.01 and cache.pending("a") is None
    assert cache.lut(bright, vis, "a") is new
    stats = cache.stats()
    assert (stats["ot_hits"], stats["ot_misses"], stats["ot_stale"]) == (2, 4, 2)
    assert cache.solves == 3 and stats["ot_solve_ms"] > 0  # b's solve finishes, but is not swapped in yet
    assert stats["ot_solve_ms_mean"] == pytest.approx(stats["ot_solve_ms"] / 3)
    cache.pending("b").result(timeout=30)


@pytest.mark.parametrize("glitch", ["black IR", "saturated visible"])
def test_a_background_solve_of_a_passing_frame_leaves_the_table_that_fits_the_frames_after_it(rng, glitch):
    """One frame unlike the rest (a shutter frame, a flash, a dropped frame read black) starts a solve of its own; once
    it is over, its table is no use and the one it would replace still fits: that one serves. The passing frame's
    table served the frames after it until another solve was done (on real sequences a table 10-28 grey levels off
    theirs on their pixels, the fused frames 1-9 grey levels off on average and up to 43 in places: a flash after the
    flash)."""
    cache = AlignCache(AlignConfig(background=True))
    ir, vis = _image(rng, 60, 20), _image(rng, 150, 40)
    first = cache.lut(ir, vis)
    odd = (np.zeros_like(ir), vis) if glitch == "black IR" else (ir, np.full_like(vis, 255))
    assert cache.lut(*odd) is first  # a miss: its solve starts, the old table serves
    cache.pending().result(timeout=30)
    assert cache.lut(ir, vis) is first and cache.pending() is None  # the scene is back: no solve needed
    assert (cache.hits, cache.misses, cache.solves) == (1, 2, 2)
    cache.lut(*odd)  # the odd frame again, for longer: its own table takes over as before
    cache.pending().result(timeout=30)
    assert cache.lut(*odd) is not first and cache.pending() is None


def test_background_off_is_synchronous_and_gives_the_same_table(rng):
    ir, vis = _image(rng, 60, 20), _image(rng, 150, 40)
    tables = []
    for background in (False, True):
        cache = AlignCache(AlignConfig(drift=0.02, background=background))
        first = cache.lut(ir, vis, "a")
        drifted = cache.lut(_brighter(ir), vis, "a")
        if background:
            assert drifted is first
            cache.pending("a").result(timeout=30)
            drifted = cache.lut(_brighter(ir), vis, "a")
        else:
            assert drifted is not first and cache.pending("a") is None and cache.misses == 2
        tables.append(drifted)
    np.testing.assert_array_equal(tables[0], tables[1])  # same warm start, same solve: only the timing differs


def test_background_solve_error_raises_once_then_retries(rng, monkeypatch):
    ir, vis = _image(rng, 60, 20), _image(rng, 150, 40)
    cache = AlignCache(AlignConfig(drift=0.02, background=True))
    first = cache.lut(ir, vis, "a")
    solve = align_module._solve

    def fail(*args):
        raise MemoryError("boom")

    monkeypatch.setattr(align_module, "_solve", fail)
    cache.lut(_brighter(ir), vis, "a")
    cache.pending("a").exception(timeout=30)
    with pytest.raises(MemoryError):
        cache.lut(_brighter(ir), vis, "a")  # the worker's error surfaces in the caller
    monkeypatch.setattr(align_module, "_solve", solve)
    assert cache.lut(_brighter(ir), vis, "a") is first  # the old table still serves; the drift starts a new solve
    cache.pending("a").result(timeout=30)
    assert cache.lut(_brighter(ir), vis, "a") is not first and cache.misses == 3


def test_an_error_just_above_the_tolerance_is_not_converged(rng):
    """``converged`` is ``err <= tol``: a solve stopped by ``max_iter`` at an error only twice the tolerance warns and
    says so (the far-off case alone left the threshold unchecked)."""
    a, b = histogram(_image(rng, 40, 15)), histogram(_image(rng, 170, 30))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        cut = align(a, b, AlignConfig(max_iter=20, tol=1e-12)).err
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = align(a, b, AlignConfig(max_iter=20, tol=cut / 2))
    assert res.err == cut and not res.converged


def test_drift_zero_re_solves_on_any_change_and_hits_only_the_same_histograms(rng):
    """``drift`` is the largest W1 distance still served from the cache: at 0, an unchanged frame is a hit."""
    cache = AlignCache(AlignConfig(drift=0.0))
    ir, vis = _image(rng, 60, 20), _image(rng, 150, 40)
    cache.lut(ir, vis)
    cache.lut(ir, vis)
    assert (cache.hits, cache.misses) == (1, 1)
    cache.lut(_brighter(ir, 1), vis)
    assert (cache.hits, cache.misses) == (1, 2)


def test_config_validation():
    with pytest.raises(ValueError, match="reg"):
        AlignConfig(reg=0)
    with pytest.raises(ValueError, match="blend"):
        AlignConfig(blend=1.5)
    with pytest.raises(ValueError, match="refresh"):  # 0 would never serve a cached table, warm-starting every solve
        AlignConfig(refresh=0)
    with pytest.raises(ValueError, match="drift"):
        AlignConfig(drift=1.5)


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("max_iter", 0, "1..10000"),  # POT's sinkhorn_log stopped on an unbound variable at the first frame
    ("max_iter", 10_001, "1..10000"),  # 10**12 was taken: a solve that cannot converge kept a frame busy for ever
    ("tol", 0.0, "0 < tol <= 1"),  # never met: every solve ran max_iter iterations and warned that it did not converge
])
def test_a_solver_setting_no_solve_can_meet_is_refused_naming_it(key, value, allowed):
    with pytest.raises(ValueError, match=rf"^{key}={value} is out of range; allowed: {re.escape(allowed)}$"):
        AlignConfig(**{key: value})


def test_the_solver_settings_are_taken_at_their_bounds():
    assert (AlignConfig(max_iter=1).max_iter, AlignConfig(max_iter=10_000).max_iter) == (1, 10_000)
    assert AlignConfig(tol=1.0).tol == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_histogram_with_a_non_finite_bin_is_refused_not_turned_into_a_table_of_nan(bad):
    hist = np.ones(256)
    hist[9] = bad  # positive mass, no negative bin: only the finiteness check stops it
    with pytest.raises(ValueError, match="ir_hist must be a finite non-negative"):
        align(hist, np.ones(256), AlignConfig())


def test_the_cache_re_solves_a_drifted_frame_from_the_previous_plan_in_fewer_iterations(rng, monkeypatch):
    iterations = []

    def counted(*args, **kwargs):
        result = align(*args, **kwargs)
        iterations.append(result.n_iter)
        return result

    monkeypatch.setattr(align_module, "align", counted)
    cfg = AlignConfig(tol=1e-7, max_iter=5000)
    ir, vis, drifted = _image(rng, 60, 20), _image(rng, 150, 40), _image(rng, 64, 20)
    cache = AlignCache(cfg)
    cache.lut(ir, vis)
    cache.lut(drifted, vis)
    AlignCache(cfg).lut(drifted, vis)  # the same frame solved cold
    assert cache.misses == 2 and iterations[1] < iterations[2]


@pytest.mark.parametrize("method", ["sinkhorn_log", "sinkhorn"])
@pytest.mark.parametrize("max_iter", [1, 5])
def test_a_capped_solve_reports_the_iterations_it_ran(method, max_iter):
    # POT's niter is its loop's last index: max_iter 1 warned "after 0 iterations", and every count was one short
    levels = np.arange(256)
    a, b = np.exp(-((levels - 60) / 20) ** 2), np.exp(-((levels - 150) / 40) ** 2)
    with pytest.warns(RuntimeWarning, match=rf"after {max_iter} iterations?, "):
        result = align(a, b, AlignConfig(method=method, max_iter=max_iter, tol=1e-12))
    assert result.n_iter == max_iter and not result.converged


@pytest.mark.filterwarnings("ignore:align. Sinkhorn did not converge:RuntimeWarning")
@pytest.mark.parametrize(("n_iter", "f", "again"), [(3, np.zeros(256), True), (1000, np.full(256, np.inf), True),
                                                    (1000, np.zeros(256), False)],
                         ids=["stopped-early", "infinite-potentials", "ran-to-max-iter"])
def test_a_warm_started_solve_that_met_a_numerical_error_is_solved_again_from_scratch(rng, monkeypatch, n_iter, f,
                                                                                      again):
    # POT stops early on an overflow with the last finite potentials, or runs to max_iter with infinite ones: either
    # way its table is not this frame's, and its potentials would be the next frame's warm start; a solve that ran to
    # max_iter with finite ones is only not converged yet, and kept (a solve from scratch would cost as much again)
    real, warm_started = align_module._sinkhorn, []

    def sinkhorn(a, b, cfg, warmstart):
        warm_started.append(warmstart is not None)
        if warmstart is not None:
            return np.full((256, 256), 1 / 256**2), (f, np.zeros(256)), 1.0, n_iter
        return real(a, b, cfg, warmstart)

    monkeypatch.setattr(align_module, "_sinkhorn", sinkhorn)
    a, b = histogram(_image(rng, 60, 20)), histogram(_image(rng, 150, 40))
    result = align(a, b, AlignConfig(), warmstart=(np.zeros(256), np.zeros(256)))
    assert warm_started == [True, False][:1 + again] and result.converged == again


def test_the_background_solves_of_every_stream_take_turns_on_one_worker(rng, monkeypatch):
    # solves are CPU-bound: a second worker would take the live loop's core
    real, release, workers = align_module._solve, threading.Event(), []

    def solve(*args):
        if threading.current_thread() is not threading.main_thread():
            workers.append(threading.current_thread().name)
            assert release.wait(60)
        return real(*args)

    monkeypatch.setattr(align_module, "_solve", solve)
    cache = AlignCache(AlignConfig(background=True))
    ir, vis = _image(rng, 60, 20), _image(rng, 150, 40)
    for stream in ("a", "b"):
        cache.lut(ir, vis, stream)  # a stream's first frame solves at once
        cache.lut(_brighter(ir), vis, stream)  # a drifted one in the background, the first still blocked
    release.set()
    for stream in ("a", "b"):
        cache.pending(stream).result(timeout=60)
    assert len(workers) == 2 and len(set(workers)) == 1, workers
