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
registry in :mod:`volfnet.networks.topology_inference`), every assumption is logged, and the result is checked
by building the network on the meta device and comparing every key and shape.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path


from volfnet.checkpoint import CheckpointSpec, checkpoint_spec, load_checkpoint
from volfnet.errors import VolfnetError
from volfnet.io.dataset import DatasetJson
from volfnet.io.files import atomic_write_json
from volfnet.networks.topology_inference import infer_topology
from volfnet.networks.weights import read_state_dict
from volfnet.planning.planner import PlannerOptions
from volfnet.plans import ChannelNormalization, NetworkTopology, Plans

logger = logging.getLogger(__name__)

FIT_REPORT = "checkpoint_fit.json"
FITTED_CONFIGURATION = "3d_fullres"
ANISOTROPY_RATIO = 2.0  # axis 0 this much coarser than the finest: a network pooling it at level 0 smears slices


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

