"""Frame sources: SourceConfig, the Source protocol, BaseSource and the ``synthetic`` kind.

Kinds (registry kind ``"source"``): ``synthetic`` (here: a registered IR/visible pair of a moving night scene);
``camera``, ``stream``, ``file``, ``folder`` (``video_sources``); ``mcap`` (a recording, ``mcap_source``).

Every source yields :class:`~streamfuse.frames.Frame` objects: the section ``"ir"`` gives ``(H, W)`` uint8 grey;
any other section gives ``(H, W, 3)`` uint8 BGR, or ``(H, W)`` when the input is grey. Capture times
(``t_capture_ns``): live sources stamp ``time.time_ns()`` right after the grab, and ``time.monotonic_ns()``
(``t_mono_ns``, which latency is measured on); the others use their recorded or virtual clock (non-realtime
synthetic: ``index / fps`` seconds) and have no monotonic stamp; see each kind.

>>> cfg = SourceConfig(kind="synthetic", width=64, height=48, realtime=False)
>>> with open_source("ir", cfg) as src:
...     frame = src.read()
>>> frame.image.shape, frame.image.dtype.name, frame.t_capture_ns
((48, 64), 'uint8', 0)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import cv2
import numpy as np

from streamfuse.bitdepth import To8Bit
from streamfuse.capture.timestamps import FileClock
from streamfuse.checks import check
from streamfuse.frames import Frame
from streamfuse.registry import available, build, register

__all__ = ["SourceConfig", "Source", "BaseSource", "SourceError", "SyntheticScene", "open_source"]

# Largest frame accepted: 8192 px a side and no more pixels than DCI 8K (8192 x 4320); more is a typo, not a camera.
MAX_SIDE, MAX_PIXELS = 8192, 8192 * 4320


class SourceError(RuntimeError):
    """A source that cannot open or keep reading; the message is one line naming the source and the cause."""


@dataclass(frozen=True)
class SourceConfig:
    """One input (section ``ir`` or ``vis``).

    Args:
        kind: ``synthetic | camera | stream | file | folder | mcap``.
        path: camera index or device path; URL; video file; image folder; recording file.
        fps: frame rate of synthetic, camera and folder sources, frames/s (files use their own timestamps).
        width: synthetic width / camera request, pixels.
        height: synthetic height / camera request, pixels.
        realtime: files, folders, recordings: pace at the recorded rate; False = as fast as possible
            (synthetic: False renders on a virtual clock ``seq / fps`` instead of the wall clock).
        loop: files and folders: start again at the end, times kept increasing.
        restart: reopen with back-off when the source fails or ends (see ``producer.start_producers``).
        frame_id: optical frame name; empty = ``"<section>_optical_frame"``.
        seed: synthetic scene seed (use the same seed for ``ir`` and ``vis`` to get a registered pair).
        resize: replay, IR size != visible size: ``resize`` to the visible size or ``error``.
        stall_factor: a producer silent for its frame interval (``1 / fps``; a video's own rate) times this is
            reported, counted as a stall, killed and restarted; 0 = never (a first frame: see ``producer``).
        decode_threads: files and streams: FFmpeg decoder threads; 0 = FFmpeg's choice (about one per core).
        ffmpeg: files and streams: FFmpeg options, ``NAME=VALUE`` (``rtsp_transport=udp``, ``fflags=nobuffer``); an
            RTSP URL gets ``rtsp_transport=tcp`` unless told (FFmpeg's UDP default loses packets on a busy link).
        topic: recordings: the topic this stream is read from (empty: our recorder's; a ``ros2 bag``'s camera).
    """

    kind: str = "synthetic"
    path: str = ""
    fps: float = 30.0
    width: int = 640
    height: int = 480
    realtime: bool = True
    loop: bool = False
    restart: bool = True
    frame_id: str = ""
    seed: int = 0
    resize: Literal["error", "resize"] = "resize"
    stall_factor: float = 20.0
    decode_threads: int = 0
    ffmpeg: tuple[str, ...] = ()
    topic: str = ""

    def __post_init__(self) -> None:
        kinds = sorted(available("source"))
        check(self.kind in kinds, "kind", self.kind, " | ".join(kinds))
        check(0.1 <= self.fps <= 1000.0, "fps", self.fps, "0.1 <= fps <= 1000")
        check(16 <= self.width <= MAX_SIDE, "width", self.width, f"16 <= width <= {MAX_SIDE}")
        check(16 <= self.height <= MAX_SIDE, "height", self.height, f"16 <= height <= {MAX_SIDE}")
        check(self.width * self.height <= MAX_PIXELS, "width", self.width,
              f"width x height <= {MAX_PIXELS} pixels (8192 x 4320); {self.width} x {self.height} would need "
              f"{self.ring_bytes(1) / 2**20:.0f} MiB of shared memory for each frame of a capture ring")
        check(self.stall_factor == 0 or 2 <= self.stall_factor <= 1000, "stall_factor", self.stall_factor,
              "0 (off) or 2 .. 1000 frame intervals")
        check(self.seed >= 0, "seed", self.seed, "seed >= 0")
        check(self.resize in ("error", "resize"), "resize", self.resize, "error | resize")
        check(0 <= self.decode_threads <= 256, "decode_threads", self.decode_threads, "0 (FFmpeg's choice) .. 256")
        check(all("=" in o[1:] for o in self.ffmpeg), "ffmpeg", self.ffmpeg, "NAME=VALUE options: [fflags=nobuffer]")

    def ring_bytes(self, slots: int, channels: int = 3) -> int:
        """Shared memory a ring of ``slots`` frames of this size takes (``channels`` bytes a pixel)."""
        return slots * self.width * self.height * channels

    @property
    def replayable(self) -> bool:
        """Reopening gives the same frames again (files, folders, recordings, virtual-clock synthetic); their capture
        times are on the recording's clock, not this machine's wall clock."""
        return self.kind in ("file", "folder", "mcap") or (self.kind == "synthetic" and not self.realtime)


@runtime_checkable
class Source(Protocol):
    """What every source kind provides. ``live`` sources stamp wall-clock times and cannot be re-read; the others
    (files, folders, virtual-clock synthetic) give the same frames again when reopened. Optional: ``skip(n)``
    (discard n frames unpaced, as :class:`BaseSource` has), ``stop_event``, ``warn`` (takes one line on what was
    corrected), ``frame_interval_ns`` (the expected time between frames once open; default ``1 / cfg.fps``)."""

    section: str
    frame_id: str
    live: bool

    def open(self) -> None:
        """Open the device/file; raises SourceError (one line: what and where)."""

    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream; raises SourceError when the device is lost."""

    def close(self) -> None:
        """Release the device/file (idempotent)."""

    def __enter__(self) -> Source: ...

    def __exit__(self, *exc: object) -> None: ...


def open_source(section: str, cfg: SourceConfig) -> Source:
    """The Source of ``cfg.kind`` (a section's config) for ``section`` (``"ir"``, whose frames come grey, or
    ``"vis"``: the frames' ``stream``), not yet opened: ``with open_source("ir", cfg) as src: ...``."""
    return build("source", cfg.kind, section=section, cfg=cfg)


class BaseSource:
    """Shared plumbing for Source kinds: lazy open, context manager, sequence numbers, colour conversion, pacing,
    ``skip``. A kind subclasses it, implements ``_open``/``_read`` (and ``_close``), and registers the class:
    ``register("source", "mcap")(McapSource)``; the factory is called as ``cls(section=..., cfg=...)``."""

    live = False

    def __init__(self, section: str, cfg: SourceConfig) -> None:
        self.section, self.cfg = section, cfg
        self.frame_id = cfg.frame_id or f"{section}_optical_frame"
        self.stop_event: Any = None  # Event-like (``wait(s)``) from the producer: pacing sleeps end on stop
        self._is_ir = section == "ir"
        self._depth = To8Bit(self._is_ir)  # 16-bit frames: IR by the sequence's held range (streamfuse.bitdepth)
        self._seq, self._opened = 0, False
        self._pace_anchor: tuple[int, int, FileClock] | None = None  # perf_counter_ns, time, time line (_pace)
        self._skipping = False
        self._period_ns = round(1e9 / cfg.fps)  # a kind with its own rate (a video) sets it when it opens

    def open(self) -> None:
        if not self._opened:
            self._open()
            self._opened = True

    def read(self) -> Frame | None:
        self.open()
        return self._read()

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    @property
    def frame_interval_ns(self) -> int:
        """Expected time between frames, ns: ``1 / fps`` (a video source uses its own rate once open)."""
        return self._period_ns

    def skip(self, n: int) -> int:
        """Read and discard up to ``n`` frames without pacing (to resume a replayable source); returns how many."""
        self._skipping = True
        try:
            for done in range(n):
                if self.read() is None:
                    return done
            return n
        finally:
            self._skipping = False

    def __enter__(self) -> BaseSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        raise NotImplementedError

    def _read(self) -> Frame | None:
        raise NotImplementedError

    def _close(self) -> None:
        """Nothing to release by default."""

    def _frame(self, t_ns: int, image: np.ndarray, mono_ns: int = 0) -> Frame:
        frame = Frame(self.section, self._seq, int(t_ns), image, mono_ns)
        self._seq += 1
        return frame

    def _convert(self, image: np.ndarray) -> np.ndarray:
        """IR -> (H, W) grey; visible -> (H, W, 3) BGR, grey stays (H, W); 16-bit: :mod:`~streamfuse.bitdepth`."""
        try:
            image = self._depth(image)
        except ValueError as exc:
            raise SourceError(f"{self.section}: {exc}") from None
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        if self._is_ir and image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return np.ascontiguousarray(image)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            (self.stop_event.wait if self.stop_event is not None else time.sleep)(seconds)

    def _pace(self, t_ns: int) -> None:
        """Realtime pacing: return when the wall clock has advanced as far as t_ns since the first frame, on a time
        line with a stepped clock's steps shifted out (a recording made across one neither races nor sleeps)."""
        if not self.cfg.realtime or self._skipping:
            return
        if self._pace_anchor is None:
            line = FileClock(self._period_ns)
            self._pace_anchor = (time.perf_counter_ns(), line.stamp(t_ns), line)
            return
        wall0, t0, line = self._pace_anchor
        self._sleep((wall0 + (line.stamp(t_ns) - t0) - time.perf_counter_ns()) / 1e9)


# -- synthetic ---------------------------------------------------------------------------------------------------


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
    """

    _NOISE_FRAMES = 4

    def __init__(self, width: int, height: int, seed: int) -> None:
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
        # Sensor noise, stored as saturating +/- parts: cheap to apply with cv2.add/subtract.
        vis_noise = rng.normal(0, 7, (self._NOISE_FRAMES, height, width, 3))
        ir_noise = rng.normal(0, 2, (self._NOISE_FRAMES, height, width))
        self._vis_noise = [_split_noise(n) for n in vis_noise]
        self._ir_noise = [_split_noise(n) for n in ir_noise]
        self._blobs = [self._person(rng, s) for _ in range(4)] + [self._car(rng, s) for _ in range(2)]

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

    def _regions(self, t_ns: int):
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
        self._scene = SyntheticScene(self.cfg.width, self.cfg.height, self.cfg.seed)

    def _read(self) -> Frame:
        t_ns, mono_ns = self._seq * self._period_ns, 0  # the virtual clock, unless live
        if self.cfg.realtime:
            now = time.time_ns()
            self._sleep(((now // self._period_ns + 1) * self._period_ns - now) / 1e9)
            t_ns, mono_ns = time.time_ns(), time.monotonic_ns()
        image = self._scene.render_ir(t_ns) if self._is_ir else self._scene.render_vis(t_ns)
        return self._frame(t_ns, image, mono_ns)
