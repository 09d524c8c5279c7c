"""Label maps (grid and box) and the fused image; statistics at the published demo settings."""

from __future__ import annotations

import numpy as np
import pytest

from volfnet.volf.config import VolFConfig
from volfnet.volf.fusion import (
    box_label_map,
    draw_box_params,
    draw_grid_params,
    draw_label_map,
    fuse_images,
    grid_label_map,
    label_fractions,
)

# PyMIC_examples lung demo: patch 64x128x128, blocks [5,8,8]-[20,32,32], K = 4, ratio 0.7.
DEMO = VolFConfig(patch_size=[64, 128, 128], block_size_min=[5, 8, 8], block_size_max=[20, 32, 32])
# Published label statistics of PyMIC's VolumeFusion at the demo settings.
PUBLISHED_FG_FRACTION = 0.57
PUBLISHED_CLASS_FRACTIONS = [0.43, 0.14, 0.14, 0.15, 0.14]


def test_grid_label_statistics_match_the_published_implementation():
    fractions = np.array([label_fractions(draw_label_map(DEMO, np.random.default_rng(s)), 5) for s in range(300)])
    mean = fractions.mean(axis=0)
    assert abs((1.0 - mean[0]) - PUBLISHED_FG_FRACTION) < 0.03
    np.testing.assert_allclose(mean, PUBLISHED_CLASS_FRACTIONS, atol=0.03)
    # Per-sample spread as published (30 samples: 0.465 .. 0.689).
    foreground = 1.0 - fractions[:, 0]
    assert 0.35 < foreground.min() < 0.5 and 0.62 < foreground.max() < 0.72


def test_grid_blocks_are_constant_and_the_ratio_is_kept():
    for seed in range(20):
        params = draw_grid_params(DEMO, np.random.default_rng(seed))
        block = np.array(params.block_size)
        assert np.all(block >= [5, 8, 8]) and np.all(block <= [20, 32, 32])
        assert np.all(np.array(params.offset) <= np.array(DEMO.patch_size) % block)
        grid = params.levels
        assert grid.dtype == np.uint8 and grid.shape == tuple(np.array(DEMO.patch_size) // block)
        assert (grid > 0).sum() == int(grid.size * 0.7) and grid.max() <= 4
        label = grid_label_map(DEMO.patch_size, params)
        assert label.shape == tuple(DEMO.patch_size) and label.dtype == np.uint8
        o, b = params.offset, params.block_size
        covered = label[o[0] : o[0] + grid.shape[0] * b[0], o[1] : o[1] + grid.shape[1] * b[1], o[2] : o[2] + grid.shape[2] * b[2]]
        np.testing.assert_array_equal(covered, np.kron(grid, np.ones(b, np.uint8)))
        assert (label > 0).sum() == (covered > 0).sum()


def test_all_levels_appear_evenly():
    levels = np.concatenate([draw_grid_params(DEMO, np.random.default_rng(s)).levels.ravel() for s in range(50)])
    counts = np.bincount(levels[levels > 0], minlength=5)[1:]
    assert np.all(np.abs(counts / counts.sum() - 0.25) < 0.02)


def test_foreground_ratio_and_class_count_are_overridable():
    config = VolFConfig(patch_size=[32, 64, 64], foreground_ratio=0.3, num_classes=3)
    fractions = np.mean([label_fractions(draw_label_map(config, np.random.default_rng(s)), 3) for s in range(100)], axis=0)
    assert 0.15 < 1.0 - fractions[0] < 0.3
    assert abs(fractions[1] - fractions[2]) < 0.03
    assert max(draw_label_map(config, np.random.default_rng(s)).max() for s in range(10)) == 2


BOX = VolFConfig(fusion_mode="box")


def test_box_counts_and_sizes_follow_the_published_ranges():
    counts, sizes = [], []
    for seed in range(300):
        params = draw_box_params(BOX, np.random.default_rng(seed))
        counts.append(len(params.levels))
        extent = params.stops - params.starts
        assert np.all(params.starts >= 0) and np.all(params.stops <= BOX.patch_size)
        assert np.all(extent >= 1) and np.all(extent <= [40, 80, 80])
        inside = np.all((params.starts > 0) & (params.stops < BOX.patch_size), axis=1)
        sizes.append(extent[inside])
        assert set(np.unique(params.levels)) <= {1, 2, 3, 4}
    counts = np.array(counts)
    assert counts.min() == 10 and counts.max() == 40 and abs(counts.mean() - 25) < 1.5
    sizes = np.concatenate(sizes)
    assert sizes[:, 0].min() == 8 and sizes[:, 0].max() == 40
    assert sizes[:, 1:].min() == 8 and sizes[:, 1:].max() == 80


def test_later_boxes_overwrite_earlier_ones():
    params = draw_box_params(BOX, np.random.default_rng(3))
    label = box_label_map(BOX.patch_size, params)
    last = tuple(slice(a, b) for a, b in zip(params.starts[-1], params.stops[-1]))
    assert np.all(label[last] == params.levels[-1])
    union = np.zeros(BOX.patch_size, bool)
    for start, stop in zip(params.starts, params.stops):
        union[tuple(slice(a, b) for a, b in zip(start, stop))] = True
    np.testing.assert_array_equal(label > 0, union)


def test_fused_image_is_the_voxelwise_mixture():
    rng = np.random.default_rng(0)
    fg = rng.random((8, 9, 10), dtype=np.float32)
    bg = rng.random((8, 9, 10), dtype=np.float32)
    label = rng.integers(0, 5, (8, 9, 10)).astype(np.uint8)
    fused = fuse_images(fg, bg, label, 5)
    alpha = label / 4.0
    assert fused.dtype == np.float32
    np.testing.assert_allclose(fused, alpha * fg + (1 - alpha) * bg, atol=1e-6)
    np.testing.assert_array_equal(fused[label == 0], bg[label == 0])
    with pytest.raises(ValueError, match="shapes differ"):
        fuse_images(fg, bg[:-1], label, 5)


def test_label_fractions_sum_to_one():
    label = np.array([[[0, 1], [1, 4]]], np.uint8)
    np.testing.assert_allclose(label_fractions(label, 5), [0.25, 0.5, 0.0, 0.0, 0.25])
