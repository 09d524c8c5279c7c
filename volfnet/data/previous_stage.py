"""The cascade's extra input: the previous stage's segmentation, one-hot, beside the image.

nnU-Net's ``3d_cascade_fullres`` sees the ``3d_lowres`` prediction of the same case as one
extra input channel per foreground label. Training uses the low-resolution folds' validation
predictions (each case predicted by the fold that did not train on it, so the cascade learns
to correct the mistakes it will meet at test time), resampled to the full-resolution
preprocessed grid and stored as ``<case>.npy`` label maps in the low-resolution model folder's
``predicted_next_stage/<cascade configuration>/``. This module owns that file contract, the
one-hot encoding, and the three batch transforms of nnU-Net's cascade:

- :class:`PreviousStageToData` moves the label map (carried through cropping, rotation,
  scaling and mirroring as a second ``seg`` channel, so it stays aligned with the image) into
  ``data`` as one-hot channels;
- :class:`RandomBinaryOperator` dilates, erodes, opens or closes a label's channel
  (p = 0.4 per sample, 0.5 per label, ball radius 1-8 voxels), so the network does not trust
  the previous stage's borders blindly;
- :class:`RemoveRandomComponent` deletes one small connected component of a label
  (p = 0.2 per sample, 0.5 per label; only components under 15% of the patch), so it learns
  to restore structures the previous stage missed.

The transforms draw from numpy's global generator like batchgenerators' (the augmentation
pipeline seeds it from the batch's own generator, so a batch stays reproducible).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage

from volfnet.errors import VolfnetError
from volfnet.io.files import atomic_save_npy, load_npy, npy_problem

PREDICTED_NEXT_STAGE = "predicted_next_stage"  # folder in the previous stage's model folder
PREVIOUS_STAGE_DTYPE = np.int16
PREVIOUS_STAGE_PAD = 0  # beyond a case's border the previous stage saw background
BINARY_OPERATIONS = ("dilation", "erosion", "opening", "closing")


def previous_stage_file(folder: Path, case_id: str) -> Path:
    return Path(folder) / f"{case_id}.npy"


def previous_stage_problems(folder: Path, case_ids: Sequence[str]) -> list[str]:
    """What is missing or damaged among the cases' previous-stage label maps (empty: all fine)."""
    problems = []
    for case_id in case_ids:
        problem = npy_problem(previous_stage_file(folder, case_id))
        if problem is not None:
            problems.append(problem)
    return problems


def save_previous_stage(labels: np.ndarray, folder: Path, case_id: str) -> Path:
    """Write one case's (Z, Y, X) label map on the next stage's grid, atomically."""
    path = previous_stage_file(folder, case_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(path, np.asarray(labels).astype(PREVIOUS_STAGE_DTYPE, copy=False))
    return path


def load_previous_stage(folder: Path, case_id: str, spatial_shape: Sequence[int], mmap: bool = True) -> np.ndarray:
    """A case's previous-stage label map as (1, Z, Y, X), checked to lie on the case's grid."""
    path = previous_stage_file(folder, case_id)
    labels = load_npy(path, mmap=mmap)
    if labels.ndim == 3:
        labels = labels[None]
    if labels.ndim != 4 or labels.shape[0] != 1 or list(labels.shape[1:]) != [int(s) for s in spatial_shape]:
        raise VolfnetError(
            f"{path}: previous-stage segmentation of shape {list(labels.shape)} does not fit case {case_id} of shape "
            f"{list(spatial_shape)}; the previous stage was predicted on other preprocessed data: redo its final "
            "validation (volfnet_train ... --val) after preprocessing"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise VolfnetError(f"{path}: holds {labels.dtype} values; a previous-stage segmentation holds integer labels")
    return labels


def one_hot_foreground(labels: np.ndarray, foreground_labels: Sequence[int], dtype: type = np.float32) -> np.ndarray:
    """(K, *S) one-hot of the foreground labels of a (*S) label map (background has no channel)."""
    labels = np.asarray(labels)
    out = np.empty((len(foreground_labels), *labels.shape), dtype=dtype)
    for channel, value in enumerate(foreground_labels):
        np.equal(labels, value, out=out[channel], casting="unsafe")
    return out


class PreviousStageToData(AbstractTransform):
    """``seg`` (B, 2, ...) holding the label map in channel 0 and the previous stage in
    channel 1 -> ``seg`` (B, 1, ...) and ``data`` with the previous stage's one-hot channels
    appended (after the image channels, the order the predictor uses)."""

    def __init__(self, foreground_labels: Sequence[int]) -> None:
        self.foreground_labels = [int(v) for v in foreground_labels]

    def __call__(self, **data_dict):
        data, seg = data_dict["data"], data_dict["seg"]
        if seg.shape[1] != 2:
            raise ValueError(f"expected the label map and the previous stage as two seg channels, got {seg.shape[1]}")
        one_hot = np.stack([one_hot_foreground(sample, self.foreground_labels) for sample in seg[:, 1]])
        data_dict["data"] = np.concatenate([np.asarray(data, dtype=np.float32), one_hot], axis=1)
        data_dict["seg"] = seg[:, :1]
        return data_dict


def _ball(radius: int) -> np.ndarray:
    grid = np.mgrid[tuple(slice(-radius, radius + 1) for _ in range(3))]
    return (grid**2).sum(axis=0) <= radius**2


def binary_operation(mask: np.ndarray, operation: str, radius: int) -> np.ndarray:
    """``mask`` dilated, eroded, opened or closed by a ball of ``radius`` voxels.

    Computed from Euclidean distance transforms (a voxel is in the dilation when it lies within
    ``radius`` of the mask), which is exactly the ball's result and costs the same for every
    radius, where a structuring element of radius 8 (2,109 voxels) would be about 100x slower.
    """
    if operation not in BINARY_OPERATIONS:
        raise ValueError(f"unknown binary operation {operation!r}; choose one of {BINARY_OPERATIONS}")

    def dilate(m: np.ndarray) -> np.ndarray:
        return m if not m.any() else ndimage.distance_transform_edt(~m) <= radius

    def erode(m: np.ndarray) -> np.ndarray:
        # outside the patch counts as inside the mask, as scipy's binary_erosion(border_value=1)
        padded = np.pad(m, 1, constant_values=True)
        return (ndimage.distance_transform_edt(padded) > radius)[1:-1, 1:-1, 1:-1]

    mask = np.asarray(mask, dtype=bool)
    if operation == "dilation":
        return dilate(mask)
    if operation == "erosion":
        return erode(mask)
    if operation == "opening":
        return dilate(erode(mask))
    return erode(dilate(mask))


class RandomBinaryOperator(AbstractTransform):
    """Dilate, erode, open or close the previous stage's label channels at random.

    The one-hot channels are the last ``num_channels`` of ``data`` (where
    :class:`PreviousStageToData` puts them). Per sample with ``p``, each channel (in random
    order) with ``p_per_label``: one operation with a ball radius drawn from
    ``radius_range``. Voxels a channel gains are taken from the other channels, so the
    encoding stays one label per voxel.
    """

    def __init__(self, num_channels: int, p: float = 0.4, p_per_label: float = 0.5, radius_range: tuple[int, int] = (1, 8)) -> None:
        self.channels = list(range(-int(num_channels), 0))
        self.p, self.p_per_label = float(p), float(p_per_label)
        self.radius_range = (int(radius_range[0]), int(radius_range[1]))

    def __call__(self, **data_dict):
        data = data_dict["data"]
        for sample in data:
            if np.random.uniform() >= self.p:
                continue
            for channel in np.random.permutation(self.channels).tolist():
                if np.random.uniform() >= self.p_per_label:
                    continue
                operation = BINARY_OPERATIONS[np.random.randint(len(BINARY_OPERATIONS))]
                radius = int(np.random.randint(self.radius_range[0], self.radius_range[1] + 1))
                before = sample[channel] > 0
                after = binary_operation(before, operation, radius)
                sample[channel] = after
                gained = after & ~before
                if gained.any():
                    for other in self.channels:
                        if other != channel:
                            sample[other][gained] = 0
        return data_dict


class RemoveRandomComponent(AbstractTransform):
    """Delete one connected component of a previous-stage label channel at random.

    The one-hot channels are the last ``num_channels`` of ``data``. Per sample with ``p``, each
    channel with ``p_per_label``: among its components (26-connected) smaller than
    ``max_fraction`` of the patch, one is removed (becomes background).
    """

    def __init__(self, num_channels: int, p: float = 0.2, p_per_label: float = 0.5, max_fraction: float = 0.15) -> None:
        self.channels = list(range(-int(num_channels), 0))
        self.p, self.p_per_label, self.max_fraction = float(p), float(p_per_label), float(max_fraction)

    def __call__(self, **data_dict):
        data = data_dict["data"]
        structure = np.ones((3, 3, 3), dtype=bool)
        for sample in data:
            if np.random.uniform() >= self.p:
                continue
            limit = self.max_fraction * sample[0].size
            for channel in self.channels:
                if np.random.uniform() >= self.p_per_label:
                    continue
                components, count = ndimage.label(sample[channel] > 0, structure=structure)
                if count == 0:
                    continue
                sizes = np.bincount(components.ravel())[1:]
                small = np.flatnonzero(sizes < limit) + 1
                if len(small):
                    sample[channel][components == small[np.random.randint(len(small))]] = 0
        return data_dict
