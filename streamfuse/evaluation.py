"""Score fusion methods on a folder of IR/visible pairs: per-image CSV, a markdown table of means, a montage.

A method is either a folder of another method's fused outputs (grey or colour images named like the inputs; the
Y channel is scored) or a fuser run here (built by name or from a pipeline config), whose time per frame is
measured as well. All methods are scored with :mod:`streamfuse.metrics` on the same pairs, so their rows compare.
The pairs and how they are read: :mod:`streamfuse.eval_pairs`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from streamfuse import metrics
from streamfuse.atomic_write import write_file
from streamfuse.file_names import name_bytes
from streamfuse.bitdepth import is_image_name
from streamfuse.checks import ConfigError, apply_overrides, yaml_value
from streamfuse.config import PipelineConfig, config_from_dict, dump_config, load_config
from streamfuse.configs import resolve
from streamfuse.eval_pairs import check_readable, check_size, find_pairs, image_files, read_grey, read_pair
from streamfuse.eval_report import check_outputs, markdown_table, tile, write_csv, write_montage
from streamfuse.fusers import BaselineConfig, Fuser
from streamfuse.inference import EngineConfig, HCLFuseConfig
from streamfuse.processor import FrameProcessor, config_fuser, still_pair
from streamfuse.staged_folders import staged_folders

__all__ = ["FUSER_SECTIONS", "Method", "fused_dir_method", "fuser_method", "config_method", "evaluate_dir",
           "EvalResult", "is_eval_file"]

log = logging.getLogger(__name__)
EVAL_FILES = ("metrics.csv", "metrics.md", "montage.png")  # what evaluate_dir writes to its out_dir, with the configs
RESOLVED_SUFFIX = ".resolved.yaml"  # a config method's resolved config among them: <config stem> + this

FUSER_SECTIONS = ("fuse", "hclfuse", "engine", "baseline", "align")  # what a --fuser method is configured by
_INLINE = {name: [f.name for f in dataclasses.fields(cls)]  # NAME:key=value keys, by section
           for name, cls in (("hclfuse", HCLFuseConfig), ("engine", EngineConfig), ("baseline", BaselineConfig))}


@dataclass
class Method:
    """One row of the table: a folder of fused images (``fused_dir``) or a fuser run here (``fuser``)."""

    name: str
    fused_dir: Path | None = None
    fuser: Fuser | None = None
    config: Any = None  # the resolved PipelineConfig of a ``--config`` method, written beside the outputs
    align: Any = None  # the AlignConfig of an hclfuse fuser: checked for OT tables that carry over between stills


@dataclass
class EvalResult:
    """Per-image rows (``method``, ``image``, every metric, ``ms`` for fusers) and per-method means."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    means: dict[str, dict[str, float]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)


def fused_dir_method(spec: str) -> Method:
    """``NAME=DIR`` or ``DIR`` (named after the folder): another method's fused images. A folder whose path holds
    ``=`` is a ``DIR``: ``NAME`` is a plain name, before the first ``=``."""
    name, _, path = spec.partition("=")
    if not path or "/" in name or Path(spec).is_dir():
        name, path = "", spec
    if not path:  # an unset shell variable: not the working folder
        raise ValueError("--fused: empty path")
    image_files(Path(path), "fused")  # a missing folder, or a file: one line now
    return Method(name or Path(path).name, fused_dir=Path(path))


def fuser_method(spec: str, overrides: list[str] | None = None, base: PipelineConfig | None = None) -> Method:
    """``NAME`` or ``NAME:key=value,key=value`` (keys of the sections the fuser reads: ``hclfuse`` and ``engine``
    for the model, ``baseline`` for the others), plus dotted overrides of the fuser's sections (``hclfuse``,
    ``engine``, ``baseline``, ``align``; ``fuse.name`` is the ``NAME`` itself).

    The settings start from ``base`` (a pipeline config such as the shipped ``eval``) when given, else from the
    defaults; the name and the inline keys replace the base's. A key the fuser would not read is refused.
    """
    name, _, inline = spec.partition(":")
    raw = {k: v for k, v in base.to_dict().items() if k in FUSER_SECTIONS} if base else {}
    raw["fuse"] = {"name": name}
    keys = {k: s for s in (("hclfuse", "engine") if name == "hclfuse" else ("baseline",)) for k in _INLINE[s]}
    items = [kv.partition("=") for kv in inline.split(",") if kv]
    for key, eq, value in items:
        if not eq or key not in keys:
            raise ConfigError(f"--fuser {spec}: {key + eq + value!r} is not key=value with a key {name} reads: "
                              f"{', '.join(keys)}")
        try:
            raw.setdefault(keys[key], {})[key] = yaml_value(value, f"--fuser {spec}: {key}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    given = [key for key, _, _ in items]
    if twice := next((key for key in given if given.count(key) > 1), None):  # which one was meant?
        raise ConfigError(f"--fuser {spec}: {twice} is given twice")
    try:
        raw = apply_overrides(raw, overrides or [])
    except ValueError as exc:  # a --set that is not stage.key=value: a usage error, as in every command
        raise ConfigError(str(exc)) from None
    if unknown := set(raw) - set(FUSER_SECTIONS):
        raise ConfigError(f"--set {sorted(unknown)[0]}.*: --fuser takes overrides of {', '.join(FUSER_SECTIONS[1:])}")
    if raw["fuse"] != {"name": name}:
        raise ConfigError(f"--set fuse.*: --fuser {spec} names its fuser; give another fuser as another --fuser")
    cfg = config_from_dict(raw, f"--fuser {spec}")
    fuser = config_fuser(cfg)
    return Method(spec if items else fuser.name, fuser=fuser, align=cfg.align if name == "hclfuse" else None)


def config_method(path: str | Path, overrides: list[str] | None = None) -> Method:
    """The fuser of a pipeline config (a shipped name or a file; its fusing sections), with overrides."""
    cfg = load_config(resolve(path), overrides)
    return Method(f"{cfg.fuse.name} ({Path(cfg.source_file).name})", fuser=config_fuser(cfg), config=cfg,
                  align=cfg.align if cfg.fuse.name == "hclfuse" else None)


def _warn_carry_over(m: Method) -> None:
    """Warn when unrelated stills would share state: OT tables (a background solve serves each image the previous
    image's table, a cached table every image whose histograms are within ``drift`` of it) or the temporal stages."""
    if m.align is not None and m.align.enabled and (m.align.background or m.align.refresh > 1):
        log.warning("%s: OT tables carry over from one image to the next (align.background=%s, align.refresh=%d); "
                    "for still images use --config eval (a synchronous solve per image)", m.name,
                    m.align.background, m.align.refresh)
    if m.config is not None and (m.config.stabilize.strength or m.config.post.denoise):
        log.warning("%s: the IR stabilizer and the temporal filter carry over from one image to the next "
                    "(stabilize.strength=%g, post.denoise=%g); for still images use --config eval", m.name,
                    m.config.stabilize.strength, m.config.post.denoise)


def _montage_stems(pairs: list[tuple[str, Path, Path]], rows: int) -> list[str]:
    """Stems spread over the visible brightness range (darkest to brightest), so night and day both show."""
    if len(pairs) <= rows:
        return [s for s, _, _ in pairs]
    brightness = sorted((float(read_grey(v).mean()), s) for s, _, v in pairs)
    picks = np.linspace(0, len(brightness) - 1, rows).round().astype(int)
    return [brightness[i][1] for i in picks]


def evaluate_dir(dir_ir: str | Path, dir_vis: str | Path, methods: list[Method], out_dir: str | Path, *,
                 save_dir: str | Path | None = None, limit: int = 0, montage_rows: int = 4,
                 reference: str | None = None) -> EvalResult:
    """Score every method on the pairs of two folders and write ``metrics.csv``, ``metrics.md``, ``montage.png``.

    The outputs are moved into their folders only when every pair is scored (:mod:`streamfuse.staged_folders`): a
    failed or interrupted run leaves none, and a second run given one of the folders meanwhile is refused.

    Args:
        dir_ir: folder of IR images.
        dir_vis: folder of visible images (colour or grey), same file stems.
        methods: what to score (see :func:`fused_dir_method`, :func:`fuser_method`, :func:`config_method`).
        out_dir: created if needed; receives the CSV, the markdown table, the montage and, for config methods,
            ``<config stem>.resolved.yaml``; refused, as ``save_dir``, if it is in an input (:func:`check_outputs`).
        save_dir: if set, each fuser's output Y is written as ``<stem>.png`` there (in ``<method>/`` subfolders
            when several fusers run); refused when it holds images already.
        limit: score only the first ``limit`` pairs (sorted by name); 0 = all.
        montage_rows: pairs shown in the montage, spread from the darkest to the brightest visible image.
        reference: name of one of ``methods``; every row then also gets ``delta_grey`` and ``mse_ref``, the mean
            |F - F_ref| and (F - F_ref)^2 of its 8-bit output and that method's, and every method's means
            ``delta_grey`` and ``psnr_ref`` (dB) over all pixels of the pairs both have (NaN where it has none).

    Returns:
        The per-image rows and per-method means (metrics in :data:`streamfuse.metrics.METRICS` order, ``ms`` =
        median fusion time per frame for fusers, NaN for fused folders).
    """
    _check_methods(methods, reference)
    pairs = find_pairs(dir_ir, dir_vis, limit)
    out_dir = Path(out_dir)
    save_dirs = _save_dirs([m for m in methods if m.fuser is not None], save_dir)
    inputs = {"IR": dir_ir, "visible": dir_vis, **{f"fused ({m.name})": m.fused_dir for m in methods}}
    check_outputs(inputs, {"output folder": out_dir, **{f"save folder ({n})": d for n, d in save_dirs.items()}})
    fused_files = {m.name: image_files(m.fused_dir, f"fused ({m.name})", {s for s, _, _ in pairs})
                   for m in methods if m.fused_dir is not None}
    check_readable(pairs, fused_files)
    finals = list(dict.fromkeys(p.absolute() for p in (out_dir, *save_dirs.values())))  # --save may be --out
    with staged_folders(finals) as staging:
        staged = dict(zip(finals, staging))
        _refuse_held(save_dirs, save_dir)
        processors = {m.name: _processor(m) for m in methods if m.fuser is not None}
        result, tiles = _score_pairs(pairs, methods, processors, fused_files,
                                     {n: staged[d.absolute()] for n, d in save_dirs.items()}, montage_rows, reference)
        out = staged[out_dir.absolute()]
        for m in methods:
            if m.config is not None:
                dump_config(m.config, out / _config_file(m))
        csv_file, md_file, montage_file = (out / name for name in EVAL_FILES)
        write_csv(csv_file, result.rows)
        write_file(md_file, name_bytes(f"{markdown_table(result.means)}\n"))
        write_montage(montage_file, tiles)
        _replace_earlier(out_dir, {p.name for p in out.iterdir()})
    return result


def _replace_earlier(out_dir: Path, written: set[str]) -> None:
    """An earlier run's results in ``out_dir`` are replaced as a whole, and said so: its configs that this run does
    not write go too (a table beside another run's config would claim settings its figures did not come from)."""
    earlier = sorted(p.name for p in out_dir.iterdir() if p.is_file() and is_eval_file(p, out_dir))
    if earlier:
        log.info("replacing the earlier results in %s (%s)", out_dir, ", ".join(earlier))
    for name in set(earlier) - written:
        (out_dir / name).unlink()


def is_eval_file(path: Path, out_dir: Path) -> bool:
    """True when ``path`` names a file :func:`evaluate_dir` writes to ``out_dir`` (symlinks resolved)."""
    return path.resolve().parent == out_dir.resolve() and (path.name in EVAL_FILES
                                                           or path.name.endswith(RESOLVED_SUFFIX))


def _config_file(method: Method) -> str:
    """The file name of a config method's resolved config among the outputs."""
    return Path(method.config.source_file).stem + RESOLVED_SUFFIX


def _score_pairs(pairs: list[tuple[str, Path, Path]], methods: list[Method], processors: dict[str, FrameProcessor],
                 fused_files: dict[str, dict[str, Path]], save_dirs: dict[str, Path], montage_rows: int,
                 reference: str | None) -> tuple[EvalResult, dict[str, list[np.ndarray]]]:
    """Every method's rows and means on ``pairs`` (see :func:`evaluate_dir`), and the montage's tiles."""
    shown = set(_montage_stems(pairs, montage_rows))
    tiles: dict[str, list[np.ndarray]] = {}
    result = EvalResult(missing={m.name: 0 for m in methods})
    pixels: dict[str, int] = {}
    # a bar on a terminal only (disable=None): scoring many pairs with several fusers takes minutes
    for stem, ir_path, vis_path in tqdm(pairs, desc="evaluate", unit="pair", disable=None):
        ir, vis_y = read_pair(stem, ir_path, vis_path)
        pixels[stem] = ir.size
        outputs = {}
        for m in methods:
            scored = _score(m.name, processors.get(m.name), stem, ir, vis_y, save_dirs.get(m.name),
                            fused_files.get(m.name, {}))
            if scored is None:
                result.missing[m.name] += 1
                continue
            outputs[m.name], row = scored
            result.rows.append(row)
        if reference is not None:
            _compare(result.rows[len(result.rows) - len(outputs):], outputs, outputs.get(reference))
        if stem in shown:
            tiles[stem] = [tile(ir, f"IR {stem}"), tile(vis_y, "visible"), *(tile(f, n) for n, f in outputs.items())]
    for m in methods:
        if result.missing[m.name]:
            log.warning("%s: %d of %d fused images missing", m.name, result.missing[m.name], len(pairs))
        if rows := [r for r in result.rows if r["method"] == m.name]:
            result.means[m.name] = _means(rows, m.fuser is not None, pixels if reference is not None else None)
    return result, tiles


def _refuse_held(save_dirs: dict[str, Path], save_dir: str | Path | None) -> None:
    """``ValueError`` (one line) for a save folder that holds images: an earlier run's would be read back as this
    one's (``--fused``). The ``--save`` folder and every folder in it are looked at, not only where this run writes:
    one fuser writes into it and several into a folder each, so a run of the other kind mixed its images with an
    earlier run's. Checked under the folders' locks, so that a run ending meanwhile is not missed."""
    if save_dir is None:
        return
    root = Path(save_dir)
    named = {folder: f" ({name})" for name, folder in save_dirs.items()}
    inside = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for folder in dict.fromkeys([*save_dirs.values(), root, *inside]):
        if folder.is_dir() and (held := [p.name for p in folder.iterdir() if is_image_name(p)]):
            raise ValueError(f"save folder{named.get(folder, '')} {folder} already holds {len(held)} images "
                             f"({min(held)}, ...); give a new or empty folder, so that they do not mix with this run's")


def _check_methods(methods: list[Method], reference: str | None) -> None:
    """Refuse methods that cannot be scored together (one line); warn of state carried over between stills."""
    if not methods:
        raise ValueError("nothing to score: give at least one fused folder, fuser or config")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    configs = [_config_file(m) for m in methods if m.config is not None]
    if twice := {c for c in configs if configs.count(c) > 1}:  # their resolved configs would share one file
        raise ValueError(f"two --config files named {sorted(twice)[0].removesuffix(RESOLVED_SUFFIX)}.yaml: rename one "
                         f"(each method's resolved config is written as <config name>{RESOLVED_SUFFIX})")
    if reference is not None and reference not in names:
        raise ValueError(f"reference {reference!r} is not one of the methods {names}")
    for m in methods:
        _warn_carry_over(m)


def _save_dirs(fusers: list[Method], save_dir: str | Path | None) -> dict[str, Path]:
    """Where each fuser's outputs go: ``save_dir`` itself for one fuser, ``save_dir/<method>`` for several.

    Raises:
        ValueError: two methods whose names make one folder name (``a b.yaml`` and ``a_b.yaml``): the images of one
            would replace the other's.
    """
    if save_dir is None:
        return {}
    dirs = {m.name: Path(save_dir) / _safe(m.name) if len(fusers) > 1 else Path(save_dir) for m in fusers}
    owner: dict[Path, str] = {}
    for name, folder in dirs.items():
        if (first := owner.setdefault(folder, name)) != name:
            raise ValueError(f"--save: the methods {first!r} and {name!r} would both save into {folder}; name them "
                             "apart (a config file's name, or the key=value spelling of a --fuser)")
    return dirs


def _processor(m: Method) -> FrameProcessor:
    """The frame processor a fuser method runs each still through: a config method's stabilize and post settings (the
    eval config turns both off), else the defaults (off); stream ``default``, as ``Fuser.fuse`` names it."""
    return FrameProcessor.from_config(m.config, m.fuser, stream="default") if m.config else FrameProcessor(m.fuser)


def _score(name: str, processor: FrameProcessor | None, stem: str, ir: np.ndarray, vis_y: np.ndarray,
           save_dir: Path | None, fused_files: dict[str, Path]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Method ``name``'s 8-bit output for one pair and its row of metrics (the processor's image for a fuser, the
    image of its folder otherwise); None when its folder lacks the image."""
    ms = float("nan")
    if processor is not None:
        processed = processor(still_pair(ir, vis_y))
        ms = processed.timings["fuse"]
        # the image a replay or live run makes of this pair (the post stage's rounding, half up): scored, saved, shown
        fused = np.ascontiguousarray(processed.image if processed.image.ndim == 2 else processed.image[..., 0])
        if save_dir is not None:
            write_file(save_dir / f"{stem}.png", cv2.imencode(".png", fused)[1].tobytes())
    elif stem in fused_files:
        fused = read_grey(fused_files[stem])
    else:
        return None
    check_size(name, stem, fused, ir)
    return fused, {"method": name, "image": stem, **metrics.evaluate_pair(fused, ir, vis_y), "ms": ms}


def _compare(rows: list[dict[str, Any]], outputs: dict[str, np.ndarray], ref: np.ndarray | None) -> None:
    """Add each row's mean |F - F_ref| and squared difference to the reference output (NaN where it has none)."""
    for row in rows:
        diff = None if ref is None else outputs[row["method"]].astype(np.float64) - ref
        row["delta_grey"] = float("nan") if diff is None else float(np.abs(diff).mean())
        row["mse_ref"] = float("nan") if diff is None else float(np.square(diff).mean())


def _means(rows: list[dict[str, Any]], timed: bool, pixels: dict[str, int] | None) -> dict[str, float]:
    """One method's means: every metric, the median ms (NaN when not run here), pairs scored and, with ``pixels``
    (per image), the pixel-weighted delta grey and the PSNR against the reference."""
    means = {k: _finite_mean(rows, k) for k in metrics.METRICS}
    means["ms"] = float(np.median([r["ms"] for r in rows])) if timed else float("nan")
    means["n"] = len(rows)
    if pixels is not None:
        compared = [r for r in rows if not math.isnan(r["mse_ref"])]  # the pairs the reference has an output for
        means["delta_grey"] = means["psnr_ref"] = float("nan")
        if compared:
            weights = [pixels[r["image"]] for r in compared]
            means["delta_grey"] = float(np.average([r["delta_grey"] for r in compared], weights=weights))
            mse = float(np.average([r["mse_ref"] for r in compared], weights=weights))
            means["psnr_ref"] = 10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")
    return means


def _finite_mean(rows: list[dict[str, Any]], key: str) -> float:
    """Mean of ``key`` over the rows where it is finite, the others logged (QSF is infinite where the sources are
    flat and the fused image is not): one such pair would make the whole mean infinite."""
    values = np.array([r[key] for r in rows], dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        first = next(r["image"] for r, ok in zip(rows, finite, strict=True) if not ok)
        log.warning("%s: %s is not finite on %d of %d pairs (first %s), left out of its mean", rows[0]["method"], key,
                    int((~finite).sum()), len(rows), first)
    return float(values[finite].mean()) if finite.any() else float("nan")


def _safe(name: str) -> str:
    """A file-name-safe version of a method name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
