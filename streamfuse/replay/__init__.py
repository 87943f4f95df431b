"""Offline replay: a recorded IR/visible pair -> one fused video, every frame.

Inputs are two video files, two folders of numbered frames, or one MCAP recording (``streamfuse.recording``);
they are read through the same capture Sources as a live rig, so every later stage sees the same ``Frame``
objects. The loop is written in data-flow order: decode -> pair -> fuse -> postprocess -> encode (-> publish).

- ``pacing: fast`` reads the next frame of whichever stream is earliest in capture time, so the Pairer's
  queues never overflow and nothing is dropped; a recording is read in the order it was recorded, which
  reproduces the live run's pairs exactly. ``pacing: realtime`` releases frames at their recorded times; a
  frame whose successor is already due when it is taken is dropped (newest wins, as on a live rig) and counted.
- Output pts are the visible frame's pts in the visible file's time base (folders and recordings: ns since
  the first visible frame, whose capture time is stored in the ``streamfuse_t0_ns`` tag).
- Frames of one input outside the other input's time span (it started later or ended earlier) cannot pair: they
  are counted unpaired without going through the Pairer (whose bounded queue would count them dropped), and the
  summary says which input ended first; inputs that form no pair at all fail with both time ranges.
- The video is written as ``.OUT.partial`` (NUT: readable after a kill) and remuxed into the final name only when
  every frame is in; a run that stops early (error, truncated input, Ctrl-C, SIGTERM) keeps the partial file and
  a ``.OUT.partial.json`` sidecar and raises :class:`ReplayError`; one killed outright keeps them too.
  ``resume`` re-encodes the frames the partial file holds (checked against the re-read pairs' times, so nothing
  is fused twice, and FFV1's against their slice CRCs) and fuses from the first frame it lacks or that is damaged; a
  resumed run that stops again keeps whichever of its own output and the interrupted run's holds more frames.
- The output (and every file it is written through) must not be one of the inputs, by any path or link. An existing
  output is never written over: a complete one (or a file that is no video) is refused, and so is the partial output
  of an interrupted run unless ``resume`` continues it.

Modules: ``config`` (ReplayConfig), ``inputs`` (paths -> sources, decoder threads, merge by time, realtime pacing,
batch pair lists), ``outputs`` (output path checks; complete or partial), ``resume`` (sidecar, take-over of a partial
output), ``fingerprints`` (what a resume must find unchanged, and a run at its end), ``summary`` (ReplaySummary,
ReplayError, stage clock), ``frame_times`` (the frames' time lines and output pts) and ``loop`` (:func:`run_replay`).
"""

from streamfuse.replay.config import ReplayConfig
from streamfuse.replay.inputs import ListedPair, find_pairs
from streamfuse.replay.loop import run_replay
from streamfuse.replay.outputs import check_output_paths
from streamfuse.replay.summary import STAGES, ReplayError, ReplaySummary

__all__ = ["ReplayConfig", "ReplayError", "ReplaySummary", "run_replay", "ListedPair", "find_pairs",
           "check_output_paths", "STAGES"]
