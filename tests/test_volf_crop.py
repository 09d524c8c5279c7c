"""The crop pair: augmentation modes switch parts on and off, padding, draw statistics."""

from __future__ import annotations

import numpy as np
import pytest

from volfnet.volf.config import VolFConfig
from volfnet.volf.crop import (
    apply_crop,
    crop_pair,
    draw_crop_pair_params,
    draw_crop_params,
    draw_invert,
    pad_to_patch,
    select_channel,
)

PATCH = [12, 20, 16]


@pytest.fixture(scope="module")
def volume():
    """(1, Z, Y, X) with intensities far outside [0, 1], so an intensity map is visible."""
    rng = np.random.default_rng(0)
    return (100.0 + 50.0 * rng.standard_normal((1, 24, 36, 30))).astype(np.float32)


def config(mode: int, **kwargs) -> VolFConfig:
    return VolFConfig(patch_size=PATCH, augmentation_mode=mode, **kwargs)


def test_mode_0_is_a_plain_crop(volume):
    cfg = config(0)
    for seed in range(10):
        params = draw_crop_params(volume.shape[1:], cfg, np.random.default_rng(seed))
        assert params.size == tuple(PATCH) and params.flip == (False, False, False) and params.intensity is None
        patch = apply_crop(volume[0], params, PATCH)
        region = tuple(slice(s, s + n) for s, n in zip(params.start, PATCH))
        np.testing.assert_array_equal(patch, volume[0][region])


def test_mode_1_maps_intensities_without_spatial_changes(volume):
    cfg = config(1)
    params = draw_crop_params(volume.shape[1:], cfg, np.random.default_rng(1))
    assert params.size == tuple(PATCH) and params.flip == (False, False, False)
    assert params.intensity is not None
    patch = apply_crop(volume[0], params, PATCH)
    assert patch.min() == 0.0 and patch.max() == 1.0
    region = volume[0][tuple(slice(s, s + n) for s, n in zip(params.start, PATCH))]
    # A monotone map keeps the voxel order.
    order = np.argsort(region.ravel(), kind="stable")
    assert np.all(np.diff(patch.ravel()[order]) >= 0)


def test_mode_2_is_spatial_only(volume):
    cfg = config(2)
    draws = [draw_crop_params(volume.shape[1:], cfg, np.random.default_rng(s)) for s in range(200)]
    assert all(d.intensity is None for d in draws)
    sizes = np.array([d.size for d in draws])
    flips = np.array([d.flip for d in draws])
    for axis, p in enumerate(PATCH):
        assert sizes[:, axis].min() >= int(p * 0.7)
        assert sizes[:, axis].max() <= min(int(p * 1.5), volume.shape[axis + 1])
        assert len(np.unique(sizes[:, axis])) > 3
    assert abs(flips.mean() - 0.5) < 0.06
    assert not any(draw_invert(cfg, np.random.default_rng(s)) for s in range(50))
    patch = apply_crop(volume[0], draws[0], PATCH)
    assert patch.min() >= volume.min() and patch.max() <= volume.max() and patch.max() > 1.5


def test_mode_3_uses_both_and_inverts_jointly_a_quarter_of_the_time(volume):
    cfg = config(3)
    pairs = [draw_crop_pair_params(volume.shape[1:], cfg, np.random.default_rng(s)) for s in range(400)]
    assert all(p.foreground.intensity is not None and p.background.intensity is not None for p in pairs)
    assert abs(np.mean([p.invert for p in pairs]) - 0.25) < 0.05
    assert any(p.foreground.size != p.background.size for p in pairs)
    inverted = next(p for p in pairs if p.invert)
    plain = apply_crop(volume[0], inverted.foreground, PATCH)
    flipped = apply_crop(volume[0], inverted.foreground, PATCH, invert=True)
    np.testing.assert_allclose(flipped, 1.0 - plain, atol=2e-3)


def test_inversion_without_intensity_augmentation_is_refused(volume):
    params = draw_crop_params(volume.shape[1:], config(0), np.random.default_rng(0))
    with pytest.raises(ValueError, match="inversion"):
        apply_crop(volume[0], params, PATCH, invert=True)


def test_crop_pair_outputs_and_value_ranges(volume):
    for mode, unit_range in [(0, False), (1, True), (2, False), (3, True)]:
        fg, bg = crop_pair(volume, config(mode), np.random.default_rng(mode))
        for patch in (fg, bg):
            assert patch.shape == tuple(PATCH) and patch.dtype == np.float32 and patch.flags.c_contiguous
            if unit_range:
                assert patch.min() >= 0.0 and patch.max() <= 1.0
            else:
                assert patch.max() > 1.5
        assert not np.array_equal(fg, bg)


def test_small_volumes_are_padded_with_their_minimum():
    small = np.arange(8 * 10 * 30, dtype=np.float32).reshape(8, 10, 30) + 5.0
    padded = pad_to_patch(small, PATCH)
    assert padded.shape == (12, 20, 30)
    np.testing.assert_array_equal(padded[2:10, 5:15, :], small)
    assert padded[0, 0, 0] == 5.0 and padded[-1, -1, -1] == 5.0
    assert pad_to_patch(small, [4, 4, 4]) is small
    fg, bg = crop_pair(small[None], config(3), np.random.default_rng(0))
    assert fg.shape == bg.shape == tuple(PATCH)


def test_channel_selection(volume):
    two = np.concatenate([volume, -volume], axis=0)
    a, _ = crop_pair(two, config(0), np.random.default_rng(7), channel=0)
    b, _ = crop_pair(two, config(0), np.random.default_rng(7), channel=1)
    np.testing.assert_array_equal(a, -b)
    with pytest.raises(ValueError, match="channel 2"):
        select_channel(two, 2)
    with pytest.raises(ValueError, match=r"\(C, Z, Y, X\)"):
        select_channel(volume[0], 0)


def test_foreground_from_another_volume(volume):
    other = np.full((1, 15, 22, 17), 3.0, np.float32)
    fg, bg = crop_pair(volume, config(0), np.random.default_rng(0), foreground_volume=other)
    assert np.all(fg == 3.0) and bg.max() > 3.0
