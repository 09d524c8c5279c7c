"""Tiny training set-ups shared by the training tests: blob cases, plans, tasks (one that is
interrupted mid-run), fast configs, and a planned raw dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers.cached_cases import make_case
from helpers.raw_data import make_raw_dataset

from volfnet.cli.plan_and_preprocess import main as plan_main
from volfnet.io.dataset import DatasetJson
from volfnet.plans import (
    ChannelNormalization,
    ConfigurationPlan,
    NetworkTopology,
    Plans,
)
from volfnet.training.config import TrainerConfig
from volfnet.training.segmentation import SegmentationTask

CASE_SHAPE = (20, 20, 20)
PATCH = [16, 16, 16]
WIDTHS = [4, 8, 16]


def make_blob_dataset(folder: Path, count: int = 4, seed: int = 0, shape=CASE_SHAPE) -> list[str]:
    """Preprocessed cases in ``folder/3d_fullres``: a bright ball (label 1) with a brighter cap
    (label 2) at a random place, on noise; a -1 rim on the first slice."""
    rng = np.random.default_rng(seed)
    cases = folder / "3d_fullres"
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ids = []
    for index in range(count):
        centre = rng.uniform(6, np.array(shape) - 6)
        distance = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        seg = np.zeros((1, *shape), np.int8)
        seg[0][distance < 4.5] = 1
        seg[0][(distance < 4.5) & (xx > centre[2] + 1)] = 2
        seg[0, 0] = -1
        image = rng.standard_normal((1, *shape)) * 0.5 + 2.0 * (seg > 0) + 1.5 * (seg == 2)
        case_id = f"case_{index:03d}"
        make_case(cases, case_id, image.astype(np.float32), seg)
        ids.append(case_id)
    return ids


def tiny_plans(batch_size: int = 2, widths=WIDTHS, dropout: float = 0.0) -> Plans:
    """Plans for the blob cases: one CPU configuration of a small FMUNet (``widths`` per level)."""
    levels = len(widths)
    topology = NetworkTopology("fmunet", list(widths), [[2, 2, 2]] * (levels - 1), [[3, 3, 3]] * levels, [0.0] + [dropout] * (levels - 1))
    plan = ConfigurationPlan(
        "3d_fullres", [1.0, 1.0, 1.0], list(CASE_SHAPE), list(PATCH), batch_size, topology, [ChannelNormalization("zscore")]
    )
    return Plans("Dataset001_Blobs", "cpu", 1, [0, 1, 2], [0, 1, 2], [1.0, 1.0, 1.0], list(CASE_SHAPE), {"3d_fullres": plan})


def blob_dataset_json() -> DatasetJson:
    """The dataset.json of the blob cases: one MR channel, labels ball and cap."""
    return DatasetJson({0: "MR"}, {"background": 0, "ball": 1, "cap": 2}, 4, ".nii.gz", "Blobs")


def fast_config(**changes) -> TrainerConfig:
    """A few tiny in-process epochs: no workers, no plots, no progress bar."""
    values = {
        "num_epochs": 2, "iterations_per_epoch": 3, "val_iterations": 2, "num_workers": 0, "val_num_workers": 0,
        "progress_bar": False, "plot_every": 1000, "checkpoint_every": 1, "seed": 3,
    }
    values.update(changes)
    return TrainerConfig(**values)


class PatchOnlyTask(SegmentationTask):
    """The segmentation task without the final full-volume validation (tests of the loop)."""

    def after_training(self, model, run_folder, device) -> None:
        self.after_training_calls = getattr(self, "after_training_calls", 0) + 1


class Interrupted(Exception):
    """What :class:`InterruptingTask` raises: a test can tell it from a real failure."""


class InterruptingTask(PatchOnlyTask):
    """Raises while making training batch ``interrupt_at``: a run killed mid-epoch."""

    interrupt_at: int | None = None

    def training_producer(self, seed):
        producer = super().training_producer(seed)
        stop = self.interrupt_at

        def produce(index):
            if index == stop:
                raise Interrupted(f"killed at batch {index}")
            return producer(index)

        return produce


def blob_task(folder: Path, config: TrainerConfig, count: int = 4, task_class=PatchOnlyTask, **plan_kwargs) -> SegmentationTask:
    """A task on the blob cases of ``folder`` (made if absent): the last case validates, the others train."""
    ids = make_blob_dataset(folder, count) if not (folder / "3d_fullres").is_dir() else sorted(
        p.name[: -len(".json")] for p in (folder / "3d_fullres").glob("case_*.json")
    )
    return task_class(tiny_plans(**plan_kwargs), "3d_fullres", folder, blob_dataset_json(), 0, ids[:-1], ids[-1:], config)


def plan_tiny_dataset(raw_root: Path, dataset_id: int = 1) -> None:
    """A raw 5-case dataset, planned for the CPU with a 4-feature first level and preprocessed
    (under the VOLFNET_* roots of the environment)."""
    make_raw_dataset(raw_root, dataset_id=dataset_id, num_cases=5, shape=(16, 20, 20))
    assert plan_main(["-d", str(dataset_id), "--target", "cpu", "-np", "1", "--base-features", "4"]) == 0
