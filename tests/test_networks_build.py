"""Building networks from plans, the explicit registry, meta-device builds (for the
planner's cost estimates) and the device speed settings."""

from __future__ import annotations

import contextlib

import pytest
import torch

from volfnet.errors import VolfnetError
from volfnet.networks import runtime
from volfnet.networks.build import NETWORK_REGISTRY, build_network, build_network_from_topology
from volfnet.networks.fmunet import FMUNet, published_fmunet_topology
from volfnet.networks.pctnet import PCTNet, published_pctnet_topology
from volfnet.plans import NETWORK_NAMES, ChannelNormalization, ConfigurationPlan, Plans


def make_plans(topology) -> Plans:
    configuration = ConfigurationPlan(
        data_identifier="3d_fullres",
        spacing=[1.0, 1.0, 1.0],
        median_shape=[40, 40, 40],
        patch_size=list(topology.input_size or [16, 32, 32]),
        batch_size=2,
        network=topology,
        normalization=[ChannelNormalization("zscore")] * 2,
    )
    return Plans("Dataset001_Toy", "cpu", 2, [0, 1, 2], [0, 1, 2], [1.0] * 3, [40] * 3, {"3d_fullres": configuration})


def test_registry_covers_every_plans_network_name():
    assert sorted(NETWORK_REGISTRY) == sorted(NETWORK_NAMES)


def test_build_network_from_plans():
    plans = make_plans(published_fmunet_topology(1, (2, 4, 8, 8, 8)))
    model = build_network(plans, "3d_fullres", 2, 3, deep_supervision=False)
    assert isinstance(model, FMUNet) and model.deep_supervision is False
    assert model.project.weight.shape == (2, 2, 1, 3, 3)
    assert model(torch.randn(1, 2, 16, 32, 32)).shape == (1, 3, 16, 32, 32)
    with pytest.raises(VolfnetError, match="configuration '2d' is not in the plans"):
        build_network(plans, "2d", 2, 3)


def test_build_pctnet_from_plans():
    topology = published_pctnet_topology(1, (8, 16, 16), feature_channels=(4, 8, 16, 16, 32), num_heads=(2, 2, 4), window_size=2)
    model = build_network(make_plans(topology), "3d_fullres", 2, 4)
    assert isinstance(model, PCTNet) and model.deep_supervision is True
    assert model.input_size == (8, 16, 16) and model.embeddings[1].proj.weight.shape == (4, 2, 1, 3, 3)


def test_unknown_network_name_is_a_clear_error():
    topology = published_fmunet_topology(0)
    topology.name = "unet"
    with pytest.raises(VolfnetError, match=r"unknown network 'unet'; available: \['fmunet', 'pctnet'\]"):
        build_network_from_topology(topology, 1, 2)


@pytest.mark.parametrize(
    "topology, params, output_shapes",
    [
        (published_fmunet_topology(0), 47371572, [(2, 5, 64, 128, 128), (2, 5, 32, 64, 64), (2, 5, 16, 32, 32), (2, 5, 8, 16, 16)]),
        (published_pctnet_topology(1), 45289554, [(2, 5, 64, 128, 128), (2, 5, 64, 64, 64), (2, 5, 32, 32, 32), (2, 5, 16, 16, 16)]),
    ],
)
def test_published_networks_build_and_run_on_the_meta_device(topology, params, output_shapes):
    with torch.device("meta"):
        model = build_network_from_topology(topology, 1, 5)
        outputs = model(torch.empty(2, 1, 64, 128, 128))
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == params
    assert [tuple(o.shape) for o in outputs] == output_shapes and outputs[0].is_meta


def test_cpu_runtime_settings_are_plain_fp32_contiguous():
    assert runtime.autocast_dtype("cpu") is None
    assert isinstance(runtime.autocast("cpu"), contextlib.nullcontext)
    assert runtime.use_channels_last("cpu") is False and runtime.use_channels_last("cpu", True) is True
    assert runtime.needs_grad_scaler(torch.float16) and not runtime.needs_grad_scaler(torch.bfloat16)
    model = runtime.prepare_model(FMUNet.from_topology(published_fmunet_topology(0, (2, 4, 8, 8, 8)), 1, 2), "cpu", True)
    assert model.project.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = runtime.prepare_input(torch.randn(1, 1, 16, 16, 32), "cpu", channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    assert model(x)[0].shape == (1, 2, 16, 16, 32)
