"""Image-fusion quality metrics on the Y channel, following the published evaluation code of the field.

Every metric takes ``(H, W)`` arrays on 0..255 (any real dtype; computed in float64). Conventions are those of
CDDFuse's ``utils/Evaluator.py`` (Zhao et al., CVPR 2023), which the DDFM/CDDFuse family of papers report, and of
the MATLAB toolbox behind VIF-Benchmark (``analysis_Qabf.m``, ``analysis_nabf.m``, ``metricZheng.m``), so that
numbers are comparable with published tables. Where those sources carry a quirk (Qabf's ``gA == gF`` branch,
Nabf's border extension, SSIM's ``data_range=2``), it is kept on purpose and noted.

The fused image is scored as the 8-bit image a user would save (rounded and clipped, see :func:`to_8bit`): every
published evaluator reads fused PNGs, and MI/EN need integer grey levels.

Examples:
    >>> import numpy as np
    >>> flat = np.full((8, 8), 100.0)
    >>> float(entropy(flat)), float(average_gradient(flat))
    (0.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from streamfuse.imageops.arrays import box_filter

__all__ = [
    "METRICS", "LABELS", "to_8bit", "entropy", "std_dev", "spatial_frequency", "average_gradient", "definition",
    "mutual_information", "scd", "vif", "vifp", "qabf", "nabf", "overshoot", "ssim", "ssim_pair", "cc", "qsf_rsfe",
    "evaluate_pair", "temporal_ratio", "flow_warp_error", "MIN_SIDE",
]

#: Metric names in table order (the keys of :func:`evaluate_pair`).
METRICS: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "Nabf", "Over", "SSIM", "CC", "DF",
                             "QSF")
#: Column headers where the bare key would mislead (QSF's convention in HCLFuse is unknown; this is Zheng's rSFe).
LABELS: dict[str, str] = {"QSF": "QSF (rSFe)", "Over": "Over %"}
MIN_SIDE = 25  # VIF's 2 finest scales; all 4 of 'valid' filtering and 2x decimation need 41 (else 0, as conv2)


def to_8bit(img: np.ndarray) -> np.ndarray:
    """Round and clip to the 0..255 grey levels of an 8-bit PNG, as float64 ``(H, W)``."""
    return np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255)


def _f64(img: np.ndarray, what: str = "an") -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"metrics need a 2-D grey image, got shape {img.shape}")
    if not np.isfinite(img).all():  # NaN would turn every metric into NaN, passed into a table's means unseen
        raise ValueError(f"metrics need finite pixels: {what} image has {np.count_nonzero(~np.isfinite(img))} NaN or "
                         f"infinite ones (of {img.size})")
    return img


# --------------------------------------------------------------------------------------------------------- no-reference


def entropy(img: np.ndarray) -> float:
    """EN: Shannon entropy (bits) of the 256-bin grey-level histogram of ``round(img)`` (CDDFuse ``EN``)."""
    levels = to_8bit(_f64(img)).astype(np.intp).ravel()
    p = np.bincount(levels, minlength=256) / levels.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def std_dev(img: np.ndarray) -> float:
    """SD: population standard deviation of the grey levels (``np.std``)."""
    return float(np.std(_f64(img)))


def spatial_frequency(img: np.ndarray) -> float:
    """SF: ``sqrt(mean(dx^2) + mean(dy^2))`` over first differences, no padding (Eskicioglu & Fisher 1995; CDDFuse)."""
    img = _f64(img)
    return float(np.sqrt(np.mean(np.diff(img, axis=1) ** 2) + np.mean(np.diff(img, axis=0) ** 2)))


def average_gradient(img: np.ndarray) -> float:
    """AG: mean of ``sqrt((Gx^2 + Gy^2) / 2)`` with MATLAB ``gradient`` (central inside, one-sided at the border)."""
    img = _f64(img)
    gy, gx = np.gradient(img)  # numpy's default edge_order=1 is MATLAB's gradient: CDDFuse's AG exactly
    return float(np.mean(np.sqrt((gx**2 + gy**2) / 2)))


def definition(img: np.ndarray) -> float:
    """DF (definition/clarity): mean of ``sqrt((dx^2 + dy^2) / 2)`` with forward differences on ``(H-1, W-1)``."""
    img = _f64(img)
    dx = img[:-1, 1:] - img[:-1, :-1]
    dy = img[1:, :-1] - img[:-1, :-1]
    return float(np.mean(np.sqrt((dx**2 + dy**2) / 2)))


# ---------------------------------------------------------------------------------------------------- with the sources


def _mi(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two 8-bit images from their joint 256x256 histogram."""
    ia, ib = (to_8bit(x).astype(np.intp).ravel() for x in (a, b))
    joint = np.bincount(ia * 256 + ib, minlength=256 * 256).reshape(256, 256) / ia.size
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())


def mutual_information(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """MI: ``MI(F, IR) + MI(F, VIS)`` in nats (as sklearn ``mutual_info_score`` in CDDFuse)."""
    fused = _f64(fused)
    return _mi(fused, _f64(ir)) + _mi(fused, _f64(vis))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 where one side is constant (the reference code's 0/0 would be NaN)."""
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def scd(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """SCD: ``corr(F - VIS, IR) + corr(F - IR, VIS)`` (Aslantas & Bendes 2015; CDDFuse)."""
    fused, ir, vis = _f64(fused), _f64(ir), _f64(vis)
    return _corr(ir, fused - vis) + _corr(vis, fused - ir)


def cc(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """CC: mean of the Pearson correlations ``(corr(F, IR) + corr(F, VIS)) / 2`` (CDDFuse)."""
    fused = _f64(fused)
    return (_corr(_f64(ir), fused) + _corr(_f64(vis), fused)) / 2


def _gauss1d(n: int) -> np.ndarray:
    """1-D factor of MATLAB's ``fspecial('gaussian', n, n / 5)`` (no tap falls below eps * max for n <= 17)."""
    r = (n - 1) / 2
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * (n / 5) ** 2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``conv2(img, g' * g, 'valid')`` for a symmetric separable kernel."""
    r = len(g) // 2
    out = cv2.sepFilter2D(img, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
    return out[r:img.shape[0] - r, r:img.shape[1] - r]


def _vifp_many(refs: list[np.ndarray], dist: np.ndarray) -> list[float]:
    """:func:`vifp` of ``dist`` against each reference, filtering ``dist`` once per scale."""
    refs, dist = [_f64(r) for r in refs], _f64(dist)
    sigma_nsq, eps = 2.0, 1e-10
    num, den = np.zeros(len(refs)), np.zeros(len(refs))
    for scale in range(1, 5):
        g = _gauss1d(2 ** (5 - scale) + 1)
        if scale > 1:
            refs, dist = [_filter_valid(r, g)[::2, ::2] for r in refs], _filter_valid(dist, g)[::2, ::2]
        mu2 = _filter_valid(dist, g)
        s2 = np.maximum(_filter_valid(dist * dist, g) - mu2 * mu2, 0)
        flat2 = s2 < eps
        for i, ref in enumerate(refs):
            mu1 = _filter_valid(ref, g)
            s1 = np.maximum(_filter_valid(ref * ref, g) - mu1 * mu1, 0)
            s12 = _filter_valid(ref * dist, g) - mu1 * mu2
            gain = s12 / (s1 + eps)
            sv = s2 - gain * s12
            # The reference code's special cases, in its order: flat reference, flat distorted, negative gain.
            flat1 = s1 < eps
            gain[flat1], sv[flat1], s1[flat1] = 0, s2[flat1], 0
            gain[flat2], sv[flat2] = 0, 0
            neg = gain < 0
            sv[neg], gain[neg] = s2[neg], 0
            sv = np.maximum(sv, eps)
            num[i] += np.log10(1 + gain * gain * s1 / (sv + sigma_nsq)).sum()
            den[i] += np.log10(1 + s1 / sigma_nsq).sum()
    return [float(n / d) if d > 0 else 1.0 for n, d in zip(num, den)]  # 0/0 (flat sources): the reference code's 1


def vifp(ref: np.ndarray, dist: np.ndarray) -> float:
    """Pixel-domain multiscale VIF of ``dist`` against ``ref`` (Sheikh & Bovik, IEEE TIP 2006; ``vifp_mscale.m``).

    Four scales with Gaussian windows of 17, 9, 5, 3 taps (sigma = N/5), 'valid' filtering and 2x decimation,
    HVS noise variance 2; ``sum(log10(1 + g^2 s1 / (sv + 2))) / sum(log10(1 + s1 / 2))`` over all scales.
    """
    return _vifp_many([ref], dist)[0]


def vif(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """VIF: ``vifp(IR, F) + vifp(VIS, F)`` (summed, as CDDFuse's ``VIFF``)."""
    return sum(_vifp_many([ir, vis], fused))


def _sobel_qabf(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength and orientation of ``analysis_Qabf.m``: ``conv2(., h, 'same')`` with zero padding."""
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
    # filter2D correlates; flipping the kernel makes it conv2's convolution
    sx = cv2.filter2D(img, cv2.CV_64F, h3[::-1, ::-1].copy(), borderType=cv2.BORDER_CONSTANT)
    sy = cv2.filter2D(img, cv2.CV_64F, h1[::-1, ::-1].copy(), borderType=cv2.BORDER_CONSTANT)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(sx == 0, np.pi / 2, np.arctan(sy / sx))
    return np.sqrt(sx * sx + sy * sy), angle


def _qaf(g_a: np.ndarray, a_a: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Per-pixel edge preservation Q^{AF} with Xydeas-Petrovic constants (Tg, kg, Dg, Ta, ka, Da)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # analysis_Qabf.m sets G = gF (not 1) where gA == gF: kept, it is what published numbers use
        rel = np.where(g_a > g_f, g_f / g_a, np.where(g_a == g_f, g_f, g_a / g_f))
    ang = 1 - np.abs(a_a - a_f) / (np.pi / 2)
    q_g = 0.9994 / (1 + np.exp(-15 * (rel - 0.5)))
    q_a = 0.9879 / (1 + np.exp(-22 * (ang - 0.8)))
    return q_g * q_a


def qabf(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """Qabf: gradient-weighted edge preservation (Xydeas & Petrovic, Electronics Letters 2000; ``analysis_Qabf.m``).

    ``sum(Q^AF gA + Q^BF gB) / sum(gA + gB)`` with Sobel strength g and orientation atan(gy/gx), L = 1.
    Two black sources have no edge to preserve, whatever the fused image: 0, not the reference code's 0/0.
    """
    (g_a, a_a), (g_b, a_b), (g_f, a_f) = (_sobel_qabf(_f64(x)) for x in (ir, vis, fused))
    num = (_qaf(g_a, a_a, g_f, a_f) * g_a + _qaf(g_b, a_b, g_f, a_f) * g_b).sum()
    return float(num / den) if (den := (g_a + g_b).sum()) > 0 else 0.0


def _sobel_nabf(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel/8 responses of Kumar's ``sobel_fn`` (border: its ``per_extn_im_fn``, i.e. reflect-101)."""
    k = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64) / 8
    gv = cv2.filter2D(img, cv2.CV_64F, k[::-1, ::-1].copy(), borderType=cv2.BORDER_REFLECT_101)
    gh = cv2.filter2D(img, cv2.CV_64F, k.T[::-1, ::-1].copy(), borderType=cv2.BORDER_REFLECT_101)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where((gv == 0) & (gh == 0), 0.0, np.arctan(gv / gh))
    return np.sqrt(gv * gv + gh * gh), angle


def nabf(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """Nabf: Kumar's modified fusion-artifact measure (SIViP 2015; ``analysis_nabf.m``), lower is better.

    ``sum(na ((1 - Q^AF) wA + (1 - Q^BF) wB)) / sum(wA + wB)``, ``na``: fused edge stronger than both sources'; Q with
    Petrovic's sigmoids (kg 19, ka 22); ``w = g^1.5`` where ``g >= 2``, else ``analysis_nabf.m``'s wt_min 0.001, not 0.
    """
    (g_a, a_a), (g_b, a_b), (g_f, a_f) = (_sobel_nabf(_f64(x)) for x in (ir, vis, fused))

    def q(g_s: np.ndarray, a_s: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where((g_s == 0) | (g_f == 0), 0.0, np.where(g_s > g_f, g_f / g_s, g_s / g_f))
        ang = np.abs(np.abs(a_s - a_f) - np.pi / 2) * 2 / np.pi
        q_g = 0.9999 / (1 + np.exp(-19 * (rel - 0.5)))
        q_a = 0.9995 / (1 + np.exp(-22 * (ang - 0.5)))
        return np.sqrt(q_g * q_a)

    w_a, w_b = (np.where(g >= 2, g**1.5, 0.001) for g in (g_a, g_b))  # wt_min 0.001: never 0/0
    na = (g_f > g_a) & (g_f > g_b)  # artifacts: fused edges stronger than both sources'
    return float((na * ((1 - q(g_a, a_a)) * w_a + (1 - q(g_b, a_b)) * w_b)).sum() / (w_a + w_b).sum())


def overshoot(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray, margin: float = 8.0, window: int = 7) -> float:
    """Halos and rims, lower is better (this project's measure, not a published one): the share (%) of pixels more
    than ``margin`` grey levels brighter than the brightest, or darker than the darkest, of both sources within a
    ``window`` x ``window`` square around them. A base-plus-detail fusion draws them where it adds one source's
    detail on a base that the other source set; Nabf sees only the edges they make, not their level.
    """
    kernel = np.ones((window, window), np.uint8)
    hi = cv2.dilate(np.maximum(ir, vis).astype(np.float32), kernel, borderType=cv2.BORDER_REPLICATE)
    lo = cv2.erode(np.minimum(ir, vis).astype(np.float32), kernel, borderType=cv2.BORDER_REPLICATE)
    f = fused.astype(np.float32)
    return 100.0 * float(np.mean((f > hi + margin) | (f < lo - margin)))


def ssim_pair(x: np.ndarray, y: np.ndarray, data_range: float = 2.0, win: int = 7) -> float:
    """Mean SSIM (Wang et al., IEEE TIP 2004) exactly as skimage ``structural_similarity`` with its defaults.

    Uniform ``win x win`` window, sample covariance (N/(N-1)), K1 0.01, K2 0.03, mean over the map with a border of
    ``(win-1)/2`` cropped. ``data_range=2`` is what CDDFuse's float-image call resolved to; on 0..255 it makes
    C1, C2 negligible.
    """
    x, y = _f64(x), _f64(y)
    pad = (win - 1) // 2
    if min(x.shape) < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win}, got {x.shape}")

    cov_norm = win * win / (win * win - 1)
    ux, uy = box_filter(x, win), box_filter(y, win)
    vx = cov_norm * (box_filter(x * x, win) - ux * ux)
    vy = cov_norm * (box_filter(y * y, win) - uy * uy)
    vxy = cov_norm * (box_filter(x * y, win) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s[pad:-pad, pad:-pad].mean())  # the border is cropped, so the filters' padding never matters


def ssim(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """SSIM: ``SSIM(F, IR) + SSIM(F, VIS)`` (summed, as CDDFuse's ``SSIM``), see :func:`ssim_pair`."""
    return ssim_pair(fused, ir) + ssim_pair(fused, vis)


def qsf_rsfe(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """QSF as Zheng's ratio of SF error rSFe = ``(SF_F - SF_R) / SF_R`` (Inf. Fusion 2007; ``metricZheng.m``), 0 ideal.

    SF over 4 directions (row, column, both diagonals weighted by sqrt(2)/2, sums divided by H*W); the reference
    SF_R takes per pixel and direction the larger absolute source difference. Positive: over-sharpened.
    """
    fused, ir, vis = _f64(fused), _f64(ir), _f64(vis)
    n, wd = fused.size, math.sqrt(2) / 2
    diffs = (  # (difference operator, weight): row, column, main diagonal, secondary diagonal
        (lambda a: a[:, 1:] - a[:, :-1], 1.0),
        (lambda a: a[1:, :] - a[:-1, :], 1.0),
        (lambda a: a[1:, 1:] - a[:-1, :-1], wd),
        (lambda a: a[1:, :-1] - a[:-1, 1:], wd),
    )
    sf_f = math.sqrt(sum(w * (d(fused) ** 2).sum() / n for d, w in diffs))
    sf_r = math.sqrt(sum(w * (np.maximum(np.abs(d(ir)), np.abs(d(vis))) ** 2).sum() / n for d, w in diffs))
    if sf_r == 0:  # both sources flat: no reference frequency; a flat result is exact, anything else infinitely off
        return 0.0 if sf_f == 0 else math.inf
    return (sf_f - sf_r) / sf_r


_FUSED_ONLY: dict[str, Callable[[np.ndarray], float]] = {
    "EN": entropy, "SD": std_dev, "SF": spatial_frequency, "AG": average_gradient, "DF": definition,
}
_WITH_SOURCES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "MI": mutual_information, "SCD": scd, "VIF": vif, "Qabf": qabf, "Nabf": nabf, "Over": overshoot,
    "SSIM": ssim, "CC": cc, "QSF": qsf_rsfe,
}


def evaluate_pair(fused: np.ndarray, ir: np.ndarray, vis_y: np.ndarray) -> dict[str, float]:
    """All metrics of one fused image, in :data:`METRICS` order.

    Args:
        fused: fused Y ``(H, W)`` on 0..255, any dtype; scored after :func:`to_8bit`.
        ir: infrared ``(H, W)`` on 0..255.
        vis_y: visible luma ``(H, W)`` on 0..255.

    Returns:
        ``{name: value}`` for every name in :data:`METRICS`.

    Raises:
        ValueError: shapes differ, too small, NaN or infinite pixels, a source outside 0..255 (one line naming which).
    """
    fused, ir, vis_y = to_8bit(_f64(fused, "the fused")), _f64(ir, "the IR"), _f64(vis_y, "the visible")
    if not fused.shape == ir.shape == vis_y.shape or min(ir.shape) < MIN_SIDE:
        raise ValueError(f"fused {fused.shape}, IR {ir.shape} and visible {vis_y.shape} must have the same shape, at "
                         f"least {MIN_SIDE} pixels a side")
    for what, img in (("IR", ir), ("visible", vis_y)):  # 16-bit counts against the clipped fused image: no score
        if img.min() < 0 or img.max() > 255:
            raise ValueError(f"metrics need sources on 0..255: the {what} image spans {img.min():g}..{img.max():g}")
    out = {name: fn(fused) for name, fn in _FUSED_ONLY.items()}
    out.update({name: fn(fused, ir, vis_y) for name, fn in _WITH_SOURCES.items()})
    return {name: out[name] for name in METRICS}


def temporal_ratio(fused: list[np.ndarray], vis_y: list[np.ndarray]) -> float:
    """Flicker of a fused sequence relative to its input: mean |F_t - F_{t-1}| / mean |V_t - V_{t-1}|.

    1.0 means the output changes between frames exactly as much as the visible input does; above that the fuser
    adds temporal noise. Both sequences are ``(H, W)`` on 0..255, fused scored as saved (:func:`to_8bit`).
    """
    if len(fused) != len(vis_y) or len(fused) < 2:
        raise ValueError(f"need two equally long sequences of >= 2 frames, got {len(fused)} and {len(vis_y)}")
    f = [to_8bit(_f64(x)) for x in fused]
    v = [_f64(x) for x in vis_y]
    df = np.mean([np.abs(b - a).mean() for a, b in zip(f[:-1], f[1:])])
    dv = np.mean([np.abs(b - a).mean() for a, b in zip(v[:-1], v[1:])])
    if dv > 0:
        return float(df / dv)
    return float("inf") if df > 0 else 1.0  # static input: any change of the output is infinite flicker


def _dis_flow(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) from ``src`` to ``dst`` (uint8 greys), OpenCV's DIS at its medium preset."""
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(src, dst, None)


def _warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``img`` sampled at ``x + flow(x)`` (bilinear, borders replicated)."""
    h, w = flow.shape[:2]
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1).astype(np.float32) + flow
    return cv2.remap(img, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def flow_warp_error(fused: list[np.ndarray], vis_y: list[np.ndarray]) -> float:
    """Motion-compensated flicker: mean |F_t - warp(F_{t-1})| in grey levels, flow from the visible frames.

    The flow from frame t to t-1 is computed on the visible Y (OpenCV's DIS), ``F_{t-1}`` is warped onto frame t
    with it, and the difference is averaged over pixels whose forward-backward flow agrees (|f_b + f_f(x + f_b)| below
    0.5 px + 5% of the motion): the family of TemCoCo/VideoFusion's flowD and VF-Bench's BiSWE. Unlike
    :func:`temporal_ratio` it does not count real motion as flicker. Sequences as in :func:`temporal_ratio`.
    """
    if len(fused) != len(vis_y) or len(fused) < 2:
        raise ValueError(f"need two equally long sequences of >= 2 frames, got {len(fused)} and {len(vis_y)}")
    f = [to_8bit(_f64(x)).astype(np.float32) for x in fused]
    v = [np.ascontiguousarray(to_8bit(_f64(x)), dtype=np.uint8) for x in vis_y]
    errors = []
    for t in range(1, len(f)):
        back = _dis_flow(v[t], v[t - 1])  # t -> t-1
        fwd = _dis_flow(v[t - 1], v[t])  # t-1 -> t
        loop = back + _warp(fwd, back)  # ~0 where the two flows agree
        ok = np.linalg.norm(loop, axis=-1) < 0.5 + 0.05 * np.linalg.norm(back, axis=-1)
        if ok.any():
            errors.append(np.abs(f[t] - _warp(f[t - 1], back))[ok].mean())
    return float(np.mean(errors)) if errors else float("nan")
