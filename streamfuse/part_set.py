"""A split recording's parts (:mod:`streamfuse.record_parts`) read back as one set: the records each part holds, and
the checks that the files beside its first part are its parts, whole, each once and in their place.

The first part stands for the whole set: replay and the ``mcap`` source given ``rig0_0000.mcap`` read every part in
turn, as one recording; a later part given is read alone. A part missing between two others or after the last one
here, one of another set or another tool's file beside them, or one left cut short (``.rig0_0003.mcap.partial``, which
``recover`` finishes) stops the read in one line naming it rather than losing its frames unsaid, or mixing in others.
An MCAP file of another tool named like a first part is read alone, as any other.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from mcap.exceptions import McapError
from mcap.reader import SeekingReader
from mcap.records import DataEnd, Header, Metadata
from mcap.stream_reader import StreamReader
from zstandard import ZstdError

from streamfuse.atomic_write import final_path
from streamfuse.errors import io_reason
from streamfuse.record_parts import END_RECORD, PART_NAME, PART_RECORD, SUFFIX, being_recorded, found_parts, part_path

__all__ = ["cut_mark", "later_part", "one_file_twice", "part_marks", "set_name", "set_parts", "streamed_marks",
           "DoubledRecord"]

# what reading a damaged MCAP file raises
_DAMAGE = (McapError, ZstdError, EOFError, struct.error, ValueError, OverflowError, MemoryError)


def later_part(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a part after the first of a split recording whose first part is there (a folder of
    recordings replays the set once, from its first part)."""
    path = Path(path)
    match = PART_NAME.fullmatch(path.name)
    return bool(match and int(match["index"]) > 0 and part_path(path.with_name(match["base"] + SUFFIX), 0).is_file())


class DoubledRecord(ValueError):
    """A part holding a record of its set twice: damaged, or made by hand (the recorder writes each once)."""


def part_marks(path: str | os.PathLike) -> tuple[str, dict[str, dict[str, str]]] | None:
    """The library that wrote a finished MCAP file, and the records it holds of a split recording's (by name:
    :data:`PART_RECORD`, :data:`END_RECORD`; none in another tool's file, an unsplit recording); None where they cannot
    be read (a damaged file: its read says so). A file whose index cannot be read (its footer damaged, its data
    whole) is read through for them: its data would be read, and the parts after it with it, unchecked.

    Raises:
        DoubledRecord: one line naming ``path``, which holds one of them more than once.
    """
    try:
        with _open_regular(path) as f:
            try:
                reader = SeekingReader(f, validate_crcs=False)
                return reader.get_header().library, _collected(path, reader.iter_metadata())
            except DoubledRecord:
                raise
            except _DAMAGE:
                f.seek(0)
                records = list(_streamed(f))
                library = next((r.library for r in records if isinstance(r, Header)), "")
                marks = streamed_marks(path, records)
                return None if marks is None else (library, marks)
    except DoubledRecord:
        raise
    except (*_DAMAGE, OSError):
        return None


def _collected(path: str | os.PathLike, records: Iterable[object]) -> dict[str, dict[str, str]]:
    """The split recording's records among ``records``, by name; :class:`DoubledRecord` where one comes twice (which
    of the two holds is not known: the part is refused, in replay and ``recover`` alike)."""
    marks: dict[str, dict[str, str]] = {}
    for record in records:
        if isinstance(record, Metadata) and record.name in (PART_RECORD, END_RECORD):
            if record.name in marks:
                raise DoubledRecord(f"{path} holds its {record.name} record twice, where a part holds it once: it is "
                                    f"damaged or made by hand, and its set and place cannot be told")
            marks[record.name] = dict(record.metadata)
    return marks


def streamed_marks(path: str | os.PathLike, records: Iterable[object]) -> dict[str, dict[str, str]] | None:
    """:func:`part_marks`' records among ``records``, those of a file read through its data section: None where that
    read did not reach the section's end (its :class:`~mcap.records.DataEnd`, among them where it did).

    Raises:
        DoubledRecord: one line naming ``path``, which holds one of them more than once.
    """
    records = list(records)
    marks = _collected(path, records)
    return marks if any(isinstance(record, DataEnd) for record in records) else None


def _streamed(f: BinaryIO) -> Iterator[object]:
    """The records of an MCAP file read through its data section, its chunks not unpacked: up to its end (its
    :class:`~mcap.records.DataEnd` last), or to the damage or the cut that ends it."""
    with contextlib.suppress(*_DAMAGE):
        for record in StreamReader(f, skip_magic=False, emit_chunks=True).records:
            yield record
            if isinstance(record, DataEnd):
                return


def _open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened to read; OSError for a file that is no regular one (a FIFO held its open() for good)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def cut_mark(partial: Path) -> dict[str, str] | None:
    """The set and place (:data:`PART_RECORD`) of the split recording's part cut short as ``partial``
    (``.rig0_0004.mcap.partial``): its own record, else the set of the finished part before it (a kill may cut a part
    before its record reached the disk); None for a file of no split recording's, one whose own record names no set or
    another place (a file only named like the part), or one whose set cannot be told.

    Raises:
        DoubledRecord: ``partial``, or the part before it, holds a record of its set twice.
    """
    final = final_path(partial)
    if final is None or (match := PART_NAME.fullmatch(final.name)) is None:
        return None
    index = int(match["index"])
    with contextlib.suppress(OSError), open(partial, "rb") as f:
        own = _collected(partial, _streamed(f)).get(PART_RECORD)
        if own is not None:  # its set and this place, else no part
            return {"set": own["set"], "index": str(index)} if own.get("set") and own.get("index") == str(index) \
                else None
    before = part_marks(partial.with_name(part_path(partial.with_name(match["base"] + SUFFIX), index - 1).name)) \
        if index else None
    if before is None or "set" not in before[1].get(PART_RECORD, {}):
        return None
    return {"set": before[1][PART_RECORD]["set"], "index": str(index)}


def _first_part(path: Path) -> tuple[re.Match, dict[int, Path], dict[str, dict[str, str]] | None] | None:
    """(name match, parts found, the first part's records or None where unreadable or of a recorder that kept none)
    of the split recording whose first part is ``path``; None where ``path`` is no such part."""
    match = PART_NAME.fullmatch(path.name)
    if match is None or int(match["index"]) != 0:
        return None
    found = found_parts(path.parent, match["base"], path.name[-len(SUFFIX):])
    if 0 not in found or found[0] != path:
        return None
    marks = part_marks(path)
    if marks is not None and PART_RECORD not in marks[1]:
        if marks[0] != "streamfuse":  # another tool's file, only named like a part: read alone, as any other
            return None
        marks = None  # a part of an earlier recorder, which kept no records: its set told by names alone
    if len(found) < 2 and (marks is None or END_RECORD in marks[1]):
        return None  # one file, read as any other
    return match, found, marks[1] if marks is not None else None


def set_name(path: str | os.PathLike) -> str | None:
    """The name of the split recording whose first part is ``path`` (``rig0`` for ``rig0_0000.mcap``), else None."""
    try:
        first = _first_part(Path(path))
    except DoubledRecord:  # its replay says so
        return None
    return None if first is None else first[0]["base"]


def set_parts(path: str | os.PathLike) -> list[Path] | None:
    """The parts of the split recording whose first part is ``path``, in order; None where ``path`` is no first part
    or has no later part beside it (one file, read as any other).

    Raises:
        ValueError: one line naming the part that cannot be read with the others: missing between two of them or after
            the last one here, no regular file (a folder, a pipe, a device, a link to nothing), of another set, being
            recorded by a running run, cut short (a killed run, a write error), or holding a record of its set twice.
    """
    path = Path(path)
    try:
        return _parts_of(path)
    except DoubledRecord as exc:
        raise ValueError(f"recording {path}: its part {exc}") from None


def _parts_of(path: Path) -> list[Path] | None:
    """:func:`set_parts`; :class:`DoubledRecord` where a part holds a record of its set twice."""
    if (first := _first_part(path)) is None:
        return None
    match, found, marks = first
    last = max(found)
    for index in range(last + 1):
        part = found.get(index)
        if part is None:
            raise ValueError(f"recording {path}: its part {part_path(path.parent / (match['base'] + SUFFIX), index)} "
                             f"is missing (the set has parts up to {found[last].name}): its frames would be lost")
        if (what := _not_a_file(part)) is not None:
            raise ValueError(f"recording {path}: its part {part} is not a recording file ({what})")
        if final_path(part) is not None:
            if being_recorded(part):
                raise ValueError(f"recording {path}: its part {part} is being recorded by a running run; replay the "
                                 f"set once that run has ended")
            raise ValueError(f"recording {path}: its part {part} was cut short (a killed run, or a write error such as "
                             f"a full disk): `python -m streamfuse recover {part}` finishes it, then replay the set")
    parts = [found[index] for index in range(last + 1)]
    if twice := one_file_twice(parts):  # a set of a recorder that kept no records is told by its names alone
        raise ValueError(f"recording {path}: its parts {twice[0]} and {twice[1]} are the same file (one a link to the "
                         f"other): its frames would be read twice")
    if marks is not None:
        _check_marks(path, marks[PART_RECORD].get("set", ""), parts)
    return parts


def _not_a_file(part: Path) -> str | None:
    """What ``part`` is where it is no regular file (a FIFO held its reader in open() for good), else None."""
    try:
        mode = os.stat(part).st_mode
    except OSError as exc:  # a link to nothing, or in a loop
        return f"a link to no file: {io_reason(exc)}" if os.path.islink(part) else io_reason(exc)
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "a pipe or a device"


def one_file_twice(files: list[Path]) -> tuple[Path, Path] | None:
    """Two of ``files`` that are one file (a link to another of them, or one name given twice), else None: a set of
    them would read its frames twice. One that cannot be looked at is left to its read."""
    seen: dict[tuple[int, int], Path] = {}
    for file in files:
        try:
            st = os.stat(file)
        except OSError:
            continue
        if (other := seen.setdefault((st.st_dev, st.st_ino), file)) is not file:
            return other, file
    return None


def _check_marks(path: Path, set_id: str, parts: list[Path]) -> None:
    """Refuse (ValueError, one line) a part of ``parts`` that records another set or place (a file only named like
    one) or the set's end anywhere but at its last part here, and a set whose last part here does not record its end
    (the parts after it missing)."""
    ended = False
    for index, part in enumerate(parts):
        if (found := part_marks(part)) is None:  # damaged: its read names it
            return
        mark = found[1].get(PART_RECORD, {})
        if (mark.get("set"), mark.get("index")) != (set_id, str(index)):
            raise ValueError(f"recording {path}: {part} is not its part {index} (it is of another recording, only "
                             f"named like one): move it away to replay the set")
        end = found[1].get(END_RECORD, {})
        if (ended := end.get("set") == set_id) and not end.get("parts") == str(index + 1) == str(len(parts)):
            raise ValueError(f"recording {path}: {part} records that the set ends with {end.get('parts')} parts, yet "
                             f"it is part {index} of {len(parts)} here: the parts contradict each other")
    if not ended:
        raise ValueError(f"recording {path}: the set goes on after {parts[-1].name}, its last part here (the run "
                         f"recorded more): its last parts are missing (copied off yet?), or the run was killed "
                         f"(`python -m streamfuse recover` finishes the .partial part it left)")
