"""Colour restore and temporal denoiser: numba kernels against the numpy references, also with the JIT disabled."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfuse.postprocess import (
    PostConfig,
    TemporalDenoiser,
    denoise_numpy,
    output_shape,
    restore_colour,
    restore_colour_numpy,
    vis_luma,
)

REPO = Path(__file__).resolve().parents[1]


def _inputs(rng: np.random.Generator, grey: bool, h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    vis = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
    fused = rng.uniform(-30.0, 285.0, (h, w)).astype(np.float32)  # includes out-of-range values to clip
    fused[0, :4] = [np.nan, np.inf, -np.inf, 127.5]
    return fused, vis


def test_vis_luma_is_opencv_bt601(rng: np.random.Generator) -> None:
    vis = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(vis_luma(vis), cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb)[..., 0])
    grey = vis[..., 1].copy()
    np.testing.assert_array_equal(vis_luma(grey), grey)
    for bad in (np.zeros((30, 40, 4), np.uint8), vis.astype(np.float32)):  # BGRA, float: one line, not OpenCV's
        with pytest.raises(ValueError, match=r"^visible image must be \(H, W, 3\) BGR or \(H, W\) grey uint8"):
            vis_luma(bad)


def test_the_visible_luma_holds_no_other_plane_behind_it(rng: np.random.Generator) -> None:
    # training keeps one per pair: a view into the YCrCb conversion would keep its three planes alive, 3x the memory
    luma = vis_luma(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    assert luma.flags.c_contiguous and luma.base is None and luma.nbytes == 30 * 40


@pytest.mark.parametrize("encoding", ["bgr8", "mono8"])
@pytest.mark.parametrize("grey", [False, True], ids=["colour", "grey"])
def test_numba_matches_numpy(rng: np.random.Generator, encoding: str, grey: bool) -> None:
    fused, vis = _inputs(rng, grey)
    cfg = PostConfig(encoding=encoding)
    out, ref = restore_colour(fused, vis, cfg), restore_colour_numpy(fused, vis, cfg)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.shape == ((48, 64, 3) if encoding == "bgr8" else (48, 64))
    assert ref.shape == out.shape
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert np.mean(out != ref) < 0.01  # float32 vs float64 rounding only


def test_clipping_nan_and_grey_channels() -> None:
    fused = np.array([[-40.0, 300.0, np.nan, 99.5]], np.float32)
    np.testing.assert_array_equal(restore_colour(fused, np.zeros((1, 4), np.uint8), PostConfig("mono8")),
                                  [[0, 255, 0, 100]])
    colour = restore_colour(fused, np.zeros((1, 4), np.uint8))
    np.testing.assert_array_equal(colour, np.repeat([[[0], [255], [0], [100]]], 3, axis=2))


def test_unchanged_luma_gives_back_the_visible_image(rng: np.random.Generator) -> None:
    vis = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = restore_colour(vis_luma(vis).astype(np.float32), vis)
    assert np.abs(out.astype(int) - vis).max() <= 1  # Y is quantised to 8 bits, nothing else is lost


def test_a_grey_visible_pixel_gives_a_grey_pixel_of_the_fused_luma() -> None:
    # no colour cast where the visible camera sees none: every channel is the fused Y, rounded
    vis = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    fused = (255 - np.arange(256).reshape(16, 16) + np.tile([0.4, 0.6], 128).reshape(16, 16)).astype(np.float32)
    want = np.minimum(np.floor(fused + 0.5), 255).astype(np.uint8)
    np.testing.assert_array_equal(restore_colour(fused, vis), np.repeat(want[..., None], 3, axis=2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float64_and_strided_input(rng: np.random.Generator, dtype: type) -> None:
    # a float32 view with steps (a fuser's output cropped or subsampled) is not C-contiguous, which the kernels'
    # signatures need: it is copied as a float64 one is converted, not refused with numba's multi-line TypeError
    fused, vis = _inputs(rng, grey=False, h=96, w=128)
    view, vis_view = fused.astype(dtype)[::2, ::2], vis[::2, ::2]
    for cfg in (PostConfig("bgr8"), PostConfig("mono8")):
        np.testing.assert_array_equal(restore_colour(view, vis_view, cfg),
                                      restore_colour(np.ascontiguousarray(view, np.float32), vis_view.copy(), cfg))


@pytest.mark.parametrize(("fused_shape", "vis_shape", "dtype"), [
    ((4, 5), (4, 6, 3), np.uint8),  # size mismatch
    ((4, 5), (4, 5, 4), np.uint8),  # 4 channels
    ((4, 5), (4, 5, 3), np.float32),  # not uint8
    ((4, 5, 1), (4, 5, 3), np.uint8),  # fused not 2-D
])
def test_bad_input_is_one_line_value_error(fused_shape: tuple, vis_shape: tuple, dtype: type) -> None:
    with pytest.raises(ValueError, match=r"must be") as info:
        restore_colour(np.zeros(fused_shape, np.float32), np.zeros(vis_shape, dtype))
    assert "\n" not in str(info.value)


def test_kernels_without_jit_match_numpy() -> None:
    # NUMBA_DISABLE_JIT is read at import, hence a fresh interpreter; small images: the kernels run as Python.
    code = textwrap.dedent("""
        import numpy as np
        from numba.core import config
        from streamfuse.postprocess import PostConfig, restore_colour, restore_colour_numpy
        assert config.DISABLE_JIT
        rng = np.random.default_rng(0)
        fused = rng.uniform(-30, 285, (12, 16)).astype(np.float32)
        for vis in (rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), rng.integers(0, 256, (12, 16), np.uint8)):
            for cfg in (PostConfig("bgr8"), PostConfig("mono8")):
                d = np.abs(restore_colour(fused, vis, cfg).astype(int) - restore_colour_numpy(fused, vis, cfg))
                assert d.max() <= 1, (cfg, d.max())
        from streamfuse.postprocess import TemporalDenoiser, denoise_numpy
        cfg = PostConfig(denoise=0.8, denoise_threshold=20.0)
        frames = [rng.uniform(0, 255, (9, 11)).astype(np.float32) for _ in range(3)]
        den = TemporalDenoiser(cfg)
        for got, want in zip([den(f) for f in frames], denoise_numpy(frames, cfg)):
            assert np.abs(got - want).max() < 1e-3
        print("ok")
    """)
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def _noisy_sequence(rng: np.random.Generator, n: int = 12, sigma: float = 3.0) -> list[np.ndarray]:
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (40, 56)), (0, 0), 3).astype(np.float32)
    return [scene + rng.normal(0, sigma, scene.shape).astype(np.float32) for _ in range(n)]


def _flicker(frames: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(b - a).mean() for a, b in itertools.pairwise(frames)]))


def test_denoiser_matches_numpy(rng: np.random.Generator) -> None:
    cfg = PostConfig(denoise=0.85, denoise_threshold=10.0)
    frames = _noisy_sequence(rng, 6, sigma=8.0)
    den = TemporalDenoiser(cfg)
    for got, want in zip([den(f) for f in frames], denoise_numpy(frames, cfg)):
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_denoiser_averages_noise_and_keeps_static_input(rng: np.random.Generator) -> None:
    frames = _noisy_sequence(rng)
    den = TemporalDenoiser(PostConfig(denoise=0.85, denoise_threshold=12.0))
    out = [den(f) for f in frames]
    assert _flicker(out) < 0.6 * _flicker(frames)
    static = TemporalDenoiser(PostConfig(denoise=0.85))
    outs = [static(frames[0]) for _ in range(4)]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_denoiser_leaves_no_trail_behind_a_moving_object() -> None:
    den = TemporalDenoiser(PostConfig(denoise=0.9, denoise_threshold=12.0))
    frames = []
    for x in range(0, 60, 6):  # a 16x16 square, 80 grey levels above the background, moving 6 px per frame
        f = np.full((40, 96), 50.0, np.float32)
        f[12:28, x:x + 16] += 80.0
        frames.append(f)
    for f in frames:
        out = den(f)
    assert np.abs(out - frames[-1]).max() < 1.0  # where the square was, and where it is, follow the input


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_frame_passes_as_it_is_and_the_filter_starts_again(rng: np.random.Generator, bad: float) -> None:
    """One frame with a bad pixel (a fuser's fault) must not blank the stream: before, the window sums carried the NaN
    along its rows and the state kept it, so every later frame was NaN from there on."""
    frames = _noisy_sequence(rng, 8)
    faulty = frames[3].copy()
    faulty[5, 7] = bad
    den, fresh = TemporalDenoiser(PostConfig(denoise=0.85)), TemporalDenoiser(PostConfig(denoise=0.85))
    outs = [den(f) for f in [*frames[:3], faulty, *frames[4:]]]
    np.testing.assert_array_equal(outs[3], faulty)
    assert all(np.isfinite(o).all() for o in outs[4:])
    for o, f in zip(outs[4:], frames[4:]):  # as a filter started at the frame after the faulty one
        np.testing.assert_array_equal(o, fresh(f))
    assert (den.nonfinite, fresh.nonfinite) == (1, 0)


def test_non_finite_frames_are_counted_with_the_filter_off_too(rng: np.random.Generator) -> None:
    # The run's stats count them (``nonfinite``) whatever the filter's setting: a fuser's fault must show.
    den = TemporalDenoiser(PostConfig(denoise=0.0))
    frames = _noisy_sequence(rng, 3)
    frames[1][0, 0] = -np.inf
    outs = [den(f) for f in frames]
    assert den.nonfinite == 1 and all(np.array_equal(o, f) for o, f in zip(outs, frames))


def test_denoiser_off_new_size_and_bad_config(rng: np.random.Generator) -> None:
    frames = _noisy_sequence(rng, 3)
    off = TemporalDenoiser(PostConfig())
    assert all(np.array_equal(off(f), f) for f in frames)
    den = TemporalDenoiser(PostConfig(denoise=0.9))
    den(frames[0])
    small = frames[1][:20, :30].copy()
    np.testing.assert_array_equal(den(small), small)  # a new size restarts the filter
    with pytest.raises(ValueError, match="denoise"):
        PostConfig(denoise=1.0)
    with pytest.raises(ValueError, match="denoise_threshold"):
        PostConfig(denoise=0.5, denoise_threshold=0.0)


@pytest.mark.parametrize("encoding, grey_vis", [("bgr8", False), ("bgr8", True), ("mono8", False)])
def test_restore_colour_writes_into_a_given_buffer(encoding, grey_vis):
    rng = np.random.default_rng(3)
    vis = rng.integers(0, 256, (6, 10) if grey_vis else (6, 10, 3), dtype=np.uint8)
    y = rng.uniform(-5, 260, (6, 10)).astype(np.float32)
    cfg = PostConfig(encoding=encoding)
    out = np.zeros(output_shape(vis, cfg), np.uint8)
    assert restore_colour(y, vis, cfg, out) is out
    np.testing.assert_array_equal(out, restore_colour(y, vis, cfg))
    with pytest.raises(ValueError, match="out must be C-contiguous uint8"):
        restore_colour(y, vis, cfg, np.zeros((6, 11, 3), np.uint8))


@pytest.mark.parametrize("encoding, grey_vis", [("bgr8", False), ("bgr8", True), ("mono8", False)])
def test_a_strided_out_buffer_is_refused_in_one_line(encoding, grey_vis):
    # without it, a strided view (a slot sliced with a step) fails deep in numba or OpenCV with a multi-line error
    vis = np.zeros((6, 10) if grey_vis else (6, 10, 3), np.uint8)
    cfg = PostConfig(encoding=encoding)
    shape = output_shape(vis, cfg)
    strided = np.zeros((shape[0], 2 * shape[1], *shape[2:]), np.uint8)[:, ::2]
    assert strided.shape == shape and not strided.flags.c_contiguous
    with pytest.raises(ValueError, match="out must be C-contiguous uint8") as info:
        restore_colour(np.zeros((6, 10), np.float32), vis, cfg, strided)
    assert "\n" not in str(info.value)


def test_the_ends_of_the_documented_ranges_are_allowed_and_a_strength_past_them_refused() -> None:
    cfg = PostConfig(denoise=0.95, denoise_threshold=255.0)  # "0 (off) to 0.95", "0.01 .. 255 grey levels"
    assert (cfg.denoise, cfg.denoise_threshold) == (0.95, 255.0)
    assert PostConfig(denoise_threshold=0.01).denoise_threshold == 0.01
    with pytest.raises(ValueError, match="denoise_threshold"):
        PostConfig(denoise_threshold=256.0)
    # a strength past 0.95 averages over more than 20 frames: a trail behind every slow motion below the threshold
    with pytest.raises(ValueError, match=r"denoise=0\.96 is out of range; allowed: 0 \(off\) \.\. 0\.95"):
        PostConfig(denoise=0.96)


def test_every_non_finite_frame_is_counted(rng: np.random.Generator) -> None:
    den = TemporalDenoiser(PostConfig(denoise=0.85))
    frames = _noisy_sequence(rng, 5)
    for k in (1, 2, 4):
        frames[k][3, 3] = np.nan
    for f in frames:
        den(f)
    assert den.nonfinite == 3


def test_a_fuser_that_reuses_its_output_buffer_filters_as_fresh_arrays_do(rng: np.random.Generator) -> None:
    """The filter keeps its own copy of the frame it starts from: a fuser (or an engine) that writes every frame into
    one buffer would otherwise overwrite the filter's past with the present, and the second frame passed unfiltered."""
    frames = _noisy_sequence(rng, 4)
    reused, fresh = TemporalDenoiser(PostConfig(denoise=0.85)), TemporalDenoiser(PostConfig(denoise=0.85))
    buffer = np.empty_like(frames[0])
    for f in frames:
        buffer[...] = f
        np.testing.assert_array_equal(reused(buffer), fresh(f.copy()))


def test_a_strided_frame_filters_as_its_contiguous_copy_does(rng: np.random.Generator) -> None:
    # a float32 view with steps must be copied for the kernel's signature, not refused by numba in many lines
    frames = [f[::2, ::2] for f in _noisy_sequence(rng, 3)]
    strided, fresh = TemporalDenoiser(PostConfig(denoise=0.85)), TemporalDenoiser(PostConfig(denoise=0.85))
    for f in frames:
        assert not f.flags.c_contiguous
        np.testing.assert_array_equal(strided(f), fresh(f.copy()))


def test_the_filter_off_returns_the_input_itself(rng: np.random.Generator) -> None:
    y = _noisy_sequence(rng, 1)[0]
    off = TemporalDenoiser(PostConfig())
    assert off(y) is y and off(y) is y  # no copy and no kernel per frame when it is off


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_an_out_buffer_of_another_type_is_refused_in_one_line(dtype: type) -> None:
    # without it, numba fails with a multi-line "No matching definition" TypeError naming its signature
    vis = np.zeros((6, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="out must be C-contiguous uint8") as info:
        restore_colour(np.zeros((6, 10), np.float32), vis, PostConfig(), np.zeros((6, 10, 3), dtype))
    assert "\n" not in str(info.value)


def test_a_fused_y_of_three_dimensions_is_named_as_the_fused_y() -> None:
    # a (H, W, 1) output of a fuser must not be reported as a bad visible image
    with pytest.raises(ValueError, match=r"^fused Y must be \(H, W\), got shape \(4, 5, 1\)$"):
        restore_colour(np.zeros((4, 5, 1), np.float32), np.zeros((4, 5, 3), np.uint8))


@pytest.mark.parametrize("shape", [(3, 2), (2, 3), (1, 1)])
def test_denoiser_matches_numpy_on_frames_smaller_than_its_window(rng: np.random.Generator, shape: tuple) -> None:
    # the 5x5 window's clamped indices at both borders at once
    cfg = PostConfig(denoise=0.85, denoise_threshold=10.0)
    scene = rng.uniform(0, 255, shape)
    frames = [(scene + rng.normal(0, 8, shape)).astype(np.float32) for _ in range(3)]  # d near the threshold
    den = TemporalDenoiser(cfg)
    for got, want in zip([den(f) for f in frames], denoise_numpy(frames, cfg)):
        np.testing.assert_allclose(got, want, atol=1e-3)
