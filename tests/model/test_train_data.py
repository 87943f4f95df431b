"""Training batches (:class:`streamfuse.train.data.PairSampler`): square crops of every pair, whatever its size, with
the OT-aligned IR, the visible luma and the raw IR in their places."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np
import torch

from streamfuse.align import AlignConfig
from streamfuse.train import data
from streamfuse.train.data import PairSampler


def test_a_batch_crops_pairs_as_large_as_the_crop_or_smaller_with_the_aligned_ir_first(monkeypatch):
    lut = (np.arange(256) / 255) ** 2  # an alignment that darkens IR: IR' = raw^2, told apart from the raw IR
    monkeypatch.setattr(data, "align", lambda ir_hist, vis_hist, cfg: SimpleNamespace(lut=lut.astype(np.float32)))
    rng = np.random.default_rng(0)
    pairs = [(name, rng.integers(1, 255, size, np.uint8), rng.integers(0, 256, size, np.uint8))
             for name, size in (("as_large", (48, 64)), ("smaller", (40, 56)))]  # 40 rows: upscaled to 48
    sampler = PairSampler(pairs, AlignConfig(), crop=48, rng=np.random.default_rng(1))
    ir01, vis01, raw01 = sampler.batch(16)
    assert ir01.shape == vis01.shape == raw01.shape == (16, 1, 48, 48)
    np.testing.assert_allclose(ir01.numpy(), raw01.numpy() ** 2, atol=1e-6)
    assert 0 < float(raw01.min()) and float(raw01.max()) < 1


def test_the_sampler_keeps_the_pairs_pixels_and_makes_float_crops_only_as_drawn():
    """Float planes of every pair (12 bytes a pixel) held 2.1 GB on the full data; the pairs' own uint8 pixels are kept,
    and a batch is made float crop by crop."""
    rng = np.random.default_rng(0)
    pairs = [(str(i), rng.integers(0, 256, (200, 300), np.uint8), rng.integers(0, 256, (200, 300), np.uint8))
             for i in range(10)]
    tracemalloc.start()
    try:
        sampler = PairSampler(pairs, AlignConfig(enabled=False), crop=48, rng=np.random.default_rng(1))
        held = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert held < 200 * 300 * len(pairs) / 4  # a quarter of a byte a pixel: no copy of the pixels
    ir01, vis01, raw01 = sampler.batch(4)
    assert ir01.dtype == vis01.dtype == raw01.dtype == torch.float32
    np.testing.assert_array_equal(ir01.numpy(), raw01.numpy())  # no OT: IR' is the raw IR


def test_crops_are_flipped_left_right_and_upside_down_ir_and_visible_alike():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every pixel told apart: a crop's orientation shows
    sampler = PairSampler([("a", image, 255 - image)], AlignConfig(enabled=False), crop=16,
                          rng=np.random.default_rng(0))
    flips = {"none": image, "left-right": image[:, ::-1], "upside-down": image[::-1], "both": image[::-1, ::-1]}
    _, vis01, raw01 = sampler.batch(64)
    seen = set()
    for vis, raw in zip((vis01[:, 0] * 255).round().byte().numpy(), (raw01[:, 0] * 255).round().byte().numpy()):
        seen |= {name for name, flipped in flips.items() if np.array_equal(raw, flipped)}
        np.testing.assert_array_equal(vis, 255 - raw)  # the pair stays registered
    assert seen == set(flips)


def test_the_data_digest_changes_with_any_pixel_of_either_image():
    # a resume on changed data is refused by the digest: an IR image re-exported or re-registered changed nothing
    rng = np.random.default_rng(0)
    ir, vis = rng.integers(0, 256, (8, 8), np.uint8), rng.integers(0, 256, (8, 8), np.uint8)
    digests = {data.data_digest([("a", ir, vis)])}
    for image in (ir, vis):
        image[3, 4] ^= 1
        digests.add(data.data_digest([("a", ir, vis)]))
    assert len(digests) == 3


def test_a_macs_hidden_metadata_files_are_no_training_pairs(tmp_path):
    # README: hidden files (a Mac's "._NAME" beside each file it copies) are no images to any command; training read
    # "._0001.png" in ir/ and vi/ as a pair and stopped on it, "cannot read image"
    import cv2

    for sub in ("ir", "vi"):
        (tmp_path / "roadscene" / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "roadscene" / sub / "0001.png"), np.full((48, 64), 99, np.uint8))
        (tmp_path / "roadscene" / sub / "._0001.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X")
    assert [name for name, _, _ in data.load_pairs(tmp_path)] == ["roadscene/ir/0001.png"]


def test_the_data_digest_changes_with_a_pairs_name_or_shape_too():
    # the same pixels under another name (a set re-exported, in another order of batches) or reshaped are other data
    rng = np.random.default_rng(0)
    ir, vis = rng.integers(0, 256, (8, 8), np.uint8), rng.integers(0, 256, (8, 8), np.uint8)
    digests = {data.data_digest([("a", ir, vis)]), data.data_digest([("b", ir, vis)]),
               data.data_digest([("a", ir.reshape(4, 16), vis.reshape(4, 16))])}
    assert len(digests) == 3


def test_an_image_whose_upscale_lands_just_below_the_crop_is_rounded_up_to_fit():
    # 47 * (48 / 47) is 47.999...: cut to 47 rows, no 48-row crop fits and drawing one fails
    rng = np.random.default_rng(0)
    pair = ("a", rng.integers(0, 256, (47, 60), np.uint8), rng.integers(0, 256, (47, 60), np.uint8))
    ir01, _, _ = PairSampler([pair], AlignConfig(enabled=False), crop=48, rng=np.random.default_rng(1)).batch(4)
    assert ir01.shape == (4, 1, 48, 48)


def test_an_upscaled_pair_keeps_its_aspect_so_a_crop_shows_part_of_its_width():
    ramp = np.repeat(np.linspace(0, 255, 64).round().astype(np.uint8)[None], 24, axis=0)  # (24, 64): 2x to (48, 128)
    sampler = PairSampler([("a", ramp, ramp)], AlignConfig(enabled=False), crop=48, rng=np.random.default_rng(0))
    _, _, raw01 = sampler.batch(8)
    spans = (raw01[:, 0].amax(dim=(1, 2)) - raw01[:, 0].amin(dim=(1, 2))).numpy()
    assert (spans < 0.5).all()  # 48 of 128 columns: about 0.37 of the ramp (a squeezed image shows all of it)


def test_crops_are_drawn_at_every_offset_the_last_row_and_column_too():
    rows, cols = np.mgrid[0:50, 0:51].astype(np.uint8)  # IR: its row index, visible: its column index
    sampler = PairSampler([("a", rows, cols)], AlignConfig(enabled=False), crop=48, rng=np.random.default_rng(0))
    _, vis01, raw01 = sampler.batch(64)
    tops = {round(float(crop.min()) * 255) for crop in raw01}  # flips move pixels, not the crop's smallest index
    lefts = {round(float(crop.min()) * 255) for crop in vis01}
    assert (tops, lefts) == ({0, 1, 2}, {0, 1, 2, 3})


def test_colour_ir_stills_are_said_once_and_read_once_by_the_luma_evaluate_takes(tmp_path, caplog, monkeypatch):
    """A false-colour palette turned to grey does not keep temperature order: trained on without a word. Each colour
    IR file was also decoded twice (its colours for that word, then OpenCV's grey decode, 12.1 against 2.4 ms a
    1280x1024 image), and turned grey by another luma than the one replay and evaluate take."""
    import logging

    import cv2

    from streamfuse import bitdepth
    from streamfuse.eval_pairs import read_grey

    colour = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), np.uint8)
    for sub in ("ir", "vi"):
        (tmp_path / "roadscene" / sub).mkdir(parents=True)
        for i, image in enumerate(colour):
            cv2.imwrite(str(tmp_path / "roadscene" / sub / f"{i}.png"), image)
    reads, read_image = [], bitdepth.read_image
    monkeypatch.setattr(bitdepth, "read_image", lambda path, *args: reads.append(str(path)) or read_image(path, *args))
    with caplog.at_level(logging.WARNING):
        pairs = data.load_pairs(tmp_path)
    assert sorted(reads) == sorted(str(p) for p in (tmp_path / "roadscene").glob("*/*.png"))  # each file once
    first = tmp_path / "roadscene" / "ir" / "0.png"
    assert caplog.messages == [f"IR {first} and 2 more of the 3: colour frames (a false-colour palette?) are turned to "
                               f"grey by luminance, which does not keep temperature order; give them in grey, in "
                               f"temperature order (training takes no palette)"]
    assert all(np.array_equal(ir, read_grey(tmp_path / name)) for name, ir, _ in pairs)
