"""The checkpoint format: one ``.pt`` file loadable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled
classes), so it can be read safely from any source. The network weights sit under
``model_state_dict``, the key PyMIC/MIS-FM use, so their released files and ours share one
loader. ``spec`` describes the architecture and preprocessing (network topology, input
channels, classes, patch, spacing, normalisation), so a checkpoint can build its network
and seed another dataset's plans without the original plans file.

Writes are atomic and durable (:func:`volfnet.io.files.atomic_path`): a crash, ``kill -9`` or
power loss during a save leaves the previous checkpoint intact.

Every save stores a SHA-256 of the weights (:data:`CHECKSUM_KEY`) and refuses NaN/inf weights;
every load verifies that checksum (where the file has one: older volfnet checkpoints and
foreign files do not) and refuses NaN/inf weights, naming the file. A damaged file or a
diverged run thus fails at the load with its cause, not later as a silently useless model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from volfnet import __version__
from volfnet.errors import VolfnetError
from volfnet.io.files import atomic_path
from volfnet.io.torch_file import read_torch_file
from volfnet.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans
from volfnet.schema import build_from_json

CHECKPOINT_FORMAT = "volfnet-checkpoint"
CHECKPOINT_VERSION = 1  # the checksum is an extra key that older readers ignore: no new version
CHECKSUM_KEY = "model_state_sha256"


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
            return build_from_json(cls, data, f"{source}: spec")
        except (TypeError, KeyError, ValueError) as exc:
            raise VolfnetError(f"{source}: malformed spec in checkpoint ({exc})") from exc


def weights_checksum(state_dict: dict[str, Any]) -> str:
    """SHA-256 (hex) over the tensors of ``state_dict`` in sorted key order: each key, dtype and
    shape, then the raw bytes. Hashes memory in place (no copy for contiguous CPU tensors)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            continue
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().data)  # the bytes in place, no copy
    return digest.hexdigest()


def first_nonfinite_tensor(state_dict: dict[str, Any]) -> str | None:
    """The key of the first floating-point tensor of ``state_dict`` holding NaN or inf, or None."""
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            return key
    return None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (with ``model_state_dict``) atomically; adds the format header and the
    weights' checksum.

    NaN/inf weights are refused (a :class:`VolfnetError`): a checkpoint nobody can use would
    replace a good one. A failed write (disk full, permission) raises :class:`VolfnetError`;
    either way any previous file at ``path`` is left untouched.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "volfnet_version": __version__, **state}
    weights = state.get("model_state_dict")
    if isinstance(weights, dict):
        bad = first_nonfinite_tensor(weights)
        if bad is not None:
            raise VolfnetError(f"refused to write {path}: weight tensor {bad!r} holds NaN/inf; the previous checkpoint (if any) is kept")
        payload[CHECKSUM_KEY] = weights_checksum(weights)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            torch.save(payload, handle)
    except OSError as exc:
        raise VolfnetError(f"could not write checkpoint {path}: {exc.strerror or exc}; the previous checkpoint (if any) is kept") from exc


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``). Accepts volfnet checkpoints, PyMIC/
    MIS-FM files (``{'model_state_dict': ...}``) and bare state dicts (wrapped into
    ``{'model_state_dict': ...}``).

    A volfnet checkpoint whose weights do not match their stored checksum is corrupt; any
    checkpoint with NaN/inf weights is useless: both are a :class:`VolfnetError` naming the file.
    """
    path = Path(path)
    data = read_torch_file(path, map_location)
    if not isinstance(data, dict):
        raise VolfnetError(f"{path}: expected a dict in the checkpoint, found {type(data).__name__}")
    if "model_state_dict" not in data:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            data = {"model_state_dict": data}
        else:
            keys = sorted(map(str, data))[:8]
            raise VolfnetError(f"{path}: no 'model_state_dict' in the checkpoint (keys: {keys})")
    _check_weights(path, data)
    return data


def _check_weights(path: Path, data: dict[str, Any]) -> None:
    """Refuse weights that differ from the checksum stored at save time, or that are NaN/inf."""
    weights = data["model_state_dict"]
    if not isinstance(weights, dict):
        raise VolfnetError(f"{path}: 'model_state_dict' is a {type(weights).__name__}, not a dict of tensors")
    stored = data.get(CHECKSUM_KEY) if data.get("format") == CHECKPOINT_FORMAT else None
    if stored is not None and weights_checksum(weights) != stored:
        raise VolfnetError(
            f"{path}: corrupt checkpoint: its weights do not match the checksum stored when it was written "
            "(the file was changed or damaged after saving); use another copy or an earlier checkpoint"
        )
    bad = first_nonfinite_tensor(weights)
    if bad is not None:
        raise VolfnetError(
            f"{path}: weight tensor {bad!r} holds NaN/inf, so the network cannot be used (the training that wrote it "
            "diverged); use an earlier checkpoint, or retrain with a lower learning rate"
        )


def checkpoint_spec(checkpoint: dict[str, Any], source: str = "checkpoint") -> CheckpointSpec | None:
    """The spec stored in a volfnet checkpoint, or None for foreign checkpoints."""
    if checkpoint.get("format") != CHECKPOINT_FORMAT or "spec" not in checkpoint:
        return None
    if checkpoint.get("version", 0) > CHECKPOINT_VERSION:
        raise VolfnetError(f"{source}: written by a newer volfnet (checkpoint version {checkpoint['version']}); please upgrade")
    return CheckpointSpec.from_dict(checkpoint["spec"], source)
