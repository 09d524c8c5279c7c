"""A trained-looking model folder made in seconds: a tiny dataset planned and preprocessed, and
two folds of a tiny FMUNet saved with random weights, for the inference, ensembling, model
selection, sharing and CUDA tests."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.raw_data import make_raw_dataset
from helpers.roots import make_roots, point_environment_at

from volfnet.checkpoint import CheckpointSpec, save_checkpoint
from volfnet.io.dataset import DatasetJson
from volfnet.model_folder import checkpoint_path, fold_folder, model_folder_path, write_model_folder_files
from volfnet.networks.build import build_network_from_topology
from volfnet.planning.plan_and_preprocess import PlanAndPreprocessRequest, plan_and_preprocess
from volfnet.planning.planner import PlannerOptions
from volfnet.plans import Plans

DATASET_ID = 4
DATASET_NAME = "Dataset004_Hippocampus"
CONFIGURATION = "3d_fullres"
NUM_CLASSES = 3
# A tiny FMUNet: 3 levels, widths 4/8/16, one residual unit per block, in-plane first stride.
TINY_NETWORK = {
    "name": "fmunet", "feature_channels": [4, 8, 16], "strides": [[1, 2, 2], [2, 2, 2]],
    "kernel_sizes": [[3, 3, 3]] * 3, "dropout": [0.0, 0.0, 0.0], "depth": 1,
}
PATCH = [8, 16, 16]  # after the transpose; larger than the images' first axis, so tiles are padded
SHAPE = (18, 20, 8)  # (z, y, x) as written: x is the thick axis and is transposed to the front
CASE_SPACINGS = [(1.0, 1.0, 3.0), (1.2, 1.0, 3.0), (0.9, 1.1, 3.0)]  # two cases are resampled
FOLDS = (0, 1)


@dataclass
class ModelSetup:
    """Where :func:`build_model_folder` put everything, and the plans and dataset.json it made."""

    roots: dict[str, Path]
    raw_folder: Path
    preprocessed_folder: Path
    model_folder: Path
    plans: Plans
    dataset_json: DatasetJson
    input_folder: Path  # one case, case_000_0000.nii.gz, as in imagesTr


def build_model_folder(base: Path, roots: dict[str, Path]) -> ModelSetup:
    """Plan and preprocess a tiny dataset in ``roots`` (the environment's), then save two folds of a
    tiny FMUNet as a trained model folder; ``base`` gets a one-case input folder."""
    raw = make_raw_dataset(roots["raw"], dataset_id=DATASET_ID, name="Hippocampus", num_cases=3, shape=SHAPE, spacing_per_case=CASE_SPACINGS)
    result = plan_and_preprocess(PlanAndPreprocessRequest(
        dataset=str(DATASET_ID), options=PlannerOptions(compute_target="cpu"), num_workers=1, progress=False,
        overrides=[f"{CONFIGURATION}.patch_size={json.dumps(PATCH)}", f"{CONFIGURATION}.network={json.dumps(TINY_NETWORK)}"],
    ))
    plans = result.plans
    configuration = plans.configuration(CONFIGURATION)
    dataset_json = DatasetJson.load(result.output_folder / "dataset.json")
    folder = model_folder_path(DATASET_NAME, TINY_NETWORK["name"], CONFIGURATION, roots["results"])
    write_model_folder_files(folder, plans, result.output_folder / "dataset.json")
    spec = CheckpointSpec(
        kind="segmentation", network=configuration.network, num_input_channels=1, num_classes=NUM_CLASSES,
        patch_size=configuration.patch_size, spacing=configuration.spacing, normalization=configuration.normalization,
        transpose_forward=plans.transpose_forward, dataset_name=DATASET_NAME, configuration=CONFIGURATION,
        labels=dataset_json.labels,
    )
    for fold in FOLDS:
        torch.manual_seed(fold)
        network = build_network_from_topology(configuration.network, 1, NUM_CLASSES, deep_supervision=True)
        state = {"model_state_dict": network.state_dict(), "spec": spec.to_dict(), "epoch": 3}
        save_checkpoint(checkpoint_path(fold_folder(folder, fold), "final"), state)
        shutil.copyfile(checkpoint_path(fold_folder(folder, fold), "final"), checkpoint_path(fold_folder(folder, fold), "best"))
    input_folder = base / "input"
    input_folder.mkdir()
    shutil.copyfile(raw / "imagesTr" / "case_000_0000.nii.gz", input_folder / "case_000_0000.nii.gz")
    return ModelSetup(roots, raw, result.output_folder / configuration.data_identifier, folder, plans, dataset_json, input_folder)


@contextlib.contextmanager
def model_environment(base: Path) -> Iterator[ModelSetup]:
    """The VOLFNET_* roots under ``base`` with a built model folder; one torch thread (shared CPUs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            roots = make_roots(base)
            point_environment_at(roots, patch)
            yield build_model_folder(base, roots)
    finally:
        torch.set_num_threads(threads)
