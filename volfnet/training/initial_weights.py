"""Start training from pretrained weights, or refuse clearly when they do not fit.

:func:`volfnet.networks.weights.load_weights` loads whatever matches by name and shape and
reports the rest. For fine-tuning that is too lenient: a checkpoint of another topology would
load a handful of norm weights and train the rest from scratch without anyone noticing. So
here the encoder must load completely (heads and, with ``encoder_only``, the decoder may be
skipped), and a volfnet checkpoint whose spec names another topology is rejected before
loading, with the fields that differ and what to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from volfnet.checkpoint import CheckpointSpec, checkpoint_spec, load_checkpoint
from volfnet.errors import VolfnetError
from volfnet.networks.weights import LoadReport, load_weights

logger = logging.getLogger(__name__)

TOPOLOGY_FIELDS = ("name", "feature_channels", "strides", "kernel_sizes", "depth")
PCTNET_FIELDS = ("input_size", "resolution_mode", "num_heads", "window_size")  # PCT-Net's Swin layers fix these
EXAMPLES_LISTED = 5
REPLAN_HINT = (
    "plan this dataset for the checkpoint with `volfnet_plan_and_preprocess -d DATASET --pretrained {path}` "
    "(same topology as the checkpoint), then train again; or train from scratch without --pretrained"
)


def topology_differences(checkpoint: CheckpointSpec, expected: CheckpointSpec) -> list[str]:
    """Human-readable differences between the checkpoint's network and the one to train."""
    fields = TOPOLOGY_FIELDS + (PCTNET_FIELDS if expected.network.name == "pctnet" else ())
    differences = []
    for name in fields:
        have, want = getattr(checkpoint.network, name), getattr(expected.network, name)
        if _normalise(have) != _normalise(want):
            differences.append(f"{name}: checkpoint {have}, plans {want}")
    return differences


def _normalise(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def load_initial_weights(
    model: nn.Module, path: Path, expected: CheckpointSpec | None = None, encoder_only: bool = False
) -> LoadReport:
    """Load pretrained weights into ``model`` for fine-tuning and return the report.

    Raises :class:`VolfnetError` when the checkpoint's spec (volfnet checkpoints) names another
    topology than ``expected``, or when any encoder weight of ``model`` is not in the checkpoint
    with the right shape (foreign checkpoints: PyMIC/MIS-FM ``model_state_dict`` files).
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)  # read once, its checksum and finiteness verified
    if expected is not None:
        spec = checkpoint_spec(checkpoint, str(path))
        if spec is not None:
            differences = topology_differences(spec, expected)
            if differences:
                raise VolfnetError(
                    f"{path}: the pretrained network does not match the plans ({'; '.join(differences)}). "
                    + REPLAN_HINT.format(path=path)
                )
    # the plans' image channels (one normalisation each); a cascade's network takes more
    image_channels = len(expected.normalization) if expected is not None else None
    report = load_weights(model, checkpoint, encoder_only=encoder_only, name=str(path), image_channels=image_channels)
    prefixes = tuple(getattr(model, "encoder_key_prefixes", ()))
    encoder_keys = [key for key in model.state_dict() if key.startswith(prefixes)] if prefixes else []
    missing_encoder = [key for key in report.missing if key.startswith(prefixes)] if prefixes else []
    if missing_encoder:
        examples = []
        for key in missing_encoder[:EXAMPLES_LISTED]:
            reason = report.skipped.get(key, "not in the checkpoint")
            examples.append(f"{key} ({reason})")
        raise VolfnetError(
            f"{path}: {len(missing_encoder)} of {len(encoder_keys)} encoder weights of the network do not load "
            f"(e.g. {', '.join(examples)}): the checkpoint has another topology. " + REPLAN_HINT.format(path=path)
        )
    other_missing = [key for key in report.missing if not key.startswith(prefixes)] if prefixes else report.missing
    if other_missing and not encoder_only:
        logger.info(
            "%d decoder/head tensors keep their random initialisation (e.g. %s)",
            len(other_missing), ", ".join(other_missing[:EXAMPLES_LISTED]),
        )
    return report
