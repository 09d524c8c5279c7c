"""Hand-checked cases for the planner's heuristics (spacing, transpose, topology)."""

import pytest

from volfnet.planning.spacing import target_spacing, transpose_for_spacing
from volfnet.planning.topology import (
    feature_channels,
    fmunet_strides_and_kernels,
    fmunet_topology,
    pctnet_resolution_mode,
    pctnet_topology,
    round_up_patch,
)


def test_isotropic_ct_spacing_is_the_median():
    spacings = [[1.0, 0.8, 0.8], [1.5, 0.7, 0.7], [2.0, 0.9, 0.9]]
    shapes = [[200, 512, 512]] * 3
    assert target_spacing(spacings, shapes) == [1.5, 0.8, 0.8]


def test_anisotropic_mr_uses_tenth_percentile_of_the_thick_axis():
    # 5 mm slices (some 8 and 10 mm), 1.5 mm in-plane, few slices: nnU-Net's verified case gives z = 5.
    spacings = [[5.0, 1.5, 1.5]] * 4 + [[8.0, 1.5, 1.5]] * 4 + [[10.0, 1.5, 1.5]] * 4
    shapes = [[12, 200, 200]] * 12
    spacing = target_spacing(spacings, shapes)
    assert spacing[0] == pytest.approx(5.0)
    assert spacing[1:] == [1.5, 1.5]


def test_anisotropic_spacing_with_many_voxels_keeps_the_median():
    spacings = [[5.0, 1.0, 1.0]] * 3 + [[8.0, 1.0, 1.0]] * 4
    shapes = [[300, 200, 200]] * 7  # plenty of slices: no reason to upsample z
    assert target_spacing(spacings, shapes)[0] == pytest.approx(8.0)


def test_transpose_moves_the_coarsest_axis_first():
    forward, backward = transpose_for_spacing([0.8, 0.8, 5.0])
    assert forward == [2, 0, 1]
    assert [forward[b] for b in backward] == [0, 1, 2]
    assert transpose_for_spacing([1.0, 1.0, 1.0]) == ([0, 1, 2], [0, 1, 2])


def test_isotropic_patch_gives_the_published_fmunet_topology():
    strides, kernels = fmunet_strides_and_kernels([1.0, 1.0, 1.0], [64, 128, 128])
    assert strides == [[2, 2, 2]] * 4  # capped at 5 levels: the published depth
    assert kernels == [[3, 3, 3]] * 5


def test_thick_slices_give_res_mode_style_first_levels():
    # 3 mm vs 1 mm: level 0 in-plane only, like PyMIC res_mode 1.
    strides, kernels = fmunet_strides_and_kernels([3.0, 1.0, 1.0], [32, 128, 128])
    assert strides[0] == [1, 2, 2] and kernels[0] == [1, 3, 3]
    assert strides[1] == [2, 2, 2] and kernels[1] == [3, 3, 3]
    # 5 mm vs 1 mm: two in-plane levels, like res_mode 2.
    strides, kernels = fmunet_strides_and_kernels([5.0, 1.0, 1.0], [24, 160, 160])
    assert strides[:2] == [[1, 2, 2], [1, 2, 2]]
    assert kernels[:2] == [[1, 3, 3], [1, 3, 3]]
    assert kernels[2] == [3, 3, 3]


def test_tiny_hippocampus_like_patch_stops_pooling_at_the_minimum_edge():
    strides, kernels = fmunet_strides_and_kernels([1.0, 1.0, 1.0], [40, 56, 40])
    assert strides == [[2, 2, 2]] * 3  # 40 -> 20 -> 10 -> 5: a fourth pooling would go below 4
    assert len(kernels) == 4


def test_tiny_patch_still_gets_three_levels():
    topology = fmunet_topology([1.0, 1.0, 1.0], [8, 8, 8], base_features=16, max_features=256)
    assert topology.num_levels == 3
    assert topology.feature_channels == [16, 32, 64]
    assert topology.strides == [[2, 2, 2], [2, 2, 2]]


def test_feature_channels_double_and_cap():
    assert feature_channels(6, 32, 512) == [32, 64, 128, 256, 512, 512]
    assert feature_channels(5, 16, 256) == [16, 32, 64, 128, 256]


def test_round_up_patch():
    assert round_up_patch([40, 50, 35], [8, 8, 8]) == [40, 56, 40]


def test_pctnet_resolution_mode_from_spacing_and_published_channels():
    assert pctnet_resolution_mode([1.0, 1.0, 1.0]) == 0
    assert pctnet_resolution_mode([2.0, 1.0, 1.0]) == 1
    assert pctnet_resolution_mode([5.0, 1.0, 1.0]) == 2
    topology = pctnet_topology([2.0, 0.8, 0.8], [64, 128, 128], base_features=32, max_features=512)
    assert topology.feature_channels == [24, 48, 128, 256, 512]
    assert topology.resolution_mode == 1
    assert topology.total_downsampling() == [8, 16, 16]
    assert topology.input_size == [64, 128, 128]
