"""Plan a new dataset to fit a pretrained checkpoint (``volfnet_plan_and_preprocess --pretrained``).

A network pretrained on one pool (``volfnet_pretrain``) or a released MIS-FM foundation
checkpoint fine-tunes on another dataset only if the new plans build *the same network*:
feature channels, strides, kernels, residual depth, FMUNet ``res_mode`` anisotropy, PCT-Net
resolution mode, heads, window and fixed input size. Here the checkpoint fixes that topology;
the planner then adapts what the data decide:

- spacing: the new dataset's own (a warning when its anisotropy does not suit the network's
  first levels);
- patch: the planner's budgeted patch, rounded to the checkpoint's total down-sampling
  (PCT-Net: exactly its fixed input size);
- batch size: the budget, measured on the checkpoint's network;
- normalisation: the checkpoint's scheme per channel (its "family": CT windowing, z-score,
  ...) with the new dataset's own statistics, where the modalities agree.

Only ``3d_fullres`` is planned (the low-resolution cascade would need a second network).

Which checkpoints: volfnet checkpoints carry their spec (topology, channels, normalisation),
so nothing is guessed. Bare PyMIC/MIS-FM files (``{'model_state_dict': ...}``, no spec) are
recognised by their key layout; the topology is read from the tensor shapes (explicit
registry :data:`INFERENCE_REGISTRY`), every assumption is logged, and the result is checked
by building the network on the meta device and comparing every key and shape.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from volfnet.checkpoint import CheckpointSpec, checkpoint_spec, load_checkpoint
from volfnet.errors import VolfnetError
from volfnet.io.dataset import DatasetJson
from volfnet.io.files import atomic_write_json
from volfnet.networks.build import build_network_from_topology
from volfnet.networks.fmunet import PUBLISHED_DROPOUT as FMUNET_PUBLISHED_DROPOUT
from volfnet.networks.fmunet import published_fmunet_topology
from volfnet.networks.pctnet import PUBLISHED_DROPOUT as PCTNET_PUBLISHED_DROPOUT
from volfnet.networks.pctnet import PUBLISHED_INPUT_SIZE
from volfnet.networks.pctnet import published_pctnet_topology
from volfnet.networks.weights import read_state_dict
from volfnet.planning.planner import PlannerOptions
from volfnet.plans import ChannelNormalization, NetworkTopology, Plans

logger = logging.getLogger(__name__)

FIT_REPORT = "checkpoint_fit.json"
FITTED_CONFIGURATION = "3d_fullres"
PCTNET_DEFAULT_RESOLUTION_MODE = 1  # the MIS-FM demo fine-tunes the released PCT-Net with resolution_mode 1
ANISOTROPY_RATIO = 2.0  # axis 0 this much coarser than the finest: a network pooling it at level 0 smears slices
DIFFERENCES_LISTED = 5


@dataclass
class CheckpointFit:
    """What a checkpoint fixes for the new plans, and how it was found out."""

    source: Path
    topology: NetworkTopology
    num_input_channels: int
    num_classes: int
    spec: CheckpointSpec | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def inferred(self) -> bool:
        """True for foreign checkpoints whose topology was read from the tensor shapes."""
        return self.spec is None


# ------------------------------------------------------------------ topology inference
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


def read_checkpoint_fit(path: Path) -> CheckpointFit:
    """What ``path`` fixes for the plans: from its spec, or inferred from its weights."""
    path = Path(path).expanduser()
    checkpoint = load_checkpoint(path)
    spec = checkpoint_spec(checkpoint, str(path))
    if spec is not None:
        notes = [f"volfnet {spec.kind} checkpoint of {spec.dataset_name or 'an unnamed dataset'} ({spec.configuration}): topology from its spec"]
        return CheckpointFit(path, spec.network, spec.num_input_channels, spec.num_classes, spec, notes)
    state, _ = read_state_dict(checkpoint, str(path))
    topology, in_channels, num_classes, notes = infer_topology(state, str(path))
    return CheckpointFit(path, topology, in_channels, num_classes, None, ["no volfnet spec (PyMIC/MIS-FM layout): topology inferred", *notes])


# ----------------------------------------------------------------------- plans
def planner_options_for(fit: CheckpointFit, options: PlannerOptions, dataset_json: DatasetJson) -> PlannerOptions:
    """The user's planner options with the checkpoint's network fixed (and PCT-Net's patch)."""
    check_channels(fit, dataset_json)
    topology = fit.topology
    patch = options.patch_size
    if topology.name == "pctnet":
        if patch is not None and list(patch) != list(topology.input_size or []):
            raise VolfnetError(
                f"{fit.source}: PCT-Net was built for input size {topology.input_size}; --patch-size {list(patch)} "
                "cannot differ (the patch of a PCT-Net is its fixed input size)"
            )
        patch = list(topology.input_size or [])
    if options.base_features is not None or options.max_features is not None:
        logger.warning("--base-features/--max-features are ignored: the widths are the checkpoint's %s", topology.feature_channels)
    return dataclasses.replace(options, network=topology.name, topology=topology, patch_size=patch, lowres=False)


def check_channels(fit: CheckpointFit, dataset_json: DatasetJson) -> None:
    """A checkpoint takes the dataset's channel count, or has one channel (fine-tuning then
    spreads its first convolution over the channels); anything else cannot be mapped."""
    channels = dataset_json.num_channels
    if fit.num_input_channels == channels:
        return
    if fit.num_input_channels == 1:
        fit.notes.append(
            f"the checkpoint takes 1 input channel, the dataset has {channels}: fine-tuning adapts the first convolution"
        )
        return
    raise VolfnetError(
        f"{fit.source}: the checkpoint's network takes {fit.num_input_channels} input channels, the dataset has {channels} "
        f"({dataset_json.channel_names}); only single-channel checkpoints adapt to another channel count"
    )


def adapt_normalization(plans: Plans, fit: CheckpointFit, dataset_json: DatasetJson) -> Plans:
    """Use the checkpoint's normalisation scheme per channel (with this dataset's statistics),
    where the modalities agree; the planner's choice otherwise, with a warning."""
    if fit.spec is None or not fit.spec.normalization:
        fit.notes.append("normalisation: the checkpoint does not record one; the planner's choice is kept")
        return plans
    configurations = {}
    for name, configuration in plans.configurations.items():
        normalization = []
        for channel, planned in enumerate(configuration.normalization):
            wanted = fit.spec.normalization[min(channel, len(fit.spec.normalization) - 1)]
            channel_name = dataset_json.channel_names.get(channel, "")
            if wanted.scheme == planned.scheme:
                normalization.append(planned)
            elif "ct" in (wanted.scheme, planned.scheme):
                logger.warning(
                    "channel %d (%s): the checkpoint was trained with %s normalisation, this dataset plans %s; "
                    "the modalities differ, so the dataset's %s is kept",
                    channel, channel_name, wanted.scheme, planned.scheme, planned.scheme,
                )
                normalization.append(planned)
            else:
                fit.notes.append(f"channel {channel} ({channel_name}): {wanted.scheme} normalisation as in the checkpoint (planned: {planned.scheme})")
                normalization.append(ChannelNormalization(wanted.scheme, use_mask=planned.use_mask and wanted.scheme == "zscore"))
        configurations[name] = dataclasses.replace(configuration, normalization=normalization)
    return dataclasses.replace(plans, configurations=configurations)


def check_anisotropy(plans: Plans, fit: CheckpointFit) -> None:
    """Warn when thick slices meet a network that pools axis 0 at its first level."""
    for name, configuration in plans.configurations.items():
        spacing = configuration.spacing
        ratio = spacing[0] / min(spacing[1:])
        first_stride = fit.topology.strides[0] if fit.topology.strides else [1, 1, 1]
        if ratio > ANISOTROPY_RATIO and first_stride[0] == 2:
            logger.warning(
                "%s: spacing %s has axis 0 %.1fx coarser than the others, but the checkpoint's network pools axis 0 at "
                "its first level (strides %s); consider resampling closer to isotropic with --spacing",
                name, spacing, ratio, fit.topology.strides,
            )


def fit_report(fit: CheckpointFit, plans: Plans) -> dict:
    configuration = plans.configuration(FITTED_CONFIGURATION)
    return {
        "checkpoint": str(fit.source),
        "kind": fit.spec.kind if fit.spec is not None else "foreign (PyMIC/MIS-FM layout)",
        "inferred": fit.inferred,
        "network": dataclasses.asdict(fit.topology),
        "num_input_channels": fit.num_input_channels,
        "num_classes": fit.num_classes,
        "patch_size": configuration.patch_size,
        "spacing": configuration.spacing,
        "notes": list(fit.notes),
    }


def finish_plans(plans: Plans, fit: CheckpointFit, dataset_json: DatasetJson, output_folder: Path) -> Plans:
    """Adapt the planned normalisation, log what was fixed or inferred and write
    ``checkpoint_fit.json`` beside the plans."""
    plans = adapt_normalization(plans, fit, dataset_json)
    check_anisotropy(plans, fit)
    configuration = plans.configuration(FITTED_CONFIGURATION)
    divisor = fit.topology.total_downsampling()
    if any(p % d for p, d in zip(configuration.patch_size, divisor)):  # the planner guarantees this; keep it loud
        raise VolfnetError(f"patch {configuration.patch_size} is not divisible by the checkpoint's total down-sampling {divisor}")
    logger.info("planned %s to fit %s:", plans.dataset_name, fit.source)
    for note in fit.notes:
        logger.info("  %s", note)
    logger.info(
        "  patch %s (divisible by %s), spacing %s, batch %d",
        configuration.patch_size, divisor, configuration.spacing, configuration.batch_size,
    )
    atomic_write_json(Path(output_folder) / FIT_REPORT, fit_report(fit, plans))
    return plans

