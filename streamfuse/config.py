"""Composes the per-stage config dataclasses into PipelineConfig; YAML load, dotted overrides, validation, dump.

Each stage module owns its frozen dataclass (``SyncConfig`` in ``sync.py`` and so on) and checks ranges in
``__post_init__`` with :func:`check`. This module only checks keys and types and composes the sections, so
every error names the key, the file and what is allowed, in one line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["ConfigError", "PipelineConfig", "load_config", "parse_section", "check", "dump_config", "apply_overrides"]


class ConfigError(ValueError):
    """A config that cannot run: the message is one line naming the key, the file and the allowed values."""


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Range check for ``__post_init__``: raise ValueError naming the key, the bad value and what is allowed."""
    if not ok:
        raise ValueError(f"{key}={value!r} is out of range; allowed: {allowed}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "list of " + _describe(typing.get_args(tp)[0])
    if dataclasses.is_dataclass(tp):
        return "mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Return value as type tp or raise ValueError naming key and the expected type."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, key)
            except ValueError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
            return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return parse_section(tp, value, key)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError(f"{key}={value!r} has the wrong type; expected {_describe(tp)}")


def parse_section(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping: unknown keys and wrong types raise ValueError naming the key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ValueError(f"unknown config key {prefix}.{key}; allowed keys: {', '.join(names)}")
    values = {k: _coerce(hints[k], v, f"{prefix}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"{prefix}: {exc}") from None


def _sections() -> dict[str, type]:
    # Imported here so that importing config stays cheap and stage modules never import each other.
    from streamfuse.align import AlignConfig
    from streamfuse.capture.sources import SourceConfig
    from streamfuse.fusers import FuseConfig
    from streamfuse.postprocess import PostConfig
    from streamfuse.publish import PublishConfig
    from streamfuse.recording import RecordConfig
    from streamfuse.replay import ReplayConfig
    from streamfuse.sync import SyncConfig
    from streamfuse.telemetry import TelemetryConfig

    return {
        "ir": SourceConfig, "vis": SourceConfig, "sync": SyncConfig, "align": AlignConfig, "fuse": FuseConfig,
        "post": PostConfig, "publish": PublishConfig, "telemetry": TelemetryConfig, "replay": ReplayConfig,
        "record": RecordConfig,
    }


@dataclass(frozen=True)
class PipelineConfig:
    """Every stage's config; ``record`` is None unless the YAML has a ``record:`` section."""

    ir: Any
    vis: Any
    sync: Any
    align: Any
    fuse: Any
    post: Any
    publish: Any
    telemetry: Any
    replay: Any
    record: Any = None
    source_file: str = field(default="<dict>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping of every section (for logging, dumping and the replay sidecar)."""
        out = {k: dataclasses.asdict(v) if v is not None else None for k, v in vars(self).items() if k != "source_file"}
        return _plain(out)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``stage.key=value`` overrides (value parsed as YAML) to a raw config mapping."""
    if overrides and not isinstance(data, dict):
        raise ValueError("top level must be a mapping of stage sections")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form stage.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.lstrip("-").split(".")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {dotted}: {k} is not a section")
        try:
            node[keys[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return data


def config_from_dict(data: dict[str, Any], source_file: str = "<dict>") -> PipelineConfig:
    """Validate a raw mapping into a PipelineConfig; raises ConfigError with one line naming file and key."""
    sections = _sections()
    try:
        if not isinstance(data, dict):
            raise ValueError("top level must be a mapping of stage sections")
        unknown = [k for k in data if k not in sections]
        if unknown:
            raise ValueError(f"unknown config key {unknown[0]}; allowed keys: {', '.join(sections)}")
        built = {}
        for name, cls in sections.items():
            raw = data.get(name, None if name == "record" else {})
            if raw is None:
                if name != "record":
                    raise ValueError(f"section {name} is empty")
                built[name] = None
                continue
            if not isinstance(raw, dict):
                keys = ", ".join(f.name for f in dataclasses.fields(cls))
                raise ValueError(f"{name}={raw!r} must be a mapping; allowed keys: {keys}")
            built[name] = parse_section(cls, raw, name)
    except ValueError as exc:
        raise ConfigError(f"{source_file}: {exc}") from None
    return PipelineConfig(**built, source_file=source_file)


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config, apply dotted overrides, and validate every section."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        data = apply_overrides(data, overrides or [])
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config_from_dict(data, str(path))


def dump_config(cfg: PipelineConfig, path: str | Path) -> None:
    """Write the resolved config as YAML next to a run's outputs."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
