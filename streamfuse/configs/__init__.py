"""The pipeline configs that ship with the package: ``--config demo`` names ``demo.yaml`` in this folder.

``demo`` (synthetic rig, runs anywhere), ``rig`` (two real cameras), ``replay`` (offline replay of a recorded pair),
``eval`` (still images: an OT solve per image, no temporal stage).
"""

from __future__ import annotations

from pathlib import Path

from streamfuse.checks import ConfigError

__all__ = ["CONFIG_DIR", "shipped", "resolve"]

CONFIG_DIR = Path(__file__).resolve().parent


def shipped() -> list[str]:
    """Names of the shipped configs, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve(config: str | Path) -> Path:
    """A shipped config's name (``demo``, or its file name ``demo.yaml``) -> its file; any other argument is a path
    to a YAML file, kept as given.

    A name is a word without a folder; an existing file of that name in the working directory wins (a folder of
    that name does not: the shipped config does, else the folder is given back, to be refused as a folder).

    Raises:
        ConfigError: a name (``nosuch`` or ``nosuch.yaml``) that is neither a file here nor a shipped config (the
            message lists the shipped ones).
    """
    if not str(config).strip():  # Path("") is the working directory, which would be refused as a folder
        raise ConfigError(f"config {str(config)!r} is empty: give a shipped config's name ({', '.join(shipped())}) or "
                          "the path of a YAML file")
    path = Path(config)
    if path.is_file() or len(path.parts) != 1 or path.suffix not in ("", ".yaml"):
        return path
    if (CONFIG_DIR / f"{path.stem}.yaml").is_file():
        return CONFIG_DIR / f"{path.stem}.yaml"
    if path.exists():  # a pipe (read as a config), a folder or a device here: its reader says which
        return path
    raise ConfigError(f"{config}: no such config file here, nor a shipped config of that name; shipped: "
                      f"{', '.join(shipped())} (or give the path of a YAML file)")
