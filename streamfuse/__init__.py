"""streamfuse: real-time infrared + visible video fusion (HCLFuse) published over ZeroMQ.

The public surface is small; stages live in their own modules (see the README's layout section).
"""

from streamfuse.config import ConfigError, PipelineConfig, load_config
from streamfuse.frames import Frame, FramePair, FusedFrame

__all__ = ["ConfigError", "PipelineConfig", "load_config", "Frame", "FramePair", "FusedFrame"]
__version__ = "0.1.0"
