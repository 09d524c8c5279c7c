"""Random training patches with foreground oversampling, cropped from memory-mapped cases.

A uniformly placed patch rarely contains a small structure, so the last third of every batch
is forced onto foreground: a class is drawn uniformly among the classes present in the case
(not weighted by frequency, so a tiny structure is seen as often as a large one), then one of
its stored voxels, and the patch is centred on it. The remaining samples are placed uniformly
within bounds that let the patch stick out of the case by half the augmentation margin, so
border voxels appear anywhere in a patch.

Cropping slices the memory map first and pads only the small patch (image with 0, seg with
the outside-mask value -1), so a sample never reads more of a case than its patch covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from volfnet.data.cached_dataset import CachedCase, CachedDataset
from volfnet.data.previous_stage import PREVIOUS_STAGE_PAD
from volfnet.errors import VolfnetError
from volfnet.io.case_store import OUTSIDE_MASK_LABEL

FOREGROUND_OVERSAMPLING = 0.33  # share of each batch centred on foreground (nnU-Net's proven default)
IMAGE_PAD_VALUE = 0.0  # normalised images are ~zero-mean, and 0 is also what the nonzero crop removed
SEG_DTYPE = np.int16  # holds every label the case store writes (int8 or int16) plus the outside-mask value -1


@dataclass(frozen=True)
class PatchBox:
    """Where one sample was cut: lower corner (may be negative or past the case: padding),
    size, and the foreground class it was centred on (None for a uniform sample)."""

    case_id: str
    lower: tuple[int, ...]
    size: tuple[int, ...]
    centre_class: int | None


@dataclass
class SampledBatch:
    """Cropped (not yet augmented) samples: ``data`` (B, C, *crop) float32, ``seg`` (B, 1, *crop)
    int16; in a cascade ``seg`` (B, 2, *crop) holds the previous stage's labels as channel 1."""

    data: np.ndarray
    seg: np.ndarray
    boxes: list[PatchBox]


def num_forced_foreground(batch_size: int, oversampling: float = FOREGROUND_OVERSAMPLING) -> int:
    """How many samples of a batch are forced onto foreground (the last ones of the batch).

    nnU-Net's rule: sample ``j`` is forced when ``j >= round(batch_size * (1 - oversampling))``,
    so a batch of 2 forces one sample and a batch of 9 forces three.
    """
    return batch_size - round(batch_size * (1.0 - oversampling))


def placement_bounds(shape: Sequence[int], crop_size: Sequence[int], final_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (lowest, highest) lower corner of a crop inside a case of ``shape``.

    The crop may stick out by half the augmentation margin (crop - final) on each side; where
    the case is smaller than the crop, it may stick out by half the difference, which centres
    a small case in its crop.
    """
    shape_a = np.asarray(shape, dtype=np.int64)
    crop = np.asarray(crop_size, dtype=np.int64)
    need_to_pad = np.maximum(crop - np.asarray(final_size, dtype=np.int64), 0)
    need_to_pad = np.where(shape_a + need_to_pad < crop, crop - shape_a, need_to_pad)
    lowest = -(need_to_pad // 2)
    highest = shape_a + need_to_pad // 2 + need_to_pad % 2 - crop
    return lowest, np.maximum(highest, lowest)


def draw_box(
    case: CachedCase,
    crop_size: Sequence[int],
    final_size: Sequence[int],
    force_foreground: bool,
    rng: np.random.Generator,
) -> PatchBox:
    """Place one crop in ``case``.

    Forced samples pick a class uniformly among those with stored locations, then a location,
    and centre the crop on it, shifted only as far as the placement bounds require: the chosen
    voxel then still lies inside the final (centre) patch. A case without foreground falls back
    to uniform placement.
    """
    lowest, highest = placement_bounds(case.spatial_shape, crop_size, final_size)
    crop = np.asarray(crop_size, dtype=np.int64)
    classes = sorted(case.class_locations)
    if force_foreground and classes:
        label = classes[int(rng.integers(len(classes)))]
        points = case.class_locations[label]
        voxel = points[int(rng.integers(len(points)))].astype(np.int64)
        lower = np.clip(voxel - crop // 2, lowest, highest)
        return PatchBox(case.case_id, tuple(int(v) for v in lower), tuple(int(v) for v in crop), label)
    lower = np.array([rng.integers(lo, hi + 1) for lo, hi in zip(lowest, highest)], dtype=np.int64)
    return PatchBox(case.case_id, tuple(int(v) for v in lower), tuple(int(v) for v in crop), None)


def crop_with_padding(array: np.ndarray, lower: Sequence[int], size: Sequence[int], pad_value: float, out: np.ndarray | None = None) -> np.ndarray:
    """Cut ``array[:, lower:lower+size]`` (channel axis kept), padding outside with ``pad_value``.

    Only the part of the box inside the array is read (one slice of the memory map), then
    copied into the output, which is filled with ``pad_value`` only where the box leaves the
    array. ``out`` (C, *size) is filled in place when given, so a batch is assembled without
    temporary copies.
    """
    spatial = array.shape[1:]
    if len(lower) != len(spatial) or len(size) != len(spatial):
        raise ValueError(f"box {list(lower)}+{list(size)} does not match array of spatial shape {spatial}")
    if out is None:
        out = np.empty((array.shape[0], *size), dtype=array.dtype)
    elif out.shape != (array.shape[0], *size):
        raise ValueError(f"output of shape {out.shape} cannot hold a crop of {(array.shape[0], *size)}")
    source, target = [slice(None)], [slice(None)]
    for low, extent, length in zip(lower, size, spatial):
        start, stop = max(low, 0), min(low + extent, length)
        if stop <= start:  # the box misses the array on this axis: all padding
            out[...] = pad_value
            return out
        source.append(slice(start, stop))
        target.append(slice(start - low, stop - low))
    inner = tuple(target)
    _fill_outside(out, inner, pad_value)
    out[inner] = array[tuple(source)]
    return out


def _fill_outside(out: np.ndarray, inner: tuple[slice, ...], pad_value: float) -> None:
    """Set everything of ``out`` outside the ``inner`` box to ``pad_value`` (slab by slab)."""
    prefix: list[slice] = [slice(None)]
    for axis in range(1, out.ndim):
        inside = inner[axis]
        rest = [slice(None)] * (out.ndim - axis - 1)
        if inside.start > 0:
            out[tuple(prefix + [slice(0, inside.start)] + rest)] = pad_value
        if inside.stop < out.shape[axis]:
            out[tuple(prefix + [slice(inside.stop, None)] + rest)] = pad_value
        prefix.append(inside)


class PatchSampler:
    """Draws whole batches: cases uniformly with replacement, boxes as in :func:`draw_box`.

    ``crop_size`` is what is cut from the case (the final patch enlarged by the spatial
    augmentation margin, see :func:`volfnet.data.augmentation.spatial_crop_size`);
    ``final_size`` is the patch the network sees.
    """

    def __init__(
        self,
        dataset: CachedDataset,
        crop_size: Sequence[int],
        final_size: Sequence[int],
        batch_size: int,
        oversampling: float = FOREGROUND_OVERSAMPLING,
    ) -> None:
        if batch_size < 1:
            raise VolfnetError(f"batch size must be at least 1, got {batch_size}")
        if not 0.0 <= oversampling <= 1.0:
            raise VolfnetError(f"foreground oversampling must be within [0, 1], got {oversampling}")
        if len(crop_size) != len(final_size) or any(c < f for c, f in zip(crop_size, final_size)):
            raise VolfnetError(f"crop size {list(crop_size)} must be at least the patch size {list(final_size)} on every axis")
        self.dataset = dataset
        self.crop_size = tuple(int(v) for v in crop_size)
        self.final_size = tuple(int(v) for v in final_size)
        self.batch_size = int(batch_size)
        self.oversampling = float(oversampling)
        self.first_forced = self.batch_size - num_forced_foreground(self.batch_size, self.oversampling)

    def sample(self, rng: np.random.Generator) -> SampledBatch:
        """One batch of crops; all randomness comes from ``rng``."""
        first = self.dataset.load(self.dataset.case_ids[0])
        channels = first.image.shape[0]
        data = np.empty((self.batch_size, channels, *self.crop_size), dtype=np.float32)
        cascade = self.dataset.previous_stage_folder is not None
        seg = np.empty((self.batch_size, 2 if cascade else 1, *self.crop_size), dtype=SEG_DTYPE)
        boxes = []
        for j in range(self.batch_size):
            case = self.dataset.load(self.dataset.case_ids[int(rng.integers(len(self.dataset)))])
            if case.image.shape[0] != channels:
                raise VolfnetError(f"case {case.case_id} has {case.image.shape[0]} channels, others have {channels}")
            box = draw_box(case, self.crop_size, self.final_size, j >= self.first_forced, rng)
            crop_with_padding(case.image, box.lower, box.size, IMAGE_PAD_VALUE, out=data[j])
            crop_with_padding(case.seg, box.lower, box.size, OUTSIDE_MASK_LABEL, out=seg[j, :1])
            if case.previous_stage is not None:
                crop_with_padding(case.previous_stage, box.lower, box.size, PREVIOUS_STAGE_PAD, out=seg[j, 1:])
            boxes.append(box)
        return SampledBatch(data=data, seg=seg, boxes=boxes)
