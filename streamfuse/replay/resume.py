"""Resuming an interrupted replay: the sidecar that vouches for its partial output, and the take-over of its frames.

A run that stops early keeps ``.OUT.partial`` (NUT, readable up to its last whole packet) and a
``.OUT.partial.json`` sidecar holding the run's fingerprint (inputs' size and mtime, fusing and encoding settings).
``resume`` with an unchanged fingerprint moves the partial file aside (``.OUT.partial.old``), re-encodes its frames
while their times match the re-read pairs' (so nothing is fused twice) and fuses from the first frame it lacks, or
from the first FFV1 frame whose slice CRCs show it was damaged on disk (H.264 has no such checksum). The file
aside is deleted only once the new output is complete; a resumed run that stops keeps, under the partial name, whichever
of the two holds more frames (with its sidecar), and one killed outright leaves both, which the next ``resume`` settles
the same way: stopping a resumed run never costs a frame already on disk.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np

from streamfuse.atomic_write import durable_replace, partial_path
from streamfuse.errors import io_reason
from streamfuse.ffv1_crc import ffv1_slice_crcs
from streamfuse.replay.fingerprints import changed_since, cut_gone, inputs_read
from streamfuse.replay.frames_dir import FramesDir
from streamfuse.replay.summary import ReplayError
from streamfuse.video import VideoWriter, decode_frames

__all__ = ["sidecar_path", "taken_over_path", "save_sidecar", "TakeOver",
           "resume_hint", "frames_held"]

log = logging.getLogger(__name__)

_MAX_REORDER = 16  # frames an H.264 or HEVC decoder may hold back for reordering (its largest picture buffer)


def sidecar_path(out: Path) -> Path:
    """The sidecar of ``out``'s partial file: ``.OUT.partial.json``."""
    return partial_path(out).with_name(partial_path(out).name + ".json")


def taken_over_path(out: Path) -> Path:
    """Where a resumed run keeps the interrupted run's partial file while it takes its frames over."""
    return partial_path(out).with_name(partial_path(out).name + ".old")


def save_sidecar(out: Path, fingerprint: dict[str, Any], state: str, written: int, last_pts: int | None,
                 encoded: dict[str, str] | None = None) -> None:
    """What ``resume`` needs to trust the partial output: the fingerprint, and how far the run got; ``encoded``, the
    output's tags where the partial file holds every frame, encoded and closed whole (only its remux failed)."""
    _write_sidecar(out, json.dumps({"fingerprint": fingerprint, "state": state, "written": written,
                                    "last_pts": last_pts, **({"encoded": encoded} if encoded else {})}).encode())


def _write_sidecar(out: Path, data: bytes) -> None:
    path = sidecar_path(out)
    tmp = path.with_suffix(".tmp")  # replaced in one step: a kill never leaves half a sidecar
    try:
        tmp.unlink(missing_ok=True)  # a new file: one left by another user's run (root's) could not be written into
        tmp.write_bytes(data)
        durable_replace(tmp, path)  # flushed first: after a power loss a bare rename could leave it empty
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # a full disk leaves it empty
        raise RuntimeError(f"cannot write {path}: {exc.strerror}") from None


def resume_hint(out: Path, pacing: str) -> str:
    """How to continue an interrupted replay of ``out``; a realtime one is replayed again from its start."""
    if pacing != "fast":  # a promise to continue would not be kept: see _resumable
        return (f"run again with --resume (same --out {out}) to replay it from the start (realtime pacing drops "
                f"frames differently on every run, so it is not continued)")
    return f"run again with --resume (same --out {out}) to continue"


def _resumable(out: Path, fingerprint: dict[str, Any], pacing: str) -> bool:
    """True when the partial output of ``out`` can be continued; else the reason is logged.

    Raises:
        FileExistsError: settings changed since the interrupted run, or its sidecar is missing or unreadable, while its
            frames would be lost by starting over (one line saying how to go on).
    """
    partial, sidecar = partial_path(out), sidecar_path(out)
    if not partial.exists():
        log.warning("nothing to resume for %s (no %s); starting from the beginning", out, partial.name)
        return False
    saved = _saved_fingerprint(sidecar)
    if saved is None and (held := frames_held(partial)):  # nothing vouches for them; starting over would delete them
        why = ("missing" if not sidecar.exists() else "empty (cut by a crash?)" if not sidecar.stat().st_size
               else "unreadable")
        raise FileExistsError(f"cannot resume {out}: its sidecar {sidecar} is {why}, so nothing says which inputs and "
                              f"settings made the {held} frames of {partial}; delete {partial} to start over")
    if saved is None:  # a run stopped before its first frame: nothing to lose
        log.warning("cannot resume %s: its sidecar %s is missing or unreadable; starting over", out, sidecar.name)
        return False
    now = json.loads(json.dumps(fingerprint))  # as the sidecar holds it (tuples as lists)
    changed = changed_since(saved, now)
    if changed:  # a slip (a --set left out): the interrupted run's frames stay, for the command it was started with
        inputs = {"ir", "vis"} & set(changed)
        what = " and ".join(w for w, hit in (("inputs", inputs), ("settings", set(changed) - inputs)) if hit)
        raise FileExistsError(f"cannot resume {out}: {', '.join(changed)} changed since the interrupted run"
                              f"{inputs_read(changed, saved)}; {cut_gone(saved, now)}run it with the {what} it was "
                              f"started with to continue, or delete {partial} to start over")
    if pacing != "fast":  # only now: one started with other inputs or settings keeps its frames, as above
        log.warning("cannot resume %s: realtime pacing drops frames differently on every run; starting over", out)
        return False
    try:
        with av.open(str(partial)) as container:
            container.streams.video[0]
    except (OSError, av.FFmpegError, IndexError) as exc:
        log.warning("cannot resume %s: its partial file does not decode (%s); starting over", out, io_reason(exc))
        return False
    return True


def _saved_fingerprint(sidecar: Path) -> dict[str, Any] | None:
    """The fingerprint a sidecar holds; None when it is missing, empty, not JSON, or JSON of another shape."""
    try:
        saved = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    saved = saved.get("fingerprint") if isinstance(saved, dict) else None
    return saved if isinstance(saved, dict) else None


class TakeOver:
    """The frames of an interrupted run's partial output, handed out while their times match the new run's pairs.

    Args:
        out: the output whose partial file (``.OUT.partial``) is taken over.
        time_base: the output pts' time base.
    """

    def __init__(self, out: Path, time_base: Fraction):
        self._out, self._time_base = out, time_base
        self._old = taken_over_path(out)
        self._frames: Iterator | None = None
        self._intact: Iterator[bool] = iter(())  # per frame taken over: whether its packet is intact (FFV1)
        self._sidecar = b""
        self.taken = 0

    @classmethod
    def open(cls, out: Path, fingerprint: dict[str, Any], pacing: str, time_base: Fraction) -> TakeOver | None:
        """The partial output of ``out`` to take over, or None (with the reason logged) to start over. The file
        stays where it is until :meth:`start`: a run stopped before its first pair leaves it as it was."""
        if taken_over_path(out).exists():
            # a resumed run killed (kill -9, power loss) after it moved the file aside: its new output, if any, holds
            # the same run's frames from the start and has the same fingerprint, so the one holding more frames stays
            _keep_longer(taken_over_path(out), partial_path(out))
        return cls(out, time_base) if _resumable(out, fingerprint, pacing) else None

    def start(self) -> None:
        """Move the partial file aside, as the new run's output takes its name, and begin reading its frames."""
        self._sidecar = sidecar_path(self._out).read_bytes()
        os.replace(partial_path(self._out), self._old)
        log.info("resuming %s: re-encoding the frames of the interrupted run, then fusing the rest", self._out)
        self._frames = decode_frames(self._old)
        self._intact = _intact_packets(self._old)

    def finish_whole(self, codec: str, rate: Fraction, frames: FramesDir | None) -> int:
        """Where the interrupted run encoded every frame whole and only its output's remux failed (a full disk):
        write the output from its partial file, no frame encoded again, and return the frames it holds; else 0.
        With a frames folder, only where every frame is staged in it (:meth:`FramesDir.publish` moves them in)."""
        saved = json.loads(sidecar_path(self._out).read_bytes())
        if not saved.get("encoded") or frames_held(partial_path(self._out)) != saved.get("written") or (
                frames is not None and not frames.holds(saved["written"])):
            return 0
        log.info("resuming %s: the interrupted run encoded all %d frames; writing the output from them", self._out,
                 saved["written"])
        try:
            VideoWriter.encoded_whole(self._out, codec=codec, time_base=self._time_base, rate=rate,
                                      metadata=saved["encoded"]).commit()
        except RuntimeError as exc:
            raise ReplayError(f"replay stopped: {exc}; {saved['written']} frames kept in {partial_path(self._out)}",
                              hint=resume_hint(self._out, "fast")) from None
        sidecar_path(self._out).unlink(missing_ok=True)
        return saved["written"]

    def frame_at(self, pts: int) -> np.ndarray | None:
        """The partial output's frame for this pts, else None (from then on every pair is fused)."""
        if self._frames is None:
            return None
        item = next(self._frames, None)
        t_pair = pts * self._time_base
        intact = item is None or next(self._intact, True)  # FFV1 gives one frame per packet, in order
        if item is not None and intact and abs(item[0] - t_pair) <= Fraction(1, 1000) + self._time_base / 2:
            self.taken += 1
            return item[1]
        if not intact:  # FFmpeg's decoder conceals a slice whose CRC fails and only logs it (PyAV drops its log)
            log.warning("resume: frame %d of the partial output is damaged (an FFV1 slice CRC fails); took over the "
                        "%d frames before it, fusing from pts %d", self.taken, self.taken, pts)
        elif item is None or self._cut_short(item[0], t_pair):
            log.info("resume: took over %d frames; fusing from pts %d%s", self.taken, pts,
                     "" if item is None else ", where the interrupted run's output was cut off")
        else:
            log.warning("resume: the partial output has a frame at %.3f s where the inputs give %.3f s; fusing "
                        "from here", float(item[0]), float(t_pair))
        self.end()
        return None

    def _cut_short(self, t_frame: Fraction, t_pair: Fraction) -> bool:
        """True when the partial output lacks the frame at ``t_pair`` only because the run was killed while writing
        its end: the frame it has instead is later, and the file holds at most the codec's reordering window from it
        on (an H.264 or HEVC encoder writes up to 16 frames before the B-frames shown earlier; a kill cuts those off).
        """
        return t_frame > t_pair and next(itertools.islice(self._frames, _MAX_REORDER - 1, None), None) is None

    def end(self) -> None:
        """Stop reading the interrupted run's file (it stays aside until the run completes, or :meth:`settle`)."""
        if self._frames is not None:
            self._frames.close()
            self._intact.close()
            self._frames = None

    def settle(self) -> bool:
        """After a stop, with the new output's writer closed: leave under the partial name whichever of the new output
        and the interrupted run's file holds more frames (the latter with its own sidecar), so that resuming again
        takes over all of them. Returns whether the interrupted run's file is in its place: put back, or never moved
        (the run stopped before its first pair)."""
        # past the end of the take-over the old file's frames match no pair: a later resume would stop there again
        old = None if self._frames is not None else self.taken
        self.end()
        if not self._sidecar:
            return True
        if not _keep_longer(self._old, partial_path(self._out), old):
            return False
        try:
            _write_sidecar(self._out, self._sidecar)
        except RuntimeError as exc:  # the new run's sidecar stays: it holds the same fingerprint
            log.warning("%s", exc)
        return True


def _intact_packets(path: Path) -> Iterator[bool]:
    """Per video packet of a partial file, whether it is intact: FFV1's slice CRCs (the writer always stores them,
    ``slicecrc``) hold; nothing for another codec, which carries no checksum."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.codec_context.name == "ffv1":
                for packet in container.demux(stream):
                    if packet.size:
                        yield ffv1_slice_crcs(bytes(packet)) is True
    except (OSError, av.FFmpegError, IndexError):  # decoding stops there too
        return


def nothing_kept(partial: Path, given: int) -> str:
    """Why a stopped run whose encoder was ``given`` frames kept none in ``partial``. PyAV creates the file with the
    encoder's first packet, which x264 gives out only once it has looked ahead over several frames: a file never made
    is not a file gone."""
    if not given:
        return "no output written"
    if partial.parent.is_dir():
        return f"nothing kept: none of the {given} frames fused had left the encoder yet"
    return f"nothing kept: {partial} is gone (its folder removed or renamed)"


def frames_held(path: Path) -> int:
    """Whole frames in a partial file, demuxed without decoding: packets that end before the file does (as
    :func:`~streamfuse.video.decode_frames` reads it, a kill may have cut the last one), up to the first damaged one;
    0 for a missing file."""
    held, intact = 0, _intact_packets(path)
    try:
        size = path.stat().st_size
        with av.open(str(path)) as container:
            for packet in container.demux(container.streams.video[0]):
                if not packet.size:
                    continue
                cut = packet.pos is not None and packet.pos + packet.size >= size
                if cut or not next(intact, True):
                    break
                held += 1
    except (OSError, av.FFmpegError, IndexError):  # missing, unreadable, or damaged from here on
        pass
    finally:
        intact.close()
    return held


def _keep_longer(old: Path, partial: Path, old_frames: int | None = None) -> bool:
    """Keep whichever of ``old`` (holding ``old_frames`` useful frames, or as many as it holds) and ``partial`` holds
    more frames under the ``partial`` name, deleting the other; True when ``old`` was put back. Both hold one run's
    frames from the start, so the longer one holds every frame of the other."""
    if not old.exists():
        return False
    if (frames_held(old) if old_frames is None else old_frames) > frames_held(partial):
        os.replace(old, partial)  # in its own folder: a rename, which a full disk allows
        return True
    old.unlink()
    return False
