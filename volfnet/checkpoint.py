"""The checkpoint format: one ``.pt`` file loadable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled
classes), so it can be read safely from any source. The network weights sit under
``model_state_dict``, the key PyMIC/MIS-FM use, so their released files and ours share one
loader. ``spec`` describes the architecture and preprocessing (network topology, input
channels, classes, patch, spacing, normalisation), so a checkpoint can build its network
and seed another dataset's plans without the original plans file.

Writes are atomic: the file is written under a temporary name, flushed to disk and renamed,
so a crash or ``kill -9`` during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from volfnet import __version__
from volfnet.errors import VolfnetError
from volfnet.io.files import atomic_path
from volfnet.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans, _build

CHECKPOINT_FORMAT = "volfnet-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class CheckpointSpec:
    """What a checkpoint's network is and what input it expects."""

    kind: str  # "segmentation" or "volf_pretraining"
    network: NetworkTopology
    num_input_channels: int
    num_classes: int
    patch_size: list[int]
    spacing: list[float]
    normalization: list[ChannelNormalization]
    transpose_forward: list[int] = field(default_factory=lambda: [0, 1, 2])
    dataset_name: str = ""
    configuration: str = ""
    labels: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_plans(
        cls, kind: str, plans: Plans, configuration: str, plan: ConfigurationPlan, num_input_channels: int,
        num_classes: int, labels: dict[str, int],
    ) -> CheckpointSpec:
        """The spec of a network trained with ``plan`` (``configuration`` of ``plans``, possibly
        with another patch or network): its patch, spacing, normalisation and transpose, so the
        checkpoint alone says how to feed it."""
        return cls(
            kind=kind,
            network=plan.network,
            num_input_channels=num_input_channels,
            num_classes=num_classes,
            patch_size=list(plan.patch_size),
            spacing=list(plan.spacing),
            normalization=list(plan.normalization),
            transpose_forward=list(plans.transpose_forward),
            dataset_name=plans.dataset_name,
            configuration=configuration,
            labels=labels,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "checkpoint") -> CheckpointSpec:
        try:
            return _build(cls, data, f"{source}: spec")
        except (TypeError, KeyError, ValueError) as exc:
            raise VolfnetError(f"{source}: malformed spec in checkpoint ({exc})") from exc


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (with ``model_state_dict``) atomically; adds the format header.

    A failed write (disk full, permission) raises :class:`VolfnetError` and leaves any
    previous file at ``path`` untouched.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "volfnet_version": __version__, **state}
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as exc:
        raise VolfnetError(f"could not write checkpoint {path}: {exc.strerror or exc}; the previous checkpoint (if any) is kept") from exc


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``). Accepts volfnet checkpoints, PyMIC/
    MIS-FM files (``{'model_state_dict': ...}``) and bare state dicts (wrapped into
    ``{'model_state_dict': ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise VolfnetError(f"{path}: checkpoint file not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... by cause
        first_line = (str(exc).strip().splitlines() or ["no details"])[0]
        if type(exc).__name__ == "UnpicklingError":
            raise VolfnetError(f"{path}: refused to load: the file holds Python objects beyond tensors and plain data ({first_line})") from exc
        raise VolfnetError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated: {first_line})") from exc
    if not isinstance(data, dict):
        raise VolfnetError(f"{path}: expected a dict in the checkpoint, found {type(data).__name__}")
    if "model_state_dict" not in data:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            data = {"model_state_dict": data}
        else:
            keys = sorted(map(str, data))[:8]
            raise VolfnetError(f"{path}: no 'model_state_dict' in the checkpoint (keys: {keys})")
    return data


def checkpoint_spec(checkpoint: dict[str, Any], source: str = "checkpoint") -> CheckpointSpec | None:
    """The spec stored in a volfnet checkpoint, or None for foreign checkpoints."""
    if checkpoint.get("format") != CHECKPOINT_FORMAT or "spec" not in checkpoint:
        return None
    if checkpoint.get("version", 0) > CHECKPOINT_VERSION:
        raise VolfnetError(f"{source}: written by a newer volfnet (checkpoint version {checkpoint['version']}); please upgrade")
    return CheckpointSpec.from_dict(checkpoint["spec"], source)
