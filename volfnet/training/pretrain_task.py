"""VolF self-supervised pretraining as a :class:`~volfnet.training.task.TrainingTask`.

The shared training loop does the rest (optimiser, schedule, checkpoints, resume, DDP, logs);
this task supplies what VolF changes (PyMIC ``SelfSupVolumeFusion``, reference section 3):

- the downstream network's topology with a (K+1)-class head and deep supervision, one input
  channel (VolF fuses one channel; fine-tuning adapts the first convolution);
- fused batches from the pool, and the fixed, saved validation set;
- the loss (soft Dice over all K+1 classes including background, over the whole batch, +
  CE) / 2, with PyMIC's deep-supervision weights 1, 1/2, 1/4, 1/8 (normalised);
- validation Dice over every fusion level 0..K;
- a ``volf_pretraining`` checkpoint spec with the plans' spacing, normalisation and patch,
  so ``volfnet_train --pretrained`` and other datasets' plans can use the checkpoint;
- after training, ``samples.png``: foreground, background, fused image, label and the
  network's prediction for a few fused samples.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from volfnet.checkpoint import CheckpointSpec
from volfnet.errors import VolfnetError
from volfnet.networks.build import build_network_from_topology
from volfnet.networks.runtime import full_resolution_outputs
from volfnet.plans import ConfigurationPlan, NetworkTopology, Plans
from volfnet.training.config import TrainerConfig, pretraining_defaults
from volfnet.training.losses import (
    DeepSupervisionLoss,
    DiceCEConfig,
    deep_supervision_weights,
    dice_ce_loss,
)
from volfnet.training.pretrain_data import (
    FixedSetProducer,
    ValidationSet,
    VolFBatchProducer,
)
from volfnet.training.pretrain_pool import VolumePool
from volfnet.training.segmentation import count_outputs
from volfnet.training.task import BatchProducerFn
from volfnet.volf.config import VolFConfig
from volfnet.volf.visualize import save_samples_png

logger = logging.getLogger(__name__)

KIND = "volf_pretraining"
PRETRAINING_INPUT_CHANNELS = 1  # VolF fuses one channel at a time (PyMIC asserts C == 1)
SAMPLES_PNG = "samples.png"
SAMPLES_EXAMPLES = 2  # fused samples in samples.png; 3 slices each
SAMPLES_SLICES = 3
SAMPLES_SEED_OFFSET = 104729  # the plotted samples come from their own stream


def fusion_level_labels(num_classes: int) -> dict[str, int]:
    """Names of the K+1 classes for the spec: ``background`` (alpha 0), ``alpha_k_K``."""
    levels = num_classes - 1
    return {"background": 0, **{f"alpha_{k}_{levels}": k for k in range(1, num_classes)}}


def volf_loss_config(config: TrainerConfig) -> DiceCEConfig:
    """The trainer's loss settings; batch Dice unless told otherwise (VolF's default)."""
    return DiceCEConfig(
        dice_weight=config.dice_weight,
        ce_weight=config.ce_weight,
        batch_dice=True if config.batch_dice is None else config.batch_dice,
        include_background=config.dice_include_background,
        smooth=config.dice_smooth,
        class_weights=tuple(config.class_weights) if config.class_weights is not None else None,
    )


class VolFPretrainingTask:
    """Pretrain ``topology`` with Volume Fusion on ``pool``.

    ``plans``/``configuration_name`` give the preprocessing the checkpoint records (spacing,
    normalisation, transpose); ``topology`` is the network (normally the plans' own);
    ``volf_config.patch_size`` is the patch. ``batch_size`` None means the plans' batch.
    """

    kind = KIND

    def __init__(
        self,
        pool: VolumePool,
        plans: Plans,
        configuration_name: str,
        topology: NetworkTopology,
        volf_config: VolFConfig,
        validation_set: ValidationSet,
        config: TrainerConfig | None = None,
        samples_seed: int | None = None,
    ) -> None:
        self.config = config if config is not None else pretraining_defaults()
        self.pool = pool
        self.plans = plans
        self.configuration_name = configuration_name
        base = plans.configuration(configuration_name)
        batch = self.config.batch_size if self.config.batch_size is not None else base.batch_size
        self.plan: ConfigurationPlan = dataclasses.replace(
            base, network=topology, patch_size=list(volf_config.patch_size), batch_size=int(batch)
        )
        self.plan.check()  # patch divisible by the network's down-sampling; PCT-Net patch = its input size
        self.topology = topology
        self.volf_config = volf_config
        if list(validation_set.patch_size) != list(volf_config.patch_size) or validation_set.num_classes != volf_config.num_classes:
            raise VolfnetError(
                f"{validation_set.folder}: the saved validation set has patch {validation_set.patch_size} and "
                f"{validation_set.num_classes} classes, the run {volf_config.patch_size} and {volf_config.num_classes}; "
                "start a fresh run (without --c) to make a new one"
            )
        self.validation_set = validation_set
        self.num_classes = volf_config.num_classes
        self.evaluated_classes = list(range(self.num_classes))
        self.ignore_label = None  # every voxel of a fused image has a fusion level
        self.regions = None
        weights = self.config.class_weights
        if weights is not None and len(weights) != self.num_classes:
            raise VolfnetError(f"class_weights has {len(weights)} values but VolF has {self.num_classes} classes (levels 0..K)")
        self.num_outputs = count_outputs(self.plan, PRETRAINING_INPUT_CHANNELS, self.num_classes)
        self.loss_config = volf_loss_config(self.config)
        self._loss = DeepSupervisionLoss(
            functools.partial(dice_ce_loss, config=self.loss_config),
            deep_supervision_weights(self.num_outputs, drop_lowest=False),
        )
        self.samples_seed = self.config.seed + SAMPLES_SEED_OFFSET if samples_seed is None else samples_seed

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    def spec(self) -> CheckpointSpec:
        return CheckpointSpec.from_plans(
            self.kind, self.plans, self.configuration_name, self.plan, PRETRAINING_INPUT_CHANNELS, self.num_classes, fusion_level_labels(self.num_classes)
        )

    def build_network(self) -> nn.Module:
        return build_network_from_topology(self.topology, PRETRAINING_INPUT_CHANNELS, self.num_classes, deep_supervision=True)

    def training_producer(self, seed: int) -> BatchProducerFn:
        return VolFBatchProducer(self.pool, self.volf_config, self.batch_size, seed, self.num_outputs, self.topology.strides)

    def validation_producer(self, seed: int) -> BatchProducerFn:
        # The saved set is the same for every seed and rank: the Dice curve stays comparable.
        return FixedSetProducer(self.validation_set, self.batch_size, self.num_outputs, self.topology.strides)

    def loss(self, outputs: torch.Tensor | Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._loss(outputs, targets)

    def after_training(self, model: nn.Module, run_folder: Path, device: torch.device) -> None:
        """Write ``samples.png`` with the trained network's predictions."""
        path = write_prediction_samples(self, model, Path(run_folder) / SAMPLES_PNG, device)
        logger.info("samples with predictions: %s", path)


def sample_examples(task: VolFPretrainingTask, count: int = SAMPLES_EXAMPLES) -> list:
    """The fused examples ``samples.png`` shows (same ones before and after training)."""
    producer = VolFBatchProducer(task.pool, task.volf_config, 1, task.samples_seed, 1, [])
    return producer.examples(0, count)


@torch.no_grad()
def predict_examples(model: nn.Module, images: Sequence[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """Argmax fusion level of each (Z, Y, X) image, full resolution (deep supervision off)."""
    predictions = []
    with full_resolution_outputs([model], eval_mode=True):
        for image in images:
            tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
            output = model(tensor)
            logits = output if isinstance(output, torch.Tensor) else output[0]
            predictions.append(logits.argmax(1)[0].to("cpu", torch.uint8).numpy())
    return predictions


def write_prediction_samples(task: VolFPretrainingTask, model: nn.Module, path: Path, device: torch.device) -> Path:
    examples = sample_examples(task)
    predictions = predict_examples(model, [e.image for e in examples], device)
    return save_samples_png(examples, path, task.num_classes, SAMPLES_SLICES, predictions=predictions)
