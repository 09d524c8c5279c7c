"""Segmentation metrics on boolean masks: Dice, IoU, HD95, ASSD and normalised surface Dice.

Everything here is a pure function of two masks and the voxel spacing (numpy axis order,
(z, y, x) in mm), so the same code scores a folder of NIfTI files and a validation case held
in memory. Distances are in millimetres because the spacing is passed to the Euclidean
distance transform; a metric that ignored anisotropic spacing would rank a 3 mm slice error
the same as a 1 mm in-plane error.

Conventions for empty masks (the choice matters for means over cases and is documented in
``documentation/evaluation.md``) are the named constants below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

# Both masks empty: nothing to segment and nothing segmented. Following nnU-Net, the overlap
# scores are undefined (NaN) and left out of every mean; summaries report how often it happened.
OVERLAP_WHEN_BOTH_EMPTY = math.nan
# Both empty: no surfaces to compare, so surface metrics are undefined as well.
DISTANCE_WHEN_BOTH_EMPTY = math.nan
# Exactly one mask empty: a distance to a surface that does not exist is undefined. It is NaN
# (left out of the mean and counted) rather than an arbitrary penalty such as PyMIC's 100 mm,
# which would make the mean depend on a made-up number; Dice already scores the case as 0.
DISTANCE_WHEN_ONE_EMPTY = math.nan
# Exactly one mask empty: no surface point lies within tolerance of the other (absent)
# surface, so the NSD formula itself gives 0; this constant states it explicitly.
NSD_WHEN_ONE_EMPTY = 0.0
NSD_WHEN_BOTH_EMPTY = math.nan
# The 95th percentile of the directed distances (numpy's default linear interpolation).
HAUSDORFF_PERCENTILE = 95.0
# Voxels of margin around the masks' joint bounding box: one voxel keeps the background ring
# around the masks explicit, so surface extraction does not lean on the erosion's border
# handling; the distance transform is exact because every surface voxel lies inside the box.
CROP_MARGIN = 1

METRIC_NAMES = ("Dice", "IoU", "HD95", "ASSD", "NSD")


@dataclass
class SurfaceDistances:
    """Directed distances (mm) from every surface voxel of one mask to the other's surface.

    Each array has one entry per surface voxel of its source mask (empty for an empty mask);
    entries are infinite when the other mask is empty."""

    prediction_to_reference: np.ndarray
    reference_to_prediction: np.ndarray


def _check_pair(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float] | None = None) -> None:
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    if spacing is not None and len(spacing) != reference.ndim:
        raise ValueError(f"spacing {list(spacing)} has {len(spacing)} values for a {reference.ndim}D mask")


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice = 2|R∩P| / (|R| + |P|); NaN when both masks are empty (no smoothing term)."""
    _check_pair(reference, prediction)
    reference, prediction = reference.astype(bool, copy=False), prediction.astype(bool, copy=False)
    tp = int(np.count_nonzero(reference & prediction))
    total = int(np.count_nonzero(reference)) + int(np.count_nonzero(prediction))
    return OVERLAP_WHEN_BOTH_EMPTY if total == 0 else 2.0 * tp / total


def iou(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Intersection over union |R∩P| / |R∪P|; NaN when both masks are empty."""
    _check_pair(reference, prediction)
    reference, prediction = reference.astype(bool, copy=False), prediction.astype(bool, copy=False)
    union = int(np.count_nonzero(reference | prediction))
    if union == 0:
        return OVERLAP_WHEN_BOTH_EMPTY
    return int(np.count_nonzero(reference & prediction)) / union


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel, grown by ``margin`` and clipped to the
    array; None for an empty mask."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its erosion by the face-connected (6-neighbour in 3D)
    structuring element. Voxels on the array border count as surface (outside is background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], crop: bool = True
) -> SurfaceDistances:
    """Distances between the two surfaces, both ways, in the units of ``spacing``.

    With ``crop`` (the default) the work is done on the joint bounding box plus
    :data:`CROP_MARGIN`, which gives identical numbers at a fraction of the cost on large CT
    volumes. An array is empty when its own mask is empty and infinite when the other is.
    """
    _check_pair(reference, prediction, spacing)
    reference, prediction = reference.astype(bool, copy=False), prediction.astype(bool, copy=False)
    if crop:
        box = bounding_box(reference | prediction, CROP_MARGIN)
        if box is None:
            empty = np.zeros(0, dtype=np.float64)
            return SurfaceDistances(empty, empty.copy())
        reference, prediction = reference[box], prediction[box]
    sampling = [float(s) for s in spacing]
    ref_surface, pred_surface = surface(reference), surface(prediction)
    return SurfaceDistances(
        _distances_to(ref_surface, pred_surface, sampling), _distances_to(pred_surface, ref_surface, sampling)
    )


def _distances_to(target_surface: np.ndarray, source_surface: np.ndarray, sampling: list[float]) -> np.ndarray:
    """Distance from each source surface voxel to the nearest target surface voxel; infinite
    when there is no target surface, so the array length still counts the source surface."""
    if not source_surface.any():
        return np.zeros(0, dtype=np.float64)
    if not target_surface.any():
        return np.full(int(np.count_nonzero(source_surface)), np.inf)
    field = ndimage.distance_transform_edt(~target_surface, sampling=sampling)
    return np.asarray(field[source_surface], dtype=np.float64)


def _one_or_both_empty(distances: SurfaceDistances) -> float | None:
    """The convention value when a surface is missing, or None when both exist."""
    n_pred, n_ref = distances.prediction_to_reference.size, distances.reference_to_prediction.size
    if n_pred == 0 and n_ref == 0:
        return DISTANCE_WHEN_BOTH_EMPTY
    if n_pred == 0 or n_ref == 0:
        return DISTANCE_WHEN_ONE_EMPTY
    return None


def hd95_from_distances(distances: SurfaceDistances) -> float:
    """Max of the two directed 95th-percentile distances (robust Hausdorff distance)."""
    special = _one_or_both_empty(distances)
    if special is not None:
        return special
    return float(
        max(
            np.percentile(distances.prediction_to_reference, HAUSDORFF_PERCENTILE),
            np.percentile(distances.reference_to_prediction, HAUSDORFF_PERCENTILE),
        )
    )


def assd_from_distances(distances: SurfaceDistances) -> float:
    """Average symmetric surface distance: the mean of all distances in both directions."""
    special = _one_or_both_empty(distances)
    if special is not None:
        return special
    total = distances.prediction_to_reference.sum() + distances.reference_to_prediction.sum()
    return float(total / (distances.prediction_to_reference.size + distances.reference_to_prediction.size))


def nsd_from_distances(distances: SurfaceDistances, tolerance_mm: float) -> float:
    """Normalised surface Dice (Nikolov et al.): the fraction of both surfaces lying within
    ``tolerance_mm`` of the other, counted per surface voxel (no surface-area weights)."""
    n_pred, n_ref = distances.prediction_to_reference.size, distances.reference_to_prediction.size
    if n_pred == 0 and n_ref == 0:
        return NSD_WHEN_BOTH_EMPTY
    if n_pred == 0 or n_ref == 0:
        return NSD_WHEN_ONE_EMPTY
    within = np.count_nonzero(distances.prediction_to_reference <= tolerance_mm) + np.count_nonzero(
        distances.reference_to_prediction <= tolerance_mm
    )
    return float(within / (n_pred + n_ref))


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm; NaN when either mask is empty."""
    return hd95_from_distances(surface_distances(reference, prediction, spacing))


def assd(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm; NaN when either mask is empty."""
    return assd_from_distances(surface_distances(reference, prediction, spacing))


def normalized_surface_dice(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> float:
    """Normalised surface Dice at ``tolerance_mm``; NaN when both empty, 0 when one is."""
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    return nsd_from_distances(surface_distances(reference, prediction, spacing), tolerance_mm)


def mask_metrics(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> dict[str, float | int]:
    """Every metric for one pair of masks, computing the surface distances only once.

    Besides :data:`METRIC_NAMES` the result holds voxel counts (``n_ref``, ``n_pred``, ``TP``,
    ``FP``, ``FN``) so a summary can say why a metric is NaN.
    """
    _check_pair(reference, prediction, spacing)
    reference, prediction = reference.astype(bool, copy=False), prediction.astype(bool, copy=False)
    n_ref, n_pred = int(np.count_nonzero(reference)), int(np.count_nonzero(prediction))
    tp = int(np.count_nonzero(reference & prediction))
    distances = surface_distances(reference, prediction, spacing)
    union = n_ref + n_pred - tp
    return {
        "Dice": OVERLAP_WHEN_BOTH_EMPTY if n_ref + n_pred == 0 else 2.0 * tp / (n_ref + n_pred),
        "IoU": OVERLAP_WHEN_BOTH_EMPTY if union == 0 else tp / union,
        "HD95": hd95_from_distances(distances),
        "ASSD": assd_from_distances(distances),
        "NSD": nsd_from_distances(distances, tolerance_mm),
        "n_ref": n_ref,
        "n_pred": n_pred,
        "TP": tp,
        "FP": n_pred - tp,
        "FN": n_ref - tp,
    }


def label_map_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
    tolerance_mm: float,
) -> dict[int, dict[str, float | int]]:
    """Metrics of every label of two integer label maps, keyed by label value.

    Each label is cut out of its own bounding box (found for all labels in one pass with
    ``ndimage.find_objects``), so a 100-class CT map costs one scan plus small crops.
    Label 0 (background) is scored on the full volume when asked for.
    """
    _check_pair(reference, prediction, spacing)
    positive = [int(label) for label in labels if int(label) > 0]
    max_label = max(positive, default=0)
    ref_boxes = _label_boxes(reference, max_label)
    pred_boxes = _label_boxes(prediction, max_label)
    results: dict[int, dict[str, float | int]] = {}
    for label in (int(v) for v in labels):
        if label <= 0:
            results[label] = mask_metrics(reference == label, prediction == label, spacing, tolerance_mm)
            continue
        box = _union_box(ref_boxes[label - 1], pred_boxes[label - 1], reference.shape)
        if box is None:
            empty = np.zeros((1,) * reference.ndim, dtype=bool)
            results[label] = mask_metrics(empty, empty, spacing, tolerance_mm)
            continue
        results[label] = mask_metrics(reference[box] == label, prediction[box] == label, spacing, tolerance_mm)
    return results


def _label_boxes(label_map: np.ndarray, max_label: int) -> list[tuple[slice, ...] | None]:
    if max_label == 0:
        return []
    clipped = np.where((label_map > 0) & (label_map <= max_label), label_map, 0).astype(np.int32, copy=False)
    boxes = ndimage.find_objects(clipped, max_label=max_label)
    return list(boxes) + [None] * (max_label - len(boxes))


def _union_box(
    first: tuple[slice, ...] | None, second: tuple[slice, ...] | None, shape: tuple[int, ...]
) -> tuple[slice, ...] | None:
    """Joint box of two optional boxes grown by :data:`CROP_MARGIN` and clipped to ``shape``."""
    boxes = [b for b in (first, second) if b is not None]
    if not boxes:
        return None
    return tuple(
        slice(max(min(b[axis].start for b in boxes) - CROP_MARGIN, 0), min(max(b[axis].stop for b in boxes) + CROP_MARGIN, size))
        for axis, size in enumerate(shape)
    )
