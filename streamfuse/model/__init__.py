"""HCLFuse model: VBE encoder/decoder and latent denoiser (``vbe``, ``denoiser``), the full net and its config
(``net``), its losses (``losses``), weights files (``weights``) and the runtime ``hclfuse`` Fuser (``fuser``)."""

from streamfuse.model.denoiser import Denoiser
from streamfuse.model.fuser import HCLFuser, build_hclfuse
from streamfuse.model.losses import LossConfig, fusion_target, hclfuse_losses
from streamfuse.model.net import HCLFuseNet, ModelConfig
from streamfuse.model.vbe import Decoder, Encoder, Gate, kl_standard_normal
from streamfuse.model.weights import DEFAULT_WEIGHTS, load_weights, read_weights, save_weights

__all__ = ["DEFAULT_WEIGHTS", "Decoder", "Denoiser", "Encoder", "Gate", "HCLFuseNet", "HCLFuser", "LossConfig",
           "ModelConfig", "build_hclfuse", "fusion_target", "hclfuse_losses", "kl_standard_normal", "load_weights",
           "read_weights", "save_weights"]
