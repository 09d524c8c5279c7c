"""``volfnet_train`` as a library call: resolve dataset, configuration and fold, then train.

Everything a user can get wrong is checked here, before any process starts, with a message
that says what to do: a dataset that was not preprocessed for the configuration (names the
``volfnet_plan_and_preprocess`` command), a fold that does not exist, ``--pretrained`` with no
pretraining run (names ``volfnet_pretrain``), resuming without a checkpoint. The trainer
settings are a preset (:func:`~volfnet.training.config.supervised_defaults` from scratch,
:func:`~volfnet.training.config.finetune_defaults` with pretrained weights, or the resumed
checkpoint's own) with the ``--set`` overrides applied on top.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from volfnet import paths
from volfnet.checkpoint import load_checkpoint
from volfnet.errors import VolfnetError
from volfnet.io.dataset import DatasetJson, find_dataset_folder
from volfnet.data.previous_stage import PREDICTED_NEXT_STAGE, previous_stage_problems
from volfnet.model_folder import (
    ALL_FOLDS,
    DATASET_FILE,
    PLANS_FILE,
    Fold,
    checkpoint_path,
    fold_folder,
    model_folder_path,
    parse_fold,
    pretrain_folder,
    write_model_folder_files,
)
from volfnet.plans import Plans
from volfnet.io.case_store import case_paths, list_preprocessed_cases
from volfnet.training import distributed
from volfnet.training.config import (
    TrainerConfig,
    apply_trainer_overrides,
    finetune_defaults,
    supervised_defaults,
)
from volfnet.training.loop import TrainingResult, run_training, validate_checkpoint
from volfnet.training.segmentation import SegmentationTask
from volfnet.training.splits import splits_for_fold

logger = logging.getLogger(__name__)

DEFAULT_PRETRAINED = "final"  # --pretrained without a path: pretrain/checkpoint_final.pt of this model folder


@dataclass
class TrainRequest:
    """The options of ``volfnet_train``. ``pretrained``: None (from scratch), a checkpoint path,
    or :data:`DEFAULT_PRETRAINED` for this dataset's own VolF pretraining."""

    dataset: str
    configuration: str
    fold: str | int
    network: str | None = None
    pretrained: str | Path | None = None
    encoder_only: bool = False  # shorthand for --set pretrained_weights=encoder
    resume: bool = False
    validation_only: bool = False
    device: str | None = None
    num_gpus: int = 1
    overrides: list[str] = field(default_factory=list)
    tag: str = ""
    save_probabilities: bool = False  # keep the validation probabilities (nnU-Net's --npz), for ensembles


@dataclass
class PreparedTraining:
    """Everything resolved from a :class:`TrainRequest`, ready to build the task."""

    plans: Plans
    configuration: str
    preprocessed_folder: Path
    dataset_json: DatasetJson
    fold: Fold
    train_cases: list[str]
    val_cases: list[str]
    config: TrainerConfig
    model_folder: Path
    run_folder: Path
    pretrained: Path | None
    save_probabilities: bool = False
    previous_stage_folder: Path | None = None  # a cascade: the previous stage's label maps of the cases
    next_stage_folders: dict[str, Path] = field(default_factory=dict)  # where this fold's validation feeds a cascade

    def task(self) -> SegmentationTask:
        return SegmentationTask(
            self.plans, self.configuration, self.preprocessed_folder, self.dataset_json, self.fold,
            self.train_cases, self.val_cases, self.config, save_probabilities=self.save_probabilities,
            previous_stage_folder=self.previous_stage_folder, next_stage_folders=self.next_stage_folders,
        )


def prepare(request: TrainRequest, write: bool = True) -> PreparedTraining:
    """Resolve and check a request; with ``write`` create ``splits.json`` if needed and the
    model folder's ``plans.json``/``dataset.json``."""
    fold = parse_fold(request.fold)
    preprocessed_root = paths.preprocessed_root()
    hint = f"volfnet_plan_and_preprocess -d {request.dataset} -c {request.configuration}"
    try:
        folder = find_dataset_folder(request.dataset, preprocessed_root)
    except VolfnetError as exc:
        raise VolfnetError(f"dataset {request.dataset} is not preprocessed ({exc}); run `{hint}` first") from None
    plans_file = folder / PLANS_FILE
    if not plans_file.is_file():
        raise VolfnetError(f"{plans_file} does not exist: run `{hint}` first")
    plans = Plans.load(plans_file)
    if request.configuration not in plans.configurations:
        raise VolfnetError(
            f"configuration {request.configuration!r} is not in {plans_file} (planned: {sorted(plans.configurations)})"
        )
    plan = plans.configuration(request.configuration)
    if request.network is not None and request.network != plan.network.name:
        raise VolfnetError(
            f"the plans of {plans.dataset_name} use {plan.network.name}, not {request.network}; plan for it with "
            f"`volfnet_plan_and_preprocess -d {request.dataset} --network {request.network}`"
        )
    cases_folder = folder / plan.data_identifier
    cases = [c for c in list_preprocessed_cases(cases_folder) if case_paths(cases_folder, c)[1].is_file()] if cases_folder.is_dir() else []
    if not cases:
        raise VolfnetError(f"{cases_folder}: no preprocessed labelled cases for configuration {request.configuration}; run `{hint}`")
    dataset_json = DatasetJson.load(folder / DATASET_FILE)
    train_cases, val_cases = splits_for_fold(folder, fold, cases, write=write)
    model_folder = model_folder_path(plans.dataset_name, plan.network.name, request.configuration, tag=request.tag)
    run_folder = fold_folder(model_folder, fold)
    if request.resume and not request.validation_only and not checkpoint_path(run_folder, "latest").is_file():
        raise VolfnetError(f"cannot resume: {checkpoint_path(run_folder, 'latest')} does not exist; start without --c")
    # a cascade shares 3d_fullres's cases, so it fine-tunes from that folder's pretraining too
    shared = model_folder_path(plans.dataset_name, plan.network.name, plan.data_identifier) if plan.data_identifier != request.configuration else None
    pretrained = resolve_pretrained(request, model_folder, shared)
    config = trainer_config(request, run_folder, pretrained is not None)
    previous_stage = previous_stage_folder(request, plans, model_folder, train_cases + val_cases)
    # A numbered fold's validation cases are predicted by a network that never saw them: the
    # input a cascade must train on. Fold "all" validates on its own training cases.
    next_stages = {} if fold == ALL_FOLDS else next_stage_folders(plans, request.configuration, folder, model_folder)
    if write and not request.validation_only:
        write_model_folder_files(model_folder, plans, folder / DATASET_FILE)
    return PreparedTraining(
        plans, request.configuration, folder, dataset_json, fold, train_cases, val_cases, config, model_folder, run_folder, pretrained,
        request.save_probabilities, previous_stage, next_stages,
    )


def next_stage_folders(plans: Plans, configuration: str, preprocessed_folder: Path, model_folder: Path) -> dict[str, Path]:
    """Where this configuration's final validation writes the inputs of the cascade stages it
    feeds; a stage whose cases are not preprocessed is left out with a warning (a user who
    wants only 3d_lowres need not preprocess 3d_fullres)."""
    folders = {}
    for name in plans.next_stages(configuration):
        cases = preprocessed_folder / plans.configuration(name).data_identifier
        if cases.is_dir():
            folders[name] = model_folder / PREDICTED_NEXT_STAGE / name
        else:
            logger.warning(
                "%s is not preprocessed (%s missing), so this fold's validation cannot write its input; to train %s, "
                "preprocess it and rerun this fold with --val", name, cases, name,
            )
    return folders


def previous_stage_folder(request: TrainRequest, plans: Plans, model_folder: Path, case_ids: list[str]) -> Path | None:
    """A cascade's input: the previous stage's label maps of every case of this fold, written
    by the final validations of that stage's folds (same network and tag, else untagged)."""
    previous = plans.configuration(request.configuration).previous_stage
    if previous is None:
        return None
    network = plans.configuration(request.configuration).network.name
    candidates = [model_folder_path(plans.dataset_name, network, previous, tag=request.tag)]
    if request.tag:
        candidates.append(model_folder_path(plans.dataset_name, network, previous))
    problems: list[str] = []
    for candidate in candidates:
        folder = candidate / PREDICTED_NEXT_STAGE / request.configuration
        problems = previous_stage_problems(folder, case_ids)
        if not problems:
            return folder
    folds = "every fold (0 1 2 3 4 with the default splits)"
    raise VolfnetError(
        f"{request.configuration} trains on the {previous} predictions of its cases, and {len(problems)} of {len(case_ids)} are "
        f"missing or damaged (e.g. {problems[0]}): run `volfnet_train {request.dataset} {previous} FOLD` for {folds} first; "
        f"each fold's final validation writes its cases' predictions to {candidates[0] / PREDICTED_NEXT_STAGE / request.configuration}"
    )


def resolve_pretrained(request: TrainRequest, model_folder: Path, shared_data_folder: Path | None = None) -> Path | None:
    """The checkpoint to start from, checked to exist. ``--pretrained`` without a path looks in
    this model folder's ``pretrain/``, then the untagged one's, then (a cascade) that of
    ``shared_data_folder``, the configuration whose preprocessed cases it shares."""
    if request.pretrained is None:
        if request.encoder_only:
            raise VolfnetError("--encoder-only needs --pretrained")
        return None
    if request.pretrained == DEFAULT_PRETRAINED:
        candidates = [checkpoint_path(pretrain_folder(model_folder), "final")]
        if model_folder.name.count("__") > 1:  # tagged folder: the untagged one holds the pretraining
            untagged = model_folder.with_name("__".join(model_folder.name.split("__")[:2]))
            candidates.append(checkpoint_path(pretrain_folder(untagged), "final"))
        if shared_data_folder is not None:
            candidates.append(checkpoint_path(pretrain_folder(shared_data_folder), "final"))
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise VolfnetError(
            f"no pretrained checkpoint at {candidates[0]}: run `volfnet_pretrain -d {request.dataset} "
            f"-c {request.configuration}` first, or give a checkpoint file with --pretrained PATH"
        )
    path = Path(request.pretrained).expanduser()
    if not path.is_file():
        raise VolfnetError(f"pretrained checkpoint {path} does not exist")
    return path


def trainer_config(request: TrainRequest, run_folder: Path, pretrained: bool) -> TrainerConfig:
    """The preset (or the resumed run's settings) with the ``--set`` overrides applied."""
    latest = checkpoint_path(run_folder, "latest")
    if request.resume and latest.is_file():
        stored = load_checkpoint(latest).get("trainer_config")
        base = TrainerConfig.from_dict(stored, f"{latest}: trainer_config") if stored else supervised_defaults()
    else:
        base = finetune_defaults() if pretrained else supervised_defaults()
    config = apply_trainer_overrides(base, list(request.overrides))
    return config.replaced(pretrained_weights="encoder") if request.encoder_only else config


def train(request: TrainRequest) -> TrainingResult | None:
    """Run ``volfnet_train``: training (one or several processes) or validation only. Returns
    the training result in a single process or on rank 0 under torchrun, None otherwise."""
    if isinstance(request.num_gpus, bool) or not isinstance(request.num_gpus, int) or request.num_gpus < 1:
        raise VolfnetError(f"--num-gpus must be a positive integer, got {request.num_gpus!r}")
    launched = distributed.env_context()
    if not launched.is_main:  # under torchrun every process runs this: one voice on the console
        logging.getLogger("volfnet").setLevel(logging.WARNING)
    prepared = prepare(request, write=launched.is_main)
    if request.validation_only:
        if launched.is_main:
            validate_checkpoint(prepared.task(), prepared.run_folder, request.device)
        return None
    if request.num_gpus > 1:
        if launched.is_distributed:
            raise VolfnetError("already started by torchrun (WORLD_SIZE is set): leave out --num-gpus")
        device_type = "cpu" if request.device == "cpu" else "cuda"
        distributed.launch(_train_process, request.num_gpus, (request,), device_type)
        return None
    result = _run(prepared, request)
    return result if launched.is_main else None


def _run(prepared: PreparedTraining, request: TrainRequest) -> TrainingResult:
    return run_training(
        prepared.task(), prepared.config, prepared.run_folder, resume=request.resume, device=request.device,
        pretrained=prepared.pretrained,
    )


def _train_process(request: TrainRequest) -> None:
    """One process of a ``--num-gpus`` run (the main process already wrote the shared files)."""
    _run(prepare(request, write=False), request)
