"""Metric values on hand-worked images, skimage as the SSIM oracle, a scipy port of the reference VIF, and the
reference means of SeAFusion / the baseline table on the real MSRS test pairs (skipped without the data)."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity

from streamfuse import metrics as M


@pytest.fixture
def scene(rng: np.random.Generator) -> np.ndarray:
    """A smooth random 8-bit image with edges of all strengths (64 x 80)."""
    img = cv2.GaussianBlur(rng.uniform(0, 255, (64, 80)), (0, 0), 2)
    return M.to_8bit(cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX))


def test_constant_image_has_no_information_or_detail():
    flat = np.full((20, 30), 77.0)
    for fn in (M.entropy, M.std_dev, M.spatial_frequency, M.average_gradient, M.definition):
        assert fn(flat) == 0.0


def test_entropy_of_known_histograms():
    halves = np.zeros((10, 10))
    halves[:, 5:] = 255
    assert M.entropy(halves) == pytest.approx(1.0)
    assert M.entropy(np.arange(256.0).reshape(16, 16)) == pytest.approx(8.0)


def test_gradient_metrics_of_a_ramp():
    ramp = np.tile(2.0 * np.arange(12), (9, 1))  # d/dx = 2 everywhere, d/dy = 0
    assert M.spatial_frequency(ramp) == pytest.approx(2.0)
    assert M.average_gradient(ramp) == pytest.approx(math.sqrt(2))  # sqrt((2^2 + 0) / 2)
    assert M.definition(ramp) == pytest.approx(math.sqrt(2))
    assert M.std_dev(ramp) == pytest.approx(np.std(2.0 * np.arange(12)))


def test_average_gradient_is_matlab_central_difference():
    img = np.array([[0.0, 4.0, 6.0], [0.0, 4.0, 6.0]])  # Gx = [4, 3, 2] (one-sided, central, one-sided), Gy = 0
    assert M.average_gradient(img) == pytest.approx(np.mean(np.sqrt(np.array([16, 9, 4]) / 2)))


def test_mutual_information_hand_worked():
    a = np.array([[0.0, 0.0, 255.0, 255.0]])
    assert M._mi(a, a) == pytest.approx(math.log(2))  # one bit, in nats
    assert M._mi(a, np.array([[0.0, 255.0, 0.0, 255.0]])) == pytest.approx(0.0)


def test_identical_images_give_the_upper_bounds(scene):
    nats = M.entropy(scene) * math.log(2)
    assert M.mutual_information(scene, scene, scene) == pytest.approx(2 * nats)
    assert M.ssim(scene, scene, scene) == pytest.approx(2.0)
    assert M.vif(scene, scene, scene) == pytest.approx(2.0, abs=1e-6)
    assert M.cc(scene, scene, scene) == pytest.approx(1.0)
    assert M.nabf(scene, scene, scene) == 0.0
    assert M.qsf_rsfe(scene, scene, scene) == pytest.approx(0.0)
    # Qabf's ceiling: orientation term Ta / (1 + e^{-22 * 0.2}) times a strength term between Tg / (1 + e^{-7.5})
    # and Tg (analysis_Qabf.m sets G = gF, not 1, where gA == gF; integer images have Sobel strength 0 or >= 1)
    top = 0.9994 * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert top / (1 + math.exp(-7.5)) <= M.qabf(scene, scene, scene) <= top


def test_reference_metrics_rank_a_blur_below_the_source(scene):
    blurred = cv2.GaussianBlur(scene, (0, 0), 3)
    assert M.vif(blurred, scene, scene) < 1.5
    assert M.qabf(blurred, scene, scene) < M.qabf(scene, scene, scene) - 0.1
    assert M.ssim(blurred, scene, scene) < 1.9
    assert M.qsf_rsfe(blurred, scene, scene) < -0.3  # under-sharp: negative


def test_scd_of_the_sum_is_two(scene, rng):
    other = rng.uniform(0, 100, scene.shape)
    assert M.scd(scene + other, scene, other) == pytest.approx(2.0)  # F - VIS = IR and F - IR = VIS
    assert M.scd(scene, scene, scene) == 0.0  # F - IR is constant: no correlation, not NaN


def test_qsf_doubles_with_double_contrast(scene):
    assert M.qsf_rsfe(2 * scene, scene, scene) == pytest.approx(1.0)  # SF_F = 2 SF_R


def test_nabf_sees_artifacts_stronger_than_both_sources(scene, rng):
    noisy = scene + rng.normal(0, 20, scene.shape)
    assert M.nabf(noisy, scene, scene) > 0.05
    assert 0 <= M.nabf(cv2.GaussianBlur(scene, (0, 0), 1), scene, scene) < 0.01


@pytest.mark.parametrize("data_range", [2.0, 255.0])
def test_ssim_matches_skimage(rng, scene, data_range):
    for x, y in [(rng.uniform(0, 255, (40, 50)), rng.uniform(0, 255, (40, 50))), (scene, scene[::-1] * 0.7 + 20)]:
        expected = structural_similarity(x, y, data_range=data_range)
        assert M.ssim_pair(x, y, data_range=data_range) == pytest.approx(expected, abs=1e-9)


def _vifp_reference(ref: np.ndarray, dist: np.ndarray) -> float:
    """The published Python port (CDDFuse ``compare_viff``) with scipy's convolve2d, as the oracle."""
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        y, x = np.ogrid[-(n - 1) / 2:(n - 1) / 2 + 1, -(n - 1) / 2:(n - 1) / 2 + 1]
        win = np.exp(-(x * x + y * y) / (2 * (n / 5) ** 2))
        win /= win.sum()
        if scale > 1:
            ref, dist = convolve2d(ref, win, "valid")[::2, ::2], convolve2d(dist, win, "valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, win, "valid"), convolve2d(dist, win, "valid")
        s1 = np.maximum(convolve2d(ref * ref, win, "valid") - mu1**2, 0)
        s2 = np.maximum(convolve2d(dist * dist, win, "valid") - mu2**2, 0)
        s12 = convolve2d(ref * dist, win, "valid") - mu1 * mu2
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        g[s1 < 1e-10], sv[s1 < 1e-10], s1[s1 < 1e-10] = 0, s2[s1 < 1e-10], 0
        g[s2 < 1e-10], sv[s2 < 1e-10] = 0, 0
        sv[g < 0], g[g < 0] = s2[g < 0], 0
        sv[sv <= 1e-10] = 1e-10
        num += np.log10(1 + g * g * s1 / (sv + 2)).sum()
        den += np.log10(1 + s1 / 2).sum()
    return num / den


def test_vifp_matches_the_published_port(scene, rng):
    ref = np.vstack([scene, scene[::-1]])  # 128 x 80: big enough for four scales
    dist = M.to_8bit(cv2.GaussianBlur(ref, (0, 0), 1.2) + rng.normal(0, 5, ref.shape))
    assert M.vifp(ref, dist) == pytest.approx(_vifp_reference(ref, dist), rel=1e-9)


def _qabf_reference(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """``analysis_Qabf.m`` line by line with scipy's convolve2d, as the oracle (Tg, kg, Dg, Ta, ka, Da; L = 1)."""
    h1, h3 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]), np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])

    def edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sx, sy = convolve2d(img, h3, "same"), convolve2d(img, h1, "same")
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(sx**2 + sy**2), np.where(sx == 0, np.pi / 2, np.arctan(sy / sx))

    (g_f, a_f), total, weight = edges(fused.astype(float)), 0.0, 0.0
    for g_s, a_s in (edges(ir.astype(float)), edges(vis.astype(float))):
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(g_s > g_f, g_f / g_s, np.where(g_s == g_f, g_f, g_s / g_f))
        a = 1 - np.abs(a_s - a_f) / (np.pi / 2)
        q = 0.9994 / (1 + np.exp(-15 * (g - 0.5))) * 0.9879 / (1 + np.exp(-22 * (a - 0.8)))
        total, weight = total + (q * g_s).sum(), weight + g_s.sum()
    return total / weight


def test_qabf_matches_the_reference_code(scene, rng):
    # without the data, nothing else pinned Qabf's constants: a wrong sigmoid slope or angle scale passed the suite
    ir, vis = scene, M.to_8bit(np.clip(scene[::-1, :] * 0.8 + rng.normal(0, 6, scene.shape), 0, 255))
    for fused in (np.maximum(ir, vis), M.to_8bit(0.6 * ir + 0.3 * vis[::-1] + 20), cv2.GaussianBlur(ir, (0, 0), 1.5)):
        assert M.qabf(fused, ir, vis) == pytest.approx(_qabf_reference(fused, ir, vis), rel=1e-9)


def test_mutual_information_sums_what_the_fused_image_shares_with_each_source():
    a, b = np.array([[0.0, 0.0, 255.0, 255.0]]), np.array([[0.0, 255.0, 0.0, 255.0]])
    assert M.mutual_information(a, a, b) == pytest.approx(math.log(2))  # all of IR's bit, none of the visible's
    assert M.mutual_information(a, b, a) == pytest.approx(math.log(2))


def test_nabf_of_an_edge_stronger_than_both_sources_is_its_kumar_artifact_weight(scene):
    """Sources alike and a fused image of 1.5x their contrast: every weighted edge is an artifact with strength ratio
    2/3 and the same orientation, so Nabf is ``1 - sqrt(Qg Qa)`` with Kumar's sigmoids (kg 19, ka 22, centres 0.5)."""
    q_g, q_a = 0.9999 / (1 + math.exp(-19 * (2 / 3 - 0.5))), 0.9995 / (1 + math.exp(-22 * (1 - 0.5)))
    assert M.nabf(1.5 * scene.astype(float), scene, scene) == pytest.approx(1 - math.sqrt(q_g * q_a), rel=1e-6)


def test_an_edge_between_its_sources_strengths_is_no_artifact(scene):
    # an artifact is a fused edge stronger than both sources': one between them is one source's edge, kept
    assert M.nabf(1.5 * scene.astype(float), scene, 2.0 * scene.astype(float)) == 0.0


def test_qsf_weighs_the_diagonals_by_half_the_square_root_of_two():
    """A fused ramp across a frame whose sources ramp along it: SF over rows, columns and both diagonals (weighted
    sqrt(2)/2) worked by hand on a 6 x 9 frame."""
    h, w = 6, 9
    along, across = np.tile(np.arange(w, dtype=float), (h, 1)), np.tile(np.arange(h, dtype=float)[:, None], (1, w))
    wd = math.sqrt(2) / 2
    sf_f, sf_r = (h - 1) * w + 2 * wd * (h - 1) * (w - 1), h * (w - 1) + 2 * wd * (h - 1) * (w - 1)
    assert M.qsf_rsfe(across, along, along) == pytest.approx(math.sqrt(sf_f / sf_r) - 1)


@pytest.mark.parametrize("level", [0.0, 100.0, 255.0])
def test_flat_sources_score_finite_values(scene, level):
    """Sources without edges: two black sources leave Qabf no edge to preserve (0, where the reference code divides 0
    by 0), whatever the fused image; Nabf, with analysis_nabf.m's weight 0.001 on weak source edges, is 0 for a flat
    fused image and counts a textured one's edges as artifacts; only QSF, relative to the sources' frequency, is
    infinite for a textured one."""
    flat = np.full(scene.shape, level)
    for fused in (flat, scene):
        out = M.evaluate_pair(fused, flat, flat)
        assert all(math.isfinite(v) for k, v in out.items() if k != "QSF"), out
        assert (out["Nabf"] == 0.0) == (fused is flat) and (level > 0 or out["Qabf"] == 0.0)
        assert out["QSF"] == (0.0 if fused is flat else math.inf)
    out = M.evaluate_pair(flat, flat, flat)
    assert out["VIF"] == 2.0 and out["SSIM"] == pytest.approx(2.0)
    assert out["SF"] == out["AG"] == out["Over"] == 0.0


def test_nabf_of_smooth_sources_counts_the_edges_drawn_on_them(scene):
    """Source edges weaker than 2 weigh analysis_nabf.m's wt_min (0.001), not 0: on smooth sources the fused image's
    stronger edges are artifacts (a noise image scored 0, a perfect Nabf, when they weighed nothing)."""
    ramp = np.tile(np.arange(scene.shape[1], dtype=np.float64), (scene.shape[0], 1))  # edge strength 1 < 2
    assert M.nabf(ramp, ramp, ramp[::-1, ::-1]) == 0.0  # a source itself draws nothing new
    assert M.nabf(scene, ramp, ramp[::-1, ::-1]) > 0.5


def test_evaluate_pair_keys_order_and_shape_check(scene):
    out = M.evaluate_pair(scene + 0.4, scene, scene)  # scored as the saved 8-bit image: +0.4 rounds away
    assert list(out) == list(M.METRICS)
    assert out["SSIM"] == pytest.approx(2.0) and out["Nabf"] == 0.0
    for images in ((scene, scene[:-1], scene), (scene, scene, scene[:, :-1])):  # the visible is checked too
        with pytest.raises(ValueError, match="same shape"):
            M.evaluate_pair(*images)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_evaluate_pair_refuses_a_nan_or_infinite_pixel_naming_the_image(scene, bad):
    # a NaN pixel made every metric NaN (or bincount fail on the fused image), passed into the table's means unseen
    hole = scene.copy()
    hole[3, 4] = bad
    for k, name in enumerate(("fused", "IR", "visible")):
        images = [scene, scene, scene]
        images[k] = hole
        with pytest.raises(ValueError, match=f"finite pixels: the {name} image has 1 NaN or infinite ones"):
            M.evaluate_pair(*images)
    with pytest.raises(ValueError, match="finite pixels"):  # every metric on its own too
        M.entropy(hole)


def test_evaluate_pair_refuses_sources_outside_the_8_bit_range(scene):
    """16-bit counts (or negative values) scored against the fused image clipped to 0..255 gave VIF ~0 and Qabf ~0
    without a word; a fused image out of range is scored as saved (clipped), a source is refused naming it."""
    assert M.evaluate_pair(scene * 257, scene, scene)["SSIM"] < 2  # the fused image: clipped, as saved
    for k, (name, bad) in enumerate((("IR", scene * 257), ("visible", scene - 300))):
        images = [scene, scene, scene]
        images[k + 1] = bad
        with pytest.raises(ValueError, match=f"sources on 0..255: the {name} image spans {bad.min():g}..{bad.max():g}"):
            M.evaluate_pair(*images)


def test_evaluate_pair_refuses_images_too_small_for_vif(scene):
    """VIF's two finest scales of 'valid' filtering and decimation need 25 pixels a side (all four 41); below, a
    ValueError saying so rather than OpenCV's assertion on an empty array."""
    small = scene[:24, :40]
    with pytest.raises(ValueError, match="at least 25 pixels a side"):
        M.evaluate_pair(small, small, small)
    smallest = scene[:M.MIN_SIDE, :M.MIN_SIDE]
    assert all(math.isfinite(v) for v in M.evaluate_pair(smallest, smallest, smallest).values())


def _msrs_means(data_dir, fused_of, keys):
    from streamfuse.eval_pairs import find_pairs, read_grey

    rows = []
    for stem, ir_path, vis_path in find_pairs(data_dir / "msrs/test/ir", data_dir / "msrs/test/vi"):
        ir, vis = read_grey(ir_path), read_grey(vis_path)
        fused = M.to_8bit(fused_of(stem, ir, vis))
        rows.append({k: fn(fused) if k in M._FUSED_ONLY else fn(fused, ir, vis)
                     for k, fn in {**M._FUSED_ONLY, **M._WITH_SOURCES}.items() if k in keys})
    return {k: np.mean([r[k] for r in rows]) for k in keys}


@pytest.mark.data
def test_seafusion_reference_means(data_dir):
    ref_dir = data_dir / "reference/seafusion"
    expected = json.loads((ref_dir / "msrs_test.json").read_text())
    keys = [k for k in M.METRICS if k in expected]
    means = _msrs_means(data_dir, lambda stem, ir, vis: cv2.imread(str(ref_dir / f"msrs_test/{stem}.png"), 0), keys)
    assert expected["n"] == 32 and len(keys) == 9
    for k in keys:
        assert means[k] == pytest.approx(expected[k], abs=2e-4), k


@pytest.mark.data
@pytest.mark.slow
def test_max_baseline_matches_the_readme_table(data_dir):
    from streamfuse.fusers import FuseConfig
    from streamfuse.processor import build_fuser

    fuser = build_fuser(FuseConfig(name="max"))
    means = _msrs_means(data_dir, lambda stem, ir, vis: fuser.fuse(ir, vis), ["VIF", "Qabf", "AG", "SF", "MI"])
    table = {"VIF": 1.030, "Qabf": 0.727, "AG": 4.05, "SF": 12.60, "MI": 4.62}  # ../shared/data/README.md
    for k, v in table.items():
        assert means[k] == pytest.approx(v, abs=6e-3), k


def test_temporal_ratio_counts_flicker_relative_to_the_input(rng):
    vis = [np.full((8, 8), v, np.float64) for v in (10, 20, 30)]  # changes by 10 per frame
    assert M.temporal_ratio(vis, vis) == pytest.approx(1.0)
    noisy = [v + rng.choice([-10.0, 10.0], v.shape) for v in vis]  # adds flicker on top
    assert M.temporal_ratio(noisy, vis) > 1.3
    assert M.temporal_ratio([vis[0]] * 3, vis) == 0.0  # a frozen output does not flicker
    with pytest.raises(ValueError, match="equally long"):
        M.temporal_ratio(vis[:1], vis[:1])
    with pytest.raises(ValueError, match="equally long"):  # not scored over the shorter one's frames
        M.temporal_ratio(vis, vis[:2])


def test_qsf_on_flat_sources_is_defined():
    flat = np.full((16, 16), 7.0)
    assert M.qsf_rsfe(flat, flat, flat) == 0.0
    assert M.qsf_rsfe(np.eye(16) * 50, flat, flat) == float("inf")


def test_flow_warp_error_ignores_motion_and_sees_flicker():
    from streamfuse.metrics import flow_warp_error

    rng = np.random.default_rng(3)
    blurred = cv2.GaussianBlur(rng.uniform(0, 255, (60, 80)), (0, 0), 2)
    scene = (blurred - blurred.mean()) * 6 + 128  # texture for the flow to follow
    moving = [np.clip(np.roll(scene, k, axis=1), 0, 255) for k in range(5)]  # a pan: real motion, no flicker
    flicker = [m + rng.normal(0, 6, m.shape) for m in moving]
    assert flow_warp_error(moving, moving) < 1.0 < np.abs(moving[1] - moving[0]).mean()  # frame differences see motion
    assert flow_warp_error(flicker, moving) > 3.0 * flow_warp_error(moving, moving)
    with pytest.raises(ValueError, match="two equally long"):
        flow_warp_error(moving[:1], moving[:1])
    with pytest.raises(ValueError, match="two equally long"):  # not scored over the shorter one's frames
        flow_warp_error(moving, moving[:2])


def test_overshoot_counts_rims_beyond_both_sources_local_range():
    ir, vis = np.full((64, 80), 100.0), np.full((64, 80), 40.0)
    ir[10:20, 10:20] = 200.0  # a warm square
    fused = np.maximum(ir, vis)
    assert M.overshoot(fused, ir, vis) == 0.0
    rim = fused.copy()
    rim[40, :] = 255.0  # a bright row on the flat part: every pixel of it counts
    rim[9, 7:23] = 205.0  # beside the square, within its 3 px and 8 grey: none counts
    assert M.overshoot(rim, ir, vis) == pytest.approx(100.0 / 64)
    rim[40, :] = 107.0  # within the margin of the brighter source
    assert M.overshoot(rim, ir, vis) == 0.0
    assert M.overshoot(np.zeros_like(fused), ir, vis) == pytest.approx(100.0)  # darker than both, everywhere


def test_definition_differences_start_from_the_same_pixel():
    """DF at pixel (y, x) takes ``I(y, x+1) - I(y, x)`` and ``I(y+1, x) - I(y, x)``: both from (y, x), worked pixel by
    pixel on an image whose rows and columns change by different steps."""
    img = np.array([[0.0, 1.0, 4.0], [2.0, 7.0, 11.0], [8.0, 9.0, 20.0]])
    expected = np.mean([math.sqrt(((img[y, x + 1] - img[y, x]) ** 2 + (img[y + 1, x] - img[y, x]) ** 2) / 2)
                        for y in range(2) for x in range(2)])
    assert M.definition(img) == pytest.approx(expected)


def test_mutual_information_of_sources_with_different_grey_level_shares():
    """MI uses each image's own marginal: (3/4, 1/4) against (1/4, 3/4), worked by hand (nats)."""
    a, b = np.array([[0.0, 0.0, 0.0, 255.0]]), np.array([[0.0, 255.0, 255.0, 255.0]])
    # joint: (0, 0) 1/4, (0, 255) 1/2, (255, 255) 1/4
    expected = 0.25 * math.log(0.25 / (0.75 * 0.25)) + 0.5 * math.log(0.5 / (0.75 * 0.75)) \
        + 0.25 * math.log(0.25 / (0.25 * 0.75))
    assert M._mi(a, b) == pytest.approx(expected) and expected > 0


def test_nabf_weighs_source_edges_of_strength_exactly_two():
    """Kumar's weight is ``g^1.5`` where ``g >= 2`` (else 0.001): sources ramping by 2 a column (Sobel/8 strength 2 on
    28 inner columns, 0 on the 2 reflected border columns) weigh their edges, and a fused ramp of 3 a column is an
    artifact of ratio 2/3 there."""
    ramp = np.tile(np.arange(30, dtype=np.float64), (30, 1))
    q_g, q_a = 0.9999 / (1 + math.exp(-19 * (2 / 3 - 0.5))), 0.9995 / (1 + math.exp(-22 * (1 - 0.5)))
    share = 28 * 2**1.5 / (28 * 2**1.5 + 2 * 0.001)  # of the weight, on the inner columns' edges
    assert M.nabf(3 * ramp, 2 * ramp, 2 * ramp) == pytest.approx((1 - math.sqrt(q_g * q_a)) * share, rel=1e-9)


def test_overshoot_counts_only_pixels_more_than_the_margin_beyond_the_sources():
    ir, vis = np.full((30, 30), 100.0), np.full((30, 30), 40.0)
    at_margin = np.full((30, 30), 70.0)
    at_margin[5, :] = 108.0  # exactly 8 above the brighter source: not more than the margin
    at_margin[20, :] = 32.0  # exactly 8 below the darker one
    assert M.overshoot(at_margin, ir, vis) == 0.0
    at_margin[5, :] = 109.0
    assert M.overshoot(at_margin, ir, vis) == pytest.approx(100.0 / 30)


def test_ssim_of_the_table_is_skimage_with_cddfuse_data_range_two(scene, rng):
    """``ssim`` (the table's SSIM) calls ``ssim_pair`` with CDDFuse's ``data_range=2``, not the 0..255 range."""
    ir, vis = scene, M.to_8bit(rng.uniform(0, 255, scene.shape))
    fused = M.to_8bit(0.5 * ir + 0.5 * vis)
    expected = sum(structural_similarity(fused, src, data_range=2.0) for src in (ir, vis))
    assert M.ssim(fused, ir, vis) == pytest.approx(expected, abs=1e-9)
    assert M.ssim(fused, ir, vis) != pytest.approx(
        sum(structural_similarity(fused, src, data_range=255.0) for src in (ir, vis)), abs=1e-3)


def test_qsf_reference_takes_the_larger_source_difference_per_direction():
    """Sources ramping along and across the frame: the reference SF_R takes, per pixel and direction, the larger of
    the two sources' absolute differences (1 in all four directions), worked by hand on a 6 x 9 frame for their sum."""
    h, w = 6, 9
    along, across = np.tile(np.arange(w, dtype=float), (h, 1)), np.tile(np.arange(h, dtype=float)[:, None], (1, w))
    wd = math.sqrt(2) / 2
    # fused = along + across: row and column differences 1, main diagonal 2, secondary diagonal 0
    sf_f = h * (w - 1) + (h - 1) * w + wd * 4 * (h - 1) * (w - 1)
    sf_r = h * (w - 1) + (h - 1) * w + 2 * wd * (h - 1) * (w - 1)
    assert M.qsf_rsfe(along + across, along, across) == pytest.approx(math.sqrt(sf_f / sf_r) - 1)


def test_temporal_ratio_of_a_static_input_and_a_frozen_output_is_one():
    """Nothing changes in the input and nothing in the output: exactly the input's change, 1.0 (not 0 or NaN)."""
    still = [np.full((8, 8), 50.0)] * 3
    assert M.temporal_ratio(still, still) == 1.0
    assert M.temporal_ratio([still[0], still[0] + 1, still[0]], still) == math.inf


def test_temporal_ratio_scores_the_fused_frames_as_saved():
    """A wobble below half a grey level rounds away in the saved 8-bit frames: no flicker."""
    vis = [np.full((8, 8), v) for v in (10.0, 20.0, 30.0)]
    fused = [np.full((8, 8), 100.0 + d) for d in (0.0, 0.3, -0.3)]
    assert M.temporal_ratio(fused, vis) == 0.0


def test_nabf_sobel_extends_the_border_by_reflect_101():
    """Kumar's ``per_extn_im_fn`` mirrors without repeating the edge pixel: a ramp has no horizontal gradient on its
    first and last columns (both neighbours are the same column), and Sobel/8 strength slope / 2 inside."""
    ramp = np.tile(4.0 * np.arange(10), (6, 1))
    strength, _ = M._sobel_nabf(ramp)
    np.testing.assert_array_equal(strength[:, [0, -1]], 0.0)
    np.testing.assert_allclose(strength[:, 1:-1], 4.0)


def test_evaluate_pair_gives_each_metric_under_its_own_name(scene, rng):
    """Every key of the table is the value of its own function (a swapped entry of the name map went unseen)."""
    ir, vis = scene, M.to_8bit(np.clip(scene[::-1] * 0.7 + rng.normal(0, 8, scene.shape), 0, 255))
    fused = M.to_8bit(0.6 * ir + 0.4 * vis)
    functions = {"EN": M.entropy, "SD": M.std_dev, "SF": M.spatial_frequency, "AG": M.average_gradient,
                 "DF": M.definition, "MI": M.mutual_information, "SCD": M.scd, "VIF": M.vif, "Qabf": M.qabf,
                 "Nabf": M.nabf, "Over": M.overshoot, "SSIM": M.ssim, "CC": M.cc, "QSF": M.qsf_rsfe}
    out = M.evaluate_pair(fused, ir, vis)
    assert set(functions) == set(M.METRICS)
    for name, fn in functions.items():
        expected = fn(fused) if name in ("EN", "SD", "SF", "AG", "DF") else fn(fused, ir, vis)
        assert out[name] == expected, name


def test_flow_warp_error_leaves_out_what_an_object_uncovers():
    """A textured square moving 8 px a frame over a still background: the background it uncovers has no match in the
    frame before, and the forward-backward check leaves it out (measured 2.6 grey levels with it, 6.5 without, or
    with a check 10 times looser)."""
    rng = np.random.default_rng(3)
    back = cv2.GaussianBlur(rng.uniform(0, 255, (60, 80)), (0, 0), 2)
    square = cv2.GaussianBlur(rng.uniform(0, 255, (20, 20)), (0, 0), 2)
    frames = []
    for k in range(4):
        frame = (back - back.mean()) * 6 + 128
        frame[20:40, 10 + 8 * k:30 + 8 * k] = (square - square.mean()) * 6 + 128
        frames.append(np.clip(frame, 0, 255))
    assert M.flow_warp_error(frames, frames) < 4.0


def test_cc_averages_the_correlation_with_each_source(scene):
    """CC is the mean of the fused image's correlation with IR and with the visible: a fused image equal to IR, beside
    a visible image that is its negative, correlates +1 and -1, so 0 (one source counted twice gave 1)."""
    assert M.cc(scene, scene, 255 - scene) == pytest.approx(0.0, abs=1e-12)
    assert M.cc(scene, 255 - scene, scene) == pytest.approx(0.0, abs=1e-12)


def test_vif_sums_the_published_vifp_against_each_source(scene, rng):
    """VIF filters the fused image once for both sources: each source keeps its own term (the oracle scores them one
    at a time), with sources unlike each other, as IR and the visible are."""
    ir = np.vstack([scene, scene[::-1]])  # 128 x 80: big enough for four scales
    vis = M.to_8bit(np.clip(ir[:, ::-1] * 0.6 + rng.normal(0, 10, ir.shape) + 40, 0, 255))
    fused = M.to_8bit(0.5 * ir + 0.5 * vis)
    expected = _vifp_reference(ir, fused) + _vifp_reference(vis, fused)
    assert M.vif(fused, ir, vis) == pytest.approx(expected, rel=1e-9)


def _nabf_reference(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """Kumar's ``analysis_nabf.m`` step by step with scipy's convolve2d, as the oracle: Sobel/8 on the image extended by
    ``per_extn_im_fn`` (mirrored without the edge pixel), orientation 0 where both responses are 0, ``w = g^1.5``
    where ``g >= 2``, else its ``wt_min`` 0.001, artifacts where the fused edge is stronger than both sources'."""
    v_kernel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8

    def edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ext = np.pad(img.astype(float), 1, mode="reflect")
        gv, gh = convolve2d(ext, v_kernel, "valid"), convolve2d(ext, v_kernel.T, "valid")
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.hypot(gv, gh), np.where((gv == 0) & (gh == 0), 0.0, np.arctan(gv / gh))

    (g_f, a_f), sources, total, weight = edges(fused), (edges(ir), edges(vis)), 0.0, 0.0
    na = (g_f > sources[0][0]) & (g_f > sources[1][0])  # an artifact: stronger than both sources' edges
    for g_s, a_s in sources:
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where((g_s == 0) | (g_f == 0), 0.0, np.minimum(g_s, g_f) / np.maximum(g_s, g_f))
        a = np.abs(np.abs(a_s - a_f) - np.pi / 2) * 2 / np.pi
        q = np.sqrt(0.9999 / (1 + np.exp(-19 * (g - 0.5))) * 0.9995 / (1 + np.exp(-22 * (a - 0.5))))
        w = np.where(g_s >= 2, g_s**1.5, 0.001)
        total, weight = total + (na * (1 - q) * w).sum(), weight + w.sum()
    return total / weight


def test_nabf_matches_the_reference_code(scene, rng):
    # the hand-worked Nabf tests have one strength ratio and orientation everywhere and sources alike, where the
    # weights cancel: a wrong weight exponent, one source's weight for both, or orientations more than 90 degrees
    # apart scored as unlike passed the suite
    ir, vis = scene, M.to_8bit(np.clip(scene[::-1, :] * 0.8 + rng.normal(0, 6, scene.shape), 0, 255))
    for fused in (M.to_8bit(np.clip(1.3 * ir - 0.2 * vis + rng.normal(0, 8, scene.shape), 0, 255)),
                  M.to_8bit(np.clip(ir[:, ::-1] * 1.5 - 40, 0, 255))):
        expected = _nabf_reference(fused, ir, vis)
        assert expected > 0.01  # artifacts to weigh: the comparison is not of two zeros
        assert M.nabf(fused, ir, vis) == pytest.approx(expected, rel=1e-9)


def test_overshoot_takes_the_range_of_whichever_source_is_brighter_there():
    """IR and the visible cross (each brighter on one half): the brighter and the darker source differ by place, and a
    fused image at either one's level is no halo anywhere."""
    ir, vis = np.full((30, 40), 60.0), np.full((30, 40), 150.0)
    ir[:, 20:], vis[:, 20:] = 200.0, 30.0
    assert M.overshoot(np.maximum(ir, vis), ir, vis) == 0.0
    assert M.overshoot(np.minimum(ir, vis), ir, vis) == 0.0


def test_temporal_ratio_averages_every_pair_of_frames():
    """The visible changes by 10, then 30 grey levels (mean 20); the fused output by 0, then 20 (mean 10): 0.5."""
    vis = [np.full((8, 8), v) for v in (10.0, 20.0, 50.0)]
    fused = [np.full((8, 8), v) for v in (100.0, 100.0, 120.0)]
    assert M.temporal_ratio(fused, vis) == pytest.approx(0.5)


def test_flow_warp_error_is_the_mean_over_pairs_of_frames():
    """A pan whose fused output flickers between the first two frames only: the sequence's error is the mean of each
    pair of frames' own, not the last pair's."""
    rng = np.random.default_rng(5)
    blurred = cv2.GaussianBlur(rng.uniform(0, 255, (60, 80)), (0, 0), 2)
    moving = [np.clip(np.roll((blurred - blurred.mean()) * 6 + 128, k, axis=1), 0, 255) for k in range(3)]
    fused = [moving[0] + rng.normal(0, 8, moving[0].shape), moving[1], moving[2]]
    per_pair = [M.flow_warp_error(fused[t - 1:t + 1], moving[t - 1:t + 1]) for t in (1, 2)]
    assert per_pair[0] > 2 * per_pair[1]  # the pairs differ: a mean is not any one of them
    assert M.flow_warp_error(fused, moving) == pytest.approx(np.mean(per_pair), rel=1e-6)  # float32 sums


def test_a_colour_image_is_refused_not_scored():
    """Metrics are of the Y channel: a (H, W, 3) image is refused in one line, not scored channel by channel."""
    colour = np.zeros((30, 30, 3))
    with pytest.raises(ValueError, match=r"metrics need a 2-D grey image, got shape \(30, 30, 3\)"):
        M.evaluate_pair(colour, colour, colour)


def test_entropy_counts_the_grey_levels_of_the_rounded_image():
    """EN is of ``round(img)``: 99.6 and 100.4 are one grey level (0 bits), 99.4 and 99.6 two (1 bit), not truncated."""
    assert M.entropy(np.array([[99.6, 100.4] * 8])) == 0.0
    assert M.entropy(np.array([[99.4, 99.6] * 8])) == pytest.approx(1.0)


def test_evaluate_pair_refuses_a_source_half_a_grey_level_outside_0_255(scene):
    """0..255 is the range itself: a source reaching 255.5 or -0.5 is refused, one at 0 and 255 is scored."""
    assert scene.min() == 0 and scene.max() == 255
    M.evaluate_pair(scene, scene, scene)
    for bad in (scene + 0.5, scene - 0.5):
        with pytest.raises(ValueError, match="sources on 0..255: the IR image spans"):
            M.evaluate_pair(scene, bad, scene)


def test_ssim_pair_takes_an_image_as_small_as_its_window(rng):
    """7 x 7 images, one window: skimage's value; 6 x 6 is refused in one line."""
    x, y = rng.uniform(0, 255, (7, 7)), rng.uniform(0, 255, (7, 7))
    assert M.ssim_pair(x, y) == pytest.approx(structural_similarity(x, y, data_range=2.0), abs=1e-9)
    with pytest.raises(ValueError, match=r"SSIM needs images of at least 7x7, got \(6, 6\)"):
        M.ssim_pair(x[:6, :6], y[:6, :6])


def test_overshoot_counts_a_fused_value_beyond_255_as_it_is():
    """An unclipped fuser output is measured at its own level, not wrapped or truncated to 8 bits: 300 over sources of
    255 and 30 is a rim, as is 208.5 over sources of 200 and 100 (half a grey level more than the margin)."""
    assert M.overshoot(np.full((20, 20), 300.0), np.full((20, 20), 255.0), np.full((20, 20), 30.0)) == 100.0
    assert M.overshoot(np.full((20, 20), 208.5), np.full((20, 20), 200.0), np.full((20, 20), 100.0)) == 100.0


def test_nabf_of_edges_drawn_on_flat_sources_takes_their_orientation_as_zero():
    """analysis_nabf.m gives a pixel without gradient orientation 0: on flat sources, a fused ramp's edges (Sobel/8
    strength 1, orientation 90 degrees, on the 28 inner of 30 columns) are artifacts of strength ratio 0 and
    orientation term ``||0 - 90| - 90| = 0``, each source weighing wt_min."""
    flat, ramp = np.full((30, 30), 100.0), np.tile(np.arange(30, dtype=np.float64), (30, 1))
    q_g, q_a = 0.9999 / (1 + math.exp(-19 * (0 - 0.5))), 0.9995 / (1 + math.exp(-22 * (0 - 0.5)))
    assert M.nabf(ramp, flat, flat) == pytest.approx(28 / 30 * (1 - math.sqrt(q_g * q_a)), rel=1e-9)
