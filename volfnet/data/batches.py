"""Batch producers: sampler + augmentation pipeline, one batch per index, seeded per index.

A producer is a picklable callable ``producer(index) -> NumpyBatch``. Batch ``index`` draws all
its randomness from ``numpy.random.default_rng([seed, index])``, so the stream of batches
depends only on the seed — not on the number of workers, on which worker made a batch, or on
what ran before — and a resumed run continues it exactly by starting at the next index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volfnet.data.augmentation import (
    AugmentationConfig,
    AugmentationPipeline,
    build_training_pipeline,
    build_validation_pipeline,
    spatial_crop_size,
    use_dummy_2d,
)
from volfnet.data.cached_dataset import CachedDataset
from volfnet.data.deep_supervision import deep_supervision_factors
from volfnet.data.patch_sampler import FOREGROUND_OVERSAMPLING, PatchSampler
from volfnet.data.worker import NumpyBatch
from volfnet.errors import VolfnetError
from volfnet.plans import ConfigurationPlan


@dataclass(frozen=True)
class PreviousStageInput:
    """A cascade's extra input: where the previous stage's label maps of the cases lie, and
    the foreground labels that become one-hot channels (in this order)."""

    folder: Path
    foreground_labels: tuple[int, ...]


class BatchProducer:
    """Makes batch ``index`` from a sampler and a pipeline, seeded by ``(seed, index)``."""

    def __init__(self, sampler: PatchSampler, pipeline: AugmentationPipeline, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise VolfnetError(f"the data seed must be a non-negative integer, got {seed!r}")
        self.sampler = sampler
        self.pipeline = pipeline
        self.seed = int(seed)

    def prepare(self) -> None:
        """Open every case now, in this process: forked workers then share the maps and location
        tables instead of each parsing every case's JSON again (see :class:`BatchLoader`)."""
        self.sampler.dataset.open_all()

    def __call__(self, index: int) -> NumpyBatch:
        rng = np.random.default_rng([self.seed, int(index)])
        sampled = self.sampler.sample(rng)
        data, target = self.pipeline(sampled.data, sampled.seg, rng)
        return NumpyBatch(index=int(index), data=data, target=target, case_ids=[box.case_id for box in sampled.boxes])


def dummy_2d_for(plan: ConfigurationPlan) -> bool:
    """Dummy-2D augmentation when the plans ask for it or the (possibly overridden) patch is
    too flat for 3D rotation."""
    return bool(plan.dummy_2d_augmentation) or use_dummy_2d(plan.patch_size)


def masked_channels_for(plan: ConfigurationPlan) -> list[int]:
    """Channels normalised inside the nonzero mask only (their outside is reset to 0)."""
    return [index for index, normalization in enumerate(plan.normalization) if normalization.use_mask]


def training_producer(
    folder: Path,
    case_ids: Sequence[str],
    plan: ConfigurationPlan,
    seed: int,
    num_outputs: int,
    config: AugmentationConfig | None = None,
    oversampling: float = FOREGROUND_OVERSAMPLING,
    previous_stage: PreviousStageInput | None = None,
) -> BatchProducer:
    """Training batches for ``plan``: enlarged crops, full augmentation, deep-supervision targets
    for ``num_outputs`` network outputs (1 = none). Give validation a different ``seed``; to
    resume, start the loader at ``epoch * iterations_per_epoch``. ``previous_stage`` (a
    cascade) adds its one-hot channels after the image channels."""
    config = config if config is not None else AugmentationConfig()
    dummy_2d = dummy_2d_for(plan)
    crop = spatial_crop_size(plan.patch_size, config, dummy_2d)
    sampler = PatchSampler(_dataset(folder, case_ids, plan, previous_stage), crop, plan.patch_size, plan.batch_size, oversampling)
    factors = deep_supervision_factors(plan.network.strides, num_outputs)
    pipeline = build_training_pipeline(
        plan.patch_size, config, plan.mirror_axes, masked_channels_for(plan), factors, dummy_2d,
        previous_stage.foreground_labels if previous_stage is not None else None,
    )
    return BatchProducer(sampler, pipeline, seed)


def _dataset(folder: Path, case_ids: Sequence[str], plan: ConfigurationPlan, previous_stage: PreviousStageInput | None) -> CachedDataset:
    """The cases, with their previous-stage label maps exactly when the plan is a cascade."""
    if (previous_stage is None) != (plan.previous_stage is None):
        raise VolfnetError(
            f"{plan.data_identifier}: the plan's previous stage is {plan.previous_stage!r} but previous-stage input was "
            f"{'not ' if previous_stage is None else ''}given"
        )
    return CachedDataset(folder, case_ids, previous_stage_folder=previous_stage.folder if previous_stage is not None else None)


def validation_producer(
    folder: Path,
    case_ids: Sequence[str],
    plan: ConfigurationPlan,
    seed: int,
    num_outputs: int,
    oversampling: float = FOREGROUND_OVERSAMPLING,
    previous_stage: PreviousStageInput | None = None,
) -> BatchProducer:
    """Validation batches: the same sampling (with oversampling), no augmentation."""
    sampler = PatchSampler(_dataset(folder, case_ids, plan, previous_stage), plan.patch_size, plan.patch_size, plan.batch_size, oversampling)
    factors = deep_supervision_factors(plan.network.strides, num_outputs)
    labels = previous_stage.foreground_labels if previous_stage is not None else None
    return BatchProducer(sampler, build_validation_pipeline(masked_channels_for(plan), factors, labels), seed)
