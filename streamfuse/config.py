"""Composes the per-stage config dataclasses into PipelineConfig; YAML load, dotted overrides, validation, dump.

Each stage module owns its frozen dataclass (``SyncConfig`` in ``sync.py`` and so on) and checks ranges in
``__post_init__`` with :func:`streamfuse.checks.check`. This module only checks keys and types and composes the
sections, so every error names the key, the file and what is allowed, in one line; a key of an earlier layout
names its new place (:data:`MOVED`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import typing
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamfuse.align import AlignConfig
from streamfuse.capture.ffmpeg_options import repeated_options, unknown_options, unread_by_files
from streamfuse.capture.sources import SourceConfig
from streamfuse.checks import (ConfigError, ValueNotTaken, apply_overrides, did_you_mean, dump_yaml, key_shown,
                               load_yaml, override_keys, parse_section, shown, yaml_reason)
from streamfuse.configs import resolve
from streamfuse.errors import redact
from streamfuse.file_names import local_name, utf8_text
from streamfuse.fusers import BaselineConfig, FuseConfig
from streamfuse.inference import EngineConfig, HCLFuseConfig
from streamfuse.postprocess import PostConfig
from streamfuse.publish_config import PublishConfig
from streamfuse.recording import RecordConfig
from streamfuse.register import RegisterConfig
from streamfuse.replay.config import ReplayConfig
from streamfuse.stabilize import StabilizeConfig
from streamfuse.sync import SyncConfig
from streamfuse.telemetry import TelemetryConfig

__all__ = ["ConfigError", "PipelineConfig", "MOVED", "PATH_KEYS", "load_config", "config_from_dict", "dump_config",
           "absolute_paths"]

log = logging.getLogger(__name__)

#: Keys of earlier layouts -> where they are now; such a key fails with one line naming its new place.
MOVED = {
    "align.stabilize": "stabilize.strength",
    **{f"fuse.{k}": f"baseline.{k}" for k in ("sharpen", "contrast")},
    **{f"fuse.{k}": f"hclfuse.{k}" for k in ("weights", "sampler", "steps", "guidance", "guidance_scale", "seed")},
    **{f"fuse.{k}": f"engine.{k}" for k in ("device", "precision", "threads", "cuda_graphs")},
}

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Keys that name a file, a folder or a URL: ``${NAME}`` is an environment variable's value and a leading ``~`` a home
#: folder, as in a shell (not a folder named ``~``).
PATH_KEYS = {"ir": ("path", "palette"), "vis": ("path",), "hclfuse": ("weights",),
             "publish": ("curve_secret_file", "curve_clients_dir"), "replay": ("out", "frames_dir"),
             "record": ("path",)}
_SOURCE_PATHS = ("ir.path", "vis.path")  # the path keys that take a device index


@dataclass(frozen=True)
class PipelineConfig:
    """Every stage's config, in data-flow order; ``record`` is None unless the YAML has a ``record:`` section.

    ``fuse.name`` picks the fuser: ``hclfuse`` reads the ``hclfuse`` and ``engine`` sections (and ``align``, its OT
    alignment), a baseline reads ``baseline``.
    """

    ir: SourceConfig
    vis: SourceConfig
    sync: SyncConfig
    register: RegisterConfig
    stabilize: StabilizeConfig
    align: AlignConfig
    fuse: FuseConfig
    hclfuse: HCLFuseConfig
    engine: EngineConfig
    baseline: BaselineConfig
    post: PostConfig
    publish: PublishConfig
    telemetry: TelemetryConfig
    replay: ReplayConfig
    record: RecordConfig | None = None
    source_file: str = field(default="<dict>", compare=False)
    overrides: tuple[str, ...] = field(default=(), compare=False)  # the --set items applied to the file

    def origin(self, *keys: str) -> str:
        """The config as a refusal of a combination of its ``keys`` names it: its file, with the overrides that set
        any of them (``demo.yaml with --set ir.kind=file``), which may be what made it refused."""
        return _origin(self.source_file, self.overrides, keys)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping of every section (for logging, dumping and the replay sidecar), a camera URL's password
        masked (:func:`~streamfuse.errors.redact`)."""
        out = {k: dataclasses.asdict(v) if v is not None else None for k, v in vars(self).items() if k not in _META}
        return _plain(out)


def _origin(source_file: str, overrides: Sequence[str], keys: Iterable[str]) -> str:
    """:meth:`PipelineConfig.origin` of a config still being built (its load's warnings)."""
    def sets(item: str) -> bool:
        dotted = ".".join(override_keys(item))
        return any(key == dotted or f"{key}.".startswith(f"{dotted}.") or dotted.startswith(f"{key}.") for key in keys)

    given = [item for item in overrides if sets(item)]
    return source_file + (f" with --set {' '.join(given)}" if given else "")


_META = ("source_file", "overrides")  # where a config came from, not a section of it
_HINTS = typing.get_type_hints(PipelineConfig)
#: Section name -> its config class (``record`` is optional: ``RecordConfig | None``).
_SECTIONS: dict[str, type] = {f.name: next(t for t in (*typing.get_args(_HINTS[f.name]), _HINTS[f.name])
                                           if t is not type(None))
                              for f in dataclasses.fields(PipelineConfig) if f.name not in _META}
#: Section name -> its keys: an unknown key of one section, or of none, is looked for in the others.
_KEYS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in _SECTIONS.items()}


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return redact(obj) if isinstance(obj, str) else obj


def _check_moved(data: dict[str, Any]) -> None:
    """Raise ValueError naming the new key for the first key of an earlier layout in ``data``."""
    for section, keys in data.items():
        for key in keys if isinstance(keys, dict) else ():
            if f"{section}.{key}" in MOVED:
                raise ValueError(f"{section}.{key} moved to {MOVED[f'{section}.{key}']}")


def _expand(value: str, key: str) -> str:
    """``${NAME}`` (an environment variable: a camera's password kept out of the config file) and ``~`` in a path;
    in a URL's user name or password the value is percent-encoded, so a password with ``@``, ``:`` or ``/`` is given
    as it is. ValueError naming the key for a variable that is not set."""
    scheme = value.find("://")
    authority = value.split("/", 3)[2] if scheme > 0 and value.count("/") >= 2 else ""
    userinfo_end = scheme + 3 + authority.rfind("@") if "@" in authority else -1

    def variable(match: re.Match) -> str:
        if match.group(1) not in os.environ:
            raise ValueError(f"{key}={value!r}: environment variable {match.group(1)} is not set")
        text = os.environ[match.group(1)]
        return urllib.parse.quote(text, safe="") if match.start() < userinfo_end else text
    return os.path.expanduser(_VARIABLE.sub(variable, value))


def _path_value(value: Any, key: str) -> Any:
    """A path key's value: ``~`` and ``${NAME}`` expanded, read as this process names files; a source's whole number
    is a device index (``path: 0``, as users write a camera's index in YAML and in ``--set``), so it is read as the
    text it is (any other key's is a type error: ``frames_dir: 0`` meant off, not a folder named 0)."""
    if key in _SOURCE_PATHS and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    return local_name(_expand(value, key)) if isinstance(value, str) else value  # the file, under any locale


def _text_value(value: Any, key: str) -> Any:
    """Any other key's value, its text as the UTF-8 it is: a value given on the command line under ``LC_ALL=C``
    comes as its bytes' escapes (``--set publish.topic=fused/空``). ValueError for bytes that are no UTF-8, which only a
    file's name may hold (a topic, a frame id, an FFmpeg option is sent on as UTF-8)."""
    if isinstance(value, list):  # of text (FFmpeg options); one deeper is refused by its type, never walked (an alias
        # bomb's billion items)
        return [_text_value(v, key) if isinstance(v, str) else v for v in value]
    if not isinstance(value, str):
        return value
    try:
        return utf8_text(value)
    except UnicodeError:
        raise ValueError(f"{key}={shown(value)} holds bytes that are not UTF-8 text (only a path's may)") from None


def absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with its relative file paths made absolute (against this process's folder): for workers that run in
    other folders, a cluster's."""
    sections = {}
    for name, keys in PATH_KEYS.items():
        section = getattr(cfg, name)
        if section is not None:
            sections[name] = dataclasses.replace(section, **{
                key: str(Path(getattr(section, key)).absolute()) for key in keys
                if _relative_path(f"{name}.{key}", getattr(section, key))})
    return dataclasses.replace(cfg, **sections)


def _relative_path(key: str, value: str) -> bool:
    """A path key's value that names a file relative to this process's folder (not empty, a URL or a device index)."""
    return (bool(value) and "://" not in value and not Path(value).is_absolute()
            and not (key in _SOURCE_PATHS and value.isdigit()))


def config_from_dict(data: dict[str, Any], source_file: str = "<dict>",
                     overrides: Sequence[str] = (), warn: Callable[..., None] = log.warning) -> PipelineConfig:
    """Validate a raw mapping into a PipelineConfig; raises ConfigError with one line naming file and key. A warning
    (given to ``warn``, a logging call) names the ``overrides`` (``--set`` items, already applied to ``data``) that
    set the values it is about."""
    def origin(*keys: str) -> str:
        return _origin(source_file, overrides, keys)

    try:
        if not isinstance(data, dict):
            raise ValueError("top level must be a mapping of stage sections")
        _check_moved(data)
        unknown = [k for k in data if k not in _SECTIONS]
        if unknown:
            raise ValueError(f"unknown config key {key_shown(unknown[0])}{did_you_mean(unknown[0], _SECTIONS, _KEYS)}; "
                             f"allowed keys: {', '.join(_SECTIONS)}")
        built = {}
        for name, cls in _SECTIONS.items():
            raw = data.get(name, None if name == "record" else {})
            if raw is None:
                if name != "record":
                    raise ValueError(f"section {name} is empty")
                if name in data:  # `record:` uncommented without its path: say so, a run records nothing
                    warn("%s: section record is empty: nothing is recorded (give record.path)", origin(name))
                built[name] = None
                continue
            if not isinstance(raw, dict):
                keys = ", ".join(f.name for f in dataclasses.fields(cls))
                raise ValueError(f"{name}={shown(raw)} must be a mapping; allowed keys: {keys}")
            raw = {k: (_path_value if k in PATH_KEYS.get(name, ()) else _text_value)(v, f"{name}.{k}")
                   for k, v in raw.items()}
            built[name] = parse_section(cls, raw, name, {k: v for k, v in _KEYS.items() if k != name})
        if built["vis"].palette:  # a visible camera's colours are its image, not a code for temperature
            raise ValueError(f"vis.palette={built['vis'].palette!r}: a palette is the IR camera's (ir.palette)")
    except ValueError as exc:
        raise ConfigError(f"{source_file}: {exc}") from None
    _warn_unused(built, origin, warn)
    return PipelineConfig(**built, source_file=source_file, overrides=tuple(overrides))


def _warn_unused(built: dict[str, Any], origin: Callable[..., str], warn: Callable[..., None]) -> None:
    """Warn of the values a run would leave unused, each line naming where they came from (``origin`` of their keys:
    the file, and the ``--set`` items that gave them)."""
    model = built["hclfuse"]
    if model.sampler == "student" and model.steps != HCLFuseConfig.steps:  # else a comparison of K compares nothing
        warn("%s: hclfuse.steps=%d sets the teacher's steps; the student sampler takes one (add "
             "hclfuse.sampler=teacher)", origin("hclfuse.steps", "hclfuse.sampler"), model.steps)
    guides = ("guidance_scale", "image_guidance")
    unguided = [f"{k}={getattr(model, k)}" for k in guides
                if not model.guidance and getattr(model, k) != getattr(HCLFuseConfig, k)]
    if unguided:  # the net drops both with the guides (HCLFuseNet.set_sampling): a run would look guided and is not
        warn("%s: hclfuse.guidance=false turns the guides off, and with them hclfuse.%s (add "
             "hclfuse.guidance=true)", origin("hclfuse.guidance", *(f"hclfuse.{k}" for k in guides)),
             ", ".join(unguided))
    for name in ("ir", "vis"):  # FFmpeg leaves an option it has no name for unused, and PyAV does not say it
        source, where = built[name], origin(f"{name}.ffmpeg", f"{name}.kind")
        if source.ffmpeg and source.kind in ("file", "stream") and (unknown := unknown_options(source.ffmpeg)):
            warn("%s: %s.ffmpeg: FFmpeg has no option named %s (misspelt, or another version's?): left unused",
                 where, name, ", ".join(unknown))
        if source.kind in ("file", "stream") and (repeated := repeated_options(source.ffmpeg)):
            warn("%s: %s.ffmpeg: %s given more than once: only the last of each is taken (%s)", where,
                 name, ", ".join(repeated), ", ".join(repeated.values()))
        if source.ffmpeg and source.kind == "file" and (unread := unread_by_files(source.ffmpeg)):
            warn("%s: %s.ffmpeg: %s: no FFmpeg format, protocol or codec that reads a file has it (a network "
                 "stream's, or a device's): left unused", where, name, ", ".join(unread))


_MAX_CONFIG_BYTES = 2**20  # the shipped configs are about 2 KiB


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config (a file, or a shipped config's name as ``--config`` takes it: ``demo``, ``eval``), apply
    dotted overrides, and validate every section."""
    path = resolve(path)
    try:
        if path.is_char_device() or path.is_block_device():  # /dev/zero would never end (a pipe may: <(envsubst ...))
            raise ConfigError(f"{path}: a device, not a config file")
        with path.open("rb") as file:
            raw = file.read(_MAX_CONFIG_BYTES + 1)
        if len(raw) > _MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: over {_MAX_CONFIG_BYTES // 2**20} MiB, not a config file")
        text = raw.decode()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a config file (not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    if not text.strip():  # a truncated or never-written file, not a wish for every default (that is `{}`)
        raise ConfigError(f"{path}: the config file is empty (write `{{}}` to run on every default)")
    try:
        data = load_yaml(text)
    except ValueNotTaken as exc:  # valid YAML: the value is what is wrong
        raise ConfigError(f"{path}: {yaml_reason(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_reason(exc)})") from None
    except RecursionError as exc:  # nested thousands deep
        raise ConfigError(f"{path}: not a config file this reader takes ({str(exc).splitlines()[0][:80]})") from None
    if data is None and all(line.lstrip().startswith("#") for line in text.splitlines() if line.strip()):
        raise ConfigError(f"{path}: the config file holds only comments (write `{{}}` to run on every default)")
    try:
        overridden = apply_overrides(copy.deepcopy(data), overrides or [])
    except ValueError as exc:  # names the override (or the file, that is no mapping to override)
        raise ConfigError(f"{path}: {exc}" if not isinstance(data, dict) else str(exc)) from None
    try:
        return config_from_dict(overridden, str(path), overrides or ())
    except ConfigError as exc:
        if not overrides:
            raise
        try:  # the file's own fault, which the overrides left as it was, is the file's; any other is theirs
            config_from_dict(data, str(path), warn=_unsaid)  # its warnings: said by the build above, or not its run's
        except ConfigError as own:
            if str(own) == str(exc):
                raise
        raise ConfigError(f"override of {path}: {str(exc).removeprefix(f'{path}: ')}") from None


def _unsaid(*_: object) -> None:
    """A warning left unsaid."""


def dump_config(cfg: PipelineConfig, path: str | Path) -> None:
    """Write the resolved config as YAML next to a run's outputs."""
    Path(path).write_text(dump_yaml({k: v for k, v in cfg.to_dict().items() if v is not None}))  # no `record: null`
