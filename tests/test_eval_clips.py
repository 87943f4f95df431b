"""A clip's frames as the temporal evaluation reads them: the clips found, play order, one scale for 16-bit IR, and
one line for a clip with nothing to measure, a frame of another size or a fused frame missing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfuse.eval_clips import clip_frames, clip_pairs, find_clips, fused_frames
from streamfuse.eval_pairs import find_pairs


def _clip(root: Path, levels: list[int], names: list[str] | None = None, shape: tuple[int, int] = (12, 16)) -> None:
    """Flat IR and visible frames at ``levels``, named ``names`` (0000.png, ... by default)."""
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True)
    for level, name in zip(levels, names or [f"{i:04d}.png" for i in range(len(levels))], strict=True):
        for sub in ("ir", "vi"):
            cv2.imwrite(str(root / sub / name), np.full(shape, level, np.uint8))


def test_clips_are_the_folders_with_ir_frames_sorted(tmp_path):
    _clip(tmp_path / "b", [0, 10])
    _clip(tmp_path / "a", [0, 10])
    (tmp_path / "notes").mkdir()
    assert find_clips(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    for root in (tmp_path / "notes", tmp_path / "nosuch"):
        with pytest.raises(FileNotFoundError, match=f"^no clips with ir/ and vi/ folders under {root}$"):
            find_clips(root)


def test_frames_play_in_the_order_of_their_numbers(tmp_path):
    # sorted as text, 10.png came between 1.png and 2.png
    _clip(tmp_path / "a", [10 * i for i in range(12)], [f"{i}.png" for i in range(12)])
    assert [stem for stem, _, _ in clip_pairs(tmp_path / "a")] == [str(i) for i in range(12)]
    assert [int(vi[0, 0]) for _, vi in clip_frames(clip_pairs(tmp_path / "a"))] == [10 * i for i in range(12)]


def test_a_16_bit_ir_clip_keeps_one_scale(tmp_path, rng):
    """Radiometric IR frames are stretched by the range the clip holds from its first frame, so the level does not
    jump."""
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
    counts = [rng.integers(lo, hi + 1, (40, 56)).astype(np.uint16) for lo, hi in ((7000, 9000), (7500, 8000))]
    counts[0][0, :3], counts[0][1, :3] = 7000, 9000  # also the range without 0.1% of the pixels at each end
    for i, img in enumerate(counts):
        cv2.imwrite(str(tmp_path / "ir" / f"{i:04d}.png"), img)
        cv2.imwrite(str(tmp_path / "vi" / f"{i:04d}.png"), rng.integers(0, 256, (40, 56), dtype=np.uint8))
    frames = clip_frames(find_pairs(tmp_path / "ir", tmp_path / "vi"))
    for img, (ir, _) in zip(counts, frames, strict=True):
        np.testing.assert_array_equal(ir, np.rint((img - 7000.0) * 255 / 2000).astype(np.uint8))


@pytest.mark.parametrize("levels, message", [
    ([10], "{clip}: one IR/visible frame pair; a clip needs at least two"),
    ([10, 10, 10], "{clip}/vi: the visible frames do not change, and the flicker ratio is the fused frames' change "
                   "relative to theirs"),
])
def test_a_clip_with_nothing_to_measure_against_is_refused(tmp_path, levels, message):
    _clip(tmp_path / "a", levels)
    with pytest.raises(ValueError) as exc:
        clip_frames(clip_pairs(tmp_path / "a"))
    assert str(exc.value) == message.format(clip=tmp_path / "a")


def test_a_frame_of_another_size_is_named(tmp_path):
    _clip(tmp_path / "a", [0, 10, 20])
    cv2.imwrite(str(tmp_path / "a" / "vi" / "0002.png"), np.zeros((6, 8), np.uint8))
    with pytest.raises(ValueError) as exc:
        clip_frames(clip_pairs(tmp_path / "a"))
    assert str(exc.value) == f"{tmp_path / 'a' / 'vi' / '0002.png'}: frame is 8x6, the clip's is 16x12"


def test_fused_frames_come_in_the_clips_order_and_all_of_them(tmp_path):
    _clip(tmp_path / "out", [30, 20, 10], ["2.png", "10.png", "1.png"])
    folder = tmp_path / "out" / "vi"
    assert [int(f[0, 0]) for f in fused_frames(folder, "m", ["1", "2", "10"], (12, 16))] == [10, 30, 20]
    with pytest.raises(FileNotFoundError) as exc:
        fused_frames(folder, "m", ["1", "3", "4"], (12, 16))
    assert str(exc.value) == f"{folder}: no fused frame 3 (2 of 3 missing)"
    with pytest.raises(ValueError, match=r"1\.png: fused frame is 16x12, the clip's is 8x6$"):
        fused_frames(folder, "m", ["1"], (6, 8))
