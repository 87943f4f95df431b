"""The temporal measures on generated clips: the flow warp error is nil for a still output and grows with flicker, a
fuser's figures are those of its filtered frames, the static check sees an output that drifts, and the table's row."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamfuse import temporal_eval
from streamfuse.evaluation import Method, fuser_method
from streamfuse.metrics import average_gradient, flow_warp_error
from streamfuse.postprocess import PostConfig
from streamfuse.stabilize import StabilizeConfig

OFF, NO_LEVEL = PostConfig(), StabilizeConfig()


def _scene(rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(rng.uniform(0, 255, (60, 100)), (0, 0), 2.0)


def _noisy(frames: list[np.ndarray], sigma: float, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.clip(f + rng.normal(0, sigma, f.shape), 0, 255) for f in frames]


def test_a_still_output_has_no_flow_warp_error_and_noise_raises_it(rng):
    """On visible frames that stand still but for one pixel, an output that does not change warps onto itself: 0;
    independent noise in each output frame is what the measure counts, in proportion to its level."""
    still = _scene(rng)[:, 10:90].astype(np.uint8)
    vis = [still.copy() for _ in range(3)]
    for k, frame in enumerate(vis):
        frame[0, 0] = 50 * k  # the only change: DIS finds no motion, the flicker ratio has something to divide by
    frames = {"c": [(np.zeros_like(v), v) for v in vis]}
    warp = {s: temporal_eval.output_measures({"c": _noisy([still] * 3, s, rng)}, frames).warp[0] for s in (0, 3, 10)}
    assert warp[0] < 0.01
    assert 2.0 < warp[3] and 2.5 * warp[3] < warp[10]


def test_motion_that_the_output_follows_is_no_flicker(rng):
    """Visible frames moving 2 px a frame and an output that is them: flicker ratio 1, flow warp error near 0 (the
    frame differences are large); noise on top raises both."""
    scene = _scene(rng)
    vis = [np.roll(scene, 2 * k, axis=1)[:, 10:90].astype(np.uint8) for k in range(4)]
    frames = {"c": [(np.zeros_like(v), v) for v in vis]}
    same = temporal_eval.output_measures({"c": [v.astype(np.float64) for v in vis]}, frames)
    assert same.ratios == [1.0] and same.warp[0] < 0.5 < np.abs(vis[1] - vis[0].astype(float)).mean()
    assert same.sharpness == [average_gradient(v) for v in vis]
    noisy = temporal_eval.output_measures({"c": _noisy(vis, 5, rng)}, frames)
    assert noisy.ratios[0] > 1.1 and noisy.warp[0] > 3.0


def _noisy_clips(rng: np.random.Generator) -> temporal_eval.Clips:
    """Two clips of a still scene with sensor noise in each visible frame, under a dark IR frame (max: the visible)."""
    clips = {}
    for name in ("a", "b"):
        scene = _scene(rng)[:40, :56]
        clips[name] = [(np.zeros((40, 56), np.uint8), np.clip(scene + rng.normal(0, 3, scene.shape), 0, 255)
                        .astype(np.uint8)) for _ in range(5)]
    return clips


def test_a_fusers_measures_are_those_of_its_filtered_frames(rng):
    clips = _noisy_clips(rng)
    method = fuser_method("max")
    plain = temporal_eval.fuser_measures(method, clips, NO_LEVEL, OFF)
    vis = {name: [v for _, v in pairs] for name, pairs in clips.items()}
    assert plain.ratios == [1.0, 1.0]  # max of a dark IR and the visible frame: the visible frame
    assert plain.warp == [flow_warp_error(v, v) for v in vis.values()]
    assert plain.sharpness == [average_gradient(f) for v in vis.values() for f in v]
    assert plain.lag.size == 2 * 4 * 40 * 56 and not plain.lag.any()  # no filter: nothing lags (first frames out)
    filtered = temporal_eval.fuser_measures(method, clips, NO_LEVEL, PostConfig(denoise=0.85))
    assert max(filtered.ratios) < 0.8 and np.mean(filtered.warp) < np.mean(plain.warp) and filtered.lag.mean() > 0.5


class _Drifting:
    """A fuser whose output rises by a grey level at each call."""

    name, version = "drift", "1"

    def __init__(self) -> None:
        self.calls = 0

    def fuse(self, ir: np.ndarray, vis_y: np.ndarray, stream: str = "default") -> np.ndarray:
        self.calls += 1
        return vis_y.astype(np.float32) + self.calls

    def stats(self) -> dict[str, float]:
        return {}


@pytest.mark.parametrize("repeats", [2, 4])
def test_the_static_check_sees_an_output_that_drifts(rng, repeats):
    pair = _noisy_clips(rng)["a"][0]
    assert temporal_eval.static_identical(fuser_method("max"), pair, NO_LEVEL, OFF, repeats)
    drifting = Method("drift", fuser=_Drifting())
    assert not temporal_eval.static_identical(drifting, pair, NO_LEVEL, OFF, repeats)
    assert drifting.fuser.calls == repeats


def test_a_row_gives_the_mean_of_the_clips_ratios():
    measures = temporal_eval.Measures([1.0, 2.0, 6.0], [1.0, 3.0], [2.0, 4.0])
    cells = temporal_eval.table_row("m", "-", measures, "x").strip("|").split("|")
    assert [c.strip() for c in cells] == ["m", "-", "1.000", "2.000", "6.000", "3.000", "2.00", "3.00", "x"]
