"""HCLFuse weights files: one ``torch.save`` dict with the format tag and version, the architecture config
(:class:`ModelConfig` as a mapping), the state dict and free-form training metadata (``extra``)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from streamfuse.model.net import HCLFuseNet, ModelConfig

__all__ = ["DEFAULT_WEIGHTS", "FORMAT_VERSION", "RELEASES", "load_weights", "read_weights", "save_weights",
           "weights_version"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "hclfuse_v4.pt"
FORMAT = "streamfuse-hclfuse"
FORMAT_VERSION = 4  # 4: base decoded on the latent grid; 3: base upsampled in two stages; 2: basis decoder
# Released files by hash (the first 8 hex digits of their SHA-256) -> the version weights/MODEL_CARD.md's title gives
# them (a shipped file missing here reports its format version: tests/model/test_weights.py says so).
RELEASES = {"cd4e0775": "4.6"}


def save_weights(path: str | Path, net: HCLFuseNet, extra: dict | None = None) -> None:
    """Write the state dict with the architecture config (and training metadata) to ``path``."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "model": asdict(net.cfg), "state_dict": state,
                "extra": extra or {}}, str(path))


def read_weights(path: str | Path, *, any_version: bool = False,
                 check_model: bool = True) -> tuple[ModelConfig, dict, dict]:
    """Read and check a weights file without building a net.

    Args:
        path: the file.
        any_version: accept older format versions (to initialise a fine-tuning run from their tensors).
        check_model: require the tensors to match the file's model config exactly.

    Returns:
        ``(model config, state dict as float32, extra metadata)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file and what is wrong (not a weights file, config and tensors disagree).
    """
    path = Path(path)
    if not path.is_file():
        what = "not found" if not path.exists() else "not a file (a folder, a pipe or a device)"
        raise FileNotFoundError(f"HCLFuse weights {what}: {path}")
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises anything (IndexError, KeyError, ...) on a foreign file
        raise ValueError(f"{path}: not a readable torch weights file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state_dict" not in blob:
        raise ValueError(f"{path}: not an HCLFuse weights file (expected format {FORMAT!r})")
    if blob.get("format_version") != FORMAT_VERSION and not any_version:
        raise ValueError(f"{path}: weights format version {blob.get('format_version')} is not supported"
                         f" (expected {FORMAT_VERSION})")
    cfg, extra = _config(path, blob)
    state = blob["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: its state_dict is not a mapping of tensors")
    expected = _shapes(path, cfg) if check_model else state
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model config {cfg}: missing {missing[:3]},"
                         f" unexpected {unexpected[:3]}")
    bad = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"{path}: weights do not match the model config: {bad[0]} has shape"
                         f" {tuple(state[bad[0]].shape)}, the config needs {tuple(expected[bad[0]].shape)}")
    if ints := [k for k, v in expected.items() if v.is_floating_point() and not state[k].is_floating_point()]:
        raise ValueError(f"{path}: weights do not match the model: {ints[0]} holds {state[ints[0]].dtype}, not floats")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ValueError(f"{path}: weights contain NaN or infinite values")
    return cfg, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, dict(extra)


def _config(path: Path, blob: dict) -> tuple[ModelConfig, dict]:
    """The file's model config and extra metadata, or ValueError (one line) for a malformed or hostile one."""
    model, extra = blob.get("model", {}), blob.get("extra") or {}
    for what, value in (("model config", model), ("extra metadata", extra)):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: its {what} is not a mapping but {type(value).__name__}")
    known = {f.name for f in fields(ModelConfig)}
    raw = {"band_sigma": 0.0, **model}  # files from before the key kept the block-mean band
    if set(raw) - known:
        raise ValueError(f"{path}: unknown model config keys {sorted(map(str, set(raw) - known))}")
    try:
        return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}), extra
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: bad model config: {exc}") from None


def _shapes(path: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors ``cfg`` needs, on the meta device: a file's config of huge widths allocates nothing before its own
    tensors are compared with them; one of sizes no net can have is ValueError (one line)."""
    try:
        with torch.device("meta"):
            return HCLFuseNet(cfg).state_dict()
    except (RuntimeError, TypeError, OverflowError) as exc:
        raise ValueError(f"{path}: bad model config: no net of its sizes can be made ({type(exc).__name__})") from None


def load_weights(path: str | Path, **net_kwargs: Any) -> tuple[HCLFuseNet, dict]:
    """Load a weights file (see :func:`read_weights`) into a new HCLFuseNet.

    Returns:
        The net (eval mode, gates folded) and the file's ``extra`` metadata.
    """
    cfg, state, extra = read_weights(path)
    net = HCLFuseNet(cfg, **net_kwargs)
    net.load_state_dict(state)
    net.eval().requires_grad_(False)
    net.fold_gates()
    return net, extra


def weights_version(path: str | Path) -> str:
    """The version a fuser reports for a weights file, with the file's hash: a released file's version as the model
    card names it (``4.6+cd4e0775``), any other file's format version (``4.0+1a2b3c4d``)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]
    return f"{RELEASES.get(digest, f'{FORMAT_VERSION}.0')}+{digest}"
