"""Choose the final model from cross-validation, as nnU-Net's ``find_best_configuration``.

Every trained model folder of a dataset (each configuration, network and tag: a fine-tuned and
a from-scratch model are two candidates) is pooled over its folds
(:func:`~volfnet.model_selection.cross_validation.pool_cross_validation`), and every pair of
models whose folds kept their probabilities (``volfnet_train --npz``) is ensembled on the same
cross-validation cases. All candidates are scored on the same cases against the raw labels;
the one with the highest foreground-mean Dice wins (a tie goes to the single model, the
cheaper one to run). Largest-component postprocessing is then decided on the winner's
cross-validation predictions, and the exact commands that reproduce the winner on new images
are written next to the models::

    VOLFNET_results/<DatasetXXX_Name>/
        inference_instructions.json     the candidates' Dice, the choice, the commands
        inference_instructions.txt      the same for a reader
        ensembles/ensemble__<A>__<B>/   the pairs' pooled predictions and summary.json
        <model>/crossval_results_folds_<k_...>/postprocessing.json   (or in the ensemble's folder)

Only the validation predictions the folds already wrote are used: nothing is retrained or
predicted again, so the command takes seconds to minutes (the evaluation of each candidate).
"""

from __future__ import annotations

import itertools
import logging
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volfnet import paths
from volfnet.errors import VolfnetError
from volfnet.evaluation.postprocessing import POSTPROCESSING_FILE, PostprocessingDecision, determine_postprocessing
from volfnet.inference.ensemble import ensemble_folders
from volfnet.inference.export import PROBABILITIES_ENDING
from volfnet.inference.locate import MODEL_FOLDER_SEPARATOR
from volfnet.io.dataset import DatasetJson, find_dataset_folder
from volfnet.io.files import atomic_write_json, atomic_write_text
from volfnet.model_folder import DATASET_FILE, PLANS_FILE
from volfnet.model_selection.cross_validation import (
    CrossValidation,
    expected_folds,
    pool_cross_validation,
    reference_folder,
    score_against_labels,
)

logger = logging.getLogger(__name__)

INSTRUCTIONS_NAME = "inference_instructions"
ENSEMBLES_FOLDER = "ensembles"
ENSEMBLE_PREFIX = "ensemble"
INSTRUCTIONS_VERSION = 1


@dataclass
class Candidate:
    """One model, or an ensemble of two, with its pooled cross-validation score."""

    name: str
    models: list[Path]  # one model folder, or the two of an ensemble
    folder: Path  # its pooled cross-validation predictions and summary.json
    dice: float  # foreground-mean Dice over the cross-validation cases
    dice_per_label: dict[str, float] = field(default_factory=dict)

    @property
    def is_ensemble(self) -> bool:
        return len(self.models) > 1


@dataclass
class BestConfiguration:
    """What :func:`find_best_configuration` decided and wrote."""

    candidates: list[Candidate]
    best: Candidate
    folds: list[int]
    postprocessing: PostprocessingDecision | None
    postprocessing_file: Path | None
    instructions_json: Path
    instructions_txt: Path
    skipped: dict[str, str] = field(default_factory=dict)  # model or pair -> why it is not a candidate


def model_folders(dataset_folder: Path, configurations: list[str] | None = None) -> list[Path]:
    """Every model folder (``<network>__<configuration>[__<tag>]`` with a plans.json) of a
    dataset's results, optionally only those of ``configurations``."""
    found = []
    for folder in sorted(Path(dataset_folder).iterdir()):
        parts = folder.name.split(MODEL_FOLDER_SEPARATOR)
        if not folder.is_dir() or len(parts) < 2 or not (folder / PLANS_FILE).is_file():
            continue
        if configurations is None or parts[1] in configurations:
            found.append(folder)
    return found


def _candidate(name: str, models: list[Path], folder: Path, summary: dict[str, Any]) -> Candidate:
    per_label = {entry["name"]: float(entry["Dice"]) for key, entry in summary["mean"].items() if int(key) > 0}
    return Candidate(name, models, folder, float(summary["foreground_mean"]["Dice"]), per_label)


def _has_probabilities(pool: CrossValidation) -> bool:
    return all((pool.folder / f"{case}{PROBABILITIES_ENDING}").is_file() for case in pool.cases)


def _ensemble(
    pair: tuple[CrossValidation, CrossValidation], models: tuple[Path, Path], output_root: Path, dataset_name: str,
    dataset_json: DatasetJson, num_workers: int,
) -> Candidate:
    """Average the pair's cross-validation probabilities and score the result."""
    name = MODEL_FOLDER_SEPARATOR.join([ENSEMBLE_PREFIX, models[0].name, models[1].name])
    folder = output_root / name
    if folder.exists():
        shutil.rmtree(folder)  # made from the pools alone: rebuilt, never merged with an older run
    ensemble_folders([pair[0].folder, pair[1].folder], folder, num_workers, dataset_json=dataset_json, progress=False)
    summary = score_against_labels(folder, pair[0].cases, dataset_name, dataset_json, num_workers, extra={"models": [str(m) for m in models]})
    return _candidate(name, list(models), folder, summary)


def find_best_configuration(
    dataset: str | int,
    configurations: list[str] | None = None,
    folds: list[int] | None = None,
    ensembles: bool = True,
    postprocessing: bool = True,
    num_workers: int = 1,
) -> BestConfiguration:
    """Pool, ensemble and rank every trained model of ``dataset`` (see the module docstring).

    ``folds`` (default: every fold of ``splits.json``) must all be validated in a model for it
    to take part; a model that lacks some is skipped with the reason, because candidates are
    only comparable on the same cases. Raises :class:`VolfnetError` when no model qualifies.
    """
    results = paths.results_root()
    dataset_folder = find_dataset_folder(str(dataset), results)
    models = model_folders(dataset_folder, configurations)
    if not models:
        wanted = f" of configurations {configurations}" if configurations else ""
        raise VolfnetError(f"{dataset_folder}: no trained model folder{wanted} (<network>__<configuration> with a plans.json)")
    dataset_json = DatasetJson.load(models[0] / DATASET_FILE)
    ending = dataset_json.file_ending
    wanted_folds = list(folds) if folds is not None else expected_folds(models[0], dataset_folder.name)
    pools: dict[Path, CrossValidation] = {}
    skipped: dict[str, str] = {}
    for model in models:
        try:
            pool = pool_cross_validation(model, wanted_folds, num_workers)
        except VolfnetError as exc:
            skipped[model.name] = str(exc)
            continue
        if pool.missing_folds:
            skipped[model.name] = f"folds {pool.missing_folds} have no final validation (train them, or choose folds with -f)"
            continue
        pools[model] = pool
    if not pools:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise VolfnetError(f"no model of {dataset_folder.name} has a complete cross-validation over folds {wanted_folds} ({reasons})")
    reference = next(iter(pools.values()))
    for model, pool in pools.items():
        if pool.cases != reference.cases:
            raise VolfnetError(
                f"{model.name} and {next(iter(pools)).name} validated different cases over folds {wanted_folds}: "
                "they were trained with different splits.json files and cannot be compared"
            )
    candidates = [_candidate(model.name, [model], pool.folder, pool.summary) for model, pool in pools.items()]
    if ensembles:
        for first, second in itertools.combinations(pools, 2):
            label = f"{first.name} + {second.name}"
            lacking = [m.name for m in (first, second) if not _has_probabilities(pools[m])]
            if lacking:
                skipped[label] = f"no saved probabilities in {', '.join(lacking)} (train its folds with --npz, or rerun their validation with --val --npz)"
                continue
            candidates.append(
                _ensemble((pools[first], pools[second]), (first, second), dataset_folder / ENSEMBLES_FOLDER, dataset_folder.name,
                          dataset_json, num_workers)
            )
    # Highest Dice first; on a tie the single model (cheaper to run), then the order found.
    ranked = sorted(candidates, key=lambda c: (-c.dice, c.is_ensemble))
    best = ranked[0]
    for candidate in ranked:
        logger.info("%-70s cross-validation Dice %.4f", candidate.name, candidate.dice)
    decision, decision_file = None, None
    if postprocessing and dataset_json.has_regions:
        skipped["postprocessing"] = "not decided: the dataset's labels are regions (largest-component postprocessing works on classes)"
    elif postprocessing:
        with reference_folder(dataset_folder.name, reference.cases, ending) as labels:
            decision = determine_postprocessing(
                labels, best.folder, dataset_json.labels, output_folder=best.folder, file_ending=ending,
                num_workers=num_workers, ignore_label=dataset_json.ignore_label,
            )
        decision_file = best.folder / POSTPROCESSING_FILE
    json_path, txt_path = write_instructions(dataset_folder, ranked, best, wanted_folds, decision, decision_file, skipped, dataset_json)
    return BestConfiguration(ranked, best, wanted_folds, decision, decision_file, json_path, txt_path, skipped)


def _predict_command(model: Path, folds: list[int], output: str, save_probabilities: bool, postprocessing: str) -> str:
    words = ["volfnet_predict", "-i", "INPUT_FOLDER", "-o", output, "-m", str(model), "-f", *map(str, folds)]
    if save_probabilities:
        words.append("--save-probabilities")
    words += ["--postprocessing", postprocessing]
    return shlex.join(words)


def inference_commands(best: Candidate, folds: list[int], decision_file: Path | None) -> list[str]:
    """The shell commands that segment ``INPUT_FOLDER`` into ``OUTPUT_FOLDER`` with ``best``
    exactly as it was scored (its folds, and the postprocessing decided for it)."""
    chosen = str(decision_file) if decision_file is not None else "none"
    if not best.is_ensemble:
        return [_predict_command(best.models[0], folds, "OUTPUT_FOLDER", False, chosen)]
    outputs = [f"OUTPUT_FOLDER_MODEL{k}" for k in range(1, len(best.models) + 1)]
    commands = [_predict_command(model, folds, output, True, "none") for model, output in zip(best.models, outputs)]
    averaged = "OUTPUT_FOLDER" if decision_file is None else "OUTPUT_FOLDER_ENSEMBLE"
    commands.append(shlex.join(["volfnet_ensemble", "-i", *outputs, "-o", averaged, "--dataset-json", str(best.models[0] / DATASET_FILE)]))
    if decision_file is not None:
        commands.append(shlex.join(["volfnet_apply_postprocessing", "-i", averaged, "-o", "OUTPUT_FOLDER", "-pp", str(decision_file)]))
    return commands


def write_instructions(
    dataset_folder: Path, ranked: list[Candidate], best: Candidate, folds: list[int], decision: PostprocessingDecision | None,
    decision_file: Path | None, skipped: dict[str, str], dataset_json: DatasetJson,
) -> tuple[Path, Path]:
    """Write ``inference_instructions.json`` and ``.txt`` into the dataset's results folder."""
    commands = inference_commands(best, folds, decision_file)
    data = {
        "version": INSTRUCTIONS_VERSION,
        "dataset": dataset_folder.name,
        "folds": folds,
        "metric": "foreground-mean Dice over the pooled cross-validation cases",
        "best": best.name,
        "best_models": [str(model) for model in best.models],
        "candidates": [
            {"name": c.name, "models": [str(m) for m in c.models], "folder": str(c.folder), "dice": c.dice, "dice_per_label": c.dice_per_label}
            for c in ranked
        ],
        "not_candidates": skipped,
        "postprocessing": None if decision is None else {**decision.to_dict(), "file": str(decision_file)},
        "commands": commands,
    }
    json_path = dataset_folder / f"{INSTRUCTIONS_NAME}.json"
    atomic_write_json(json_path, data)
    lines = [
        f"Best model for {dataset_folder.name} (foreground-mean Dice over the cross-validation of folds {folds}):",
        f"  {best.name}: {best.dice:.4f}",
        "",
        "All candidates:",
        *[f"  {c.dice:.4f}  {c.name}" for c in ranked],
    ]
    if skipped:
        lines += ["", "Not compared:", *[f"  {name}: {why}" for name, why in skipped.items()]]
    if decision is not None:
        kept = []
        if decision.foreground_largest_component:
            kept.append("largest component of the foreground")
        kept += [f"largest component of label {label}" for label in decision.per_label]
        lines += [
            "",
            f"Postprocessing ({decision_file}): {', '.join(kept) if kept else 'none helps'}; "
            f"cross-validation Dice {decision.dice_before['foreground_mean']:.4f} -> {decision.dice_after['foreground_mean']:.4f}",
        ]
    lines += ["", f"To segment new images ({dataset_json.file_ending} files in INPUT_FOLDER), run:", *[f"  {c}" for c in commands], ""]
    txt_path = dataset_folder / f"{INSTRUCTIONS_NAME}.txt"
    atomic_write_text(txt_path, "\n".join(lines))
    return json_path, txt_path
