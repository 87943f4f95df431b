"""What a live run refuses before anything of it starts (the publisher's bind, the model's load, the capture
processes): a config whose sections cannot run together, a source file or folder that is not there, a recording that
cannot be written. ``python -m streamfuse run`` and the library's ``run_live`` both make these checks, here."""

from __future__ import annotations

import os

from streamfuse.capture.sources import CAPTURE_CLOCKS, SourceConfig, SourceError
from streamfuse.checks import ConfigError, shown
from streamfuse.config import PipelineConfig
from streamfuse.recording import check_record_path

__all__ = ["refuse_unstartable"]

_NEEDS_PATH = ("stream", "file", "folder", "mcap")  # a camera's empty path is its first device
_ON_DISK = {"file": "video file", "folder": "image folder", "mcap": "recording"}  # as their sources name them


def refuse_unstartable(cfg: PipelineConfig) -> None:
    """Raise, in one line, for a live run that cannot start: ConfigError for a config's fault, SourceError for a
    source's file or folder that is not there, RuntimeError for a recording path that is taken or not writable.

    Said at once: a --duration that ended before a producer had opened its input was exit 0, unsaid, and a
    recording's folder was found unwritable only after the model's load (seconds) and the publisher's start.
    """
    _refuse_unrunnable(cfg)
    if missing := [f"{name}: {_ON_DISK[s.kind]} not found: {s.path}" for name, s in (("ir", cfg.ir), ("vis", cfg.vis))
                   if s.kind in _ON_DISK and not os.path.exists(s.path)]:
        raise SourceError("; ".join(missing))
    if cfg.record is not None:
        check_record_path(cfg.record.path, cfg.record.split)


def _refuse_unrunnable(cfg: PipelineConfig) -> None:
    """ConfigError for a live run's config whose sections are each valid and together cannot run; the line names the
    file and the overrides that set the keys concerned."""
    for name, source in (("ir", cfg.ir), ("vis", cfg.vis)):
        if source.kind in _NEEDS_PATH and not source.path:
            raise ConfigError(f"{cfg.origin(f'{name}.kind', f'{name}.path')}: {name}.path is empty: a {source.kind} "
                              f"source needs one (--set {name}.path=...; a replay takes it from --{name} with --out)")
    if cfg.ir.kind == "synthetic" and cfg.ir.palette:
        raise ConfigError(f"{cfg.origin('ir.kind', 'ir.palette')}: ir.palette={shown(cfg.ir.palette)} is a thermal "
                          f"camera's, and the synthetic source renders grey IR (leave it empty)")
    if (ir_clock := cfg.ir.capture_clock) != (vis_clock := cfg.vis.capture_clock):  # pairing compares their times
        raise ConfigError(f"{cfg.origin('ir.kind', 'ir.realtime', 'vis.kind', 'vis.realtime')}: the IR frames "
                          f"({_about('ir', cfg.ir)}) carry {CAPTURE_CLOCKS[ir_clock]}, the visible ones "
                          f"({_about('vis', cfg.vis)}) {CAPTURE_CLOCKS[vis_clock]}: they would never pair (give two "
                          f"live sources, two files or folders, or two recordings)")


def _about(name: str, source: SourceConfig) -> str:
    """A source's kind as a config error names it."""
    virtual = source.kind == "synthetic" and not source.realtime
    return f"{name}.kind {source.kind}" + (" not realtime" if virtual else "")
