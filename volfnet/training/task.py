"""What the training loop needs to know about a task: supervised segmentation or VolF pretraining.

The loop (:mod:`volfnet.training.loop`) owns everything the two tasks share: device, DDP,
optimiser and schedule, AMP, checkpoints and resume, logs, ``progress.png``, progress bars.
A task supplies only what differs: the network, the batches, the loss, which classes the
validation Dice averages over, and what to do once training ends. Pretraining is therefore a
second task for the same loop, not a forked trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from volfnet.checkpoint import CheckpointSpec
from volfnet.data.worker import NumpyBatch

BatchProducerFn = Callable[[int], NumpyBatch]  # picklable; batch ``index`` seeded by (seed, index)


class TrainingTask(Protocol):
    """A task the training loop can run. Implementations: ``SegmentationTask`` (training) and
    ``VolFPretrainingTask`` (pretraining)."""

    # Read-only members (properties here, plain attributes in the tasks), so a task may hold
    # narrower types than these.

    @property
    def kind(self) -> str:
        """``"segmentation"`` or ``"volf_pretraining"``; stored in the checkpoint spec."""
        ...

    @property
    def num_classes(self) -> int:
        """Network outputs (background included; regions: one per region)."""
        ...

    @property
    def evaluated_classes(self) -> Sequence[int]:
        """Classes whose Dice the validation reports and averages (segmentation: the foreground
        labels, or the regions numbered from 1; VolF: every fusion level, background included)."""
        ...

    @property
    def ignore_label(self) -> int | None:
        """Label value of unannotated voxels (the dataset's ``"ignore"`` label), left out of the
        loss and of the pseudo Dice; None when every voxel is annotated (always for VolF)."""
        ...

    @property
    def regions(self) -> Sequence[Sequence[int]] | None:
        """Region datasets: the label values of each sigmoid output; None for softmax classes."""
        ...

    def spec(self) -> CheckpointSpec:
        """Architecture and preprocessing spec written into every checkpoint."""
        ...

    def build_network(self) -> nn.Module:
        """A freshly initialised network with deep supervision on (weights loaded later)."""
        ...

    def training_producer(self, seed: int) -> BatchProducerFn:
        """Training batches; ``NumpyBatch.target`` has one array per network output."""
        ...

    def validation_producer(self, seed: int) -> BatchProducerFn:
        """Validation batches (no augmentation; VolF: the fixed, saved validation set)."""
        ...

    def loss(self, outputs: torch.Tensor | Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scalar loss of the network outputs (full resolution first) against the targets."""
        ...

    def after_training(self, model: nn.Module, run_folder: Path, device: torch.device) -> None:
        """Work once the final checkpoint exists (segmentation: full-volume validation)."""
        ...
