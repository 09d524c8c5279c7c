"""The plans schema: JSON round trip, strict loading, overrides."""

import json

import pytest

from volfnet.errors import VolfnetError
from volfnet.plans import (
    PLANS_VERSION,
    ChannelNormalization,
    ConfigurationPlan,
    NetworkTopology,
    Plans,
    apply_override,
)


def make_plans() -> Plans:
    topology = NetworkTopology(
        name="fmunet",
        feature_channels=[16, 32, 64, 128],
        strides=[[2, 2, 2]] * 3,
        kernel_sizes=[[3, 3, 3]] * 4,
        dropout=[0.0, 0.0, 0.2, 0.2],
    )
    config = ConfigurationPlan(
        data_identifier="3d_fullres",
        spacing=[1.0, 1.0, 1.0],
        median_shape=[36, 50, 35],
        patch_size=[40, 56, 40],
        batch_size=4,
        network=topology,
        normalization=[ChannelNormalization("zscore")],
    )
    return Plans("Dataset004_Hippocampus", "cpu", 1, [0, 1, 2], [0, 1, 2], [1.0, 1.0, 1.0], [36, 50, 35], {"3d_fullres": config})


def test_round_trip_through_json(tmp_path):
    plans = make_plans()
    path = tmp_path / "plans.json"
    plans.save(path)
    data = json.loads(path.read_text())
    assert data["plans_version"] == PLANS_VERSION
    loaded = Plans.load(path)
    assert loaded == plans
    assert loaded.configuration("3d_fullres").network.total_downsampling() == [8, 8, 8]


def test_unknown_field_is_named(tmp_path):
    data = make_plans().to_dict()
    data["configurations"]["3d_fullres"]["patchsize"] = [1, 2, 3]
    with pytest.raises(VolfnetError, match="patchsize"):
        Plans.from_dict(data, "plans.json")


def test_wrong_version_is_refused():
    data = make_plans().to_dict()
    data["plans_version"] = 99
    with pytest.raises(VolfnetError, match="plans_version 99"):
        Plans.from_dict(data, "plans.json")


def test_wrong_type_is_named():
    data = make_plans().to_dict()
    data["configurations"]["3d_fullres"]["batch_size"] = "four"
    with pytest.raises(VolfnetError, match="batch_size"):
        Plans.from_dict(data, "plans.json")


def test_override_batch_and_widths():
    plans = apply_override(make_plans(), "3d_fullres.batch_size=2")
    assert plans.configuration("3d_fullres").batch_size == 2
    plans = apply_override(plans, "3d_fullres.network.feature_channels=[8,16,32,64]")
    assert plans.configuration("3d_fullres").network.feature_channels == [8, 16, 32, 64]


def test_override_that_breaks_divisibility_is_refused():
    with pytest.raises(VolfnetError, match="not divisible"):
        apply_override(make_plans(), "3d_fullres.patch_size=[40,50,40]")


def test_override_of_missing_field_is_named():
    with pytest.raises(VolfnetError, match="no field 'patch'"):
        apply_override(make_plans(), "3d_fullres.patch=[1,2,3]")


def test_unknown_configuration_is_named():
    with pytest.raises(VolfnetError, match="3d_lowres"):
        make_plans().configuration("3d_lowres")


def test_pctnet_patch_must_equal_input_size():
    plans = make_plans()
    config = plans.configuration("3d_fullres")
    config.network = NetworkTopology(
        name="pctnet", feature_channels=[24, 48, 128, 256, 512], strides=[[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * 4, dropout=[0, 0, 0.2, 0.2, 0.2], input_size=[64, 128, 128], resolution_mode=1,
    )
    config.patch_size = [32, 128, 128]
    with pytest.raises(VolfnetError, match="fixed input size"):
        config.check()
