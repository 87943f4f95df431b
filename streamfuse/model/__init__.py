"""HCLFuse model: VBE encoder/decoder, latent denoiser, the full net, weights loading and the Fuser."""

from streamfuse.model.denoiser import Denoiser
from streamfuse.model.hclfuse import HCLFuseNet, HCLFuser, ModelConfig, build_hclfuse, load_weights, save_weights
from streamfuse.model.vbe import Decoder, Encoder, Gate, kl_standard_normal

__all__ = ["Decoder", "Denoiser", "Encoder", "Gate", "HCLFuseNet", "HCLFuser", "ModelConfig", "build_hclfuse",
           "kl_standard_normal", "load_weights", "save_weights"]
