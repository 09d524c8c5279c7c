"""Cropping, normalisation, resampling and class locations on hand-made arrays."""

import numpy as np
import pytest

from volfnet.plans import ChannelNormalization, ResamplingSpec
from volfnet.preprocessing.cropping import bounding_box, crop_to_nonzero
from volfnet.preprocessing.normalization import normalize_channel
from volfnet.preprocessing.preprocessor import sample_class_locations
from volfnet.preprocessing.resampling import (
    new_shape_for_spacing,
    resample_image,
    resample_logits,
    resample_segmentation,
    separate_axis,
)


def test_crop_to_nonzero_box_and_ignore_label():
    image = np.zeros((2, 10, 12, 14), np.float32)
    image[0, 2:8, 3:9, 4:10] = 1.0
    image[1, 5, 10, 12] = 3.0  # the second channel widens the box
    image[0, 4, 5, 6] = 0.0  # a hole inside: filled, so it stays inside the mask
    seg = np.zeros((1, 10, 12, 14), np.int16)
    seg[0, 3, 4, 5] = 2
    cropped, cropped_seg, box = crop_to_nonzero(image, seg)
    assert box == [[2, 8], [3, 11], [4, 13]]
    assert cropped.shape == (2, 6, 8, 9)
    assert cropped_seg[0, 1, 1, 1] == 2
    assert cropped_seg[0, 4 - 2, 5 - 3, 6 - 4] == 0  # filled hole is inside the body
    assert cropped_seg[0, 0, 7, 0] == -1  # outside both channels' nonzero voxels


def test_bounding_box_of_empty_mask_is_everything():
    assert bounding_box(np.zeros((3, 4, 5), bool)) == [[0, 3], [0, 4], [0, 5]]


def test_ct_normalisation_clips_then_zscores():
    spec = ChannelNormalization("ct", clip_lower=-100.0, clip_upper=300.0, mean=50.0, std=25.0)
    values = np.array([[[-1000.0, 50.0, 1000.0]]], np.float32)
    out = normalize_channel(values, spec, None)
    np.testing.assert_allclose(out.ravel(), [(-100 - 50) / 25, 0.0, (300 - 50) / 25])


def test_masked_zscore_uses_and_keeps_only_the_mask():
    rng = np.random.default_rng(0)
    channel = rng.normal(100, 10, (6, 6, 6)).astype(np.float32)
    mask = np.zeros((6, 6, 6), bool)
    mask[1:5, 1:5, 1:5] = True
    out = normalize_channel(channel, ChannelNormalization("zscore", use_mask=True), mask)
    assert out[mask].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[mask].std() == pytest.approx(1.0, abs=1e-4)
    assert np.all(out[~mask] == 0)
    unmasked = normalize_channel(channel, ChannelNormalization("zscore"), mask)
    assert unmasked.mean() == pytest.approx(0.0, abs=1e-5)


def test_new_shape_and_separate_axis():
    assert new_shape_for_spacing([10, 100, 100], [5.0, 1.0, 1.0], [2.5, 2.0, 2.0]) == [20, 50, 50]
    assert separate_axis([5.0, 1.0, 1.0], [2.5, 2.0, 2.0], 3.0) == 0
    assert separate_axis([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], 3.0) is None
    assert separate_axis([4.0, 4.0, 1.0], [1.0, 1.0, 1.0], 3.0) is None  # two coarse axes: ambiguous


def test_resampling_keeps_constants_and_registration():
    spec = ResamplingSpec()
    image = np.full((1, 8, 10, 12), 7.0, np.float32)
    out = resample_image(image, [1.0, 1.0, 1.0], [0.5, 2.0, 1.0], spec)
    assert out.shape == (1, 16, 5, 12)
    np.testing.assert_allclose(out, 7.0, atol=1e-4)
    seg = np.zeros((1, 8, 10, 12), np.int16)
    seg[0, 2:6, 2:8, 3:9] = 1
    seg[0, :, :, 0] = -1
    out_seg = resample_segmentation(seg, [1.0, 1.0, 1.0], [0.5, 2.0, 1.0], spec)
    assert out_seg.shape == (1, 16, 5, 12)
    assert set(np.unique(out_seg)) == {-1, 0, 1}
    # The box's physical extent is preserved: 4 slices at 1 mm = 8 slices at 0.5 mm.
    assert (out_seg[0, :, 2, 5] == 1).sum() == 8


def test_resampling_round_trip_is_close_for_smooth_images():
    zz, yy, xx = np.meshgrid(np.arange(16), np.arange(16), np.arange(16), indexing="ij")
    image = np.sin(zz / 3.0)[None].astype(np.float32) + np.cos(xx / 4.0)[None]
    spec = ResamplingSpec()
    up = resample_image(image, [1.0] * 3, [0.5] * 3, spec)
    back = resample_image(up, [0.5] * 3, [1.0] * 3, spec)
    assert np.abs(back - image)[:, 2:-2, 2:-2, 2:-2].max() < 0.05


def test_anisotropic_resampling_uses_nearest_along_the_thick_axis():
    image = np.zeros((1, 4, 8, 8), np.float32)
    image[0, 1] = 10.0  # one bright slice
    out = resample_image(image, [5.0, 1.0, 1.0], [2.5, 1.0, 1.0], ResamplingSpec())
    assert out.shape == (1, 8, 8, 8)
    assert set(np.round(np.unique(out), 4)) == {0.0, 10.0}  # no blending between slices


def test_logit_resampling_shape_and_values():
    import torch

    logits = torch.zeros((3, 4, 4, 4))
    logits[1] = 2.0
    out = resample_logits(logits, [8, 8, 8], [1.0] * 3, [0.5] * 3, ResamplingSpec())
    assert out.shape == (3, 8, 8, 8)
    assert torch.allclose(out[1], torch.full((8, 8, 8), 2.0))


def test_class_locations_counts_and_positions():
    seg = np.zeros((1, 30, 30, 30), np.int8)
    seg[0, :20] = 1  # 18000 voxels: capped at 10 000
    seg[0, 25, 25, 25] = 2
    locations = sample_class_locations(seg, [1, 2, 3], np.random.default_rng(0))
    assert set(locations) == {1, 2}
    assert len(locations[1]) == 10_000
    assert locations[2] == [[25, 25, 25]]
    assert all(seg[0, z, y, x] == 1 for z, y, x in locations[1][:100])
