"""Check a raw dataset before anything is computed from it.

Fingerprinting and preprocessing take minutes to hours; a wrong channel count, a label value
that dataset.json does not know, or a NaN voxel found half-way through wastes that time and
usually surfaces as an obscure error far from its cause. This module reads every file once,
up front, and reports *every* problem with the file it concerns, so the user can fix them all
in one pass. It writes nothing.

What counts as an error and what as a warning:

- errors: layout problems (names, missing channels or labels, another image format than
  dataset.json's ``file_ending``), ``numTraining`` not matching the cases found, an empty
  dataset, unreadable or truncated files, images that are neither 3D single-component volumes
  nor 2D greyscale/RGB pictures (alpha channels are refused), a case whose files do not hold
  dataset.json's number of channels, 2D pictures mixed with 3D volumes, shape or spacing
  differing between a case's channels and its label, NaN/inf voxels, label maps with
  non-integer values, several channels, or values not declared in dataset.json.
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

from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.io.dataset import CaseFiles, RawDataset, channel_file_name
from volfnet.io.image_io import ImageGeometry, channel_count_problem, channels_of, is_picture, png_alpha_problem
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
    picture_2d: bool | None = None  # a 2D picture (no third axis): never mixed with 3D cases
    analysis: Any = None


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _read_file(path: Path, problems: list[str]) -> tuple[np.ndarray, ImageGeometry] | None:
    """Read one file's channels (K, Z, Y, X) and geometry, once: a 3D volume with one
    component, a 2D picture (greyscale or RGB) or a TIFF stack (see ``image_io``).

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
    alpha = png_alpha_problem(path)
    if alpha:
        problems.append(alpha)
        return None
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        problems.append(f"{path}: cannot read image (corrupt, truncated or unsupported format: {_last_line(exc)})")
        return None
    if image.GetDimension() != 3 and not is_picture(path):
        problems.append(
            f"{path}: is {image.GetDimension()}D with size {list(image.GetSize())}; volfnet expects one 3D file "
            "per channel (volfnet_convert_msd splits MSD 4D images)"
        )
        return None
    try:
        return channels_of(image, path)
    except VolfnetError as exc:
        problems.append(str(exc))
        return None


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


def _check_label_map(path: Path, channels: np.ndarray, allowed_labels: Sequence[int] | None, result: CaseCheck) -> None:
    """A label map is one channel of whole numbers, each one dataset.json declares."""
    if channels.shape[0] != 1:
        result.problems.append(f"{path}: label map holds {channels.shape[0]} channels (RGB); save it as a greyscale picture")
        return
    values = _label_values(path, channels[0], result.problems)
    if values is None:
        return
    result.label_values = values
    if allowed_labels is not None:
        unknown = sorted(set(values) - set(allowed_labels))
        if unknown:
            result.problems.append(f"{path}: label value(s) {unknown} not in dataset.json labels {sorted(allowed_labels)}")


def check_case(
    case: CaseFiles,
    allowed_labels: Sequence[int] | None = None,
    strict: bool = False,
    analyse: CaseAnalysis | None = None,
    num_channels: int | None = None,
) -> CaseCheck:
    """Check one case: every file readable (a 3D single-component volume, or a 2D greyscale or
    RGB picture, or a TIFF stack); channels and label on one grid; the files' channels adding
    up to ``num_channels``; no NaN/inf in images; label values integer and in ``allowed_labels``.

    Each file is read once. Problems are collected, not raised, so the caller can report all
    cases together. ``analyse(case, image, geometry, seg)`` runs on a valid case's arrays
    (image (C, Z, Y, X) float32, seg (1, Z, Y, X) or None) and its small result is kept in
    ``analysis``: the fingerprint uses it to avoid reading every file a second time.
    """
    result = CaseCheck(case.case_id)
    images: list[np.ndarray] = []
    seg: np.ndarray | None = None
    files = list(case.images) + ([case.label] if case.label is not None else [])
    reference: tuple[Path, ImageGeometry] | None = None
    for index, path in enumerate(files):
        is_label = case.label is not None and index == len(files) - 1
        loaded = _read_file(Path(path), result.problems)
        if loaded is None:
            continue
        channels, geometry = loaded
        if reference is None:
            reference = (Path(path), geometry)
            result.spacing, result.shape = geometry.spacing, geometry.shape
            result.picture_2d = geometry.is_picture_2d
        else:
            hard, soft = compare_geometry(Path(path), geometry, *reference)
            result.problems.extend(hard)
            (result.problems if strict else result.warnings).extend(soft)
        if is_label:
            _check_label_map(Path(path), channels, allowed_labels, result)
            seg = channels
            continue
        images.append(channels)
        for channel in channels:
            non_finite = _non_finite_problem(Path(path), channel)
            if non_finite:
                result.problems.append(non_finite)
                break
    if num_channels is not None and len(images) == len(case.images):
        count_problem = channel_count_problem(case.images, [c.shape[0] for c in images], num_channels)
        if count_problem:
            result.problems.append(count_problem)
    if analyse is not None and not result.problems and reference is not None:
        image = np.concatenate([c.astype(np.float32, copy=False) for c in images])
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


def _mixed_dimension_problems(cases: Sequence[CaseFiles], checks: Sequence[CaseCheck]) -> list[str]:
    """2D pictures and 3D volumes in one dataset (possible with TIFF, which holds both): the
    planner would plan 3D configurations for 2D cases or the reverse. The minority is named."""
    kinds = [(case, check.picture_2d) for case, check in zip(cases, checks) if check.picture_2d is not None]
    pictures = [case for case, is_2d in kinds if is_2d]
    volumes = [case for case, is_2d in kinds if not is_2d]
    if not pictures or not volumes:
        return []
    minority, kind, majority = (pictures, "a 2D picture", "3D") if len(pictures) <= len(volumes) else (volumes, "a 3D volume", "2D")
    return [
        f"{case.images[0]}: is {kind} but most cases of the dataset are {majority}; one dataset holds 2D pictures "
        "or 3D volumes, not both"
        for case in minority
    ]


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
        functools.partial(
            check_case, allowed_labels=allowed, strict=strict, analyse=analyse_training, num_channels=ds_json.num_channels
        ),
        [_existing_label(case) for case in training],
        num_workers,
        desc="checking training cases",
    )
    checks_test = parallel_map(
        functools.partial(check_case, strict=strict, num_channels=ds_json.num_channels), test, num_workers, desc="checking test cases"
    )
    for check in checks + checks_test:
        problems.extend(check.problems)
        warnings.extend(check.warnings)
    problems.extend(_mixed_dimension_problems(training + test, checks + checks_test))
    if problems:
        raise DataIntegrityError(problems, header=f"{dataset.folder}: dataset integrity check failed")

    found = sorted({v for check in checks for v in check.label_values})
    if ds_json.has_regions:  # a listed value no case has is a typo or a wrong dataset.json: it would train nothing
        absent = sorted({v for region in ds_json.regions for v in region} - set(found))
        if absent:
            raise DataIntegrityError(
                [f"{dataset.folder / 'dataset.json'}: the regions list label value(s) {absent} that occur in no training "
                 f"label map (values found: {found}); remove them from the regions or fix the label maps"],
                header=f"{dataset.folder}: dataset integrity check failed",
            )
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
