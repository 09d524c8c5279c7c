"""Turn raw cases into the npy cache the trainer reads, with one code path for training
cases and for single images at inference time (no label), so both see identical inputs.

Order per case: transpose → crop to nonzero → normalise (on the original grid) → resample to
the target spacing → sample foreground locations (training cases) → save.
"""

from __future__ import annotations

import logging
import time
import zlib
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volfnet.errors import VolfnetError
from volfnet.io.dataset import CaseFiles
from volfnet.io.image_io import ImageGeometry, read_case, read_segmentation
from volfnet.parallel import parallel_map
from volfnet.plans import Plans
from volfnet.io.case_store import CaseProperties, is_case_complete, save_case, seg_dtype
from volfnet.preprocessing.cropping import crop_to_nonzero
from volfnet.preprocessing.normalization import normalize_image
from volfnet.preprocessing.resampling import new_shape_for_spacing, resample_image, resample_segmentation

logger = logging.getLogger(__name__)

MAX_LOCATIONS_PER_CLASS = 10_000  # enough variety for oversampling, small enough for JSON
MIN_LOCATION_FRACTION = 0.01  # large structures still get 1% of their voxels sampled


def sample_class_locations(seg: np.ndarray, labels: list[int], rng: np.random.Generator) -> dict[int, list[list[int]]]:
    """Up to :data:`MAX_LOCATIONS_PER_CLASS` (at least 1% of the voxels) random (z, y, x)
    positions of each foreground label present in a (1, Z, Y, X) seg, for oversampling."""
    locations: dict[int, list[list[int]]] = {}
    flat = seg[0].ravel()
    for label in labels:
        indices = np.flatnonzero(flat == label)
        if len(indices) == 0:
            continue
        count = min(len(indices), max(MAX_LOCATIONS_PER_CLASS, int(np.ceil(len(indices) * MIN_LOCATION_FRACTION))))
        chosen = np.sort(rng.choice(indices, size=count, replace=False))
        locations[int(label)] = np.stack(np.unravel_index(chosen, seg.shape[1:]), axis=1).tolist()
    return locations


def case_seed(case_id: str) -> int:
    """A stable per-case seed, so reruns and parallel runs sample identical locations."""
    return zlib.crc32(case_id.encode())


def preprocess_array(
    image: np.ndarray,
    geometry: ImageGeometry,
    seg: np.ndarray | None,
    plans: Plans,
    configuration_name: str,
    case_id: str,
    foreground_labels: list[int] | None = None,
    source_files: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, CaseProperties]:
    """Preprocess one case held in memory: image (C, Z, Y, X) as read, seg (1, Z, Y, X) or None.

    Returns the preprocessed image (float32), seg (with -1 outside the nonzero mask; all 0/-1
    without a label) and the properties needed to map predictions back.
    """
    configuration = plans.configuration(configuration_name)
    if image.shape[0] != plans.num_input_channels:
        raise VolfnetError(f"case {case_id}: has {image.shape[0]} channel(s); the plans expect {plans.num_input_channels}")
    if not np.all(np.isfinite(image)):
        raise VolfnetError(f"case {case_id}: image contains NaN or infinite values")
    transpose = plans.transpose_forward
    image = image.transpose(0, *[t + 1 for t in transpose])
    if seg is not None:
        seg = seg.transpose(0, *[t + 1 for t in transpose])
    spacing = [geometry.spacing[t] for t in transpose]
    shape_before = list(image.shape[1:])

    image, seg, box = crop_to_nonzero(image, seg)
    shape_after_crop = list(image.shape[1:])
    image = normalize_image(image, configuration.normalization, seg, source=", ".join(source_files or []) or f"case {case_id}")

    target_spacing = configuration.spacing
    new_shape = new_shape_for_spacing(shape_after_crop, spacing, target_spacing)
    image = resample_image(image, spacing, target_spacing, configuration.resampling, new_shape)
    seg = resample_segmentation(seg, spacing, target_spacing, configuration.resampling, new_shape)

    locations = {}
    if foreground_labels:
        locations = sample_class_locations(seg, foreground_labels, np.random.default_rng(case_seed(case_id)))
    max_label = int(seg.max()) if seg.size else 0  # the ignore label may sit above every class
    properties = CaseProperties(
        case_id=case_id,
        original_geometry=geometry,
        transpose_forward=list(transpose),
        shape_before_cropping=shape_before,
        bbox=box,
        shape_after_cropping=shape_after_crop,
        spacing_before_resampling=spacing,
        spacing_after_resampling=list(target_spacing),
        shape_after_resampling=list(image.shape[1:]),
        class_locations=locations,
        source_files=source_files or [],
    )
    return image.astype(np.float32, copy=False), seg.astype(seg_dtype(max_label)), properties


def read_raw_case(case: CaseFiles, num_channels: int | None = None) -> tuple[np.ndarray, ImageGeometry, np.ndarray | None]:
    """Read a case's channels (``num_channels`` of them when given) and (if any) label,
    checking that the label's grid matches."""
    image, geometry = read_case(case.images, num_channels)
    seg = None
    if case.label is not None:
        label, label_geometry = read_segmentation(case.label)
        mismatch = geometry.matches(label_geometry)
        if mismatch:
            raise VolfnetError(f"{case.label}: geometry differs from {case.images[0]} ({mismatch})")
        seg = label[None]
    return image, geometry, seg


def preprocess_case_files(case: CaseFiles, plans: Plans, configuration_name: str, output_folder: Path, foreground_labels: list[int]) -> float:
    """Read, preprocess and save one case; returns the seconds it took (runs in workers)."""
    start = time.perf_counter()
    image, geometry, seg = read_raw_case(case, plans.num_input_channels)
    files = [str(p) for p in case.images] + ([str(case.label)] if case.label else [])
    data, seg_out, properties = preprocess_array(
        image, geometry, seg, plans, configuration_name, case.case_id, foreground_labels if seg is not None else None, files
    )
    save_case(output_folder, data, seg_out if seg is not None else None, properties)
    return time.perf_counter() - start


@dataclass
class PreprocessSummary:
    configuration: str
    output_folder: Path
    processed: int
    skipped: int
    seconds: float


def preprocess_cases(
    cases: list[CaseFiles],
    plans: Plans,
    configuration_name: str,
    output_folder: Path,
    foreground_labels: list[int],
    num_workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> PreprocessSummary:
    """Preprocess many cases in parallel into ``output_folder``.

    Finished, valid cases are skipped unless ``overwrite``; each case is written atomically
    with its JSON last, so an interrupted run resumes where it stopped. Worker errors surface
    as described in :mod:`volfnet.parallel`.
    """
    start = time.perf_counter()
    output_folder.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cases if overwrite or not is_case_complete(output_folder, c.case_id, plans.num_input_channels, c.label is not None)]
    skipped = len(cases) - len(todo)
    if skipped:
        logger.info("%s: %d case(s) already preprocessed, skipping them", configuration_name, skipped)
    work = functools.partial(
        preprocess_case_files, plans=plans, configuration_name=configuration_name, output_folder=output_folder, foreground_labels=foreground_labels
    )
    parallel_map(work, todo, num_workers, desc=f"preprocessing {configuration_name}", progress=progress)
    return PreprocessSummary(configuration_name, output_folder, len(todo), skipped, time.perf_counter() - start)

