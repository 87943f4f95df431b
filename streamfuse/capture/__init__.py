"""Capture: sources, the shared-memory ring and the producer processes.

Importing the package registers every source kind (``synthetic``, ``camera``, ``video_sources``, ``image_folder``,
``mcap_source``).
"""

from streamfuse.capture.camera import CameraSource
from streamfuse.capture.mcap_source import McapSource, read_recording
from streamfuse.capture.producer import ProducerEvent, Producers, start_producers
from streamfuse.capture.shm_ring import ShmRing
from streamfuse.capture.sources import BaseSource, Source, SourceConfig, SourceError, open_source
from streamfuse.capture.synthetic import SyntheticScene
from streamfuse.capture.image_folder import FolderSource
from streamfuse.capture.video_sources import AvSource

__all__ = ["BaseSource", "Source", "SourceConfig", "SourceError", "SyntheticScene", "open_source", "AvSource",
           "CameraSource", "FolderSource", "McapSource", "read_recording", "ShmRing", "ProducerEvent", "Producers",
           "start_producers"]
