"""The replay's inputs: a folder of frames counts its images (:func:`streamfuse.replay.inputs.resolve`), the span
check (:func:`~streamfuse.replay.inputs.outside`) counts a frame outside the other input's time span, so unpaired
before or after it, only beyond the pairing tolerance, and inputs without a pair say their times
(:func:`~streamfuse.replay.inputs.no_pairs`)."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from streamfuse.capture.sources import SourceConfig
from streamfuse.replay.inputs import no_pairs, outside, resolve

MS = 1_000_000


def test_a_frame_within_the_tolerance_of_the_other_inputs_ends_is_not_outside_its_span():
    other = SimpleNamespace(first_ns=100 * MS, last_ns=200 * MS, ended=True)  # a Reader's span, its input ended
    tolerance = 20 * MS
    assert outside(80 * MS, other, tolerance) == "" and outside(80 * MS - 1, other, tolerance) == "before"
    assert outside(220 * MS, other, tolerance) == "" and outside(220 * MS + 1, other, tolerance) == "after"
    assert outside(0, SimpleNamespace(first_ns=None, last_ns=None, ended=True), tolerance) == "before"


def test_a_folder_input_counts_its_image_files_only(tmp_path):
    folder = tmp_path / "ir"
    folder.mkdir()
    (folder / "notes.txt").write_text("camera 2, night run\n")
    with pytest.raises(ValueError, match=r"ir input folder .*ir holds no image files \(.*\.png"):
        resolve("ir", SourceConfig(), folder)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.zeros((4, 4), np.uint8))
    inp = resolve("ir", SourceConfig(), folder)
    assert inp.cfg.kind == "folder" and inp.expected == 3  # the progress bar's total: frames, not the notes


def test_inputs_without_a_pair_say_a_videos_own_times_and_a_recordings_from_its_first_frame():
    sync = SimpleNamespace(mode="nearest", slop_ms=20.0, hold_ms=50.0)
    first, last = {"ir": 10_000 * MS, "vis": 100_000 * MS}, {"ir": 20_000 * MS, "vis": 110_500 * MS}
    videos = tuple(SimpleNamespace(cfg=SimpleNamespace(kind="file")) for _ in range(2))
    assert no_pairs(videos, first, last, sync) == ("no pairs formed: the IR and visible times do not overlap (IR "
                                                   "10.000-20.000 s, visible 100.000-110.500 s)")
    recording = tuple(SimpleNamespace(cfg=SimpleNamespace(kind="mcap")) for _ in range(2))
    assert no_pairs(recording, first, last, sync).endswith("(IR 0.000-10.000 s, visible 90.000-100.500 s)")
