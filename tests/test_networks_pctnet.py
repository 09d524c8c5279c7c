"""PCT-Net: published layout (keys, shapes, counts, the aliased relative-position index),
all three resolution modes, output scales, the fixed-input-size contract and validation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from helpers.specs import released_layout, state_dict_layout

from volfnet.errors import VolfnetError
from volfnet.networks.pctnet import PCTNet, published_pctnet_topology
from volfnet.plans import NetworkTopology

TINY = {"feature_channels": (4, 8, 16, 16, 32), "num_heads": (2, 2, 4), "window_size": 2}
TINY_SIZES = {0: (16, 16, 16), 1: (8, 16, 16), 2: (4, 16, 16)}


def _published(resolution_mode: int, classes: int = 5, device: str = "meta") -> PCTNet:
    with torch.device(device):
        return PCTNet.from_topology(published_pctnet_topology(resolution_mode), 1, classes)


def _tiny(resolution_mode: int, classes: int = 3) -> PCTNet:
    topology = published_pctnet_topology(resolution_mode, TINY_SIZES[resolution_mode], **TINY)
    return PCTNet.from_topology(topology, 1, classes)


def test_published_layout_matches_spec_key_for_key():
    spec = released_layout("pctnet_keys.json")
    model = _published(1)
    assert state_dict_layout(model) == spec["keys"]
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"] == 45289554
    persistent = {k: v for k, v in model.state_dict().items() if k not in dict(model.named_parameters())}
    assert sorted(persistent) == sorted(spec["buffers"])
    assert sum(v.numel() for v in persistent.values()) == spec["num_buffer_elements"]


def test_two_class_head_parameter_count():
    assert sum(p.numel() for p in _published(1, classes=2).parameters()) == 45287730


def test_relative_position_index_reproduces_the_published_aliasing():
    spec = released_layout("pctnet_keys.json")
    state = _published(1, device="cpu").state_dict()
    index_keys = [k for k in state if k.endswith("relative_position_index")]
    assert len(index_keys) == spec["relative_position_index_summary"]["count"] == 10
    for key in index_keys:
        values = state[key].numpy().astype("<i8")
        expected = spec["int_buffers"][key]
        assert hashlib.sha256(values.tobytes()).hexdigest() == expected["sha256_int64_le"]
        assert (len(np.unique(values)), int(values.max()), int(values.sum())) == (291, 290, expected["sum"])
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) == 66 and all(int(state[k]) == 0 for k in counters)


def test_resolution_mode_2_has_the_published_shapes_and_mode_0_shrinks_the_deepest_window():
    spec_shapes = {k: s for k, s, _ in released_layout("pctnet_keys.json")["keys"]}
    mode2 = {k: list(v.shape) for k, v in _published(2).state_dict().items()}
    assert mode2 == spec_shapes
    mode0 = {k: list(v.shape) for k, v in _published(0).state_dict().items()}
    assert mode0.keys() == spec_shapes.keys()
    changed = sorted(k for k in mode0 if mode0[k] != spec_shapes[k])
    # level 4 of a 64x128x128 input is 4x8x8 in mode 0: one 4-voxel window, no shift
    assert changed == sorted(
        f"pyramid_ct.convtrans_e4.trans.blocks.{b}.attn.{name}"
        for b in (0, 1)
        for name in ("relative_position_bias_table", "relative_position_index")
    )
    assert mode0["pyramid_ct.convtrans_e4.trans.blocks.1.attn.relative_position_bias_table"] == [343, 16]
    assert mode0["pyramid_ct.convtrans_e4.trans.blocks.0.attn.relative_position_index"] == [64, 64]


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_output_shapes_scales_and_only_the_selected_branch_learns(mode):
    torch.manual_seed(0)
    model = _tiny(mode)
    size = TINY_SIZES[mode]
    outputs = model(torch.randn(2, 1, *size))
    scales = model.output_scales()
    assert scales == {
        0: [(1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8)],
        1: [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)],
        2: [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8)],
    }[mode]
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *(s // f for s, f in zip(size, scale))) for scale in scales]
    sum(o.mean() for o in outputs).backward()
    for branch in range(3):
        grads = [p.grad for p in model.embeddings[branch].parameters()]
        assert all(g is not None for g in grads) == (branch == mode)
        assert all(g is None for g in grads) == (branch != mode)


def test_deep_supervision_toggle_and_batch_of_one():
    size = (8, 32, 32)  # level 4 is 1x2x2: BatchNorm needs more than one value with a batch of 1
    model = PCTNet.from_topology(published_pctnet_topology(1, size, **TINY), 1, 3).eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        outputs = model(x)
        model.deep_supervision = False
        single = model(x)
    assert torch.allclose(single, outputs[0], atol=1e-6)
    model.train()
    assert model(x).shape == (1, 3, *size)


def test_wrong_input_size_names_expected_and_given_size():
    model = _tiny(1)
    with pytest.raises(VolfnetError, match=r"built for input size \[8, 16, 16\].*got .*\[8, 16, 32\]"):
        model(torch.randn(1, 1, 8, 16, 32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": (8, 30, 16)}, "must be divisible by"),
        ({"num_heads": (3, 2, 4)}, "num_heads dividing"),
        ({"feature_channels": (4, 8, 16, 16)}, "exactly 5 levels"),
        ({"window_size": 1}, "window_size"),
    ],
)
def test_bad_configurations_raise(kwargs, message):
    arguments = {"input_size": TINY_SIZES[1], **TINY, **kwargs}
    with pytest.raises(VolfnetError, match=message):
        PCTNet(1, 2, resolution_mode=1, **arguments)


def test_topology_strides_must_match_the_resolution_mode():
    fields = vars(published_pctnet_topology(1, TINY_SIZES[1], **TINY))
    wrong = NetworkTopology(**{**fields, "strides": [[2, 2, 2]] * 4})
    with pytest.raises(VolfnetError, match=r"resolution_mode 1 implies strides \[\[1, 2, 2\]"):
        PCTNet.from_topology(wrong, 1, 2)
    four_levels = NetworkTopology(**{**fields, "feature_channels": [4, 8, 16, 16], "strides": [[1, 2, 2]] * 3,
                                     "kernel_sizes": [[3, 3, 3]] * 4, "dropout": [0.0] * 4})
    with pytest.raises(VolfnetError, match="exactly 5 levels"):
        PCTNet.from_topology(four_levels, 1, 2)
