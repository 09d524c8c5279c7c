"""The trained-model folder: one layout written by training and pretraining, read by prediction.

A model folder is self-describing, so ``volfnet_predict -m FOLDER`` needs nothing else::

    VOLFNET_results/<DatasetXXX_Name>/<network>__<configuration>[__<tag>]/
        plans.json             the plans training used (user overrides applied)
        dataset.json           labels, channel names, file ending
        postprocessing.json    optional: decided on cross-validation, applied by the predictor
        fold_<k>/              k in 0..N-1 for the N folds of splits.json (5 by default), or fold_all
            checkpoint_{latest,best,final}.pt   network, optimiser, schedule, logs, spec
            checkpoint_it<N>.pt                 weight snapshots (with snapshot_every)
            progress.png  log.txt  training_log.json
            validation/        <case><ending>, <case>.npz (with --npz), summary.json/.csv
        crossval_results_folds_<k_...>/         volfnet_cv_summary: the folds' validations pooled
        predicted_next_stage/<next>/<case>.npy  3d_lowres: validation label maps on the cascade's grid
        pretrain/
            checkpoint_{latest,best,final}.pt  checkpoint_it<N>.pt  progress.png  samples.png  log.txt
            pretrain_settings.json  validation_set/

documentation/training.md shows the same layout for users; keep the two in step.

The optional ``tag`` keeps variants of one network and configuration apart (for example a
model trained from scratch beside a fine-tuned one: ``fmunet__3d_fullres__scratch``).

Both training (writer) and inference (reader) import this module; it sits low, beside
:mod:`volfnet.checkpoint`, so inference never imports training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volfnet import paths
from volfnet.checkpoint import CheckpointSpec, checkpoint_spec
from volfnet.errors import VolfnetError
from volfnet.io.dataset import DatasetJson
from volfnet.io.files import atomic_write_text
from volfnet.plans import Plans

PLANS_FILE = "plans.json"
DATASET_FILE = "dataset.json"
PRETRAIN_FOLDER = "pretrain"
CHECKPOINT_KINDS = ("latest", "best", "final")
NUM_FOLDS = 5  # folds volfnet creates in splits.json; a hand-written splits.json may hold any number
ALL_FOLDS = "all"
FOLD_PREFIX = "fold_"
SEGMENTATION_KIND = "segmentation"  # the checkpoint spec kind prediction accepts (not VolF pretraining)

Fold = int | str  # 0, 1, ... (as many as splits.json holds) or "all"


def parse_fold(value: str | int) -> Fold:
    """``"0"``, ``"7"``, ... or ``"all"`` → 0, 7, ... or ``"all"``; anything else is a clear error.

    Any non-negative number is accepted here: how many folds exist is decided by the
    dataset's ``splits.json`` (nnU-Net allows any number), which training checks against,
    and by the ``fold_<k>`` folders that prediction finds."""
    if isinstance(value, str) and value.strip().lower() == ALL_FOLDS:
        return ALL_FOLDS
    if isinstance(value, bool):
        raise VolfnetError(f"fold must be a number (0, 1, ...) or '{ALL_FOLDS}', got {value!r}")
    try:
        fold = int(value)
    except (TypeError, ValueError):
        raise VolfnetError(f"fold must be a number (0, 1, ...) or '{ALL_FOLDS}', got {value!r}") from None
    if fold < 0:
        raise VolfnetError(f"fold {fold} is out of range: folds are numbered from 0 (or '{ALL_FOLDS}')")
    return fold


def parse_cross_validation_folds(values: list[str] | None) -> list[int] | None:
    """Fold numbers of a cross-validation (``-f 0 1 2``); ``all`` is no cross-validation fold
    (it validates on its own training cases)."""
    if values is None:
        return None
    folds = [parse_fold(value) for value in values]
    if ALL_FOLDS in folds:
        raise VolfnetError(f"fold '{ALL_FOLDS}' has no held-out validation cases: a cross-validation takes numbered folds (0, 1, ...)")
    return [int(fold) for fold in folds]


def check_tag(tag: str) -> None:
    """Refuse a tag that cannot name a model folder (``__`` separates the name's parts; ``/``)."""
    if tag and ("__" in tag or "/" in tag):
        raise VolfnetError(f"model tag {tag!r} must not contain '__' or '/'")


def model_folder_name(network: str, configuration: str, tag: str = "") -> str:
    check_tag(tag)
    return f"{network}__{configuration}" + (f"__{tag}" if tag else "")


def model_folder_path(dataset_name: str, network: str, configuration: str, results_root: Path | None = None, tag: str = "") -> Path:
    """Where the models of one dataset, network, configuration (and optional tag) live."""
    root = paths.results_root() if results_root is None else Path(results_root)
    return root / dataset_name / model_folder_name(network, configuration, tag)


def fold_folder(model_folder: Path, fold: Fold) -> Path:
    return Path(model_folder) / f"{FOLD_PREFIX}{fold}"


def numbered_folds(model_folder: Path) -> list[int]:
    """The numbers k of the ``fold_<k>`` folders in a model folder, in increasing order
    (``fold_10`` after ``fold_9``), whatever their count."""
    numbers = []
    for path in Path(model_folder).glob(f"{FOLD_PREFIX}*"):
        suffix = path.name[len(FOLD_PREFIX):]
        if path.is_dir() and suffix.isascii() and suffix.isdigit() and str(int(suffix)) == suffix:
            numbers.append(int(suffix))
    return sorted(numbers)


def pretrain_folder(model_folder: Path) -> Path:
    return Path(model_folder) / PRETRAIN_FOLDER


def checkpoint_path(run_folder: Path, kind: str) -> Path:
    """``checkpoint_<kind>.pt`` inside a fold or pretrain folder."""
    if kind not in CHECKPOINT_KINDS:
        raise VolfnetError(f"checkpoint must be one of {CHECKPOINT_KINDS}, got {kind!r}")
    return Path(run_folder) / f"checkpoint_{kind}.pt"


def snapshot_path(run_folder: Path, iteration: int) -> Path:
    """``checkpoint_it<iteration>.pt``: the weights after ``iteration`` steps, kept when the
    run's ``snapshot_every`` asks for it (e.g. to fine-tune from an earlier pretraining state)."""
    return Path(run_folder) / f"checkpoint_it{int(iteration):07d}.pt"


def list_snapshots(run_folder: Path) -> list[Path]:
    """The run's snapshots, earliest first."""
    return sorted(Path(run_folder).glob("checkpoint_it*.pt"))


@dataclass
class ModelFolder:
    """A model folder opened for reading: its plans, dataset.json and configuration."""

    path: Path
    plans: Plans
    dataset_json: DatasetJson
    network: str
    configuration: str

    @classmethod
    def open(cls, path: Path) -> ModelFolder:
        path = Path(path)
        if not path.is_dir():
            raise VolfnetError(f"{path}: model folder not found")
        parts = path.name.split("__")
        if len(parts) not in (2, 3):
            raise VolfnetError(f"{path}: not a model folder (its name must be <network>__<configuration>[__<tag>])")
        network, configuration = parts[0], parts[1]
        for required in (PLANS_FILE, DATASET_FILE):
            if not (path / required).is_file():
                raise VolfnetError(f"{path}: model folder has no {required}; was training started here?")
        plans = Plans.load(path / PLANS_FILE)
        plans.configuration(configuration)  # raises with the available names if it is missing
        return cls(path, plans, DatasetJson.load(path / DATASET_FILE), network, configuration)

    def available_folds(self, kind: str = "final") -> list[Fold]:
        """Folds with a ``checkpoint_<kind>.pt``, numeric folds first, then ``all``."""
        found: list[Fold] = [f for f in numbered_folds(self.path) if checkpoint_path(fold_folder(self.path, f), kind).is_file()]
        if checkpoint_path(fold_folder(self.path, ALL_FOLDS), kind).is_file():
            found.append(ALL_FOLDS)
        return found

    def select_folds(self, folds: Sequence[Fold | str] | None, kind: str = "final") -> list[Fold]:
        """``folds`` checked to have a ``checkpoint_<kind>.pt`` (duplicates dropped), or every
        fold that has one when ``folds`` is None; a missing checkpoint names what exists."""
        available = self.available_folds(kind)
        if folds is None:
            if not available:
                raise VolfnetError(f"{self.path}: no fold has a checkpoint_{kind}.pt yet{_checkpoints_found(self.path)}")
            return available
        selected = list(dict.fromkeys(parse_fold(f) for f in folds))
        if not selected:
            raise VolfnetError("no folds given")
        for fold in selected:
            path = checkpoint_path(fold_folder(self.path, fold), kind)
            if not path.is_file():
                raise VolfnetError(
                    f"{path}: no checkpoint for fold {fold} (folds with checkpoint_{kind}.pt: {available or 'none'})"
                    f"{_checkpoints_found(path.parent)}"
                )
        return selected

    def segmentation_spec(self, checkpoint: dict[str, Any], path: Path) -> CheckpointSpec:
        """The spec of a fold's checkpoint, checked to be a trained segmentation network that
        agrees with this folder's plans and dataset.json (so its outputs mean what they say)."""
        spec = checkpoint_spec(checkpoint, str(path))
        if spec is None:
            raise VolfnetError(f"{path}: has no volfnet spec (not written by volfnet training); cannot tell which network it holds")
        if spec.kind != SEGMENTATION_KIND:
            raise VolfnetError(f"{path}: is a {spec.kind!r} checkpoint; prediction needs a trained segmentation checkpoint")
        mismatch = self.spec_mismatch(spec)
        if mismatch:
            raise VolfnetError(f"{path}: does not match the model folder's plans/dataset.json ({mismatch})")
        return spec

    def spec_mismatch(self, spec: CheckpointSpec) -> str | None:
        """First disagreement between a checkpoint's spec and this folder, or None."""
        configuration = self.plans.configuration(self.configuration)
        checks = [
            ("input channels", spec.num_input_channels,
             configuration.network_input_channels(self.plans.num_input_channels, len(self.dataset_json.foreground_labels))),
            ("classes", spec.num_classes, self.dataset_json.num_classes),
            ("patch size", list(spec.patch_size), list(configuration.patch_size)),
            ("spacing", list(spec.spacing), list(configuration.spacing)),
            ("transpose", list(spec.transpose_forward), list(self.plans.transpose_forward)),
            ("network", dataclasses.asdict(spec.network), dataclasses.asdict(configuration.network)),
            ("normalization", [dataclasses.asdict(n) for n in spec.normalization],
             [dataclasses.asdict(n) for n in configuration.normalization]),
        ]
        for name, found, expected in checks:
            if found != expected:
                return f"{name}: checkpoint {found}, plans {expected}"
        return None


def _checkpoints_found(folder: Path) -> str:
    """``; found [...]``: the checkpoints under ``folder`` of any kind, to hint at ``-chk``."""
    found = sorted(str(p.relative_to(folder)) for p in Path(folder).glob("**/checkpoint_*.pt"))
    return f"; found {found}" if found else ""


def write_model_folder_files(folder: Path, plans: Plans, dataset_json_file: Path) -> None:
    """Write ``plans.json`` and copy ``dataset.json`` into a model folder (atomically), so the
    folder describes itself. Called by training and pretraining before the first iteration."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plans.save(folder / PLANS_FILE)
    atomic_write_text(folder / DATASET_FILE, Path(dataset_json_file).read_text())
