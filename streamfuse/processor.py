"""Building the configured fuser (and, next to it, the frame processor that runs it).

:func:`build_fuser` is the one place that knows which sections configure which fuser: ``hclfuse`` takes
``hclfuse``, ``engine`` and ``align``; a baseline takes ``baseline``.
"""

from __future__ import annotations

from streamfuse.align import AlignConfig
from streamfuse.config import PipelineConfig
from streamfuse.fusers import BaselineConfig, FuseConfig, Fuser, build_baseline
from streamfuse.inference import EngineConfig, HCLFuseConfig

__all__ = ["build_fuser", "config_fuser"]


def build_fuser(fuse: FuseConfig, *, baseline: BaselineConfig = BaselineConfig(),
                hclfuse: HCLFuseConfig = HCLFuseConfig(), engine: EngineConfig = EngineConfig(),
                align: AlignConfig = AlignConfig()) -> Fuser:
    """The fuser ``fuse.name`` names, with the sections that configure it (the others are ignored)."""
    if fuse.name != "hclfuse":
        return build_baseline(fuse.name, baseline)
    from streamfuse.model.fuser import build_hclfuse  # torch is imported only when the model is used

    return build_hclfuse(hclfuse, engine, align)


def config_fuser(cfg: PipelineConfig) -> Fuser:
    """The fuser of a pipeline config."""
    return build_fuser(cfg.fuse, baseline=cfg.baseline, hclfuse=cfg.hclfuse, engine=cfg.engine, align=cfg.align)
