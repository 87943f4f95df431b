"""Replay outputs: refuse, before anything is opened, an output that would overwrite an input or an earlier run's
output, or that cannot be written; tell a complete output from a partial one (the single replay and the batch)."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any, NoReturn

import av

from streamfuse.atomic_write import partial_path, write_refusal
from streamfuse.errors import io_reason
from streamfuse.file_names import local_name
from streamfuse.frames import STREAM_NAMES
from streamfuse.output_lock import check_not_held, lock_path
from streamfuse.replay.resume import sidecar_path, taken_over_path
from streamfuse.sticky import stuck_owner
from streamfuse.video import container_format, read_tags, work_paths

__all__ = ["check_output_paths", "check_outside_folders", "check_output_folder", "check_existing_output",
           "check_no_partial", "is_complete", "made_with"]

log = logging.getLogger(__name__)

# the sections that decide a fused video's frames; paths, threads and progress bars do not
_IMAGE_SECTIONS = ("sync", "stabilize", "align", "fuse", "hclfuse", "baseline", "post")


def _same_file(a: Path, b: Path) -> bool:
    """True when two paths name one file: equal once links are resolved, or one inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):  # Path.resolve raises on a symlink loop
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): then only the resolved paths could have matched
        return False


def check_output_paths(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None],
                       frames_dir: str | os.PathLike = "") -> None:
    """Refuse, before anything is opened, an output that would be written over one of its inputs.

    The output and every file it is written through (partial, remux, sidecar, lock) are compared with each input by
    resolved path and by inode, so another spelling, a symlink or a hard link of an input is caught too; an input
    inside ``frames_dir`` would be overwritten by the frame PNGs, and the output or ``frames_dir`` inside a folder input
    (frames, a bag folder) would change it. Those files must not be links or folders either.

    Args:
        out: the fused video path.
        inputs: ``{"ir": path, "vis": path}`` (None or '' entries are skipped).
        frames_dir: the folder the fused frames are also written to ('' = none).

    Raises:
        ValueError: one line naming the output and the input, or the link.
        IsADirectoryError: ``out`` names a folder by a name that is none (``.``, ``/``).
    """
    out = Path(out)
    if not out.name:
        _refuse_folder(out)
    written = [out, *_work_files(out), lock_path(out)]
    _check_name_room(out, written)
    for own in written[1:]:  # made by replays alone: one that is a link would send their writes to the file it names
        if own.is_symlink() or (own.exists() and not own.is_file()):
            raise ValueError(f"{own} is {'a link' if own.is_symlink() else 'not a file'}; a replay makes this file "
                             f"itself and never writes through one: remove it, or choose another --out")
    if frames_dir and (hit := next((w for w in written if _same_file(Path(frames_dir), w)), None)) is not None:
        raise ValueError(f"replay.frames_dir {frames_dir} is the output's own file {hit}: choose another folder")
    for stream, path in inputs.items():
        if not path:
            continue
        path = Path(path)
        hit = next((w for w in written if _same_file(w, path)), None)
        if hit is not None:
            through = "" if hit == out else f" (through its temporary file {hit.name})"
            raise ValueError(f"output {out} would overwrite the {STREAM_NAMES[stream]} input {path}{through}; "
                             f"choose another --out")
        if frames_dir and any(_same_file(Path(frames_dir), p) for p in (path, *path.resolve().parents)):
            raise ValueError(f"replay.frames_dir {frames_dir} would overwrite the {STREAM_NAMES[stream]} input {path}; "
                             f"choose another folder")
    folders = [Path(path) for path in inputs.values() if path and Path(path).is_dir()]  # frames, a bag folder
    check_outside_folders(out, folders, "output", "an --out")
    if frames_dir:
        check_outside_folders(Path(frames_dir), folders, "replay.frames_dir", "a folder")


def check_outside_folders(path: Path, folders: list[Path], what: str, instead: str) -> None:
    """Refuse ``path`` (``what`` names it) that is, or is inside, one of the input ``folders``: it would write among
    the inputs, and a later run (``--resume``, the batch again) would find them changed; ``instead``: the option or
    key to choose anew."""
    resolved = Path(os.path.realpath(path))
    for folder in folders:
        if resolved == folder.resolve() or folder.resolve() in resolved.parents:
            where = "is" if resolved == folder.resolve() else "is inside"
            raise ValueError(f"{what} {path} {where} the input folder {folder}; choose {instead} outside it")


def _work_files(out: Path) -> list[Path]:
    """The files a replay writes ``out`` through and renames or deletes: partial, remux, sidecar (and its temporary
    file), the interrupted run's partial file taken over by ``--resume``."""
    return [*work_paths(out)[1:], sidecar_path(out), sidecar_path(out).with_suffix(".tmp"), taken_over_path(out)]


def _check_name_room(out: Path, written: list[Path]) -> None:
    """Refuse an output whose name leaves no room for its longest work file's (``.NAME.partial.json``): a name the
    file system takes would otherwise fail on a file the user never named ("File name too long")."""
    try:
        room = os.pathconf(out.parent if out.parent.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        room = 255  # Linux's, and most file systems'
    longest = max(written, key=lambda w: len(os.fsencode(w.name)))
    extra = len(os.fsencode(longest.name)) - len(os.fsencode(out.name))
    if len(os.fsencode(out.name)) + extra > room:
        raise ValueError(f"output {out}: its name is {len(os.fsencode(out.name))} bytes long and a replay writes "
                         f"{longest.name.replace(out.name, 'NAME')} beside it, {extra} bytes longer, where a name "
                         f"takes at most {room}; choose a name of at most {room - extra} bytes")


def _refuse_folder(out: Path) -> NoReturn:
    raise IsADirectoryError(f"output {out} is a folder; choose a file name for --out (such as {out / 'fused.mp4'})")


def check_output_folder(out: Path, codec: str) -> None:
    """Refuse an output whose container is unknown or cannot hold ``codec``, that names a folder, whose folder is
    missing or not writable, or that another user's file in its shared folder stands in the way of (one line)."""
    if out.is_dir():  # found only at the end otherwise, when the finished video cannot take its name
        _refuse_folder(out)
    container_format(out, codec)  # after: a folder's name has no container's extension, and that is not its fault
    if not out.parent.is_dir():
        why = "is a file" if out.parent.exists() else "does not exist"
        raise FileNotFoundError(f"output folder {why}: {out.parent}")
    if (exc := write_refusal(out.parent)) is not None:  # ENOENT in a folder that exists: it makes no files (/proc)
        why = "it takes no new files" if exc.errno == errno.ENOENT else exc.strerror
        raise PermissionError(f"output folder is not writable: {out.parent} ({why})") from None
    check_not_held(out)  # another user's running replay: said so, rather than that its files are in the way
    for path in _work_files(out):  # found now, not when --resume moves it aside or the run ends
        if (owner := stuck_owner(path)) is not None:
            raise PermissionError(f"{path} belongs to {owner}, in a shared folder where only they may move or delete "
                                  f"it (a replay must): ask them to, or choose another --out")


def is_complete(out: Path) -> bool:
    """A finished output: the final file exists and no partial one (a replay renames it into place last)."""
    return out.exists() and not partial_path(out).exists()


def made_with(out: Path) -> dict[str, Any]:
    """The config the existing output ``out`` records having been made with ({} when it records none).

    Raises:
        ValueError: one line saying why ``out`` is not a video PyAV can open: not a file, empty, another program's
            file, a copy cut short before its index (one cut after its index opens: only decoding it all tells).
    """
    if not out.is_file():
        raise ValueError("is not a file")
    if out.stat().st_size == 0:
        raise ValueError("is empty")
    try:
        with av.open(str(out)) as container:
            if not container.streams.video:
                raise ValueError("holds no video stream")
            tags = read_tags(container)
    except (OSError, av.FFmpegError) as exc:
        raise ValueError(f"is not a video PyAV can read ({io_reason(exc)})") from None
    try:
        made = json.loads(tags.get("comment", "{}")).get("streamfuse_config")
    except (ValueError, AttributeError):  # another program's comment
        made = None
    if not isinstance(made, dict):  # taken for a finished output of ours, it would stand for frames never fused
        raise ValueError("is another program's video (it records no streamfuse config)")
    return made


def _changed_settings(made: dict[str, Any], cfg: Any) -> list[str]:
    """The settings (``section.key``) that ``cfg`` gives otherwise than ``made`` (the config an output was made with,
    see :func:`made_with`); empty when they agree."""
    now = cfg.to_dict()
    return [f"{section}.{key}" for section in _IMAGE_SECTIONS if isinstance(made.get(section), dict)
            for key, value in now.get(section, {}).items() if made[section].get(key, value) != value]


def _other_inputs(made: dict[str, Any], inputs: tuple[Path, Path]) -> str:
    """The inputs an output records being made from, when they are other files than ``inputs`` (IR, visible) and
    still there (an archive moved since proves nothing); else ''."""
    paths = [Path(local_name(str(made.get(s, {}).get("path", "")))) for s in ("ir", "vis")]
    other = any(str(p) not in ("", ".") and p.exists() and not _same_file(p, Path(now))
                for p, now in zip(paths, inputs, strict=True))
    return f"{paths[0]} + {paths[1]}" if other else ""


def check_no_partial(out: Path) -> None:
    """Refuse to start ``out`` afresh over the partial output of an interrupted replay: its frames would be lost,
    and ``--resume`` continues it."""
    check_not_held(out)  # a running replay's partial output is not an interrupted one
    partial = partial_path(out)
    if not partial.exists() and taken_over_path(out).exists():  # a resumed run killed before its first frame
        partial = taken_over_path(out)
    if partial.exists():
        raise FileExistsError(f"{partial} holds an interrupted replay of {out}; run again with --resume to continue "
                              f"it, or delete {partial.name} to start over")


def check_existing_output(out: Path, cfg: Any = None, inputs: tuple[str | os.PathLike, str | os.PathLike] | None = None,
                          *, resume: bool, restart: bool = False) -> bool:
    """True when ``out`` is complete and ``resume`` or ``restart`` has nothing to do (a batch's retry of a worker lost
    after it finished the pair); refuse, before any work, to write over an earlier run's complete output, a file that
    is no video or another program's, or (neither ``resume`` nor ``restart``) a partial output; refuse to take a
    complete output made from other ``inputs`` (IR, visible) for this one's. One made with other fusing settings than
    ``cfg`` is named in a warning.

    Raises:
        FileExistsError: one line naming the file and how to go on.
    """
    if not is_complete(out):
        if not (resume or restart):
            check_no_partial(out)
        return False
    try:
        made = made_with(out)
    except ValueError as exc:
        raise FileExistsError(f"output {out} exists but {exc}; delete it or choose another --out") from None
    if not (resume or restart):
        raise FileExistsError(f"output {out} is already complete; delete it or choose another --out to replay again "
                              f"(--resume continues only an interrupted replay)")
    other = _other_inputs(made, tuple(map(Path, inputs))) if inputs else ""
    if other:
        raise FileExistsError(f"output {out} is complete but was made from other inputs ({other}); delete it or "
                              f"choose another --out")
    changed = _changed_settings(made, cfg) if cfg is not None else []
    if changed:
        log.warning("%s is complete and skipped, but was made with other settings (%s); delete it to replay it with "
                    "these", out, ", ".join(changed))
    return True
