import numpy as np
import pytest

from streamfuse.stabilize import LevelStabilizer, StabilizeConfig


def _scene(rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.normal(60, 15, (48, 64)), 0, 255).astype(np.uint8)


def test_stabilizer_undoes_a_one_frame_gain_jump_and_follows_a_lasting_one(rng):
    base = _scene(rng)
    flash = np.clip(base.astype(np.float32) * 1.5 + 20, 0, 255).astype(np.uint8)  # AGC/shutter jump
    stab = LevelStabilizer(StabilizeConfig(0.9))
    stab(base)
    out = stab(flash)
    assert abs(out.mean() - base.mean()) < 0.15 * abs(flash.mean() - base.mean())
    assert abs(out.std() - base.std()) < 0.15 * abs(flash.std() - base.std())
    for _ in range(60):  # the jump lasts: the output follows within a few time constants
        out = stab(flash)
    assert abs(out.mean() - flash.mean()) < 1.0 and abs(out.std() - flash.std()) < 1.0


def test_stabilizer_off_static_and_new_size(rng):
    base = _scene(rng)
    assert LevelStabilizer(StabilizeConfig())(base) is base
    stab = LevelStabilizer(StabilizeConfig(0.8))
    outs = [stab(base) for _ in range(4)]
    assert all(np.array_equal(outs[0], o) for o in outs)  # a static input stays static
    assert all(o is base for o in outs[1:])  # passed through: no table is built for a frame of unchanged level
    small = base[:20, :30] + 40
    np.testing.assert_array_equal(stab(small), small)  # a new size restarts it
    with pytest.raises(ValueError, match=r"strength=1.0 is out of range; allowed: 0 \(off\) .. 0.95"):
        StabilizeConfig(strength=1.0)


def test_a_nearly_flat_frame_keeps_its_contrast(rng):
    # without it, a shutter (NUC) frame or a lens cap with a few noisy pixels (std under 0.5 grey levels) has its
    # noise stretched to the scene's contrast: a frame of snow in the fused stream
    stab = LevelStabilizer(StabilizeConfig(0.9))
    stab(_scene(rng))
    nearly_flat = np.full((48, 64), 80, np.uint8)
    nearly_flat[::8, ::8] = 81  # std 0.12
    out = stab(nearly_flat)
    assert np.ptp(out) <= 1
    half_noisy = np.full((48, 64), 80, np.uint8)
    half_noisy[:, ::2] = 81  # std exactly 0.5: flat still
    assert np.ptp(stab(half_noisy)) <= 1


def test_the_strongest_documented_strength_is_allowed():
    assert LevelStabilizer(StabilizeConfig(strength=0.95)).rate == pytest.approx(0.05)  # "0 (off) to 0.95"


def test_a_low_contrast_scene_has_its_gain_jump_undone_too(rng):
    # a fog or a uniform wall: a few grey levels of contrast, well above the flat-frame floor of 0.5
    base = np.clip(rng.normal(100, 2, (48, 64)), 0, 255).astype(np.uint8)
    flash = np.clip((base.astype(np.float32) - 100) * 2 + 100, 0, 255).astype(np.uint8)  # the camera's gain doubled
    stab = LevelStabilizer(StabilizeConfig(0.9))
    stab(base)
    out = stab(flash)
    assert abs(out.std() - base.std()) < 0.2 * abs(flash.std() - base.std())


def test_levels_mapped_beyond_white_are_clipped_not_wrapped(rng):
    # the contrast drops (a hand over part of the lens) while a hot object stays bright: stretched back to the
    # scene's contrast, the hot object lands above 255, which a uint8 cast without clipping wraps to black
    stab = LevelStabilizer(StabilizeConfig(0.9))
    stab(_scene(rng))
    dim = np.clip(rng.normal(60, 1, (48, 64)), 0, 255).astype(np.uint8)
    dim[:2, :2] = 200
    dim[-2:, -2:] = 0  # and a cold object, mapped below black: clipped to black, not lifted off it
    out = stab(dim)
    assert (out[:2, :2] == 255).all() and out.max() == 255
    assert (out[-2:, -2:] == 0).all() and out.min() == 0


def test_a_gain_step_of_a_few_percent_is_undone_too(rng):
    # an AGC's usual step is a few percent, not the 50% of the flash above: a tolerance meant for float rounding
    # must not let it through as "no change"
    base = _scene(rng)
    step = np.clip((base.astype(np.float32) - base.mean()) * 1.04 + base.mean() + 0.5, 0, 255).astype(np.uint8)
    stab = LevelStabilizer(StabilizeConfig(0.9))
    stab(base)
    out = stab(step)
    assert abs(out.std() - base.std()) < 0.3 * abs(step.std() - base.std())


def test_a_one_frame_offset_jump_of_unchanged_contrast_is_held_back_too(rng):
    # a shutter or NUC event can shift every level alike: the contrast, hence the gain, is exactly the same, and only
    # the mean tells the jump
    base = _scene(rng)
    shifted = base + np.uint8(30)
    stab = LevelStabilizer(StabilizeConfig(0.9))
    stab(base)
    out = stab(shifted)
    assert abs(out.mean() - base.mean()) < 0.15 * 30


def test_the_weakest_strengths_hold_back_their_share_of_a_jump(rng):
    # strength 0.01 is on (0 is off): a one-frame jump of 200 grey levels is held back by 1% of it, 2 levels
    base = np.clip(rng.normal(20, 4, (48, 64)), 0, 35).astype(np.uint8)
    stab = LevelStabilizer(StabilizeConfig(0.01))
    stab(base)
    jump = base + np.uint8(200)
    assert stab(jump).mean() == pytest.approx(jump.mean() - 2.0, abs=0.5)
