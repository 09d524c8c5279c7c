"""VolF batches for the training loop: fused samples drawn from the pool, and a fixed,
saved validation set.

:class:`VolFBatchProducer` is the loader's picklable ``producer(index) -> NumpyBatch``. Batch
``index`` draws everything (volumes, channels, crops, intensities, block map) from
``numpy.random.default_rng([seed, index])``, so the stream depends only on the seed: not
on the number of workers, and a resumed run continues it exactly. Volumes smaller than the
patch are padded by the VolF crop (:func:`volfnet.volf.crop.pad_to_patch`), so any image
size works. Targets are the fused label (levels 0..K) at full resolution and, for deep
supervision, nearest-neighbour down-sampled to every output scale.

Validation must measure progress on the *same* samples every round (published recipe: a
pre-generated fused validation set), so :func:`ensure_validation_set` draws ``count``
samples once with a fixed seed and saves them in the run folder as npy (images float32,
labels uint8, memory-mappable) with a JSON description written last; a resumed run reuses
them unchanged. :class:`FixedSetProducer` serves them as batches.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from volfnet.data.deep_supervision import deep_supervision_factors, downsample_seg
from volfnet.data.worker import NumpyBatch
from volfnet.errors import VolfnetError
from volfnet.io.files import atomic_save_npy, atomic_write_json, load_npy, read_json
from volfnet.training.pretrain_pool import VolumePool
from volfnet.volf.config import VolFConfig
from volfnet.volf.sample import FusedExample, fused_example, make_fused_batch

logger = logging.getLogger(__name__)

TARGET_DTYPE = np.int16  # what NumpyBatch targets carry (the loss casts to int64 on the device)
VALIDATION_FOLDER = "validation_set"
VALIDATION_IMAGES = "images.npy"
VALIDATION_LABELS = "labels.npy"
VALIDATION_DESCRIPTION = "validation_set.json"
DEFAULT_VALIDATION_SAMPLES = 32  # enough voxels per level for a stable Dice; ~170 MB at 64x128x128
VALIDATION_SEED_OFFSET = 7919  # validation samples come from another stream than any training batch
RESIZE_BACKEND = "torch"  # one interpolate call per crop: twice numpy's speed (benchmarks/volf)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VolfnetError(f"the data seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _limit_torch_threads() -> None:
    """One torch thread in a loader worker: workers already use every core, and the torch
    resize backend would otherwise start a thread pool per worker (forked ones included)."""
    import torch

    torch.set_num_threads(1)


def deep_supervision_targets(labels: np.ndarray, strides: Sequence[Sequence[int]], num_outputs: int) -> list[np.ndarray]:
    """(B, 1, *patch) labels at every deep-supervision scale, full resolution first."""
    return [
        np.ascontiguousarray(downsample_seg(labels, factor), dtype=TARGET_DTYPE)
        for factor in deep_supervision_factors(strides, num_outputs)
    ]


class VolFBatchProducer:
    """Fused training batches from the pool: data (B, 1, *patch) float32, targets one int16
    (B, 1, *scaled) array per network output, seeded by ``(seed, index)``."""

    def __init__(
        self,
        pool: VolumePool,
        volf_config: VolFConfig,
        batch_size: int,
        seed: int,
        num_outputs: int,
        strides: Sequence[Sequence[int]],
        backend: str = RESIZE_BACKEND,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise VolfnetError(f"the batch size must be a positive integer, got {batch_size!r}")
        self.pool = pool
        self.config = volf_config
        self.batch_size = batch_size
        self.seed = _check_seed(seed)
        self.num_outputs = int(num_outputs)
        self.strides = [list(map(int, s)) for s in strides]
        deep_supervision_factors(self.strides, self.num_outputs)  # raises for an impossible count
        self.backend = backend
        self._owner_pid = os.getpid()
        self._threads_limited = False

    def __call__(self, index: int) -> NumpyBatch:
        if not self._threads_limited and os.getpid() != self._owner_pid and self.backend == "torch":
            _limit_torch_threads()
            self._threads_limited = True
        rng = np.random.default_rng([self.seed, int(index)])
        entries = self.pool.draw(rng, self.batch_size)
        volumes = [self.pool.volume(e) for e in entries]
        images, labels = make_fused_batch(volumes, self.config, rng, [e.channel for e in entries], backend=self.backend)
        targets = deep_supervision_targets(labels, self.strides, self.num_outputs)
        return NumpyBatch(int(index), images, targets, [self.pool.case_name(e) for e in entries])

    def examples(self, index: int, count: int) -> list[FusedExample]:
        """``count`` fused examples with their crops (for ``samples.png``), seeded by ``index``."""
        rng = np.random.default_rng([self.seed, int(index)])
        out = []
        for entry in self.pool.draw(rng, count):
            out.append(fused_example(self.pool.volume(entry), self.config, rng, entry.channel, backend=self.backend))
        return out


# ----------------------------------------------------------------------- validation set
@dataclass(frozen=True)
class ValidationSet:
    """A saved validation set: its folder and what it holds."""

    folder: Path
    count: int
    patch_size: list[int]
    num_classes: int

    @property
    def images_path(self) -> Path:
        return self.folder / VALIDATION_IMAGES

    @property
    def labels_path(self) -> Path:
        return self.folder / VALIDATION_LABELS


def validation_folder(run_folder: Path) -> Path:
    return Path(run_folder) / VALIDATION_FOLDER


def _description(config: VolFConfig, count: int, seed: int, pool: VolumePool) -> dict[str, Any]:
    return {
        "count": int(count),
        "seed": int(seed),
        "volf": config.resolved().to_dict(),
        "pool_volumes": pool.num_volumes,
    }


def read_validation_set(run_folder: Path) -> ValidationSet | None:
    """The complete validation set in ``run_folder``, or None (a set is complete once its JSON
    exists and the arrays have the recorded shapes)."""
    folder = validation_folder(run_folder)
    description_path = folder / VALIDATION_DESCRIPTION
    if not description_path.is_file():
        return None
    description = read_json(description_path)
    volf = description.get("volf", {})
    patch, count = volf.get("patch_size"), description.get("count")
    candidate = ValidationSet(folder, int(count), list(patch), int(volf.get("num_classes", 0)))
    try:
        images, labels = load_npy(candidate.images_path), load_npy(candidate.labels_path)
    except VolfnetError:
        return None
    expected = (candidate.count, 1, *candidate.patch_size)
    if tuple(images.shape) != expected or tuple(labels.shape) != expected:
        return None
    return candidate


def ensure_validation_set(
    run_folder: Path, pool: VolumePool, config: VolFConfig, count: int, seed: int, resume: bool = False
) -> ValidationSet:
    """The run's fixed validation set: generated once, reused afterwards.

    Resuming reuses the saved set whatever the current settings (the Dice curve must stay
    comparable). A fresh run reuses it when it was made with the same VolF settings, count,
    seed and pool size, and makes a new one otherwise.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise VolfnetError(f"the validation set needs at least one sample, got {count!r}")
    seed = _check_seed(seed)
    existing = read_validation_set(run_folder)
    wanted = _description(config, count, seed, pool)
    if existing is not None:
        stored = read_json(existing.folder / VALIDATION_DESCRIPTION)
        if resume or {k: v for k, v in stored.items() if k != "cases"} == wanted:
            logger.info("reusing the validation set in %s (%d samples)", existing.folder, existing.count)
            return existing
        logger.info("the VolF settings or the pool changed: making a new validation set in %s", existing.folder)
    elif resume:
        logger.warning("no saved validation set in %s; making it again", validation_folder(run_folder))
    folder = validation_folder(run_folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / VALIDATION_DESCRIPTION).unlink(missing_ok=True)  # incomplete until written again, last
    producer = VolFBatchProducer(pool, config, 1, seed + VALIDATION_SEED_OFFSET, 1, [])
    images = np.empty((count, 1, *config.patch_size), dtype=np.float32)
    labels = np.empty((count, 1, *config.patch_size), dtype=np.uint8)
    case_names = []
    for index in range(count):
        batch = producer(index)
        images[index] = batch.data[0]
        labels[index] = batch.target[0][0]
        case_names.append(batch.case_ids[0])
    atomic_save_npy(folder / VALIDATION_IMAGES, images)
    atomic_save_npy(folder / VALIDATION_LABELS, labels)
    atomic_write_json(folder / VALIDATION_DESCRIPTION, {**wanted, "cases": case_names})
    logger.info("made the validation set: %d fused samples of %s in %s", count, config.patch_size, folder)
    return ValidationSet(folder, count, list(config.patch_size), config.num_classes)


class FixedSetProducer:
    """Batches of the saved validation set: batch ``index`` holds samples
    ``(index * B + j) mod N`` (memory-mapped reads), so ``ceil(N / B)`` batches cover it."""

    def __init__(self, validation_set: ValidationSet, batch_size: int, num_outputs: int, strides: Sequence[Sequence[int]]) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise VolfnetError(f"the batch size must be a positive integer, got {batch_size!r}")
        self.validation_set = validation_set
        self.batch_size = batch_size
        self.num_outputs = int(num_outputs)
        self.strides = [list(map(int, s)) for s in strides]
        deep_supervision_factors(self.strides, self.num_outputs)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def batches_per_round(self) -> int:
        return math.ceil(self.validation_set.count / self.batch_size)

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (load_npy(self.validation_set.images_path), load_npy(self.validation_set.labels_path))
        return self._arrays

    def prepare(self) -> None:
        self._open()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def __call__(self, index: int) -> NumpyBatch:
        images, labels = self._open()
        count = self.validation_set.count
        start = (int(index) % self.batches_per_round) * self.batch_size
        rows = [(start + j) % count for j in range(self.batch_size)]
        data = np.ascontiguousarray(images[rows], dtype=np.float32)
        targets = deep_supervision_targets(np.asarray(labels[rows]), self.strides, self.num_outputs)
        return NumpyBatch(int(index), data, targets, [f"validation/{r}" for r in rows])
