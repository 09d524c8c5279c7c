"""Read a network's topology from a bare PyMIC/MIS-FM state dict (no volfnet spec).

Released MIS-FM checkpoints are ``{'model_state_dict': ...}`` and nothing else: which network,
how wide, how deep, which resolution mode. The key layout says which network it is, and the
tensor shapes say the rest (:data:`INFERENCE_REGISTRY`, one reader per network); what a state
dict cannot say (dropout, PCT-Net's input size) is taken from the published defaults and
returned as notes. Every inferred topology is checked by building the network on the meta
device and comparing every key and shape. The knowledge is about the networks' weight names,
so it lives here; the planner (``volfnet.planning.fit_checkpoint``) uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from volfnet.errors import VolfnetError
from volfnet.networks.build import build_network_from_topology
from volfnet.networks.fmunet import PUBLISHED_DROPOUT as FMUNET_PUBLISHED_DROPOUT
from volfnet.networks.fmunet import published_fmunet_topology
from volfnet.networks.pctnet import PUBLISHED_DROPOUT as PCTNET_PUBLISHED_DROPOUT
from volfnet.networks.pctnet import PUBLISHED_INPUT_SIZE
from volfnet.networks.pctnet import published_pctnet_topology
from volfnet.plans import NetworkTopology

PCTNET_DEFAULT_RESOLUTION_MODE = 1  # the MIS-FM demo fine-tunes the released PCT-Net with resolution_mode 1
DIFFERENCES_LISTED = 5


def _shape(state: Mapping[str, torch.Tensor], key: str) -> list[int]:
    if key not in state:
        raise VolfnetError(f"expected weight {key!r} is not in the checkpoint")
    return [int(s) for s in state[key].shape]


def _conv_weight(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """Shape of the 5-D convolution weight directly under ``prefix`` (index 2 or 3 of a
    pre-activation Sequential, depending on whether it has a dropout slot)."""
    for index in (3, 2):
        key = f"{prefix}.{index}.weight"
        if key in state and state[key].dim() == 5:
            return [int(s) for s in state[key].shape]
    raise VolfnetError(f"no convolution weight under {prefix!r} in the checkpoint")


def _count(state: Mapping[str, torch.Tensor], template: str) -> int:
    """How many consecutive ``i`` from 0 have a key starting with ``template.format(i)``."""
    count = 0
    while any(key.startswith(template.format(count)) for key in state):
        count += 1
    return count


def infer_fmunet(state: Mapping[str, torch.Tensor]) -> tuple[NetworkTopology, int, int, list[str]]:
    """FMUNet topology from a PyMIC/MIS-FM state dict: widths from the encoder norms, kernels
    from the encoder convolutions, residual depth from the units of level 0."""
    levels = _count(state, "encoder.en_conv{}.")
    depth = _count(state, "encoder.en_conv0.conv_list.{}.")
    channels = [_shape(state, f"encoder.en_conv{i}.conv_list.0.0.weight")[0] for i in range(levels)]
    kernels = [_conv_weight(state, f"encoder.en_conv{i}.conv_list.0")[2:] for i in range(levels)]
    strides = [[2 if k == 3 else 1 for k in kernel] for kernel in kernels[:-1]]
    dropout = [0.0 if level < 2 else FMUNET_PUBLISHED_DROPOUT for level in range(levels)]
    topology = NetworkTopology("fmunet", channels, strides, kernels, dropout, depth=depth)
    notes = [
        f"FMUNet with {levels} levels, widths {channels}, residual depth {depth}, kernels {kernels} (read from the weights)",
        (
            f"strides {strides} follow the published rule: 2 along an axis where the level's kernel is 3, else 1 "
            "(strides are not stored in a state dict)"
        ),
        f"dropout {dropout}: PyMIC's default (not stored in a state dict)",
    ]
    for res_mode in (0, 1, 2):
        if levels == 5 and topology == published_fmunet_topology(res_mode, channels, FMUNET_PUBLISHED_DROPOUT, depth):
            notes.insert(0, f"this is the published FMUNet topology with res_mode {res_mode}")
    in_channels = _shape(state, "project.weight")[1]
    num_classes = _conv_weight(state, "out_layers.0")[0]
    return topology, in_channels, num_classes, notes


def infer_pctnet(state: Mapping[str, torch.Tensor]) -> tuple[NetworkTopology, int, int, list[str]]:
    """PCT-Net topology from a PyMIC/MIS-FM state dict: widths from the down-sampling
    convolutions, heads and window from the relative-position tables, resolution mode from
    the branch whose BatchNorms were trained (``num_batches_tracked`` > 0)."""
    channels = [
        _shape(state, "embeddings.0.proj.weight")[0],
        _conv_weight(state, "embeddings.0.down1.conv")[0],
        _conv_weight(state, "embeddings.0.down2.conv")[0],
        _conv_weight(state, "pyramid_ct.down3.conv")[0],
        _conv_weight(state, "pyramid_ct.down4.conv")[0],
    ]
    tables = [_shape(state, f"pyramid_ct.convtrans_e{level}.trans.blocks.0.attn.relative_position_bias_table") for level in (2, 3, 4)]
    heads = [table[1] for table in tables]
    side = round(tables[0][0] ** (1 / 3))
    if side**3 != tables[0][0] or side % 2 == 0:
        raise VolfnetError(f"PCT-Net relative-position table of {tables[0][0]} rows is not (2w-1)^3 for any window w")
    window = (side + 1) // 2
    depth = _count(state, "pyramid_ct.convtrans_e2.trans.blocks.{}.")
    notes = [f"PCT-Net widths {channels}, heads {heads}, window {window}, {depth} Swin blocks per PCT block (read from the weights)"]
    trained = []
    for mode in (0, 1, 2):
        counters = [v for k, v in state.items() if k.startswith(f"embeddings.{mode}.") and k.endswith("num_batches_tracked")]
        if counters and sum(int(v.sum()) for v in counters) > 0:
            trained.append(mode)
    in_channels = _shape(state, "embeddings.0.proj.weight")[1]
    num_classes = _conv_weight(state, "pred_heads.0.out_conv0.conv")[0]
    # The deepest Swin window is clipped to its token grid, which depends on the mode: only
    # modes whose network reproduces every shape at the published input size are candidates.
    order = trained if len(trained) == 1 else [PCTNET_DEFAULT_RESOLUTION_MODE, *(m for m in (0, 1, 2) if m != PCTNET_DEFAULT_RESOLUTION_MODE)]
    candidates = []
    for mode in order:
        topology = published_pctnet_topology(mode, PUBLISHED_INPUT_SIZE, channels, PCTNET_PUBLISHED_DROPOUT, heads, window, depth)
        try:
            verify_topology(state, topology, in_channels, num_classes, "checkpoint")
        except VolfnetError:
            continue
        candidates.append((mode, topology))
    if not candidates:
        raise VolfnetError(
            f"no PCT-Net resolution mode {order} reproduces the checkpoint's shapes at the published input size "
            f"{list(PUBLISHED_INPUT_SIZE)}; the checkpoint was trained for another input size"
        )
    mode, topology = candidates[0]
    if len(trained) == 1:
        notes.append(f"resolution_mode {mode}: the only input branch with trained BatchNorm statistics")
    else:
        which = "no input branch" if not trained else f"input branches {trained}"
        notes.append(
            f"resolution_mode {mode}: {which} has trained BatchNorm statistics; the first of modes "
            f"{[m for m, _ in candidates]} (whose networks reproduce the weights' shapes), the MIS-FM demo's mode first"
        )
    notes.append(f"input size {list(PUBLISHED_INPUT_SIZE)}: the published one (a state dict does not store it); the patch is set to it")
    notes.append(f"dropout {list(PCTNET_PUBLISHED_DROPOUT)}: the published default (not stored in a state dict)")
    return topology, in_channels, num_classes, notes


#: Key that identifies a network family in a foreign state dict -> how to read its topology.
INFERENCE_REGISTRY: dict[str, tuple[tuple[str, ...], Callable]] = {
    "fmunet": (("project.weight", "encoder.en_conv0.conv_list.0.0.weight", "out_layers.0"), infer_fmunet),
    "pctnet": (("embeddings.0.proj.weight", "pyramid_ct.down3.", "pred_heads.0.out_conv0"), infer_pctnet),
}


def verify_topology(state: Mapping[str, torch.Tensor], topology: NetworkTopology, in_channels: int, num_classes: int, source: str) -> None:
    """Build the network on the meta device and require every key and shape to match ``state``."""
    with torch.device("meta"):
        model = build_network_from_topology(topology, in_channels, num_classes, deep_supervision=True)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    have = {k: list(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    differences = [f"{k}: network {expected[k]}, checkpoint {have.get(k, 'missing')}" for k in expected if have.get(k) != expected[k]]
    differences += [f"{k}: only in the checkpoint" for k in have if k not in expected]
    if differences:
        raise VolfnetError(
            f"{source}: the inferred {topology.name} topology does not reproduce the checkpoint's weights "
            f"({len(differences)} difference(s), e.g. {'; '.join(differences[:DIFFERENCES_LISTED])})"
        )


def infer_topology(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> tuple[NetworkTopology, int, int, list[str]]:
    """Topology, input channels, classes and notes of a foreign (spec-less) state dict."""
    for name, (markers, infer) in INFERENCE_REGISTRY.items():
        if all(any(key.startswith(marker) for key in state) for marker in markers):
            topology, in_channels, num_classes, notes = infer(state)
            verify_topology(state, topology, in_channels, num_classes, source)
            notes.append(f"checked: a {name} built from this topology has exactly the checkpoint's {len(state)} keys and shapes")
            return topology, in_channels, num_classes, notes
    raise VolfnetError(
        f"{source}: neither an FMUNet nor a PCT-Net state dict (no volfnet spec; first keys {list(state)[:5]}); "
        "only volfnet checkpoints and PyMIC/MIS-FM FMUNet or PCT-Net files can seed plans"
    )
