"""Reading a training checkpoint (``OUT/checkpoint.pt``): what is wrong with one that torch cannot load, in words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["read_checkpoint"]

_ZIP_START, _ZIP_END = b"PK\x03\x04", b"PK\x05\x06"  # a torch file is a zip: its index ends it, in its last 22 bytes


def read_checkpoint(ckpt: Path) -> Any:
    """``ckpt``'s contents (tensors and numbers only; whether they are a checkpoint is the loader's to check), or
    ValueError: one line saying what is wrong with the file."""
    try:
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises anything (OSError, KeyError, ...) on a foreign file
        raise ValueError(f"cannot resume from {ckpt}: {_unreadable(ckpt, exc)}") from None
    return state


def _unreadable(ckpt: Path, exc: Exception) -> str:
    """Why torch could not load ``ckpt``: its own reasons for a file cut short ("[Errno 22] Invalid argument", "failed
    finding central directory") say nothing of the file."""
    try:
        with open(ckpt, "rb") as file:
            head, size = file.read(4), file.seek(0, 2)
            file.seek(max(0, size - 22))
            tail = file.read()
    except OSError:
        head, size, tail = b"", -1, b""
    if size == 0:
        return "it is empty (0 bytes)"
    if size > 0 and head != _ZIP_START:
        return "not a checkpoint (not a file torch writes)"
    if size > 0 and not tail.startswith(_ZIP_END):
        return f"it is truncated: its {size} bytes end before the end of the checkpoint, as a write cut short leaves it"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if reason.startswith("Weights only load failed"):  # torch's advice to load it unsafely: not for a damaged file
        return "it holds other objects than tensors and numbers"
    return f"damaged: {reason}"
