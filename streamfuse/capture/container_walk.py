"""What the end of a video file lacks (:class:`Cut`) and the walk over a container's top-level units that finds it:
shared by the checks of ``container_end`` and ``mpeg_end``."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO, NamedTuple

__all__ = ["Cut", "Unit", "read_at", "walk", "after_last"]


class Cut(NamedTuple):
    """What the end of a file lacks; whether that is certain (an error) or a complete file can look the same; and
    whether it lies in an index or metadata unit after the units that hold frames (all of them there, as far as the
    file says: its end is an index the writer was writing when it stopped)."""

    what: str
    certain: bool
    after_frames: bool = False


class Unit(NamedTuple):
    """A walked element, box, chunk or packet: its name, where it ends (None: unknown size), whether the container is
    known to hold one (else only bytes that look like one), its role ("frames": it holds frames; "index": an index or
    metadata a writer leaves after them), and where the units inside it start (None: it holds none walked)."""

    name: str
    end: int | None
    known: bool
    role: str = ""
    inner: int | None = None


def read_at(f: BinaryIO, pos: int, n: int) -> bytes:
    """Up to ``n`` bytes of ``f`` from ``pos``."""
    f.seek(pos)
    return f.read(n)


def walk(pos: int, size: int, what: str, read: Callable[[int], Unit | None], framed: bool = False) -> Cut | None:
    """Walks the top-level units from ``pos``: a known one that runs past the end of the file is cut, where only its
    index is when it is an index unit after a unit of frames (``framed``: one was before ``pos``), or when such a cut
    is inside it. ``read(pos)`` gives the unit there, or None where what is there is none (a header cut short
    included); a known unit of unknown size ends the walk (nothing to say). What follows the last whole known unit
    and is none, or only looks like one and runs past the end, is reported: padding, a trailer, or a cut inside a
    header."""
    last: tuple[str, int] | None = None  # the last whole known unit: its name and end
    while pos < size:
        unit = read(pos)
        if unit is not None and unit.end is None:
            return None
        if unit is None or unit.end > size and not unit.known:
            return None if last is None else after_last(size - last[1], f"{what} ({last[0]})")
        if unit.end > size:
            cut = Cut(f"its last {what} ({unit.name}) announces {unit.end} bytes, the file has {size}", True)
            if unit.role == "index" and framed:
                return cut._replace(after_frames=True)
            inside = walk(unit.inner, size, what, read, framed) if unit.inner is not None else None
            return inside if inside and inside.after_frames else cut
        framed = framed or unit.role == "frames"
        pos = unit.end
        last = (unit.name, pos) if unit.known else last
    return None


def after_last(n: int, what: str) -> Cut:
    """``n`` bytes after the last whole ``what`` that are none: a complete file with something after it, or a cut."""
    return Cut(f"{n} unrecognised bytes follow its last whole {what}", False)
