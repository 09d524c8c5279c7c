"""Check a raw dataset before anything is computed from it.

Fingerprinting and preprocessing take minutes to hours; a wrong channel count, a label value
that dataset.json does not know, or a NaN voxel found half-way through wastes that time and
usually surfaces as an obscure error far from its cause. This module reads every file once,
up front, and reports *every* problem with the file it concerns, so the user can fix them all
in one pass. It writes nothing.

What counts as an error and what as a warning:

- errors: layout problems (names, missing channels or labels), ``numTraining`` not matching
  the cases found, an empty dataset, unreadable or truncated files, images that are not 3D
  single-component, shape or spacing differing between a case's channels and its label,
  NaN/inf voxels, label maps with non-integer values or values not declared in dataset.json.
- warnings: origin or direction differing between a case's files. Training pairs voxels by
  index, so such a case still trains correctly; only the world position written with
  predictions can be off, and many real datasets carry harmless float noise in these
  headers (nnU-Net makes the same choice). ``strict=True`` turns them into errors.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from volfnet.errors import DataIntegrityError
from volfnet.io.dataset import CaseFiles, RawDataset, channel_file_name
from volfnet.io.image_io import ImageGeometry, geometry_of
from volfnet.io.nifti_check import nifti_problems, non_finite_counts
from volfnet.parallel import parallel_map

logger = logging.getLogger(__name__)

#: Relative tolerance (floored at 1 unit) for comparing spacing, origin and direction; NIfTI
#: stores them as float32, so exact equality would flag files written by different tools.
GEOMETRY_TOLERANCE = 1e-4
#: Voxels per chunk when counting label values, so a 512^3 label map never needs a full
#: int64 copy in memory.
_LABEL_CHUNK = 1 << 24
#: Above this value range, counting with bincount would allocate too much; sort instead.
_MAX_BINCOUNT_RANGE = 1 << 16
#: How many warnings are logged one by one before the rest are summarised.
_MAX_LOGGED_WARNINGS = 10

#: Called on a valid case's arrays during the check: (case, image, geometry, seg) -> result.
CaseAnalysis = Callable[[CaseFiles, np.ndarray, ImageGeometry, "np.ndarray | None"], Any]


# --------------------------------------------------------------------------------------------
# one case


@dataclass
class CaseCheck:
    """What checking one case found; small and picklable so workers can return it."""

    case_id: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    label_values: list[int] = field(default_factory=list)
    spacing: list[float] | None = None
    shape: list[int] | None = None
    analysis: Any = None


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _read_file(path: Path, problems: list[str]) -> tuple[np.ndarray, ImageGeometry] | None:
    """Read one file's voxels and geometry, once; check it is 3D with one component.

    A header-only read first was measured to add a third to the time on small volumes
    (Hippocampus) while saving nothing on valid files, whose voxels are needed anyway.
    """
    if not path.is_file():
        problems.append(f"{path}: file not found")
        return None
    damage, non_finite = nifti_problems(path)
    if damage:
        problems.append(damage)
        return None
    if non_finite:
        problems.append(non_finite)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        problems.append(f"{path}: cannot read image (corrupt, truncated or unsupported format: {_last_line(exc)})")
        return None
    if image.GetDimension() != 3:
        problems.append(
            f"{path}: is {image.GetDimension()}D with size {list(image.GetSize())}; volfnet expects one 3D file "
            "per channel (volfnet_convert_msd splits MSD 4D images)"
        )
        return None
    if image.GetNumberOfComponentsPerPixel() != 1:
        problems.append(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1 (one file per channel)"
        )
        return None
    return sitk.GetArrayFromImage(image), geometry_of(image)


def _differs(mine: Sequence[float], theirs: Sequence[float]) -> bool:
    a, b = np.asarray(mine, float), np.asarray(theirs, float)
    return a.shape != b.shape or bool(np.any(np.abs(a - b) > GEOMETRY_TOLERANCE * np.maximum(1.0, np.abs(b))))


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 5) for v in values]


def compare_geometry(path: Path, geometry: ImageGeometry, reference_path: Path, reference: ImageGeometry) -> tuple[list[str], list[str]]:
    """Compare a file's geometry with the case's first channel: (hard mismatches, soft ones).

    Shape and spacing mismatches are hard (voxels would not correspond or would be resampled
    differently); origin and direction mismatches are soft (see the module docstring).
    """
    hard, soft = [], []
    where = f"in {reference_path.name}"
    if geometry.shape != reference.shape:
        hard.append(f"{path}: shape (z, y, x) {geometry.shape} differs from {reference.shape} {where}")
    if _differs(geometry.spacing, reference.spacing):
        hard.append(f"{path}: spacing (z, y, x) {_rounded(geometry.spacing)} differs from {_rounded(reference.spacing)} {where}")
    if _differs(geometry.origin, reference.origin):
        soft.append(f"{path}: origin {_rounded(geometry.origin)} differs from {_rounded(reference.origin)} {where}")
    if _differs(geometry.direction, reference.direction):
        soft.append(f"{path}: direction {_rounded(geometry.direction)} differs from {_rounded(reference.direction)} {where}")
    return hard, soft


def _non_finite_problem(path: Path, array: np.ndarray) -> str | None:
    if not np.issubdtype(array.dtype, np.floating):
        return None
    return non_finite_counts(path, array)


def integer_values(array: np.ndarray) -> list[int]:
    """The distinct values of an integer-valued array, fast.

    Counting (bincount over chunks, shifted to start at zero) is linear and avoids the sort
    that ``np.unique`` does; huge value ranges fall back to ``np.unique``.
    """
    flat = array.reshape(-1)
    if flat.size == 0:
        return []
    low, high = int(flat.min()), int(flat.max())
    if high - low >= _MAX_BINCOUNT_RANGE:
        return [int(v) for v in np.unique(flat)]
    counts = np.zeros(high - low + 1, np.int64)
    for start in range(0, flat.size, _LABEL_CHUNK):
        chunk = flat[start : start + _LABEL_CHUNK].astype(np.int64) - low
        counts += np.bincount(chunk, minlength=counts.size)
    return [int(v) + low for v in np.flatnonzero(counts)]


def _label_values(path: Path, array: np.ndarray, problems: list[str]) -> list[int] | None:
    if np.issubdtype(array.dtype, np.floating):
        non_finite = _non_finite_problem(path, array)
        if non_finite:
            problems.append(non_finite)
            return None
        fractional = array[np.round(array) != array]
        if fractional.size:
            examples = sorted({float(v) for v in fractional[:1000]})[:3]
            problems.append(f"{path}: label map holds {fractional.size} voxel(s) with non-integer values (e.g. {examples})")
            return None
    elif not np.issubdtype(array.dtype, np.integer):
        problems.append(f"{path}: label map has voxel type {array.dtype}; expected integers")
        return None
    return integer_values(array)


def check_case(
    case: CaseFiles, allowed_labels: Sequence[int] | None = None, strict: bool = False, analyse: CaseAnalysis | None = None
) -> CaseCheck:
    """Check one case: every file readable, 3D and single-component; channels and label on one
    grid; no NaN/inf in images; label values integer and in ``allowed_labels``.

    Each file is read once. Problems are collected, not raised, so the caller can report all
    cases together. ``analyse(case, image, geometry, seg)`` runs on a valid case's arrays
    (image (C, Z, Y, X) float32, seg (1, Z, Y, X) or None) and its small result is kept in
    ``analysis``: the fingerprint uses it to avoid reading every file a second time.
    """
    result = CaseCheck(case.case_id)
    arrays: list[np.ndarray] = []
    files = list(case.images) + ([case.label] if case.label is not None else [])
    reference: tuple[Path, ImageGeometry] | None = None
    for index, path in enumerate(files):
        is_label = case.label is not None and index == len(files) - 1
        loaded = _read_file(Path(path), result.problems)
        if loaded is None:
            continue
        array, geometry = loaded
        if reference is None:
            reference = (Path(path), geometry)
            result.spacing, result.shape = geometry.spacing, geometry.shape
        else:
            hard, soft = compare_geometry(Path(path), geometry, *reference)
            result.problems.extend(hard)
            (result.problems if strict else result.warnings).extend(soft)
        arrays.append(array)
        if not is_label:
            non_finite = _non_finite_problem(Path(path), array)
            if non_finite:
                result.problems.append(non_finite)
            continue
        values = _label_values(Path(path), array, result.problems)
        if values is None:
            continue
        result.label_values = values
        if allowed_labels is not None:
            unknown = sorted(set(values) - set(allowed_labels))
            if unknown:
                result.problems.append(
                    f"{path}: label value(s) {unknown} not in dataset.json labels {sorted(allowed_labels)}"
                )
    if analyse is not None and not result.problems and reference is not None:
        num_images = len(case.images)
        image = np.stack([a.astype(np.float32, copy=False) for a in arrays[:num_images]])
        seg = arrays[num_images][None] if len(arrays) > num_images else None
        result.analysis = analyse(case, image, reference[1], seg)
    return result


# --------------------------------------------------------------------------------------------
# the dataset


@dataclass
class IntegrityReport:
    """A summary of a dataset that passed the check, for the planner's log."""

    dataset: str
    num_training: int
    num_test: int
    num_channels: int
    label_values_found: list[int]
    spacing_min: list[float]
    spacing_max: list[float]
    shape_min: list[int]
    shape_max: list[int]
    warnings: list[str] = field(default_factory=list)
    case_analyses: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def summary(self) -> str:
        """One line saying what was checked."""
        return (
            f"{self.dataset}: {self.num_training} training and {self.num_test} test case(s), "
            f"{self.num_channels} channel(s), label values {self.label_values_found}, "
            f"spacing (z, y, x) {self.spacing_min}..{self.spacing_max}, shape {self.shape_min}..{self.shape_max}, "
            f"{len(self.warnings)} warning(s)"
        )

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "num_training": self.num_training,
            "num_test": self.num_test,
            "num_channels": self.num_channels,
            "label_values_found": self.label_values_found,
            "spacing_min": self.spacing_min,
            "spacing_max": self.spacing_max,
            "shape_min": self.shape_min,
            "shape_max": self.shape_max,
            "warnings": self.warnings,
        }


def _existing_label(case: CaseFiles) -> CaseFiles:
    """Drop a missing label: the layout listing has already reported it."""
    if case.label is not None and not Path(case.label).is_file():
        return replace(case, label=None)
    return case


def _orphan_labels(dataset: RawDataset) -> list[str]:
    """Label files with no image of the same case (usually a typo in a case name)."""
    ending = dataset.dataset_json.file_ending
    labels_dir, images_dir = dataset.folder / "labelsTr", dataset.folder / "imagesTr"
    if not labels_dir.is_dir():
        return []
    orphans = []
    for path in sorted(labels_dir.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending):
            continue
        case_id = path.name[: -len(ending)]
        if not any((images_dir / channel_file_name(case_id, c, ending)).is_file() for c in range(dataset.dataset_json.num_channels)):
            orphans.append(f"{path}: label file has no image in {images_dir} (expected {case_id}_0000{ending})")
    return orphans


def check_dataset_integrity(
    dataset: RawDataset, num_workers: int = 1, strict: bool = False, analyse_training: CaseAnalysis | None = None
) -> IntegrityReport:
    """Check every training and test case of ``dataset``; raise :class:`DataIntegrityError`
    listing all problems at once, or return a report of what was found.

    ``strict`` makes origin/direction mismatches errors instead of warnings.
    ``analyse_training`` runs on each valid training case's arrays (see :func:`check_case`);
    its results are in ``report.case_analyses`` by case id.
    """
    ds_json = dataset.dataset_json
    training, problems = dataset.training_cases()
    test, test_problems = dataset.test_cases()
    problems += test_problems
    warnings = _orphan_labels(dataset)
    images_dir = dataset.folder / "imagesTr"
    if not training and images_dir.is_dir():
        problems.append(f"no training cases found in {images_dir}")
    elif training and len(training) != ds_json.num_training:
        problems.append(
            f"{dataset.folder / 'dataset.json'}: numTraining is {ds_json.num_training} but {images_dir} holds "
            f"{len(training)} complete case(s)"
        )

    allowed = ds_json.allowed_label_values
    checks = parallel_map(
        functools.partial(check_case, allowed_labels=allowed, strict=strict, analyse=analyse_training),
        [_existing_label(case) for case in training],
        num_workers,
        desc="checking training cases",
    )
    checks_test = parallel_map(
        functools.partial(check_case, strict=strict), test, num_workers, desc="checking test cases"
    )
    for check in checks + checks_test:
        problems.extend(check.problems)
        warnings.extend(check.warnings)
    if problems:
        raise DataIntegrityError(problems, header=f"{dataset.folder}: dataset integrity check failed")

    found = sorted({v for check in checks for v in check.label_values})
    never: dict[str, Any]
    if ds_json.has_regions:  # a region is present where any of its values is
        never = {name: list(region) for name, region in zip(ds_json.region_names, ds_json.regions) if not set(region) & set(found)}
    else:
        never = {name: value for name, value in ds_json.labels.items() if value not in found}
    if never:
        warnings.append(f"{dataset.folder / 'dataset.json'}: label(s) {never} occur in no training label map")
    for message in warnings[:_MAX_LOGGED_WARNINGS]:
        logger.warning(message)
    if len(warnings) > _MAX_LOGGED_WARNINGS:
        logger.warning("... and %d more warning(s)", len(warnings) - _MAX_LOGGED_WARNINGS)

    spacings = np.array([c.spacing for c in checks + checks_test])
    shapes = np.array([c.shape for c in checks + checks_test])
    report = IntegrityReport(
        dataset=dataset.name,
        num_training=len(training),
        num_test=len(test),
        num_channels=ds_json.num_channels,
        label_values_found=found,
        spacing_min=_rounded(spacings.min(axis=0)),
        spacing_max=_rounded(spacings.max(axis=0)),
        shape_min=[int(v) for v in shapes.min(axis=0)],
        shape_max=[int(v) for v in shapes.max(axis=0)],
        warnings=warnings,
        case_analyses={check.case_id: check.analysis for check in checks if check.analysis is not None},
    )
    logger.info("integrity check passed: %s", report.summary())
    return report
