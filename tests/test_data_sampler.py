"""Patch placement: foreground oversampling ratio, class choice, padding, cropping."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.cached_cases import make_case

from volfnet.data.cached_dataset import CachedDataset
from volfnet.data.patch_sampler import (
    PatchSampler,
    crop_with_padding,
    draw_box,
    num_forced_foreground,
    placement_bounds,
)
from volfnet.errors import VolfnetError


def reference_crop(array: np.ndarray, lower, size, pad_value) -> np.ndarray:
    """np.pad the whole array generously, then slice: slow but obviously right."""
    margin = max(max(size), max(abs(v) for v in lower)) + max(array.shape)
    padded = np.pad(array, [(0, 0)] + [(margin, margin)] * (array.ndim - 1), constant_values=pad_value)
    index = (slice(None),) + tuple(slice(low + margin, low + margin + extent) for low, extent in zip(lower, size))
    return padded[index]


def test_forced_foreground_count_follows_nnunet_rounding():
    assert num_forced_foreground(2) == 1
    assert num_forced_foreground(9) == 3
    assert num_forced_foreground(7) == 2
    assert num_forced_foreground(1) == 0
    assert num_forced_foreground(4, oversampling=1.0) == 4


def test_crop_with_padding_matches_reference_for_random_boxes():
    rng = np.random.default_rng(3)
    array = rng.integers(-1, 5, size=(2, 9, 7, 11)).astype(np.int8)
    for _ in range(200):
        size = tuple(int(v) for v in rng.integers(1, 16, 3))
        lower = tuple(int(v) for v in rng.integers(-18, 14, 3))  # inside, overlapping, and fully outside
        got = crop_with_padding(array, lower, size, -1)
        np.testing.assert_array_equal(got, reference_crop(array, lower, size, -1))
    out = np.full((2, 4, 4, 4), 99, np.int16)
    crop_with_padding(array, (-2, 5, 9), (4, 4, 4), -1, out=out)
    np.testing.assert_array_equal(out, reference_crop(array, (-2, 5, 9), (4, 4, 4), -1))


def test_small_case_is_centred_and_padded_with_ignore_label(tmp_path):
    seg = np.ones((1, 6, 6, 6), np.int8)
    make_case(tmp_path, "tiny", np.full((1, 6, 6, 6), 5.0, np.float32), seg)
    sampler = PatchSampler(CachedDataset(tmp_path), crop_size=(10, 10, 10), final_size=(10, 10, 10), batch_size=3)
    batch = sampler.sample(np.random.default_rng(0))
    assert batch.data.shape == (3, 1, 10, 10, 10) and batch.seg.shape == (3, 1, 10, 10, 10)
    for j in range(3):
        assert batch.boxes[j].lower == (-2, -2, -2)  # a case smaller than the patch sits in its middle
        inner = (slice(None), slice(2, 8), slice(2, 8), slice(2, 8))
        assert np.all(batch.seg[j][inner] == 1) and np.all(batch.data[j][inner] == 5.0)
        assert np.sum(batch.seg[j] == -1) == 1000 - 216
        assert np.sum(batch.data[j] == 0.0) == 1000 - 216


def test_random_boxes_respect_the_margin_bounds(tmp_path):
    make_case(tmp_path, "a", np.zeros((1, 30, 20, 12), np.float32), np.zeros((1, 30, 20, 12), np.int8))
    case = CachedDataset(tmp_path).load("a")
    lowest, highest = placement_bounds((30, 20, 12), (16, 16, 16), (8, 8, 8))
    np.testing.assert_array_equal(lowest, [-4, -4, -4])
    np.testing.assert_array_equal(highest, [18, 8, 0])
    rng = np.random.default_rng(1)
    corners = np.array([draw_box(case, (16, 16, 16), (8, 8, 8), False, rng).lower for _ in range(500)])
    assert np.all(corners >= lowest) and np.all(corners <= highest)
    assert corners[:, 0].min() == -4 and corners[:, 0].max() == 18  # the whole range is used
    # no foreground stored: forced samples fall back to uniform placement
    assert draw_box(case, (16, 16, 16), (8, 8, 8), True, rng).centre_class is None


def test_oversampling_ratio_and_forced_samples_centred_on_foreground(tmp_path):
    shape = (48, 48, 48)
    seg = np.zeros((1, *shape), np.int8)
    seg[0, 5:8, 38:41, 20:23] = 1  # 27 foreground voxels in 110k: uniform patches rarely see them
    make_case(tmp_path, "small_fg", np.zeros((1, *shape), np.float32), seg)
    sampler = PatchSampler(CachedDataset(tmp_path), crop_size=(20, 20, 20), final_size=(12, 12, 12), batch_size=3)
    rng = np.random.default_rng(5)
    with_foreground = total = 0
    for _ in range(150):
        batch = sampler.sample(rng)
        final = batch.seg[:, :, 4:16, 4:16, 4:16]  # the centre crop the spatial transform keeps
        with_foreground += int(np.sum(np.any(final > 0, axis=(1, 2, 3, 4))))
        total += 3
        forced = batch.boxes[2]
        assert forced.centre_class == 1 and batch.boxes[0].centre_class is None
        assert batch.seg[2, 0, 10, 10, 10] == 1  # centred on a foreground voxel (far from the border)
    assert with_foreground / total >= 1 / 3


def test_forced_class_is_uniform_among_present_classes(tmp_path):
    shape = (32, 32, 32)
    seg = np.zeros((1, *shape), np.int8)
    seg[0, 2:30, 2:30, 2:30] = 1  # huge class
    seg[0, 15, 15, 15] = 2  # one voxel
    make_case(tmp_path, "imbalanced", np.zeros((1, *shape), np.float32), seg)
    sampler = PatchSampler(CachedDataset(tmp_path), crop_size=(8, 8, 8), final_size=(8, 8, 8), batch_size=2)
    rng = np.random.default_rng(11)
    chosen = [sampler.sample(rng).boxes[1].centre_class for _ in range(400)]
    share_tiny = chosen.count(2) / len(chosen)
    assert set(chosen) == {1, 2}
    assert 0.42 < share_tiny < 0.58  # ~50% although the tiny class has 1 of ~22k voxels


def test_sampler_rejects_bad_settings(tmp_path):
    make_case(tmp_path, "a", np.zeros((1, 8, 8, 8), np.float32), np.zeros((1, 8, 8, 8), np.int8))
    dataset = CachedDataset(tmp_path)
    with pytest.raises(VolfnetError, match="crop size"):
        PatchSampler(dataset, (4, 4, 4), (8, 8, 8), 2)
    with pytest.raises(VolfnetError, match="oversampling"):
        PatchSampler(dataset, (8, 8, 8), (8, 8, 8), 2, oversampling=1.5)
    with pytest.raises(VolfnetError, match="batch size"):
        PatchSampler(dataset, (8, 8, 8), (8, 8, 8), 0)
