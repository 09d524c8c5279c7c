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

    #: ``"segmentation"`` or ``"volf_pretraining"``; stored in the checkpoint spec.
    kind: str
    #: Network outputs (background included).
    num_classes: int
    #: Classes whose Dice the validation reports and averages (segmentation: the foreground
    #: labels; VolF: every fusion level, background included).
    evaluated_classes: Sequence[int]

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
