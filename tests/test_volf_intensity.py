"""Contrast map + gamma + inversion: the table look-up equals the exact published formula."""

from __future__ import annotations

import numpy as np
import pytest

from volfnet.errors import VolfnetError
from volfnet.volf.intensity import (
    CONTRAST_TARGETS,
    IntensityParams,
    apply_intensity,
    contrast_breakpoints,
    draw_intensity_params,
    intensity_curve,
    percentile_subsample,
)


def skewed_volume(seed: int = 0, shape=(32, 64, 64)) -> np.ndarray:
    """CT-like: a large dark background, a soft-tissue body and a few very bright voxels."""
    rng = np.random.default_rng(seed)
    volume = rng.normal(-1000, 20, shape)
    _, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = yy**2 + xx**2 < 0.6
    volume[body] = rng.normal(40, 60, int(body.sum()))
    volume[rng.random(shape) < 0.002] = 2500
    return volume.astype(np.float32)


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("params", [IntensityParams(0.1, 99.9, 0.7), IntensityParams(2.0, 98.0, 1.5), IntensityParams(1.0, 99.0, 1.0)])
def test_table_lookup_matches_the_exact_formula(params, invert):
    volume = skewed_volume()
    result = apply_intensity(volume, params, invert)
    breakpoints = contrast_breakpoints(volume, params)
    exact = intensity_curve(volume.astype(np.float64), breakpoints, params.gamma, invert)
    assert result.dtype == np.float32 and result.shape == volume.shape and result.flags.c_contiguous
    np.testing.assert_allclose(result, exact, atol=2e-3)
    assert np.abs(result - exact).mean() < 2e-4
    low, high = (1.0, 0.0) if invert else (0.0, 1.0)
    assert result[volume == volume.min()].max() == low and result[volume == volume.max()].min() == high
    assert 0.0 <= result.min() and result.max() <= 1.0


def test_breakpoints_map_to_the_published_targets():
    volume = skewed_volume(1)
    params = IntensityParams(1.0, 99.0, 1.0)
    breakpoints = contrast_breakpoints(volume, params)
    np.testing.assert_allclose(intensity_curve(breakpoints, breakpoints, 1.0, False), CONTRAST_TARGETS, atol=1e-12)
    assert np.all(np.diff(breakpoints) > 0)


def test_subsample_percentiles_match_full_percentiles():
    volume = skewed_volume(2, shape=(64, 128, 128))
    subsample = percentile_subsample(volume)
    assert 20_000 < subsample.size < 140_000
    value_range = float(volume.max() - volume.min())
    for q in (0.1, 1.0, 2.0, 98.0, 99.0, 99.9):
        assert abs(np.percentile(subsample, q) - np.percentile(volume, q)) < 0.01 * value_range


def test_mapped_statistics_match_exact_percentiles():
    volume = skewed_volume(4, shape=(64, 128, 128))
    params = IntensityParams(0.5, 99.5, 1.2)
    fast = apply_intensity(volume, params)
    lo, hi = np.percentile(volume, [0.5, 99.5])
    exact = intensity_curve(volume.astype(np.float64), np.array([volume.min(), lo, hi, volume.max()]), 1.2, False)
    assert abs(fast.mean() - exact.mean()) < 0.005
    assert abs(fast.std() - exact.std()) < 0.005


def test_gamma_darkens_or_brightens():
    volume = skewed_volume(3)
    means = [apply_intensity(volume, IntensityParams(1.0, 99.0, g)).mean() for g in (0.7, 1.0, 1.5)]
    assert means[0] > means[1] > means[2]


def test_constant_patch_and_non_finite_values():
    flat = np.full((4, 5, 6), 7.0, np.float32)
    params = IntensityParams(1.0, 99.0, 1.0)
    assert np.all(apply_intensity(flat, params) == 0.0)
    assert np.all(apply_intensity(flat, params, invert=True) == 1.0)
    broken = skewed_volume(shape=(4, 8, 8))
    broken[0, 0, 0] = np.nan
    with pytest.raises(VolfnetError, match="NaN"):
        apply_intensity(broken, params)


def test_draws_lie_in_their_ranges_and_are_seeded():
    draws = [draw_intensity_params([0.1, 2.0], [98.0, 99.9], [0.7, 1.5], np.random.default_rng(s)) for s in range(200)]
    low = np.array([d.low_percentile for d in draws])
    high = np.array([d.high_percentile for d in draws])
    gamma = np.array([d.gamma for d in draws])
    assert 0.1 <= low.min() and low.max() <= 2.0 and 98.0 <= high.min() and high.max() <= 99.9
    assert 0.7 <= gamma.min() and gamma.max() <= 1.5 and abs(gamma.mean() - 1.1) < 0.05
    again = draw_intensity_params([0.1, 2.0], [98.0, 99.9], [0.7, 1.5], np.random.default_rng(5))
    assert again == draws[5]
