"""Pairing reference and prediction files by case, and reading a pair safely.

A prediction is scored against the reference file of the same name. A missing prediction
is an error by default, because silently scoring a subset makes a model look better than it
is; a prediction in a different geometry is always an error, because resampling it here
would hide an export bug that would also corrupt the user's real outputs.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from volfnet.errors import VolfnetError
from volfnet.io.image_io import SUPPORTED_ENDINGS, ImageGeometry, file_ending, read_segmentation

logger = logging.getLogger(__name__)

# How many missing case names an error message lists before summarising the rest.
MAX_NAMES_IN_MESSAGE = 20


@dataclass(frozen=True)
class CasePair:
    """One case: its id, reference label map and predicted label map."""

    case_id: str
    reference: Path
    prediction: Path


def normalize_labels(labels: Mapping[str, int] | Sequence[int]) -> dict[int, str]:
    """Labels as ``{value: name}`` from a dataset.json-style ``{name: value}`` mapping or a
    list of values (named by their value). Duplicates and negative values are refused."""
    if isinstance(labels, Mapping):
        pairs = [(value, str(name)) for name, value in labels.items()]
    else:
        pairs = [(value, str(value)) for value in labels]
    result: dict[int, str] = {}
    for value, name in pairs:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise VolfnetError(f"label {name!r} has value {value!r}; labels must be integers")
        if value < 0:
            raise VolfnetError(f"label {name!r} has negative value {value}")
        if int(value) in result:
            raise VolfnetError(f"label value {value} is given twice ({result[int(value)]!r} and {name!r})")
        result[int(value)] = name
    if not result:
        raise VolfnetError("no labels to evaluate; give label values (-l 1 2) or a dataset (-d 4)")
    return dict(sorted(result.items()))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def detect_file_ending(folder: Path) -> str:
    """The one supported image ending used in ``folder``; ambiguity is an error."""
    counts = Counter(file_ending(p) for p in _image_files(folder))
    endings = [e for e in SUPPORTED_ENDINGS if counts.get(e)]
    if not endings:
        raise VolfnetError(f"{folder}: no label files with a supported ending {SUPPORTED_ENDINGS}")
    if len(endings) > 1:
        raise VolfnetError(f"{folder}: holds files with several endings {endings}; choose one with --file-ending")
    return endings[0]


def _list_by_case(folder: Path, ending: str) -> dict[str, Path]:
    return {p.name[: -len(ending)]: p for p in _image_files(folder) if p.name.lower().endswith(ending.lower())}


def _name_list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    more = len(names) - MAX_NAMES_IN_MESSAGE
    return shown + (f" and {more} more" if more > 0 else "")


def find_case_pairs(
    gt_folder: Path, pred_folder: Path, file_ending: str | None = None, allow_missing: bool = False
) -> list[CasePair]:
    """Match every reference in ``gt_folder`` to the prediction of the same name.

    References without a prediction raise :class:`VolfnetError` listing them, unless
    ``allow_missing`` (then the matched cases are scored and a warning names the rest).
    Predictions without a reference are ignored with an info message (a prediction folder
    may also hold test cases).
    """
    gt_folder, pred_folder = Path(gt_folder), Path(pred_folder)
    for folder, what in ((gt_folder, "reference"), (pred_folder, "prediction")):
        if not folder.is_dir():
            raise VolfnetError(f"{what} folder {folder} does not exist")
    ending = file_ending or detect_file_ending(gt_folder)
    references = _list_by_case(gt_folder, ending)
    if not references:
        raise VolfnetError(f"{gt_folder}: no reference files ending in {ending}")
    predictions = _list_by_case(pred_folder, ending)
    missing = sorted(set(references) - set(predictions))
    if missing and not allow_missing:
        raise VolfnetError(
            f"{pred_folder}: no prediction for {len(missing)} of {len(references)} reference case(s) in "
            f"{gt_folder}: {_name_list(missing)} (expected files named like the references, ending in {ending})"
        )
    if missing:
        logger.warning("scoring %d case(s) only; no prediction for: %s", len(references) - len(missing), _name_list(missing))
    extra = sorted(set(predictions) - set(references))
    if extra:
        logger.info("ignoring %d prediction(s) without a reference: %s", len(extra), _name_list(extra))
    pairs = [CasePair(case, references[case], predictions[case]) for case in sorted(references) if case in predictions]
    if not pairs:
        raise VolfnetError(f"{pred_folder}: none of the {len(references)} reference case(s) in {gt_folder} has a prediction")
    return pairs


def read_pair(pair: CasePair) -> tuple[np.ndarray, np.ndarray, ImageGeometry]:
    """Read reference and prediction; a geometry mismatch raises naming both files."""
    reference, ref_geometry = read_segmentation(pair.reference)
    prediction, pred_geometry = read_segmentation(pair.prediction)
    mismatch = ref_geometry.matches(pred_geometry)
    if mismatch:
        raise VolfnetError(
            f"{pair.prediction}: geometry differs from reference {pair.reference} (reference vs prediction: "
            f"{mismatch}); predictions must be exported in the reference geometry, volfnet does not resample them"
        )
    return reference, prediction, ref_geometry
