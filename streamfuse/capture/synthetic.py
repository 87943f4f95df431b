"""The ``synthetic`` source kind: a registered IR/visible pair of a moving night scene, for demos and tests.

>>> from streamfuse.capture.sources import SourceConfig, open_source
>>> cfg = SourceConfig(kind="synthetic", width=64, height=48, realtime=False)
>>> with open_source("ir", cfg) as src:
...     frame = src.read()
>>> frame.image.shape, frame.image.dtype.name, frame.t_capture_ns
((48, 64), 'uint8', 0)
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from streamfuse.capture.sources import BaseSource
from streamfuse.frames import Frame
from streamfuse.registry import register

__all__ = ["SyntheticScene", "SyntheticSource"]


def _split_noise(noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed noise as (positive, negative) uint8 parts, applied with saturating cv2.add / cv2.subtract."""
    return np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Blob:
    """A warm body moving along a horizontal lane; sprites are precomputed."""

    x0: float  # position at t = 0, px
    y: int  # top row, px
    speed: float  # px/s, signed
    bob: float  # vertical bob amplitude, px (walking people)
    ir: np.ndarray  # (h, w) float32 IR radiance, 0..255
    albedo: np.ndarray  # (h, w, 3) float32 visible reflectance, 0..1
    alpha: np.ndarray  # (h, w) float32 soft mask, 0..1


class SyntheticScene:
    """A registered IR/visible night scene, a deterministic function of (time, seed, size).

    Warm bodies (people, cars) move along lanes: bright in IR, dark and noisy in the visible image except
    where they pass under the few lit areas. Textures, lighting, sprites and noise are precomputed, so a frame
    costs a few small blends plus one saturating add.

    Args:
        width: image width, px.
        height: image height, px.
        seed: scene seed; the same seed gives the same scene in every process.
        progress: called after each step of the build (a large scene's takes seconds): a sign of life.
    """

    _NOISE_FRAMES = 4

    def __init__(self, width: int, height: int, seed: int, progress: Callable[[], None] = lambda: None) -> None:
        rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        s = height / 480.0  # sprite scale
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

        def smooth(cells: int) -> np.ndarray:
            coarse = rng.random((max(2, height // cells), max(2, width // cells)), dtype=np.float32)
            return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)

        # Visible: textured reflectance under dim ambient light plus a few street lamps.
        albedo = np.clip(0.35 + 0.35 * smooth(24) + 0.25 * rng.random((height, width), dtype=np.float32), 0, 1)
        tint = np.array([1.0, 0.95, 0.85], np.float32)  # BGR: slightly warm artificial light
        illum = np.full((height, width), 0.07, np.float32)
        for _ in range(3):
            cx, cy, r = rng.uniform(0.1, 0.9) * width, rng.uniform(0.3, 0.8) * height, rng.uniform(30, 60) * s
            illum += 0.8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        self._illum = np.clip(illum, 0, 1)[..., None]  # (H, W, 1)
        self._vis_bg = np.clip(albedo[..., None] * tint * self._illum * 255, 0, 255).astype(np.uint8)
        # IR: cold sky, warmer ground and building blocks, smooth texture.
        ir = 45 + 40 * (yy / height) + 15 * smooth(40)
        for _ in range(4):
            x, w = int(rng.uniform(0, 0.85) * width), int(rng.uniform(0.08, 0.2) * width)
            top = int(rng.uniform(0.15, 0.4) * height)
            ir[top:int(0.5 * height), x:x + w] += rng.uniform(10, 30)
        self._ir_bg = np.clip(ir, 0, 255).astype(np.uint8)
        # Sensor noise, stored as saturating +/- parts: cheap to apply with cv2.add/subtract. Drawn a frame at a time,
        # the same draws in the same order as one array of all frames, without holding that array's float64s.
        self._vis_noise = [self._noise_frame(rng, 7, (height, width, 3), progress) for _ in range(self._NOISE_FRAMES)]
        self._ir_noise = [self._noise_frame(rng, 2, (height, width), progress) for _ in range(self._NOISE_FRAMES)]
        self._blobs = [self._person(rng, s) for _ in range(4)] + [self._car(rng, s) for _ in range(2)]

    @staticmethod
    def _noise_frame(rng: np.random.Generator, sigma: float, shape: tuple[int, ...],
                     progress: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
        parts = _split_noise(rng.normal(0, sigma, shape))
        progress()
        return parts

    def _person(self, rng: np.random.Generator, s: float) -> _Blob:
        w, h = max(4, round(22 * s)), max(8, round(64 * s))
        mask = np.zeros((h, w), np.float32)
        cv2.ellipse(mask, (w // 2, int(h * 0.58)), (w // 2 - 1, int(h * 0.40)), 0, 0, 360, 1.0, -1)
        cv2.circle(mask, (w // 2, int(h * 0.12)), max(2, int(h * 0.1)), 1.0, -1)
        alpha = cv2.GaussianBlur(mask, (0, 0), 1.0)
        ir = 195 + 35 * cv2.GaussianBlur(mask, (0, 0), 3.0)  # warmer core
        ir[: int(h * 0.22)] += 15  # head
        albedo = np.full((h, w, 3), rng.uniform(0.35, 0.55), np.float32)  # clothing about as dark as the street
        lane = rng.choice([0.52, 0.80])
        return _Blob(x0=rng.uniform(0, self.width), y=int(lane * self.height) - h // 2,
                     speed=rng.choice([-1, 1]) * rng.uniform(25, 60) * s, bob=1.5 * s, ir=ir, albedo=albedo,
                     alpha=alpha)

    def _car(self, rng: np.random.Generator, s: float) -> _Blob:
        w, h = max(8, round(110 * s)), max(4, round(42 * s))
        mask = np.zeros((h, w), np.float32)
        cv2.rectangle(mask, (0, h // 3), (w - 1, h - 6), 1.0, -1)
        cv2.rectangle(mask, (w // 4, 0), (3 * w // 4, h // 3), 1.0, -1)
        alpha = cv2.GaussianBlur(mask, (0, 0), 1.0)
        speed = rng.choice([-1, 1]) * rng.uniform(70, 150) * s
        ir = 120 + 40 * mask
        engine = slice(0, w // 4) if speed < 0 else slice(3 * w // 4, w)  # hot engine at the front
        ir[h // 3:, engine] += 70
        for cx in (w // 5, 4 * w // 5):  # warm tyres
            cv2.circle(ir, (cx, h - 6), max(2, h // 7), 215.0, -1)
        albedo = np.empty((h, w, 3), np.float32)
        albedo[:] = rng.uniform(0.15, 0.6, 3)
        albedo[: h // 3] *= 0.4  # dark windows
        return _Blob(x0=rng.uniform(0, self.width), y=int(0.66 * self.height) - h // 2, speed=speed, bob=0.0,
                     ir=np.minimum(ir, 255), albedo=albedo, alpha=alpha)

    def objects(self, t_ns: int) -> list[tuple[int, int, int, int]]:
        """Bounding boxes ``(x, y, w, h)`` (px, may extend past the border) of every warm body at time t_ns."""
        t = t_ns / 1e9
        boxes = []
        for b in self._blobs:
            h, w = b.alpha.shape
            x = (b.x0 + b.speed * t) % (self.width + w) - w  # wrap around, entering from either side
            y = b.y + b.bob * np.sin(2 * np.pi * 1.8 * t)
            boxes.append((int(round(x)), int(round(y)), w, h))
        return boxes

    def _regions(self, t_ns: int) -> Iterator[tuple[_Blob, tuple[slice, slice], tuple[slice, slice]]]:
        """For each body on screen: (blob, destination slices, sprite slices)."""
        for b, (x, y, w, h) in zip(self._blobs, self.objects(t_ns)):
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.width), min(y + h, self.height)
            if x0 < x1 and y0 < y1:
                yield b, (slice(y0, y1), slice(x0, x1)), (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))

    def _noise(self, t_ns: int, bank: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        return bank[(t_ns // 33_333_333) % self._NOISE_FRAMES]

    def render_ir(self, t_ns: int) -> np.ndarray:
        """IR frame ``(H, W)`` uint8 at capture time t_ns (ns)."""
        out = self._ir_bg.copy()
        for b, dst, src in self._regions(t_ns):
            a = b.alpha[src]
            out[dst] = (out[dst] * (1 - a) + b.ir[src] * a).astype(np.uint8)
        plus, minus = self._noise(t_ns, self._ir_noise)
        return cv2.subtract(cv2.add(out, plus), minus)

    def render_vis(self, t_ns: int) -> np.ndarray:
        """Visible frame ``(H, W, 3)`` uint8 BGR at capture time t_ns (ns)."""
        out = self._vis_bg.copy()
        for b, dst, src in self._regions(t_ns):
            a = b.alpha[src][..., None]
            lit = b.albedo[src] * self._illum[dst] * 255
            out[dst] = (out[dst] * (1 - a) + lit * a).astype(np.uint8)
        plus, minus = self._noise(t_ns, self._vis_noise)
        return cv2.subtract(cv2.add(out, plus), minus)


@register("source", "synthetic")
class SyntheticSource(BaseSource):
    """Renders :class:`SyntheticScene` at ``cfg.fps``: live (realtime) on ticks of the epoch clock, so separate
    IR and visible processes at the same fps capture at nearly the same instants; else on a virtual clock."""

    def _open(self) -> None:
        self.live = self.cfg.realtime
        self._scene = SyntheticScene(self.cfg.width, self.cfg.height, self.cfg.seed, self.progress)

    def skip(self, n: int) -> int:
        """Step ``n`` frames on unrendered on the virtual clock (a frame there is a function of its seq alone: a
        restarted producer rendered every frame delivered since the run began first); live, as any source."""
        if self.cfg.realtime:
            return super().skip(n)
        self.open()
        self._seq += n
        return n

    def _read(self) -> Frame:
        t_ns, mono_ns = self._seq * self._period_ns, 0  # the virtual clock, unless live
        if self.cfg.realtime:
            now = time.time_ns()
            self._sleep(((now // self._period_ns + 1) * self._period_ns - now) / 1e9)
            t_ns, mono_ns = time.time_ns(), time.monotonic_ns()
        image = self._scene.render_ir(t_ns) if self._is_ir else self._scene.render_vis(t_ns)
        return self._frame(t_ns, image, mono_ns)
