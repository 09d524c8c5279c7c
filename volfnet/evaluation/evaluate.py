"""Score a folder of predicted label maps against a folder of references.

Per case and per label: Dice, IoU, HD95, ASSD, NSD (see :mod:`volfnet.evaluation.metrics`
for definitions and the empty-mask conventions). Per label: the mean over cases, leaving out
undefined (NaN) values and counting why they were undefined. Foreground mean: the mean of
the per-label means over labels > 0 (nnU-Net's ``foreground_mean``). The result is written as
``summary.json`` (NaN stored as ``null``) and ``summary.csv`` (one row per case and label).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from volfnet.errors import VolfnetError
from volfnet.evaluation.cases import CasePair, find_case_pairs, normalize_labels, read_pair
from volfnet.evaluation.metrics import METRIC_NAMES, label_map_metrics, mask_metrics
from volfnet.parallel import default_num_workers, parallel_starmap
from volfnet.io.files import atomic_path, atomic_write_json
from volfnet.io.image_io import ImageGeometry, read_channels
from volfnet.values import json_safe, nanmean

logger = logging.getLogger(__name__)

# NSD tolerance when none is given: 1 mm is about one voxel of a typical CT/MR grid, the
# smallest boundary error that is clinically distinguishable from annotation noise.
DEFAULT_TOLERANCE_MM = 1.0
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
OVERLAY_FOLDER = "overlays"
# The channel drawn under the contours: the first one, as in the raw layout's {case}_0000.
OVERLAY_CHANNEL_SUFFIX = "_0000"
SUMMARY_VERSION = 1
COUNT_NAMES = ("n_ref", "n_pred", "TP", "FP", "FN")
CONVENTIONS = {
    "both_empty": "Dice, IoU, HD95, ASSD and NSD are null (undefined) and left out of the means",
    "reference_empty_only": "Dice, IoU and NSD are 0; HD95 and ASSD are null and left out of the means",
    "prediction_empty_only": "Dice, IoU and NSD are 0; HD95 and ASSD are null and left out of the means",
    "distances": "millimetres, from the image spacing",
}


def scoring_grid(reference: np.ndarray, prediction: np.ndarray, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The arrays and spacing metrics are computed on: a 2D picture ([1, Y, X], no third
    axis) is scored in 2D, so its surfaces are the in-plane contours (in 3D every pixel of a
    single slice would be surface) and distances are in pixels times the in-plane spacing."""
    if geometry.is_picture_2d:
        return reference[0], prediction[0], list(geometry.spacing[1:])
    return reference, prediction, list(geometry.spacing)


def evaluate_case(
    pair: CasePair,
    labels: Sequence[int],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    overlay_image: Path | None = None,
    overlay_path: Path | None = None,
    ignore_label: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Metrics of one case (``{"case", "reference", "prediction", "metrics": {label: {...}}}``)
    and, when both overlay paths are given, its PNG overlay.

    Voxels whose reference is ``ignore_label`` (unannotated) are left out: they become
    background in both maps, so whatever was predicted there is neither a true nor a false
    positive (surfaces are taken after this, as nnU-Net takes its counts). With ``regions``
    the keys of ``labels`` number the regions from 1 and region ``k`` is scored on the voxels
    whose value is one of ``regions[k - 1]``, in both maps."""
    reference, prediction, geometry = read_pair(pair)
    if ignore_label is not None:
        unannotated = reference == ignore_label
        reference = np.where(unannotated, 0, reference)
        prediction = np.where(unannotated, 0, prediction)
    scored_reference, scored_prediction, spacing = scoring_grid(reference, prediction, geometry)
    if regions is None:
        metrics = label_map_metrics(scored_reference, scored_prediction, labels, spacing, tolerance_mm)
    else:
        metrics = {
            int(number): mask_metrics(
                np.isin(scored_reference, regions[number - 1]), np.isin(scored_prediction, regions[number - 1]), spacing, tolerance_mm
            )
            for number in labels
        }
    if overlay_image is not None and overlay_path is not None:
        # Imported here: matplotlib adds about a second to every spawned worker's start-up
        # and is needed only when overlays are asked for.
        from volfnet.evaluation.overlays import save_overlay_png

        channels, image_geometry = read_channels(overlay_image)
        image = channels.mean(axis=0)  # an RGB picture is drawn in grey
        mismatch = geometry.matches(image_geometry)
        if mismatch:
            raise VolfnetError(f"{overlay_image}: geometry differs from reference {pair.reference} ({mismatch})")
        save_overlay_png(image, prediction, reference, overlay_path, spacing=geometry.spacing)
    return {
        "case": pair.case_id,
        "reference": str(pair.reference),
        "prediction": str(pair.prediction),
        "metrics": {str(label): values for label, values in metrics.items()},
    }


def summarize(
    case_results: Sequence[dict], labels: Mapping[int, str], tolerance_mm: float, ignore_label: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Per-label means over cases (NaN left out, and counted) and the foreground mean."""
    means: dict[str, dict[str, Any]] = {}
    for label, name in labels.items():
        per_case = [case["metrics"][str(label)] for case in case_results]
        entry: dict[str, Any] = {"name": name}
        for metric in METRIC_NAMES:
            entry[metric] = nanmean([values[metric] for values in per_case])
        entry["n_cases"] = len(per_case)
        entry["n_both_empty"] = sum(v["n_ref"] == 0 and v["n_pred"] == 0 for v in per_case)
        entry["n_reference_empty_only"] = sum(v["n_ref"] == 0 and v["n_pred"] > 0 for v in per_case)
        entry["n_prediction_empty_only"] = sum(v["n_ref"] > 0 and v["n_pred"] == 0 for v in per_case)
        means[str(label)] = entry
    foreground = [means[str(label)] for label in labels if label > 0]
    return {
        "version": SUMMARY_VERSION,
        "tolerance_mm": float(tolerance_mm),
        "labels": {str(label): name for label, name in labels.items()},
        "ignore_label": ignore_label,
        "regions": None if regions is None else {str(number): list(map(int, region)) for number, region in enumerate(regions, 1)},
        "metric_names": list(METRIC_NAMES),
        "conventions": CONVENTIONS,
        "num_cases": len(case_results),
        "foreground_mean": {metric: nanmean([entry[metric] for entry in foreground]) for metric in METRIC_NAMES},
        "mean": means,
        "per_case": list(case_results),
    }


def write_summary(summary: Mapping[str, Any], output_folder: Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.csv`` atomically; return their paths."""
    output_folder = Path(output_folder)
    json_path, csv_path = output_folder / SUMMARY_JSON, output_folder / SUMMARY_CSV
    atomic_write_json(json_path, json_safe(dict(summary)))
    columns = ["case", "label", "name", *METRIC_NAMES, *COUNT_NAMES]
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for case in summary["per_case"]:
                for label, values in case["metrics"].items():
                    row = [case["case"], label, summary["labels"][label]]
                    row += [repr(float(values[m])) for m in METRIC_NAMES]
                    row += [int(values[c]) for c in COUNT_NAMES]
                    writer.writerow(row)
    return json_path, csv_path


def _overlay_tasks(pairs: Sequence[CasePair], images_folder: Path | None, ending: str, output_folder: Path) -> list[tuple]:
    """Image and PNG path per case; every missing image is reported before any work starts."""
    if images_folder is None:
        return [(None, None)] * len(pairs)
    images_folder = Path(images_folder)
    images = [images_folder / f"{pair.case_id}{OVERLAY_CHANNEL_SUFFIX}{ending}" for pair in pairs]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise VolfnetError(f"{images_folder}: no image for the overlays of {len(missing)} case(s): {', '.join(missing[:10])}")
    return [(image, output_folder / OVERLAY_FOLDER / f"{pair.case_id}.png") for image, pair in zip(images, pairs)]


def evaluate_folder(
    gt_folder: Path,
    pred_folder: Path,
    labels: Mapping[str, int] | Sequence[int],
    file_ending: str | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    num_workers: int = default_num_workers(),
    output_folder: Path | None = None,
    allow_missing: bool = False,
    overlay_images_folder: Path | None = None,
    ignore_label: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Score every prediction in ``pred_folder`` against the same-named reference.

    ``labels`` is a dataset.json-style ``{name: value}`` mapping or a list of values. A
    reference without a prediction is an error unless ``allow_missing``; a geometry mismatch
    is always an error. ``summary.json``/``summary.csv`` go to ``output_folder`` (default:
    ``pred_folder``) and, with ``overlay_images_folder``, ``overlays/<case>.png`` beside them.
    ``ignore_label`` (the dataset's ``"ignore"`` label) marks reference voxels left out of
    every metric. ``regions`` (region datasets) scores regions instead of labels: region ``k``
    is every voxel whose value is one of ``regions[k - 1]``, named after the ``k``-th
    foreground entry of ``labels``. Returns the summary (NaN where the JSON file has null).
    """
    if not tolerance_mm >= 0:
        raise VolfnetError(f"NSD tolerance must be a non-negative number of mm, got {tolerance_mm}")
    label_names = normalize_labels(labels)
    if regions is not None:
        names = [name for value, name in label_names.items() if value > 0]
        if len(names) != len(regions):
            raise VolfnetError(f"{len(regions)} regions but {len(names)} foreground label names to call them")
        label_names = {number: name for number, name in enumerate(names, 1)}
    pairs = find_case_pairs(Path(gt_folder), Path(pred_folder), file_ending, allow_missing)
    ending = file_ending or pairs[0].reference.name[len(pairs[0].case_id):]
    output_folder = Path(output_folder) if output_folder is not None else Path(pred_folder)
    overlays = _overlay_tasks(pairs, overlay_images_folder, ending, output_folder)
    tasks = [(pair, list(label_names), tolerance_mm, image, png, ignore_label, regions) for pair, (image, png) in zip(pairs, overlays)]
    logger.info("evaluating %d case(s), labels %s", len(pairs), list(label_names))
    results = parallel_starmap(evaluate_case, tasks, num_workers, desc="evaluation", collect_user_errors=True)
    summary = summarize(results, label_names, tolerance_mm, ignore_label, regions)
    summary["reference_folder"] = str(gt_folder)
    summary["prediction_folder"] = str(pred_folder)
    json_path, _ = write_summary(summary, output_folder)
    logger.info("summary written to %s", json_path)
    return summary
