"""Compressed payloads of the wire format: JPEG (libjpeg-turbo through simplejpeg) and H.264 (libx264 through PyAV).

Both carry one frame per message. H.264 is encoded for live links: no B-frames, zero-latency tuning (each frame
comes out as one packet at once), an IDR keyframe every ``keyint`` frames or on request, with SPS/PPS repeated in
every keyframe so a decoder can start at any of them. PyAV is imported by the H.264 methods, at their first frame:
every consumer holds a decoder, and one of a raw or JPEG stream would otherwise pay for PyAV's import at its start.

>>> import numpy as np
>>> image = np.full((16, 16, 3), 128, np.uint8)
>>> JpegDecoder().decode(JpegEncoder(90).encode(image), 16, 16, 3).shape
(16, 16, 3)
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import simplejpeg

if TYPE_CHECKING:
    import av

__all__ = ["JPEG_MAX_SIDE", "JpegEncoder", "JpegDecoder", "H264Encoder", "H264Decoder", "DecodeError"]

JPEG_MAX_SIDE = 65_500  # libjpeg's JPEG_MAX_DIMENSION (the wire allows 65535): OpenCV refuses more, in its own lines


class DecodeError(ValueError):
    """A payload that does not decode to the image its header describes (one line)."""


class JpegEncoder:
    """BGR or grey uint8 -> JPEG bytes at ``quality`` (1..100), 4:2:0 chroma."""

    def __init__(self, quality: int) -> None:
        self.quality = quality

    def encode(self, image: np.ndarray) -> bytes:
        """JPEG of ``image``: ``(H, W, 3)`` BGR or ``(H, W)`` grey, C-contiguous uint8."""
        if image.ndim == 2:
            return simplejpeg.encode_jpeg(image[:, :, None], self.quality, "GRAY")
        return simplejpeg.encode_jpeg(image, self.quality, "BGR", "420")


class JpegDecoder:
    """JPEG bytes -> uint8 image, after checking the JPEG's own size against the header's (no decompression bomb)."""

    def decode(self, data: bytes | memoryview, height: int, width: int, channels: int) -> np.ndarray:
        """Decode ``data`` into ``(height, width, 3)`` BGR or ``(height, width)`` grey; raises DecodeError."""
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            if (h, w) != (height, width):
                raise DecodeError(f"JPEG is {w}x{h}, header says {width}x{height}")
            image = simplejpeg.decode_jpeg(data, "BGR" if channels == 3 else "GRAY")
        except DecodeError:
            raise
        except ValueError as exc:  # simplejpeg raises ValueError for data that is not a JPEG
            raise DecodeError(f"bad JPEG payload: {str(exc).splitlines()[0] if str(exc) else repr(exc)}") from None
        return image if channels == 3 else image[:, :, 0]


class H264Encoder:
    """uint8 frames -> one H.264 packet each; a new stream (starting with a keyframe) whenever the size changes."""

    def __init__(self, keyint: int, crf: int) -> None:
        self.keyint, self.crf = keyint, crf
        self._ctx: av.CodecContext | None = None
        self._shape: tuple[int, ...] = ()
        self._pts = 0
        self._force_key = False

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe (a new consumer starts there instead of waiting for ``keyint``)."""
        self._force_key = True

    def encode(self, image: np.ndarray) -> tuple[bytes, bool]:
        """``(packet, is_keyframe)`` of ``image``: ``(H, W, 3)`` BGR or ``(H, W)`` grey uint8."""
        import av
        from av.video.frame import PictureType

        if image.shape != self._shape:
            self._open(image.shape)
        h, w = image.shape[:2]
        padded = np.pad(image, ((0, h % 2), (0, w % 2)) + ((0, 0),) * (image.ndim - 2), mode="edge") \
            if (h | w) % 2 else image  # 4:2:0 needs even sides; the decoder crops back
        frame = av.VideoFrame.from_ndarray(padded, format="bgr24" if image.ndim == 3 else "gray")
        frame.pts, self._pts = self._pts, self._pts + 1
        if self._force_key:
            frame.pict_type, self._force_key = PictureType.I, False
        packets = self._ctx.encode(frame)
        if len(packets) != 1:  # zerolatency without B-frames emits every frame at once
            raise RuntimeError(f"H.264 encoder returned {len(packets)} packets for one frame")
        return bytes(packets[0]), bool(packets[0].is_keyframe)

    def _open(self, shape: tuple[int, ...]) -> None:
        import av

        ctx = av.CodecContext.create("libx264", "w")
        ctx.height, ctx.width = shape[0] + shape[0] % 2, shape[1] + shape[1] % 2
        ctx.pix_fmt, ctx.time_base = "yuv420p", Fraction(1, 30)
        ctx.gop_size, ctx.max_b_frames = self.keyint, 0
        ctx.options = {"tune": "zerolatency", "preset": "ultrafast", "crf": str(self.crf), "forced-idr": "1"}
        self._ctx, self._shape, self._pts = ctx, shape, 0


class H264Decoder:
    """H.264 packets -> uint8 frames. Waits for a keyframe after a start, a gap or a bad packet (``None`` until then),
    so a late joiner or a consumer that missed a frame never shows a broken picture."""

    def __init__(self) -> None:
        self._ctx: av.CodecContext | None = None

    def reset(self) -> None:
        """Forget the stream (a frame was missed): wait for the next keyframe."""
        self._ctx = None

    def decode(self, data: bytes | memoryview, keyframe: bool, height: int, width: int,
               channels: int) -> np.ndarray | None:
        """The image of one packet, or None while waiting for a keyframe; raises DecodeError (then waits again)."""
        import av

        if keyframe:
            self._ctx = av.CodecContext.create("h264", "r")
            self._ctx.thread_count = 1  # frame threading would hold frames back
            # a forged SPS cannot make FFmpeg allocate (and conceal) a picture bigger than the header's, give or take
            # its alignment (it checks the width rounded up to 64 pixels)
            self._ctx.options = {"max_pixels": str((height + 16) * (width + 64))}
        elif self._ctx is None:
            return None
        try:
            frames = self._ctx.decode(av.Packet(bytes(data)))
            if len(frames) != 1:
                raise DecodeError(f"H.264 packet decoded to {len(frames)} frames, expected 1")
            frame = frames[0]
            if (frame.height, frame.width) != (height + height % 2, width + width % 2):
                raise DecodeError(f"H.264 frame is {frame.width}x{frame.height}, header says {width}x{height}")
            image = frame.to_ndarray(format="bgr24" if channels == 3 else "gray")
        except (av.FFmpegError, DecodeError) as exc:
            self._ctx = None
            raise DecodeError(f"bad H.264 payload: {exc}") from None
        return image[:height, :width]
