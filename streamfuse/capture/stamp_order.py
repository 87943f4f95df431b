"""A bag's frames put back in the order of their header stamps where a driver published them out of order.

Frames pair by their stamps, each stream's in the order it was logged: a stamp that went back (a thermal driver whose
frames were swapped two by two) came after the frame it belongs before, and the pairer, which has decided on the
frames before it, left both unpaired (20 of 40 pairs lost). Each stream keeps its places in the bag's order (which
stream comes next is never changed, nor is any frame moved where its stream's stamps rise): only the frames in a
stream's places are sorted, looking at most :data:`WINDOW` of that stream's frames and :data:`AHEAD` messages ahead,
so the output of a bag whose stamps rise is the same as before, frame for frame.

The messages read ahead are held as read (decoded as they leave): a raw image's as large as its image, 6 MB at 1080p,
so a thermal camera 32 times rarer than a raw 1080p one held 63 of those, 390 MB, while its next 4 frames were looked
for. The other streams' messages held stop the look at :data:`BUDGET` bytes (10 such images) where a stream's window
is not yet full: a JPEG camera's 63 messages (20 MB at 1080p) stay within it, a stream's frames whose stamps rise come
out as they would have, and a stream at 10 fps or slower loses nothing (a frame a period back is a clock step, never
put back). A frame left behind a later-stamped one of its stream (which the pairer cannot pair) where the look was
stopped so is counted, and said once the bag ends.

A stamp more than :data:`~streamfuse.sync.CLOCK_STEP_NS` back is a clock stepped back, not a frame out of place: it
stays where it was logged. Our own recordings are never reordered: they hold the live run's frames in the order it
paired them, which a replay reproduces.

>>> import numpy as np
>>> from streamfuse.frames import Frame
>>> img = np.zeros((1, 1), np.uint8)
>>> bag = [Frame(s, i, t, img) for s, i, t in (("ir", 0, 40), ("vis", 0, 0), ("ir", 1, 0), ("vis", 1, 40))]
>>> [(f.stream, f.seq, f.t_capture_ns) for f in in_stamp_order((f, True) for f in bag)]
[('ir', 0, 0), ('vis', 0, 0), ('ir', 1, 40), ('vis', 1, 40)]
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from streamfuse.frames import STREAM_NAMES, Frame
from streamfuse.sync import CLOCK_STEP_NS

__all__ = ["in_stamp_order", "WINDOW", "AHEAD", "BUDGET"]

log = logging.getLogger(__name__)

WINDOW = 4  # a stream's frames looked at for the one stamped first: a frame logged up to 3 of them late is put back
AHEAD = 64  # messages read ahead at most, however rare the stream's frames are among them (held as read: a caller's
# release decodes them, capture.image_messages)
BUDGET = 64 << 20  # bytes of the other streams' messages held at most while a stream's window is filled


def in_stamp_order(frames: Iterator[tuple[Any, bool]], release: Callable[[Any], Frame] = lambda f: f,
                   size: Callable[[Any], int] = lambda f: f.image.nbytes, name: str = "") -> Iterator[Frame]:
    """The frames, each with whether it may move (a bag's, numbered by its place: ``seq`` stays with the place), with
    those of each stream sorted by stamp within the bounds above; an error met reading ahead is raised after the
    frames read before it. Each is given as ``release`` makes it (from a message with the Frame's ``stream``, ``seq``
    and ``t_capture_ns``: its image decoded only then); ``size`` is the bytes one holds, ``name`` the bag's, said
    with the frames left out of order where :data:`BUDGET` stopped a look."""
    ahead: deque[tuple[Any, bool]] = deque()
    failed: list[BaseException] = []
    stopped: set[str] = set()  # the streams whose window BUDGET cut short
    last: dict[str, int] = {}  # each stream's latest stamp given
    behind: dict[str, int] = {}  # its frames given behind it, once cut short
    try:
        while _fill(frames, ahead, failed, None, size):
            head, movable = ahead[0]
            if movable and _fill(frames, ahead, failed, head.stream, size):
                if _others(ahead, head.stream, size) >= BUDGET and _count(ahead, head.stream) < WINDOW:
                    stopped.add(head.stream)
                _first_stamped(ahead)
            frame = ahead[0][0]
            if frame.stream in stopped and 0 < last.get(frame.stream, 0) - frame.t_capture_ns < CLOCK_STEP_NS:
                behind[frame.stream] = behind.get(frame.stream, 0) + 1
            last[frame.stream] = max(last.get(frame.stream, frame.t_capture_ns), frame.t_capture_ns)
            yield release(ahead.popleft()[0])
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
    if failed:
        raise failed[0]
    for stream, n in behind.items():
        log.warning("%s: %d %s frames came after a later-stamped one and were left there, unpaired: the look for the "
                    "frame stamped first stops at %d MiB of the other camera's messages", name, n,
                    STREAM_NAMES.get(stream, stream), BUDGET >> 20)


def _count(ahead: deque, stream: str) -> int:
    """How many frames of ``stream`` ``ahead`` holds."""
    return sum(f.stream == stream for f, _ in ahead)


def _others(ahead: deque, stream: str, size: Callable[[Any], int]) -> int:
    """The bytes ``ahead`` holds of streams other than ``stream``."""
    return sum(size(f) for f, _ in ahead if f.stream != stream)


def _fill(frames: Iterator[tuple[Frame, bool]], ahead: deque, failed: list[BaseException], stream: str | None,
          size: Callable[[Any], int]) -> bool:
    """Read into ``ahead`` until it holds :data:`WINDOW` frames of ``stream`` (None: one frame), :data:`AHEAD`
    messages, :data:`BUDGET` bytes of other streams' messages, the end or an error (kept in ``failed``); whether
    ``ahead`` holds a frame."""
    want = 1 if stream is None else WINDOW
    while not failed and len(ahead) < AHEAD and (len(ahead) if stream is None else _count(ahead, stream)) < want \
            and (stream is None or _others(ahead, stream, size) < BUDGET):
        try:
            ahead.append(next(frames))
        except StopIteration:
            break
        except Exception as exc:  # whatever it is, it is raised once the frames before it are given
            failed.append(exc)
    return bool(ahead)


def _first_stamped(ahead: deque) -> None:
    """Put the frame stamped first among the head's stream's next :data:`WINDOW` frames (less than a clock step
    before the head's stamp) in the head's place, the head in its place; each keeps its place's ``seq``."""
    head = ahead[0][0]
    places = [i for i, (f, movable) in enumerate(ahead) if f.stream == head.stream and movable][:WINDOW]
    best = min((i for i in places if head.t_capture_ns - ahead[i][0].t_capture_ns < CLOCK_STEP_NS),
               key=lambda i: (ahead[i][0].t_capture_ns, i))
    if best == 0:
        return
    frame = ahead[best][0]
    head.seq, frame.seq = frame.seq, head.seq
    ahead[0], ahead[best] = ahead[best], ahead[0]
