"""A recording's image messages read ahead as they are, each decoded into its frame only when it is released.

A bag's frames are put back in stamp order looking up to 64 messages ahead (:mod:`~streamfuse.capture.stamp_order`),
which needs each message's stream, place and stamp, not its image: held decoded, the look-ahead of a 1080p JPEG camera
beside a thermal one 32 times rarer took 400 MB. A message is held as read (a JPEG's bytes, 20 to 300 KB at 1080p) and
decoded, brought to 8 bits and, for IR, to temperature order (:mod:`~streamfuse.bitdepth`,
:mod:`~streamfuse.capture.palette`) as its frame is released, in the order the frames are played.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from streamfuse.bitdepth import To8Bit
from streamfuse.capture import foxglove_images, ros_images
from streamfuse.capture.palette import check_depth, first_note, ir_grey
from streamfuse.capture.ros_images import Unsupported
from streamfuse.capture.sources import SourceError
from streamfuse.frames import Frame

__all__ = ["ImageMessage", "Images", "stamp_of"]


def _foxglove(schema: str, encoding: str) -> bool:
    """Whether a message is one of the Foxglove SDK's (:mod:`~streamfuse.capture.foxglove_images`)."""
    return encoding == "protobuf" or schema in foxglove_images.SCHEMAS


def stamp_of(schema: str, data: bytes, encoding: str) -> int:
    """The capture stamp (ns) of one image message, its image left undecoded; raises as its decode would."""
    return (foxglove_images if _foxglove(schema, encoding) else ros_images).stamp(schema, data, encoding)


class ImageMessage:
    """One image message read ahead: its ``stream``, place (``seq``) and ``t_capture_ns`` known, its image decoded by
    :meth:`frame`."""

    __slots__ = ("stream", "seq", "t_capture_ns", "_topic", "_schema", "_encoding", "_data", "_read", "_images")

    def __init__(self, images: Images, stream: str, seq: int, t_ns: int, topic: str, kind: tuple[str, str],
                 data: bytes, read: int) -> None:
        self.stream, self.seq, self.t_capture_ns, self._topic = stream, seq, t_ns, topic
        self._schema, self._encoding = kind
        self._data, self._read, self._images = data, read, images

    @property
    def nbytes(self) -> int:
        """The bytes of its message held."""
        return len(self._data)

    def frame(self) -> Frame:
        """Its frame, the image decoded now (SourceError, one line, where it cannot be)."""
        return self._images.frame(self)


class Images:
    """The decoding of one recording's image messages: its path, the IR ``palette``, ``warn`` (one line on the IR's
    first frame's colours) and ``damaged`` (the line of a message that does not decode, after so many frames)."""

    def __init__(self, path: str | Path, streams: list[str], palette: str, warn: Callable[[str], None],
                 damaged: Callable[[int, Exception], str]) -> None:
        self._path, self._palette, self._warn, self._damaged = path, palette, warn, damaged
        self._depth = {s: To8Bit(s == "ir") for s in streams}  # each stream's by its own sequence (bitdepth)
        self._first_ir = True

    def message(self, stream: str, seq: int, t_ns: int, topic: str, kind: tuple[str, str], data: bytes,
                read: int) -> ImageMessage:
        """The message of ``kind`` (schema, message encoding) on ``topic``, ``read`` frames after the recording's
        start, held for its frame."""
        return ImageMessage(self, stream, seq, t_ns, topic, kind, data, read)

    def frame(self, msg: ImageMessage) -> Frame:
        """``msg``'s frame: its image decoded, to 8 bits (a thermal camera's counts kept, ``Frame.counts``)."""
        schema, encoding, topic = msg._schema, msg._encoding, msg._topic
        try:
            image = (foxglove_images if _foxglove(schema, encoding) else ros_images).decode(schema, msg._data,
                                                                                               encoding)[1]
            if not image.size:  # no stage can take an image without pixels: damaged, as an undecodable one
                raise ValueError(f"an image of {image.shape[1]}x{image.shape[0]} pixels on {topic}")
        except Unsupported as exc:
            raise SourceError(f"recording {self._path}: {topic}: {exc}") from None
        except ValueError as exc:
            raise SourceError(self._damaged(msg._read, exc)) from None
        ir = msg.stream == "ir"
        deep = image if ir and image.dtype == np.uint16 and image.ndim == 2 else None  # Frame.counts
        try:  # float pixels on the visible topic, a palette named for 16-bit IR: well formed, not what the stream takes
            if ir:
                check_depth(image, self._palette)
            image = self._depth[msg.stream](image)
            if ir:  # e.g. a bag of a false-colour thermal camera: temperature order, as live capture
                if self._first_ir and (note := first_note(image, self._palette)):
                    self._warn(f"recording {self._path}: {topic}: {note}")
                self._first_ir = False
                image = ir_grey(image, self._palette)
        except ValueError as exc:
            raise SourceError(f"recording {self._path}: {topic} ({msg.stream}.topic): {exc}") from None
        return Frame(msg.stream, msg.seq, msg.t_capture_ns, image, counts=deep)
