"""Capture: sources, the shared-memory ring and the producer processes."""

from streamfuse.capture.mcap_source import McapSource, read_recording
from streamfuse.capture.producer import ProducerEvent, Producers, start_producers
from streamfuse.capture.shm_ring import ShmRing
from streamfuse.capture.sources import BaseSource, Source, SourceConfig, SourceError, SyntheticScene, open_source

__all__ = ["BaseSource", "Source", "SourceConfig", "SourceError", "SyntheticScene", "open_source", "McapSource",
           "read_recording", "ShmRing", "ProducerEvent", "Producers", "start_producers"]
