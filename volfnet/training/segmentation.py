"""Supervised segmentation as a :class:`~volfnet.training.task.TrainingTask`.

It connects the plans, the preprocessed cases of one fold and the data pipeline to the training
loop: the network the plans describe, nnU-Net batches (foreground oversampling, augmentation,
deep-supervision targets), Dice + CE with deep supervision, and after training a full-volume
sliding-window prediction of the fold's validation cases, exported in their original geometry
and scored against the raw labels into ``validation/summary.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from typing import Any, cast
from pathlib import Path

import torch
from torch import nn

from volfnet import paths
from volfnet.checkpoint import CheckpointSpec
from volfnet.data.batches import PreviousStageInput, training_producer, validation_producer
from volfnet.data.deep_supervision import deep_supervision_factors
from volfnet.errors import VolfnetError
from volfnet.evaluation.evaluate import evaluate_folder, write_summary
from volfnet.io.dataset import DatasetJson, find_dataset_folder
from volfnet.io.files import link_or_copy
from volfnet.model_folder import Fold
from volfnet.networks.build import build_network_from_topology
from volfnet.networks.runtime import full_resolution_outputs
from volfnet.plans import ConfigurationPlan, Plans
from volfnet.training.config import TrainerConfig
from volfnet.training.losses import DiceCEConfig, segmentation_loss
from volfnet.training.task import BatchProducerFn

logger = logging.getLogger(__name__)

VALIDATION_FOLDER = "validation"
LABELS_FOLDER = "labelsTr"


def count_outputs(plan: ConfigurationPlan, num_input_channels: int, num_classes: int) -> int:
    """Number of deep-supervision outputs of the plan's network (built on the meta device:
    no memory, no time), checked against the target scales the data pipeline will make."""
    with torch.device("meta"):
        network = build_network_from_topology(plan.network, num_input_channels, num_classes, deep_supervision=True)
    scales = [tuple(int(v) for v in s) for s in cast(Any, network).output_scales()]  # FMUNet and PCT-Net both have it
    expected = deep_supervision_factors(plan.network.strides, len(scales))
    if scales != expected:
        raise VolfnetError(
            f"{plan.network.name}: output scales {scales} differ from the deep-supervision target scales {expected} "
            "derived from the plans' strides; the plans' network strides do not describe this network"
        )
    return len(scales)


class SegmentationTask:
    """Train the plans' network on ``train_cases`` and validate on ``val_cases`` of one fold.

    ``preprocessed_folder`` is the dataset's folder under ``VOLFNET_preprocessed`` (holding
    ``plans.json`` and one folder per configuration). From ``config`` the task reads the batch
    size override, foreground oversampling, augmentation changes and the loss settings.
    ``raw_labels_folder`` (default: ``labelsTr`` of the raw dataset) holds the references for
    the final validation.
    """

    kind = "segmentation"

    def __init__(
        self,
        plans: Plans,
        configuration_name: str,
        preprocessed_folder: Path,
        dataset_json: DatasetJson,
        fold: Fold,
        train_cases: Sequence[str],
        val_cases: Sequence[str],
        config: TrainerConfig | None = None,
        raw_labels_folder: Path | None = None,
        save_probabilities: bool = False,
        previous_stage_folder: Path | None = None,
        next_stage_folders: dict[str, Path] | None = None,
    ) -> None:
        self.config = config if config is not None else TrainerConfig()
        self.plans = plans
        self.configuration_name = configuration_name
        plan = plans.configuration(configuration_name)
        if self.config.batch_size is not None:
            plan = dataclasses.replace(plan, batch_size=self.config.batch_size)
        plan.check()
        self.plan = plan
        self.preprocessed_folder = Path(preprocessed_folder)
        self.cases_folder = self.preprocessed_folder / plan.data_identifier
        self.dataset_json = dataset_json
        self.fold = fold
        self.train_cases = list(train_cases)
        self.val_cases = list(val_cases)
        if not self.train_cases or not self.val_cases:
            raise VolfnetError(f"fold {fold}: needs training and validation cases, got {len(self.train_cases)} and {len(self.val_cases)}")
        self.raw_labels_folder = raw_labels_folder
        self.save_probabilities = save_probabilities  # the final validation keeps <case>.npz too
        self.num_classes = dataset_json.num_classes
        self.num_input_channels = plan.network_input_channels(plans.num_input_channels, len(dataset_json.foreground_labels))
        if (previous_stage_folder is None) != (plan.previous_stage is None):
            raise VolfnetError(
                f"{configuration_name}: previous stage {plan.previous_stage!r} in the plans, but its predictions were "
                f"{'not ' if previous_stage_folder is None else ''}given"
            )
        self.previous_stage = (
            PreviousStageInput(Path(previous_stage_folder), tuple(dataset_json.foreground_labels)) if previous_stage_folder is not None else None
        )
        self.next_stage_folders = dict(next_stage_folders or {})  # cascade stages fed by this one's validation
        self.ignore_label = dataset_json.ignore_label
        self.regions = [tuple(region) for region in dataset_json.regions] or None
        # pseudo Dice per foreground class, or per region numbered from 1
        self.evaluated_classes = list(range(1, len(self.regions) + 1)) if self.regions else list(dataset_json.foreground_labels)
        weights = self.config.class_weights
        if weights is not None and self.regions:
            raise VolfnetError("class_weights weight softmax classes; this dataset's labels are regions (sigmoid outputs), which take none")
        if weights is not None and len(weights) != self.num_classes:
            raise VolfnetError(
                f"class_weights has {len(weights)} values but the network has {self.num_classes} classes "
                f"(background first: {dataset_json.labels})"
            )
        # Without deep supervision the network returns its full-resolution output only, and
        # the batches carry that one target.
        self.num_outputs = count_outputs(plan, self.num_input_channels, self.num_classes) if self.config.deep_supervision else 1
        self.loss_config = DiceCEConfig(
            dice_weight=self.config.dice_weight,
            ce_weight=self.config.ce_weight,
            batch_dice=plan.batch_dice if self.config.batch_dice is None else self.config.batch_dice,
            include_background=self.config.dice_include_background,
            smooth=self.config.dice_smooth,
            class_weights=tuple(weights) if weights is not None else None,
            ignore_label=self.ignore_label,
            regions=tuple(self.regions) if self.regions else None,
        )
        self._loss = segmentation_loss(self.num_outputs, self.loss_config)

    def spec(self) -> CheckpointSpec:
        return CheckpointSpec.from_plans(
            self.kind, self.plans, self.configuration_name, self.plan, self.num_input_channels, self.num_classes, dict(self.dataset_json.labels)
        )

    def build_network(self) -> nn.Module:
        return build_network_from_topology(
            self.plan.network, self.num_input_channels, self.num_classes, deep_supervision=self.config.deep_supervision
        )

    def training_producer(self, seed: int) -> BatchProducerFn:
        return training_producer(
            self.cases_folder, self.train_cases, self.plan, seed, self.num_outputs,
            config=self.config.augmentation_config(), oversampling=self.config.oversampling, previous_stage=self.previous_stage,
        )

    def validation_producer(self, seed: int) -> BatchProducerFn:
        return validation_producer(
            self.cases_folder, self.val_cases, self.plan, seed, self.num_outputs, oversampling=self.config.oversampling,
            previous_stage=self.previous_stage,
        )

    def loss(self, outputs: torch.Tensor | Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._loss(outputs, targets)

    def labels_folder(self) -> Path:
        if self.raw_labels_folder is not None:
            return Path(self.raw_labels_folder)
        return find_dataset_folder(self.plans.dataset_name, paths.raw_root()) / LABELS_FOLDER

    def after_training(self, model: nn.Module, run_folder: Path, device: torch.device) -> None:
        """Predict every validation case as a whole volume (sliding window, Gaussian weights,
        mirroring), export in the original geometry to ``validation/`` and score it. A previous
        stage (``3d_lowres``) also writes each case's label map on its next stage's grid to
        ``predicted_next_stage/`` (the cascade's training input); a cascade reads them."""
        from volfnet.inference.predictor import (
            Predictor,  # training -> inference, never the reverse
        )

        output = Path(run_folder) / VALIDATION_FOLDER
        logger.info("final validation: %d case(s) of fold %s -> %s", len(self.val_cases), self.fold, output)
        with full_resolution_outputs([model], eval_mode=True):
            predictor = Predictor(
                networks=[model], plans=self.plans, configuration_name=self.configuration_name,
                dataset_json=self.dataset_json, device=device, progress=self.config.progress_bar,
            )
            next_stages = [
                predictor.next_stage_export(name, self.preprocessed_folder / self.plans.configuration(name).data_identifier, folder)
                for name, folder in self.next_stage_folders.items()
            ]
            if len(next_stages) > 1:
                raise VolfnetError(f"{self.configuration_name} feeds {sorted(self.next_stage_folders)}; one next stage is supported")
            predictor.predict_cached_cases(
                self.cases_folder, self.val_cases, output, save_probabilities=self.save_probabilities,
                previous_stage_folder=self.previous_stage.folder if self.previous_stage is not None else None,
                next_stage=next_stages[0] if next_stages else None,
            )
            for export in next_stages:
                logger.info("%s input of %d case(s) written to %s", export.configuration, len(self.val_cases), export.output_folder)
        self.evaluate(output)

    def evaluate(self, output: Path) -> dict:
        """Score the predictions in ``output`` against this fold's validation references."""
        try:
            labels = self.labels_folder()
        except VolfnetError as exc:
            raise VolfnetError(
                f"cannot score the validation predictions in {output}: the raw labels are not found ({exc}); "
                "set VOLFNET_raw and rerun with --val"
            ) from exc
        ending = self.dataset_json.file_ending
        with tempfile.TemporaryDirectory(prefix="volfnet_validation_") as scratch:
            references = Path(scratch)
            for case_id in self.val_cases:  # evaluate exactly this fold's cases
                source = labels / f"{case_id}{ending}"
                if not source.is_file():
                    raise VolfnetError(f"{source}: reference label of validation case {case_id} not found")
                link_or_copy(source, references / source.name)
            summary = evaluate_folder(
                references, output, self.dataset_json.labels, file_ending=ending, output_folder=output, ignore_label=self.ignore_label,
                regions=self.regions,
            )
            summary["reference_folder"] = str(labels)  # the links were temporary; name the originals
            for case in summary["per_case"]:
                case["reference"] = str(labels / Path(case["reference"]).name)
            write_summary(summary, output)
        mean = summary.get("foreground_mean", {})
        logger.info("validation summary: %s (%s)", output / "summary.json", _describe_mean(mean))
        return summary


def _describe_mean(mean: object) -> str:
    if isinstance(mean, dict) and "Dice" in mean:
        return f"mean foreground Dice {mean['Dice']:.4f}"
    return "see the file"
