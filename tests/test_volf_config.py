"""VolFConfig: published defaults, the patch-derived size rule, validation, JSON round trip."""

from __future__ import annotations

import json

import pytest

from volfnet.errors import VolfnetError
from volfnet.volf.config import (
    VolFConfig,
    apply_volf_override,
    default_block_size_range,
    default_box_size_range,
)


def test_defaults_are_the_published_values():
    config = VolFConfig()
    assert config.patch_size == [64, 128, 128]
    assert config.scale_lower == [0.7, 0.7, 0.7] and config.scale_upper == [1.5, 1.5, 1.5]
    assert config.augmentation_mode == 3
    assert config.num_classes == 5 and config.num_levels == 4
    assert config.foreground_ratio == 0.7
    assert config.fusion_mode == "grid"
    assert config.box_count_range == [10, 40]
    assert config.low_percentile_range == [0.1, 2.0] and config.high_percentile_range == [98.0, 99.9]
    assert config.gamma_range == [0.7, 1.5] and config.invert_probability == 0.25
    assert config.block_size_range() == ([5, 8, 8], [20, 32, 32])
    assert config.box_size_range() == ([8, 8, 8], [40, 80, 80])


@pytest.mark.parametrize(
    "patch, block, box",
    [
        ([64, 128, 128], ([5, 8, 8], [20, 32, 32]), ([8, 8, 8], [40, 80, 80])),
        ([32, 64, 64], ([3, 4, 4], [10, 16, 16]), ([4, 4, 4], [20, 40, 40])),
        ([96, 96, 96], ([8, 6, 6], [30, 24, 24]), ([12, 6, 6], [60, 60, 60])),
        ([40, 56, 40], ([3, 4, 3], [13, 14, 10]), ([5, 4, 3], [25, 35, 25])),
        ([4, 4, 4], ([1, 1, 1], [1, 1, 1]), ([1, 1, 1], [3, 3, 3])),
    ],
)
def test_derived_sizes_keep_the_published_fractions_per_axis(patch, block, box):
    assert default_block_size_range(patch) == block
    assert default_box_size_range(patch) == box
    resolved = VolFConfig(patch_size=patch).resolved()
    assert (resolved.block_size_min, resolved.block_size_max) == block
    assert (resolved.box_size_min, resolved.box_size_max) == box


def test_explicit_sizes_win_over_derived_ones():
    config = VolFConfig(patch_size=[32, 64, 64], block_size_min=[2, 2, 2], block_size_max=[4, 4, 4])
    assert config.block_size_range() == ([2, 2, 2], [4, 4, 4])


def test_dict_round_trip_is_json_and_keeps_unresolved_sizes():
    config = VolFConfig(patch_size=[32, 64, 64], fusion_mode="box", num_classes=3)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["block_size_min"] is None
    assert VolFConfig.from_dict(data) == config
    resolved = config.resolved()
    assert VolFConfig.from_dict(json.loads(json.dumps(resolved.to_dict()))) == resolved
    assert resolved.to_dict()["block_size_min"] == [3, 4, 4]


def test_tuples_are_normalised_to_lists():
    config = VolFConfig(patch_size=(16, 32, 32), scale_lower=(1, 1, 1), scale_upper=(1, 1, 1))
    assert config.patch_size == [16, 32, 32] and config.scale_lower == [1.0, 1.0, 1.0]
    assert isinstance(config.scale_lower[0], float)


def test_from_dict_refuses_unknown_keys_naming_them():
    with pytest.raises(VolfnetError, match="fusion_mod"):
        VolFConfig.from_dict({"fusion_mod": "box"})


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"augmentation_mode": 4}, "augmentation_mode"),
        ({"augmentation_mode": 1.0}, "augmentation_mode"),
        ({"foreground_ratio": 1.5}, "foreground_ratio"),
        ({"fusion_mode": "boxes"}, "fusion_mode"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 300}, "num_classes"),
        ({"patch_size": [64, 128]}, "patch_size"),
        ({"patch_size": [64, 0, 128]}, "patch_size"),
        ({"scale_lower": [1.6, 0.7, 0.7]}, "scale_lower"),
        ({"block_size_max": [80, 32, 32]}, "block_size_max"),
        ({"block_size_min": [10, 8, 8], "block_size_max": [5, 32, 32]}, "block_size_min"),
        ({"box_count_range": [40, 10]}, "box_count_range"),
        ({"gamma_range": [0.0, 1.5]}, "gamma_range"),
        ({"low_percentile_range": [1.0, 99.0]}, "low_percentile_range"),
        ({"invert_probability": True}, "invert_probability"),
    ],
)
def test_invalid_options_raise_volfnet_error_naming_the_option(kwargs, option):
    with pytest.raises(VolfnetError, match=option):
        VolFConfig(**kwargs)


def test_mixed_explicit_and_derived_bounds_that_cross_are_reported():
    config = VolFConfig(block_size_min=[30, 8, 8])
    with pytest.raises(VolfnetError, match="block_size"):
        config.block_size_range()


def test_override_parses_json_values_and_bare_words():
    config = VolFConfig()
    changed = apply_volf_override(config, "block_size_max=[16,32,32]")
    changed = apply_volf_override(changed, "fusion_mode=box")
    changed = apply_volf_override(changed, "foreground_ratio=0.5")
    assert changed.block_size_max == [16, 32, 32]
    assert changed.fusion_mode == "box" and changed.foreground_ratio == 0.5
    assert config.fusion_mode == "grid" and config.block_size_max is None


@pytest.mark.parametrize("assignment, message", [("fusion_mode", "key=value"), ("colour=red", "no option 'colour'"), ("num_classes=1", "num_classes")])
def test_bad_overrides_raise_clear_errors(assignment, message):
    with pytest.raises(VolfnetError, match=message):
        apply_volf_override(VolFConfig(), assignment)
