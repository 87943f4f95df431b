"""HCLFuse model: VBE encoder/decoder, latent denoiser, the full net and its losses, weights loading, the Fuser."""

from streamfuse.model.denoiser import Denoiser
from streamfuse.model.hclfuse import HCLFuseNet, HCLFuser, ModelConfig, build_hclfuse, load_weights, save_weights
from streamfuse.model.losses import LossConfig, fusion_target, hclfuse_losses
from streamfuse.model.vbe import Decoder, Encoder, Gate, kl_standard_normal

__all__ = ["Decoder", "Denoiser", "Encoder", "Gate", "HCLFuseNet", "HCLFuser", "LossConfig", "ModelConfig",
           "build_hclfuse", "fusion_target", "hclfuse_losses", "kl_standard_normal", "load_weights", "save_weights"]
