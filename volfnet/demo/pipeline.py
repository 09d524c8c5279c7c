"""The demo's whole path on the synthetic dataset, as a newcomer would run it by hand.

Stages: write the dataset → plan and preprocess (CPU target) → VolF pretraining on every
image (training, held-out and unlabelled scans; labels unused) → fine-tune from it → train
from scratch with the same budget → predict the held-out scans in their original geometry
with both models → evaluate both. Each stage calls the same library function as its console
script, so the demo exercises exactly what users run; a rerun skips finished stages (their
final checkpoints and predictions exist) and so resumes an interrupted demo.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volfnet import paths
from volfnet.demo.synthetic import TEST_LABELS_FOLDER, UNLABELLED_FOLDER, DemoDatasetSizes, write_demo_dataset
from volfnet.evaluation.evaluate import evaluate_folder
from volfnet.inference.predictor import Predictor
from volfnet.io.dataset import DatasetJson
from volfnet.model_folder import checkpoint_path, fold_folder, model_folder_path, pretrain_folder
from volfnet.planning.plan_and_preprocess import PlanAndPreprocessRequest, plan_and_preprocess
from volfnet.planning.planner import PlannerOptions
from volfnet.training.config import DEFAULT_SEED, FINETUNE_RECIPE
from volfnet.training.pretrain import PretrainRequest, pretrain
from volfnet.training.train import TrainRequest, train

logger = logging.getLogger(__name__)

DEMO_DATASET_ID = 900
DEMO_DATASET_NAME = f"Dataset{DEMO_DATASET_ID:03d}_VolfDemo"
CONFIGURATION = "3d_fullres"
FOLD = "all"  # the demo's labelled scans are few: train on all of them, test on the held-out ones
SCRATCH_TAG = "scratch"

# Budgets sized so that the whole demo runs in under 15 minutes on two CPU cores.
COMPUTE_TARGET = "cpu_small"  # quarter-width FMUNet, ~0.3 s per training step on 2 cores
PRETRAIN_ITERATIONS = 300
TRAIN_EPOCHS = 10
ITERATIONS_PER_EPOCH = 30
VALIDATION_ITERATIONS = 5


@dataclass
class DemoSettings:
    """What ``volfnet_demo`` runs; the defaults are the README's demo."""

    sizes: DemoDatasetSizes = field(default_factory=DemoDatasetSizes)
    seed: int = 0
    num_workers: int = 2  # 0: training data made in the main process; per-case stages use one process
    device: str | None = None
    pretrain_iterations: int = PRETRAIN_ITERATIONS
    train_epochs: int = TRAIN_EPOCHS
    iterations_per_epoch: int = ITERATIONS_PER_EPOCH
    compute_target: str = COMPUTE_TARGET
    train_seed: int = DEFAULT_SEED  # trainer seed of both models; other seeds train into their own model folders


@dataclass
class DemoResult:
    """Where everything went and how the two models scored on the held-out scans."""

    raw_folder: Path
    preprocessed_folder: Path
    pretrained_model: Path
    scratch_model: Path
    summaries: dict[str, dict[str, Any]]  # "pretrained" / "scratch" -> evaluation summary
    stage_seconds: dict[str, float]


StageCallback = Callable[[int, int, str], None]


def _trainer_overrides(settings: DemoSettings) -> list[str]:
    return [
        f"num_epochs={settings.train_epochs}",
        f"iterations_per_epoch={settings.iterations_per_epoch}",
        f"val_iterations={VALIDATION_ITERATIONS}",
        f"num_workers={settings.num_workers}",
        f"checkpoint_every={max(1, settings.train_epochs // 2)}",
        f"seed={settings.train_seed}",
    ]


def _model_tags(settings: DemoSettings) -> tuple[str, str]:
    """Model-folder tags of the fine-tuned and the scratch model: the default trainer seed keeps
    the plain names; another seed gets folders of its own (the pretraining is shared)."""
    if settings.train_seed == DEFAULT_SEED:
        return "", SCRATCH_TAG
    return f"seed{settings.train_seed}", f"{SCRATCH_TAG}-seed{settings.train_seed}"


def run_demo(settings: DemoSettings, on_stage: StageCallback | None = None) -> DemoResult:
    """Run every stage; ``on_stage(index, total, title)`` is called as each one starts."""
    stages = 7
    seconds: dict[str, float] = {}
    announce = on_stage or (lambda index, total, title: logger.info("[%d/%d] %s", index, total, title))

    def timed(name: str, index: int, title: str, work: Callable[[], Any]) -> Any:
        announce(index, stages, title)
        start = time.perf_counter()
        result = work()
        seconds[name] = time.perf_counter() - start
        return result

    raw_folder = paths.raw_root() / DEMO_DATASET_NAME
    timed("dataset", 1, f"synthetic CT dataset -> {raw_folder}", lambda: write_demo_dataset(raw_folder, settings.sizes, settings.seed))

    planned = timed(
        "plan_and_preprocess", 2, f"integrity check, fingerprint, plans ({settings.compute_target} target) and preprocessing",
        lambda: plan_and_preprocess(
            PlanAndPreprocessRequest(
                dataset=str(DEMO_DATASET_ID),
                options=PlannerOptions(compute_target=settings.compute_target, lowres=False),
                num_workers=max(1, settings.num_workers),
            )
        ),
    )
    plans = planned.plans
    network = plans.configuration(CONFIGURATION).network.name
    finetune_tag, scratch_tag = _model_tags(settings)
    model = model_folder_path(plans.dataset_name, network, CONFIGURATION, tag=finetune_tag)
    scratch_model = model_folder_path(plans.dataset_name, network, CONFIGURATION, tag=scratch_tag)

    pretrained_checkpoint = checkpoint_path(pretrain_folder(model_folder_path(plans.dataset_name, network, CONFIGURATION)), "final")
    timed(
        "pretrain", 3, f"VolF pretraining, {settings.pretrain_iterations} iterations -> {pretrained_checkpoint.parent}",
        lambda: _unless(pretrained_checkpoint, lambda: pretrain(
            PretrainRequest(
                datasets=[str(DEMO_DATASET_ID)],
                configuration=CONFIGURATION,
                images=[raw_folder / UNLABELLED_FOLDER],
                iterations=settings.pretrain_iterations,
                overrides=[f"num_workers={settings.num_workers}", f"val_iterations={VALIDATION_ITERATIONS}"],
                device=settings.device,
                preprocess_workers=max(1, settings.num_workers),
            )
        )),
    )
    budget = settings.train_epochs * settings.iterations_per_epoch
    # Both models train with the fine-tuning recipe, so the table compares initialisations, not
    # optimisers (scratch with nnU-Net's SGD learns far more slowly at this budget).
    for name, index, tag, pretrained, folder in (
        ("finetune", 4, finetune_tag, "final", model),
        ("scratch", 5, scratch_tag, None, scratch_model),
    ):
        final = checkpoint_path(fold_folder(folder, FOLD), "final")
        title = "fine-tuning the pretrained network" if pretrained else "training from scratch (same budget and recipe)"
        request = TrainRequest(
            dataset=str(DEMO_DATASET_ID), configuration=CONFIGURATION, fold=FOLD, pretrained=pretrained,
            device=settings.device, overrides=[f"recipe={FINETUNE_RECIPE}", *_trainer_overrides(settings)], tag=tag,
        )
        timed(name, index, f"{title}, {budget} iterations -> {final.parent}", functools.partial(_unless, final, functools.partial(train, request)))

    test_images = raw_folder / "imagesTs"
    outputs = {"pretrained": model / "demo_predictions", "scratch": scratch_model / "demo_predictions"}

    def predict_both() -> None:
        for variant, folder in (("pretrained", model), ("scratch", scratch_model)):
            predictor = Predictor.from_model_folder(folder, folds=[FOLD], checkpoint="final", device=settings.device)
            predictor.predict_folder(test_images, outputs[variant], skip_existing=True)

    timed("predict", 6, f"predicting the {settings.sizes.test} held-out scans in their original geometry", predict_both)

    def evaluate_both() -> dict[str, dict[str, Any]]:
        return {
            variant: evaluate_folder(raw_folder / TEST_LABELS_FOLDER, folder, plans_labels(raw_folder), num_workers=max(1, settings.num_workers))
            for variant, folder in outputs.items()
        }

    summaries = timed("evaluate", 7, "evaluating both against the held-out references", evaluate_both)
    return DemoResult(raw_folder, planned.output_folder, model, scratch_model, summaries, seconds)


def plans_labels(raw_folder: Path) -> dict[str, int]:
    return DatasetJson.load(raw_folder / "dataset.json").labels


def _unless(done: Path, work: Callable[[], Any]) -> Any:
    """Run ``work`` unless ``done`` exists (a rerun of the demo skips finished stages)."""
    if done.is_file():
        logger.info("%s exists; skipping this stage", done)
        return None
    return work()
