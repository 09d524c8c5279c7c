""""Keep the largest connected component" postprocessing, decided on cross-validation.

Removing every component but the largest deletes spurious blobs far from the organ, but it
also deletes true parts of structures that really are split (two kidneys in one label, a
lesion spread). So it is never applied blindly: :func:`determine_postprocessing` tries it on
the cross-validation predictions and keeps it only when the Dice improves, following the
nnU-Net procedure:

1. keep the largest component of all foreground labels taken as one mask; accepted when the
   foreground-mean Dice improves and no label's mean Dice gets worse;
2. then, for each label, keep that label's largest component (on top of step 1 when it was
   accepted); accepted when that label's mean Dice improves.

The decision is a small JSON file (``postprocessing.json``) that the predictor applies with
:func:`apply_postprocessing`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from volfnet.errors import VolfnetError
from volfnet.evaluation.cases import CasePair, find_case_pairs, normalize_labels, read_pair
from volfnet.evaluation.metrics import dice
from volfnet.parallel import default_num_workers, parallel_starmap
from volfnet.io.files import atomic_write_json, read_json

logger = logging.getLogger(__name__)

POSTPROCESSING_FILE = "postprocessing.json"
POSTPROCESSING_VERSION = 1
# Full connectivity (26 neighbours in 3D): voxels touching at an edge or corner are one
# component, so thin oblique structures (vessels, a rib) are not cut into pieces and lost.
CONNECTIVITY = 26


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest fully connected component of ``mask`` (the first one on a tie); an empty
    mask stays empty."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    components, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def keep_largest_component(seg: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
    """A copy of the label map with small components set to background.

    ``labels=None``: all foreground labels are one mask and only its largest component is
    kept (labels inside it are unchanged). Otherwise each listed label keeps its own largest
    component and other labels are untouched.
    """
    result = np.array(seg, copy=True)
    if labels is None:
        foreground = result > 0
        result[foreground & ~largest_component(foreground)] = 0
        return result
    for label in labels:
        mask = result == int(label)
        result[mask & ~largest_component(mask)] = 0
    return result


@dataclass
class PostprocessingDecision:
    """What :func:`apply_postprocessing` does, and the cross-validation Dice that justified it."""

    foreground_largest_component: bool = False
    per_label: list[int] = field(default_factory=list)
    dice_before: dict[str, Any] = field(default_factory=dict)
    dice_after: dict[str, Any] = field(default_factory=dict)
    num_cases: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": POSTPROCESSING_VERSION,
            "connectivity": CONNECTIVITY,
            "foreground_largest_component": self.foreground_largest_component,
            "per_label": list(self.per_label),
            "dice_before": _nan_to_none(self.dice_before),
            "dice_after": _nan_to_none(self.dice_after),
            "num_cases": self.num_cases,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> PostprocessingDecision:
        """Validate a decision read from ``source``; problems are :class:`VolfnetError`."""
        if not isinstance(data, dict):
            raise VolfnetError(f"{source}: expected a JSON object with the postprocessing decision")
        flag = data.get("foreground_largest_component")
        if not isinstance(flag, bool):
            raise VolfnetError(f"{source}: 'foreground_largest_component' must be true or false, got {flag!r}")
        per_label = data.get("per_label")
        if not isinstance(per_label, list) or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in per_label):
            raise VolfnetError(f"{source}: 'per_label' must be a list of positive label values, got {per_label!r}")
        return cls(
            foreground_largest_component=flag,
            per_label=list(per_label),
            dice_before=dict(data.get("dice_before") or {}),
            dice_after=dict(data.get("dice_after") or {}),
            num_cases=int(data.get("num_cases", 0)),
        )


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    return value


def apply_postprocessing(seg: np.ndarray, decision: PostprocessingDecision) -> np.ndarray:
    """Apply a decision to one label map (returns a new array)."""
    result = seg
    if decision.foreground_largest_component:
        result = keep_largest_component(result, None)
    if decision.per_label:
        result = keep_largest_component(result, decision.per_label)
    return result.copy() if result is seg else result


def save_postprocessing(decision: PostprocessingDecision, path: Path) -> Path:
    """Write the decision JSON atomically."""
    atomic_write_json(Path(path), decision.to_dict())
    return Path(path)


def load_postprocessing(path: Path) -> PostprocessingDecision:
    """Read and validate a decision file (a missing or malformed file names ``path``)."""
    return PostprocessingDecision.from_dict(read_json(Path(path)), str(path))


def _label_dice(reference: np.ndarray, prediction: np.ndarray, labels: Sequence[int], annotated: np.ndarray | None) -> dict[int, float]:
    if annotated is not None:  # unannotated voxels are scored as neither true nor predicted
        prediction = np.where(annotated, prediction, 0)
    return {label: dice(reference == label, prediction == label) for label in labels}


def case_postprocessing_dice(pair: CasePair, labels: Sequence[int], ignore_label: int | None = None) -> dict[str, dict[int, float]]:
    """Per-label Dice of one case for the four variants the decision compares: as predicted
    (``raw``), after the foreground step (``foreground``), and after the per-label step on
    each of those (``per_label_raw``, ``per_label_foreground``). Keeping one label's largest
    component only changes that label, so all labels can be tried in one pass. The components
    are found on the whole prediction; voxels of ``ignore_label`` are left out of the scores."""
    reference, prediction, _ = read_pair(pair)
    annotated = None if ignore_label is None else reference != ignore_label
    foreground = keep_largest_component(prediction, None)
    return {
        "raw": _label_dice(reference, prediction, labels, annotated),
        "foreground": _label_dice(reference, foreground, labels, annotated),
        "per_label_raw": _label_dice(reference, keep_largest_component(prediction, labels), labels, annotated),
        "per_label_foreground": _label_dice(reference, keep_largest_component(foreground, labels), labels, annotated),
    }


def _label_means(cases: Sequence[dict], variant: str, labels: Sequence[int]) -> dict[int, float]:
    means = {}
    for label in labels:
        values = [case[variant][label] for case in cases if not math.isnan(case[variant][label])]
        means[label] = float(np.mean(values)) if values else math.nan
    return means


def _foreground_mean(means: Mapping[int, float]) -> float:
    values = [v for v in means.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _report(means: Mapping[int, float]) -> dict[str, Any]:
    return {"foreground_mean": _foreground_mean(means), "per_label": {str(k): v for k, v in means.items()}}


def decide_postprocessing(cases: Sequence[dict], labels: Sequence[int]) -> PostprocessingDecision:
    """The decision from per-case Dice variants (:func:`case_postprocessing_dice` outputs)."""
    labels = [int(label) for label in labels if int(label) > 0]
    before = _label_means(cases, "raw", labels)
    after_foreground = _label_means(cases, "foreground", labels)
    no_label_worse = all(not after_foreground[label] < before[label] for label in labels if not math.isnan(before[label]))
    use_foreground = no_label_worse and _foreground_mean(after_foreground) > _foreground_mean(before)
    base = after_foreground if use_foreground else before
    candidate = _label_means(cases, "per_label_foreground" if use_foreground else "per_label_raw", labels)
    per_label = [label for label in labels if candidate[label] > base[label]]
    final = {label: candidate[label] if label in per_label else base[label] for label in labels}
    return PostprocessingDecision(use_foreground, per_label, _report(before), _report(final), len(cases))


def determine_postprocessing(
    gt_folder: Path,
    pred_folder: Path,
    labels: Mapping[str, int] | Sequence[int],
    output_folder: Path | None = None,
    file_ending: str | None = None,
    num_workers: int = default_num_workers(),
    allow_missing: bool = False,
    ignore_label: int | None = None,
) -> PostprocessingDecision:
    """Decide the postprocessing on (cross-validation) predictions and write
    ``postprocessing.json`` into ``output_folder`` (default: ``pred_folder``)."""
    label_values = [label for label in normalize_labels(labels) if label > 0]
    if not label_values:
        raise VolfnetError("postprocessing needs at least one foreground label (> 0)")
    pairs = find_case_pairs(Path(gt_folder), Path(pred_folder), file_ending, allow_missing)
    cases = parallel_starmap(
        case_postprocessing_dice, [(pair, label_values, ignore_label) for pair in pairs], num_workers, desc="postprocessing", collect_user_errors=True
    )
    decision = decide_postprocessing(cases, label_values)
    target = Path(output_folder if output_folder is not None else pred_folder) / POSTPROCESSING_FILE
    save_postprocessing(decision, target)
    logger.info(
        "postprocessing: foreground largest component %s, per label %s; foreground Dice %.4f -> %.4f (%s)",
        decision.foreground_largest_component,
        decision.per_label,
        decision.dice_before["foreground_mean"],
        decision.dice_after["foreground_mean"],
        target,
    )
    return decision
