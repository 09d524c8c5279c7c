"""FMUNet: published layout (keys, shapes, parameter counts), numerics equal to PyMIC's
FMUNet (reference values recorded by benchmarks/networks/make_pymic_reference.py), planner
topologies, deep supervision and topology validation."""

from __future__ import annotations


import pytest
import torch
from helpers.fmunet_reference import output_summary, reference_input, reference_model
from helpers.specs import released_layout, state_dict_layout

from volfnet.errors import VolfnetError
from volfnet.networks.fmunet import FMUNet, published_fmunet_topology
from volfnet.plans import NetworkTopology

# Recorded from PyMIC 0.6.2's own FMUNet (pymic/net/net3d/fmunet.py) with the weights of
# seeded_state and reference_input() (helpers/fmunet_reference.py), by benchmarks/networks/make_pymic_reference.py.
PYMIC_REFERENCE: dict[int, list[dict[str, object]]] = {
    0: [
        {"shape": [1, 5, 16, 32, 32], "sum": 17496.10656, "abs_sum": 63601.75886,
         "samples": [-0.48705998, -1.9296596, 0.46568993, -0.43244335, 0.2746833, -0.42038184, 0.88091892]},
        {"shape": [1, 5, 8, 16, 16], "sum": -3348.031779, "abs_sum": 8396.78997,
         "samples": [-0.33488452, -1.1260378, 0.0096527934, 0.30557042, 0.90686572, 0.1330938, -1.1453651]},
        {"shape": [1, 5, 4, 8, 8], "sum": 583.4128832, "abs_sum": 897.5895839,
         "samples": [0.888237, 0.38280946, -0.074273556, -0.64649343, 0.22598746, 0.049987555, 1.3512127]},
        {"shape": [1, 5, 2, 4, 4], "sum": -46.63391638, "abs_sum": 85.35934773,
         "samples": [-0.30832589, -0.54073459, -0.19352835, -0.059812002, -0.080551699, -0.080551699, -0.30832589]},
    ],
    1: [
        {"shape": [1, 5, 16, 32, 32], "sum": 26014.76402, "abs_sum": 61643.40868,
         "samples": [-0.73987621, -0.29967004, 1.1003422, 1.387629, 0.2737878, 0.33013564, 0.17105366]},
        {"shape": [1, 5, 16, 16, 16], "sum": 3497.820639, "abs_sum": 16083.29418,
         "samples": [0.61263776, 0.52086329, -0.40882546, -0.068395019, 3.0506799, 0.78634638, 1.1492726]},
        {"shape": [1, 5, 8, 8, 8], "sum": -475.4766157, "abs_sum": 2024.438284,
         "samples": [0.39397451, -0.90215194, 2.066586, -1.0746998, -0.11290041, -0.26620239, 0.092987463]},
        {"shape": [1, 5, 4, 4, 4], "sum": 110.8835382, "abs_sum": 236.3773299,
         "samples": [0.25163347, -0.01139179, 1.9104189, -0.2591942, 1.3714323, 1.3714323, 0.25163347]},
    ],
    2: [
        {"shape": [1, 5, 16, 32, 32], "sum": 48512.67138, "abs_sum": 85900.38932,
         "samples": [0.075119041, 0.97472799, 0.54578733, 0.53316343, -0.77653849, 0.074345611, -0.19532125]},
        {"shape": [1, 5, 16, 16, 16], "sum": -7255.618845, "abs_sum": 16101.14848,
         "samples": [0.21601285, -0.038371742, -1.1794217, -0.36525038, -0.56540352, -0.30138227, 1.1623867]},
        {"shape": [1, 5, 16, 8, 8], "sum": -280.2655462, "abs_sum": 3714.37142,
         "samples": [-0.64880592, -0.16653177, 0.12563211, -0.086052865, 0.3599146, -0.6310662, 0.056838866]},
        {"shape": [1, 5, 8, 4, 4], "sum": -84.79867688, "abs_sum": 380.9228668,
         "samples": [-0.06459567, -0.34317094, 0.38523623, -0.23641987, 0.2552366, -0.42146185, 0.10385838]},
    ],
}


@pytest.mark.parametrize("res_mode, spec", [(0, "fmunet_keys.json"), (1, "fmunet_resmode1_keys.json")])
def test_published_layout_matches_spec_key_for_key(res_mode, spec):
    reference = released_layout(spec)
    with torch.device("meta"):
        model = FMUNet.from_topology(published_fmunet_topology(res_mode), 1, 5)
    assert state_dict_layout(model) == reference["keys"]
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"] == (47371572, 47220660)[res_mode]
    assert len(list(model.buffers())) == 0


@pytest.mark.parametrize("res_mode, classes, expected", [(2, 5, 46625076), (0, 2, 47332680)])
def test_published_parameter_counts(res_mode, classes, expected):
    with torch.device("meta"):
        model = FMUNet.from_topology(published_fmunet_topology(res_mode), 1, classes)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_res_mode_2_flattens_levels_0_and_1():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in FMUNet.from_topology(published_fmunet_topology(2), 1, 5).state_dict().items()}
    assert shapes["encoder.down1.down.2.weight"] == (128, 64, 1, 3, 3)
    assert shapes["decoder.de_conv1.conv_list.0.3.weight"] == (64, 64, 1, 3, 3)
    assert shapes["out_layers.1.2.weight"] == (5, 64, 1, 3, 3)
    assert shapes["encoder.en_conv2.conv_list.0.3.weight"] == (128, 128, 3, 3, 3)


@pytest.mark.parametrize("res_mode", [0, 1, 2])
def test_outputs_equal_pymic_fmunet(res_mode):
    if res_mode not in PYMIC_REFERENCE:
        pytest.fail("PYMIC_REFERENCE is empty: run benchmarks/networks/make_pymic_reference.py")
    with torch.no_grad():
        outputs = reference_model(res_mode)(reference_input())
    for got, want in zip(output_summary(outputs), PYMIC_REFERENCE[res_mode], strict=True):
        assert got["shape"] == want["shape"]
        scale = want["abs_sum"]
        assert got["abs_sum"] == pytest.approx(scale, rel=1e-5)
        assert abs(got["sum"] - want["sum"]) <= 1e-5 * scale
        assert got["samples"] == pytest.approx(want["samples"], abs=1e-5)


def test_deep_supervision_scales_and_runtime_toggle():
    model = reference_model(1)
    x = reference_input()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        outputs = model(x)
        model.deep_supervision = False
        single = model(x)
    assert [tuple(o.shape[2:]) for o in outputs] == [(16, 32, 32), (16, 16, 16), (8, 8, 8), (4, 4, 4)]
    assert model.output_scales() == [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    assert torch.equal(single, outputs[0])
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "channels, strides, kernels, shape",
    [
        ([4, 8, 16, 32], [[2, 2, 2]] * 3, [[3, 3, 3]] * 4, (16, 16, 16)),  # isotropic, 4 levels
        ([4, 8, 16, 16, 16], [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 1]], [[1, 3, 3]] * 2 + [[3, 3, 3]] * 2 + [[3, 3, 1]], (8, 32, 16)),
        ([2, 4, 8], [[2, 2, 2], [2, 2, 2]], [[3, 3, 3]] * 3, (8, 8, 8)),  # tiny, 3 levels
        ([2, 2, 4, 4, 8, 8, 8], [[1, 2, 2]] * 6, [[1, 3, 3]] * 7, (2, 128, 128)),  # 7 levels
    ],
)
def test_planner_topologies_build_and_give_expected_shapes(channels, strides, kernels, shape):
    topology = NetworkTopology("fmunet", channels, strides, kernels, [0.0] * len(channels), depth=1)
    model = FMUNet.from_topology(topology, 2, 3)
    outputs = model(torch.randn(1, 2, *shape))
    heads = min(len(channels) - 1, 4)
    assert len(outputs) == len(model.out_layers) == heads
    for out, scale in zip(outputs, model.output_scales()):
        assert out.shape == (1, 3, *(s // f for s, f in zip(shape, scale)))
    sum(o.mean() for o in outputs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_sizes_not_divisible_by_the_strides_still_line_up():
    model = FMUNet.from_topology(published_fmunet_topology(0, (2, 4, 8, 8, 8)), 1, 2)
    out = model(torch.randn(1, 1, 13, 17, 22))
    assert [tuple(o.shape[2:]) for o in out] == [(13, 17, 22), (7, 9, 11), (4, 5, 6), (2, 3, 3)]


def test_he_initialisation_and_dropout_levels():
    torch.manual_seed(0)
    model = FMUNet.from_topology(published_fmunet_topology(0, (16, 32, 64, 64, 64)), 1, 5)
    weight = model.encoder.en_conv2.conv_list[0][3].weight
    # He (Kaiming) normal for LeakyReLU(0.01): fan-in 64 x 3 x 3 x 3 = 1728, std sqrt(2 / 1.0001 / 1728) = 0.03402
    assert weight.shape == (64, 64, 3, 3, 3) and weight.std().item() == pytest.approx(0.03402, rel=0.05)
    assert not model.encoder.en_conv2.conv_list[0][3].bias.any()
    probabilities = [getattr(model.encoder, f"en_conv{i}").conv_list[0][2].p for i in range(5)]
    assert probabilities == [0.0, 0.0, 0.2, 0.2, 0.2]
    assert [getattr(model.decoder, f"de_conv{i}").conv_list[1][2].p for i in range(5)] == probabilities


def test_dropout_is_active_only_in_training():
    model = FMUNet.from_topology(published_fmunet_topology(0, (2, 4, 8, 8, 8), dropout=0.5), 1, 2)
    model.deep_supervision = False
    x = torch.randn(1, 1, 16, 16, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kernel_sizes": [[3, 3, 3]] * 4 + [[2, 3, 3]]}, "must be odd"),
        ({"strides": [[2, 2, 2]] * 3 + [[0, 2, 2]]}, "three positive integers"),
        ({"dropout": [0.0, 0.0, 0.2, 0.2, 1.5]}, "dropout must be 5 values"),
        ({"depth": 0}, "depth"),
        ({"feature_channels": [32, 64, 128, 256, -512]}, "positive integers"),
    ],
)
def test_bad_topologies_raise_clear_errors(change, message):
    fields = {**vars(published_fmunet_topology(0)), **change}
    with pytest.raises(VolfnetError, match=message):
        FMUNet.from_topology(NetworkTopology(**fields), 1, 2)


def test_too_small_input_names_the_level_and_the_minimum_size():
    model = FMUNet.from_topology(published_fmunet_topology(0, (2, 4, 8, 8, 8)), 1, 2)
    with pytest.raises(VolfnetError, match=r"\[16, 16, 16\] is too small .* level 4 .* 1 x 1 x 1 .* down-sampling \[16, 16, 16\]"):
        model(torch.randn(1, 1, 16, 16, 16))
    assert model(torch.randn(1, 1, 16, 16, 17))[0].shape == (1, 2, 16, 16, 17)


def test_bad_counts_and_res_mode_raise():
    with pytest.raises(VolfnetError, match="input channels"):
        FMUNet.from_topology(published_fmunet_topology(0), 0, 2)
    with pytest.raises(VolfnetError, match="res_mode"):
        published_fmunet_topology(3)
