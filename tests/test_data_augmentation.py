"""Augmentation: image/label alignment, crop margins, deep-supervision targets, seeding, config."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, binary_erosion, map_coordinates

from volfnet.data.augmentation import (
    AugmentationConfig,
    build_training_pipeline,
    build_validation_pipeline,
    spatial_crop_size,
    use_dummy_2d,
)
from volfnet.data.deep_supervision import deep_supervision_factors, downsample_seg
from volfnet.data.spatial import (
    SpatialAugmentation,
    SpatialParameters,
    interpolate_labels,
    rotation_matrix,
)
from volfnet.errors import VolfnetError

ONLY_SPATIAL = {
    "rotation_p": 1.0,
    "scaling_p": 1.0,
    "noise_p": 0.0,
    "blur_p": 0.0,
    "brightness_p": 0.0,
    "contrast_p": 0.0,
    "low_resolution_p": 0.0,
    "inverted_gamma_p": 0.0,
    "gamma_p": 0.0,
}


def synthetic_batch(crop, batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """An off-centre ellipsoid (label 1) with a box (label 2) inside; image = 100 * (label > 0)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in crop], indexing="ij")
    inside = (zz / (crop[0] * 0.3)) ** 2 + ((yy - 3) / (crop[1] * 0.25)) ** 2 + ((xx + 2) / (crop[2] * 0.2)) ** 2 < 1
    seg = inside.astype(np.int16)
    seg[inside & (xx > 0)] = 2
    seg = np.broadcast_to(seg, (batch, 1, *crop)).copy()
    return (100.0 * (seg > 0)).astype(np.float32), seg


def assert_aligned(data: np.ndarray, target: np.ndarray) -> None:
    """Thresholded image and label agree everywhere except on a one-voxel label boundary."""
    for image, label in zip(data[:, 0], target[:, 0]):
        foreground = label > 0
        assert foreground.sum() > 50
        disagree = (image > 50) != foreground
        boundary = binary_dilation(foreground) & ~binary_erosion(foreground)
        assert not np.any(disagree & ~boundary)
        assert disagree.sum() <= 0.1 * foreground.sum()


@pytest.mark.parametrize("patch,dummy_2d", [((24, 28, 20), False), ((6, 40, 36), True)])
def test_spatial_augmentation_keeps_image_and_label_aligned(patch, dummy_2d):
    config = AugmentationConfig().replaced(ONLY_SPATIAL)
    crop = spatial_crop_size(patch, config, dummy_2d)
    data, seg = synthetic_batch(crop)
    pipeline = build_training_pipeline(patch, config, (0, 1, 2), [], [(1, 1, 1)], dummy_2d)
    out, targets = pipeline(data.copy(), seg.copy(), np.random.default_rng(0))
    assert out.shape == (4, 1, *patch) and targets[0].shape == (4, 1, *patch)
    assert targets[0].dtype == np.int16 and out.dtype == np.float32
    assert set(np.unique(targets[0])) <= {0, 1, 2}
    assert_aligned(out, targets[0])
    # the transform did something: samples differ from the plain centre crop and from each other
    offsets = [(c - p) // 2 for c, p in zip(crop, patch)]
    centre = seg[0, 0, offsets[0] : offsets[0] + patch[0], offsets[1] : offsets[1] + patch[1], offsets[2] : offsets[2] + patch[2]]
    assert all(not np.array_equal(t[0], centre) for t in targets[0])
    assert not np.array_equal(targets[0][0], targets[0][1])
    # both labels survive interpolation (one-hot linear, not averaged into a third label)
    assert {1, 2} <= set(np.unique(targets[0]))


def test_full_training_pipeline_outputs_and_seeding():
    patch = (16, 20, 16)
    config = AugmentationConfig()
    crop = spatial_crop_size(patch, config, False)
    data, seg = synthetic_batch(crop, batch=6)
    seg[:, :, :3] = -1  # outside the nonzero mask
    pipeline = build_training_pipeline(patch, config, (0, 1, 2), [0], deep_supervision_factors([[2, 2, 2], [2, 2, 2]], 3), False)
    state = np.random.get_state()[1].copy(), random.getstate()
    first = pipeline(data.copy(), seg.copy(), np.random.default_rng(42))
    second = pipeline(data.copy(), seg.copy(), np.random.default_rng(42))
    other = pipeline(data.copy(), seg.copy(), np.random.default_rng(43))
    np.testing.assert_array_equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    # batchgenerators' global generators are left as they were
    assert np.array_equal(np.random.get_state()[1], state[0]) and random.getstate() == state[1]
    assert [t.shape[2:] for t in first[1]] == [(16, 20, 16), (8, 10, 8), (4, 5, 4)]
    assert first[1][0].min() >= 0  # the ignore label became background
    assert np.isfinite(first[0]).all()


def test_validation_pipeline_only_masks_and_maps_ignore_label():
    data = np.arange(2 * 2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 2, 4, 4, 4) + 1
    seg = np.ones((2, 1, 4, 4, 4), np.int16)
    seg[:, :, 0] = -1
    out, targets = build_validation_pipeline([1], [(1, 1, 1), (2, 2, 2)])(data.copy(), seg.copy(), np.random.default_rng(0))
    np.testing.assert_array_equal(out[:, 0], data[:, 0])  # channel 0 untouched
    assert np.all(out[:, 1, 0] == 0) and np.array_equal(out[:, 1, 1:], data[:, 1, 1:])  # channel 1 masked outside
    assert np.all(targets[0][:, :, 0] == 0) and np.all(targets[0][:, :, 1:] == 1)
    assert targets[1].shape == (2, 1, 2, 2, 2)


@pytest.mark.parametrize(
    "strides,patch,outputs,expected",
    [
        ([[2, 2, 2]] * 4, (32, 32, 32), 3, [(32, 32, 32), (16, 16, 16), (8, 8, 8)]),
        ([[1, 2, 2], [2, 2, 2], [2, 2, 2]], (8, 64, 48), 4, [(8, 64, 48), (8, 32, 24), (4, 16, 12), (2, 8, 6)]),
        ([[2, 2, 2]], (8, 8, 8), 1, [(8, 8, 8)]),
    ],
)
def test_deep_supervision_target_shapes(strides, patch, outputs, expected):
    factors = deep_supervision_factors(strides, outputs)
    seg = np.random.default_rng(0).integers(0, 3, size=(2, 1, *patch)).astype(np.int16)
    targets = build_validation_pipeline([], factors)(np.zeros((2, 1, *patch), np.float32), seg, np.random.default_rng(0))[1]
    assert [t.shape for t in targets] == [(2, 1, *shape) for shape in expected]


def test_downsampling_is_nearest_exact():
    seg = torch.randint(0, 4, (1, 1, 8, 12, 16)).to(torch.int16)
    for factor in [(2, 2, 2), (1, 2, 4), (4, 4, 2)]:
        size = [s // f for s, f in zip(seg.shape[2:], factor)]
        expected = torch.nn.functional.interpolate(seg.float(), size=size, mode="nearest-exact").to(torch.int16)
        np.testing.assert_array_equal(downsample_seg(seg.numpy(), factor), expected.numpy())
    with pytest.raises(VolfnetError):
        deep_supervision_factors([[2, 2, 2]], 3)


def test_crop_size_covers_rotation_and_scaling():
    config = AugmentationConfig()
    assert spatial_crop_size((40, 56, 40), config.replaced({"rotation_p": 0.0, "scaling_p": 0.0}), False) == (40, 56, 40)
    crop = spatial_crop_size((40, 56, 40), config, False)
    assert all(c > p and (c - p) % 2 == 0 for c, p in zip(crop, (40, 56, 40)))
    assert all(c >= 1.4 * (p - 1) + 1 for c, p in zip(crop, (40, 56, 40)))  # zooming out alone never pads
    assert 2 * 40 * np.sin(np.radians(30)) < crop[0]  # a 30 degree tilt of the long axes needs more than the patch
    # dummy-2D: slices untouched, in-plane room for any rotation (the in-plane diagonal)
    flat = spatial_crop_size((10, 96, 96), config, True)
    assert flat[0] == 10 and flat[1] >= np.hypot(95, 95) and flat[2] >= np.hypot(95, 95)


def test_dummy_2d_rule_and_config_validation():
    assert use_dummy_2d((10, 96, 96)) and not use_dummy_2d((40, 56, 40)) and not use_dummy_2d((32, 96, 96))
    config = AugmentationConfig().replaced({"rotation_p": 0.5, "scale_max": 1.2, "mirror": False})
    assert config.rotation_p == 0.5 and config.scale_max == 1.2 and config.mirror is False
    with pytest.raises(VolfnetError, match="probability"):
        AugmentationConfig(rotation_p=1.5)
    with pytest.raises(VolfnetError, match="gamma_min"):
        AugmentationConfig(gamma_min=2.0)
    with pytest.raises(VolfnetError, match="unknown augmentation"):
        AugmentationConfig().replaced({"rotaton_p": 0.1})
    with pytest.raises(VolfnetError, match="number"):
        AugmentationConfig().replaced({"blur_p": "often"})


def test_label_interpolation_matches_one_hot_trilinear_argmax():
    rng = np.random.default_rng(2)
    labels = np.zeros((12, 13, 11), np.int16)
    labels[2:9, 3:10, 2:8] = 1
    labels[5:11, 6:12, 5:10] = 2
    labels[:, :, :2] = -1
    coords = rng.uniform(-1.5, 13.5, size=(3, 4000)).astype(np.float32)
    got = interpolate_labels(labels, coords)
    present = np.array([-1, 0, 1, 2])
    scores = np.stack([
        map_coordinates((labels == value).astype(np.float64), coords, order=1, mode="constant", cval=0.0)
        for value in present
    ])
    scores[0] += 1.0 - scores.sum(axis=0)  # outside the array: ignore
    expected = present[np.argmax(scores, axis=0)]
    clear = np.sort(scores, axis=0)[-1] - np.sort(scores, axis=0)[-2] > 1e-4  # ties may go either way
    np.testing.assert_array_equal(got[clear], expected[clear])
    assert clear.mean() > 0.95


def test_crop_size_leaves_no_padding_for_extreme_rotations_and_scales():
    patch = (12, 20, 16)
    config = AugmentationConfig()
    crop = spatial_crop_size(patch, config, False)
    ones = np.ones((1, 1, *crop), np.float32)
    seg = np.ones((1, 1, *crop), np.int16)
    limit = math.radians(config.rotation_max_degrees)
    augment = SpatialAugmentation(patch, SpatialParameters(1.0, limit, 0.0, 1.0, 1.0, False))
    for angles in itertools.product((-limit, limit), repeat=3):
        for scale in (config.scale_min, 1.0):
            image, labels = np.empty((1, *patch), np.float32), np.empty((1, *patch), np.int16)
            augment._sample(ones[0], seg[0], scale * rotation_matrix(angles), image, labels)
            assert image.min() > 0.999 and np.all(labels == 1)
    image, labels = np.empty((1, *patch), np.float32), np.empty((1, *patch), np.int16)
    augment._sample(ones[0], seg[0], config.scale_max * np.identity(3), image, labels)  # zoomed out, unrotated
    assert image.min() > 0.999 and np.all(labels == 1)
