"""A tiny registry for swappable parts: fusers and sources.

>>> @register("example", "double")
... def _double(x: int) -> int:
...     return 2 * x
>>> build("example", "double", x=3)
6
>>> available("example")
['double']
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["register", "build", "available", "lookup"]

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {}


def register(kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a factory under (kind, name); a duplicate name raises ValueError."""

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        table = _REGISTRY.setdefault(kind, {})
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = factory
        return factory

    return deco


def lookup(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as (kind, name); unknown names raise ValueError listing what exists."""
    table = _REGISTRY.get(kind, {})
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; available: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def build(kind: str, name: str, /, **cfg: Any) -> Any:
    """Build (kind, name) with cfg, dropping None values as timm does."""
    return lookup(kind, name)(**{k: v for k, v in cfg.items() if v is not None})


def available(kind: str) -> list[str]:
    """Sorted names registered under kind."""
    return sorted(_REGISTRY.get(kind, {}))
