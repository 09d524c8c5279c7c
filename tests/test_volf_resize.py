"""Crop + linear resize: equals scipy's zoom (order 1) on the crop, both backends, never writes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from volfnet.volf.resize import BACKENDS, crop_and_resize, linear_taps


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(3).standard_normal((30, 40, 36)).astype(np.float32)


def test_taps_sample_align_corners_positions():
    left, right, weight = linear_taps(5, 9)
    positions = left + weight
    np.testing.assert_allclose(positions, np.arange(9) * 0.5)
    assert right.max() == 4 and left.min() == 0
    flipped = linear_taps(5, 9, flip=True)
    np.testing.assert_allclose(flipped[0] + flipped[2], positions[::-1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("start, size", [((2, 3, 1), (20, 25, 30)), ((0, 0, 0), (30, 40, 36)), ((5, 9, 4), (9, 14, 11))])
def test_matches_scipy_zoom_on_the_crop(volume, backend, start, size):
    out_shape = (16, 24, 20)
    crop = volume[tuple(slice(s, s + n) for s, n in zip(start, size))]
    expected = ndimage.zoom(crop, [o / n for o, n in zip(out_shape, size)], order=1, grid_mode=False)
    result = crop_and_resize(volume, start, size, out_shape, backend=backend)
    assert result.shape == out_shape and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_crop_is_exact(volume, backend):
    result = crop_and_resize(volume, (4, 5, 6), (16, 24, 20), (16, 24, 20), backend=backend)
    np.testing.assert_array_equal(result, volume[4:20, 5:29, 6:26])


@pytest.mark.parametrize("backend", BACKENDS)
def test_flips_equal_flipping_the_output(volume, backend):
    plain = crop_and_resize(volume, (1, 2, 3), (25, 30, 30), (12, 18, 16), backend=backend)
    for flip in [(True, False, False), (False, True, False), (False, False, True), (True, True, True)]:
        flipped = crop_and_resize(volume, (1, 2, 3), (25, 30, 30), (12, 18, 16), flip, backend)
        axes = tuple(axis for axis in range(3) if flip[axis])
        np.testing.assert_allclose(flipped, np.flip(plain, axis=axes), atol=1e-6)


def test_backends_agree(volume):
    args = ((3, 1, 2), (21, 33, 27), (16, 24, 20), (True, False, True))
    np.testing.assert_allclose(crop_and_resize(volume, *args, backend="torch"), crop_and_resize(volume, *args, backend="numpy"), atol=1e-4)


def test_read_only_and_integer_input(volume):
    source = (volume * 100).astype(np.int16)
    source.flags.writeable = False
    before = source.copy()
    result = crop_and_resize(source, (0, 0, 0), (20, 20, 20), (10, 30, 15))
    assert result.dtype == np.float32 and result.shape == (10, 30, 15)
    np.testing.assert_array_equal(source, before)
    assert not np.shares_memory(result, source)
    assert result.min() >= before.min() and result.max() <= before.max()


def test_rejects_crops_outside_the_volume(volume):
    with pytest.raises(ValueError, match="does not fit"):
        crop_and_resize(volume, (20, 0, 0), (20, 10, 10), (8, 8, 8))
    with pytest.raises(ValueError, match="backend"):
        crop_and_resize(volume, (0, 0, 0), (8, 8, 8), (8, 8, 8), backend="cuda")
