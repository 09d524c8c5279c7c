"""Pool the folds' final validations into one cross-validation result, as nnU-Net's
``crossval_results_folds_0_1_2_3_4``.

Each trained fold predicted its validation cases in their original geometry into
``fold_<k>/validation/`` (with ``<case>.npz`` probabilities after ``volfnet_train --npz``).
Together the folds' validation cases are every training case once, so pooling them scores
the configuration on the whole dataset: the number ``volfnet_find_best_configuration`` and
a user comparing configurations need. The pooled folder links the predictions (copies where
links are impossible) and gets its own ``summary.json``/``summary.csv``, scored with the
dataset's labels, ignore label and regions.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from volfnet import paths
from volfnet.errors import VolfnetError
from volfnet.evaluation.evaluate import evaluate_folder, write_summary
from volfnet.inference.export import PROBABILITIES_ENDING
from volfnet.io.dataset import DatasetJson, find_dataset_folder
from volfnet.io.files import link_or_copy, read_json
from volfnet.model_folder import DATASET_FILE, fold_folder, numbered_folds
from volfnet.plans import Plans

logger = logging.getLogger(__name__)

CROSSVAL_PREFIX = "crossval_results_folds_"
VALIDATION_FOLDER = "validation"
SPLITS_FILE = "splits.json"


@dataclass
class CrossValidation:
    """Where the pooled results went and which folds they hold."""

    folder: Path
    folds: list[int]
    missing_folds: list[int] = field(default_factory=list)  # in splits.json, but not validated
    summary: dict = field(default_factory=dict)
    cases: list[str] = field(default_factory=list)  # the pooled case ids, sorted


def expected_folds(model_folder: Path, dataset_name: str) -> list[int]:
    """The folds of the dataset's ``splits.json`` (every fold a complete cross-validation
    needs), or the model folder's ``fold_<k>`` folders when there is no such file."""
    splits = paths.preprocessed_root() / dataset_name / SPLITS_FILE
    if splits.is_file():
        data = read_json(splits)
        if isinstance(data, list) and data:
            return list(range(len(data)))
    return numbered_folds(model_folder)


def _validated_cases(folder: Path, ending: str) -> list[str]:
    """Case ids predicted in a fold's ``validation/`` folder (its summary says which)."""
    summary = read_json(folder / "summary.json")
    return [Path(case["prediction"]).name[: -len(ending)] for case in summary.get("per_case", [])]


def raw_labels_folder(dataset_name: str) -> Path:
    """``labelsTr`` of the dataset's raw folder: the references of every validation case."""
    return find_dataset_folder(dataset_name, paths.raw_root()) / "labelsTr"


@contextmanager
def reference_folder(dataset_name: str, cases: list[str], ending: str) -> Iterator[Path]:
    """A temporary folder holding (links to) the raw labels of ``cases`` only, so that a
    folder of validation predictions is scored against exactly its own cases."""
    labels_folder = raw_labels_folder(dataset_name)
    with tempfile.TemporaryDirectory(prefix="volfnet_crossval_") as scratch:
        references = Path(scratch)
        for case in cases:
            source = labels_folder / f"{case}{ending}"
            if not source.is_file():
                raise VolfnetError(f"{source}: reference label of validation case {case} not found")
            link_or_copy(source, references / source.name)
        yield references


def score_against_labels(
    folder: Path, cases: list[str], dataset_name: str, dataset_json: DatasetJson, num_workers: int = 1, extra: dict | None = None
) -> dict:
    """Score the label maps of ``cases`` in ``folder`` against the raw labels (with the
    dataset's ignore label and regions) and write ``summary.json``/``summary.csv`` there;
    ``extra`` entries are added to the summary."""
    with reference_folder(dataset_name, cases, dataset_json.file_ending) as references:
        summary = evaluate_folder(
            references, folder, dataset_json.labels, file_ending=dataset_json.file_ending, num_workers=num_workers,
            output_folder=folder, ignore_label=dataset_json.ignore_label, regions=dataset_json.regions or None,
        )
    labels_folder = raw_labels_folder(dataset_name)  # the summary names the lasting files, not the temporary links
    summary["reference_folder"] = str(labels_folder)
    for case in summary["per_case"]:
        case["reference"] = str(labels_folder / Path(case["reference"]).name)
    summary.update(extra or {})
    write_summary(summary, folder)
    return summary


def pool_cross_validation(model_folder: Path, folds: list[int] | None = None, num_workers: int = 1) -> CrossValidation:
    """Link every validated fold's predictions into ``<model>/crossval_results_folds_<k_...>``
    and score them together against the raw labels. Folds of ``splits.json`` without a final
    validation are left out with a warning; none at all is an error."""
    model_folder = Path(model_folder)
    plans = Plans.load(model_folder / "plans.json")
    dataset_json = DatasetJson.load(model_folder / DATASET_FILE)
    ending = dataset_json.file_ending
    wanted = list(folds) if folds is not None else expected_folds(model_folder, plans.dataset_name)
    done = [k for k in wanted if (fold_folder(model_folder, k) / VALIDATION_FOLDER / "summary.json").is_file()]
    missing = [k for k in wanted if k not in done]
    if not done:
        raise VolfnetError(
            f"{model_folder}: no fold has a final validation (fold_<k>/validation/summary.json) among folds {wanted}; "
            "train the folds first, or rerun their validation with volfnet_train ... --val"
        )
    if missing:
        logger.warning("folds %s have no final validation yet: the cross-validation holds folds %s only", missing, done)
    output = model_folder / (CROSSVAL_PREFIX + "_".join(map(str, done)))
    if output.exists():
        shutil.rmtree(output)  # made from the folds' files alone: rebuilt, never merged with an older pool
    output.mkdir(parents=True)
    cases: dict[str, int] = {}
    for k in done:
        validation = fold_folder(model_folder, k) / VALIDATION_FOLDER
        for case in _validated_cases(validation, ending):
            if case in cases:
                raise VolfnetError(f"case {case} is a validation case of folds {cases[case]} and {k}; splits.json changed between them")
            cases[case] = k
            link_or_copy(validation / f"{case}{ending}", output / f"{case}{ending}")
            probabilities = validation / f"{case}{PROBABILITIES_ENDING}"
            if probabilities.is_file():
                link_or_copy(probabilities, output / probabilities.name)
    summary = score_against_labels(
        output, list(cases), plans.dataset_name, dataset_json, num_workers, extra={"folds": done, "missing_folds": missing}
    )
    logger.info("cross-validation of folds %s (%d cases): %s", done, len(cases), output / "summary.json")
    return CrossValidation(output, done, missing, summary, sorted(cases))
