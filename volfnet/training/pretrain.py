"""``volfnet_pretrain`` as a library call: build the pool, settle network and settings, train.

Output (the model folder layout of :mod:`volfnet.model_folder`)::

    <results>/<first dataset>/<network>__<configuration>[__<tag> | __published]/
        plans.json  dataset.json                 the folder describes itself
        pretrain/
            checkpoint_{latest,best,final}.pt   written by the training loop (spec kind volf_pretraining)
            progress.png  log.txt  training_log.json
            samples.png                         fused samples (+ predictions once trained)
            validation_set/                     the fixed validation samples (npy) and their JSON
            pretrain_settings.json              VolF settings, pool and network of the run

Settings: the trainer starts from :func:`~volfnet.training.config.pretraining_defaults`
(Adam 1e-3, weight decay 1e-5, lr halved every ``step_size`` iterations), VolF from the
published values with the plans' patch; ``--set key=value`` changes a trainer setting,
``--set volf.key=value`` a VolF one. ``--iterations N`` sets the length (and, unless
``step_size`` is set too, halves the learning rate every fifth of it, as the published
recipes do). ``checkpoint_latest.pt`` is written every epoch (1,000 iterations by default).
A resumed run (``--c``) continues with its stored settings, network and validation set;
``--set`` and ``--iterations`` still apply on top (e.g. to train longer).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volfnet.checkpoint import checkpoint_spec, load_checkpoint
from volfnet.errors import VolfnetError
from volfnet.io.files import atomic_write_json, read_json
from volfnet.model_folder import (
    DATASET_FILE,
    check_tag,
    checkpoint_path,
    model_folder_path,
    pretrain_folder,
    write_model_folder_files,
)
from volfnet.networks.fmunet import published_fmunet_topology
from volfnet.networks.pctnet import published_pctnet_topology
from volfnet.planning.topology import (
    fmunet_topology,
    pctnet_resolution_mode,
    pctnet_topology,
    round_up_patch,
)
from volfnet.plans import NETWORK_NAMES, NetworkTopology, Plans
from volfnet.training import distributed
from volfnet.training.config import (
    TrainerConfig,
    apply_trainer_overrides,
    pretraining_defaults,
)
from volfnet.training.loop import TrainingResult, resolve_device, run_training
from volfnet.training.pretrain_data import (
    DEFAULT_VALIDATION_SAMPLES,
    ValidationSet,
    ensure_validation_set,
    read_validation_set,
)
from volfnet.training.pretrain_pool import (
    PoolDataset,
    PoolRequest,
    VolumePool,
    build_pool,
)
from volfnet.training.pretrain_task import (
    SAMPLES_PNG,
    VolFPretrainingTask,
    sample_examples,
)
from volfnet.volf.config import AUTO_FUSION_MODE, VolFConfig, apply_volf_override
from volfnet.volf.pretext_choice import choose_fusion_mode
from volfnet.volf.visualize import save_samples_png

logger = logging.getLogger(__name__)

VOLF_PREFIX = "volf."
SETTINGS_FILE = "pretrain_settings.json"
PUBLISHED_TAG = "published"  # model-folder tag of runs with the published (MIS-FM) topology
CHECKPOINT_EVERY = 1  # epochs (1,000 iterations by default) between "latest" checkpoints: a crash costs little
STEP_FRACTION = 0.2  # --iterations: halve the lr every fifth of the run (published: 20k of 100k, 40k of 200k)
TOPOLOGY_SETTLE_ROUNDS = 8  # rounding the patch can change an FMUNet's depth; this many rounds always settle


@dataclass
class PretrainRequest:
    """The options of ``volfnet_pretrain``.

    ``network`` None: the plans' network; another name: that network planned for the plans'
    spacing, patch and widths. ``published``: the published MIS-FM topology of the network
    instead (full widths; what the released checkpoints use). ``weights``: one sampling
    weight per dataset, then one per ``images`` folder. ``tag`` keeps the run in its own model
    folder (``<network>__<configuration>__<tag>``), so pretrainings with other settings sit side
    by side and ``volfnet_train --tag <tag> --pretrained`` finds it; the default is no tag
    (``published`` with ``published``).
    """

    datasets: list[str]
    configuration: str = "3d_fullres"
    network: str | None = None
    published: bool = False
    tag: str = ""
    images: list[Path] = field(default_factory=list)
    iterations: int | None = None
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    device: str | None = None
    num_gpus: int = 1
    weights: list[float] | None = None
    validation_samples: int = DEFAULT_VALIDATION_SAMPLES
    include_test_images: bool = True
    preprocess_workers: int = 2
    progress: bool = True


@dataclass
class PreparedPretraining:
    """Everything resolved from a :class:`PretrainRequest`, ready to build the task."""

    pool: VolumePool
    plans: Plans
    configuration: str
    topology: NetworkTopology
    volf_config: VolFConfig
    validation_set: ValidationSet
    config: TrainerConfig
    model_folder: Path
    run_folder: Path

    def task(self) -> VolFPretrainingTask:
        return VolFPretrainingTask(
            self.pool, self.plans, self.configuration, self.topology, self.volf_config, self.validation_set, self.config
        )


# ------------------------------------------------------------------------- settings
def split_overrides(assignments: list[str]) -> tuple[list[str], list[str]]:
    """``--set`` values: (trainer assignments, VolF assignments without the ``volf.`` prefix)."""
    trainer, volf = [], []
    for assignment in assignments:
        key = assignment.split("=", 1)[0].strip()
        if key.startswith(VOLF_PREFIX):
            volf.append(assignment.strip()[len(VOLF_PREFIX):])
        else:
            trainer.append(assignment)
    return trainer, volf


def _override_keys(assignments: list[str]) -> set[str]:
    return {a.split("=", 1)[0].strip() for a in assignments}


def _settle(build, spacing: list[float], patch: list[int]) -> tuple[NetworkTopology, list[int]]:
    """Round ``patch`` up to the topology's total down-sampling until both agree."""
    for _ in range(TOPOLOGY_SETTLE_ROUNDS):
        topology = build(patch)
        rounded = round_up_patch(list(patch), topology.total_downsampling())
        if rounded == list(patch):
            return topology, list(patch)
        patch = rounded
    raise VolfnetError(f"patch {patch} and the {build} topology did not settle")  # pragma: no cover (depth is capped)


def resolve_topology(plans: Plans, configuration: str, network: str | None, published: bool) -> tuple[NetworkTopology, list[int]]:
    """The network to pretrain and its patch.

    Default: the plans' topology and patch, so the checkpoint loads completely into the
    downstream network. ``network`` other than the plans': that network planned for the plans'
    spacing, patch and widths (patch rounded up to its down-sampling). ``published``: the
    MIS-FM topology (FMUNet ``res_mode`` / PCT-Net ``resolution_mode`` from the spacing).
    """
    plan = plans.configuration(configuration)
    name = network or plan.network.name
    if name not in NETWORK_NAMES:
        raise VolfnetError(f"unknown network {name!r}; choose one of {list(NETWORK_NAMES)}")
    spacing, patch = list(plan.spacing), list(plan.patch_size)
    if published:
        mode = pctnet_resolution_mode(spacing)  # 0 isotropic, 1 axis 0 ~2x coarser, 2 >= 3x: FMUNet res_mode alike
        if name == "fmunet":
            return _settle(lambda p: published_fmunet_topology(mode), spacing, patch)
        return _settle(lambda p: published_pctnet_topology(mode, input_size=p), spacing, patch)
    if name == plan.network.name:
        return plan.network, patch
    base, maximum = plan.network.feature_channels[0], max(plan.network.feature_channels)
    build = fmunet_topology if name == "fmunet" else pctnet_topology
    topology, patch = _settle(lambda p: build(spacing, p, base, maximum), spacing, patch)
    logger.info("the plans use %s; pretraining %s planned for patch %s: %s", plan.network.name, name, patch, topology.feature_channels)
    return topology, patch


def _stored_settings(run_folder: Path) -> dict | None:
    path = run_folder / SETTINGS_FILE
    return read_json(path) if path.is_file() else None


def volf_settings(base_patch: list[int], volf_overrides: list[str], stored: dict | None, median_image_shape: list[int]) -> VolFConfig:
    """The published VolF settings with the run's patch and the fusion pretext chosen for the
    images' size (or the stored settings of a resumed run), then the ``volf.`` overrides.

    The pretext default is ``auto``: box fusion of two images where two crops of one image of
    ``median_image_shape`` would overlap heavily, else the published grid fusion
    (:mod:`volfnet.volf.pretext_choice`); ``volf.fusion_mode`` overrides it.
    """
    if stored is not None and "volf" in stored:
        config = VolFConfig.from_dict(stored["volf"], source=f"{SETTINGS_FILE}: volf")
    else:
        config = VolFConfig(patch_size=list(base_patch), fusion_mode=AUTO_FUSION_MODE)
    for assignment in volf_overrides:
        config = apply_volf_override(config, assignment)
    return choose_fusion_mode(config, median_image_shape).resolved()


def trainer_settings(
    request: PretrainRequest, trainer_overrides: list[str], batch_size: int, validation_samples: int, stored: dict | None
) -> TrainerConfig:
    """Pretraining defaults (or a resumed run's stored config), ``--iterations``, then ``--set``.

    Unless set explicitly, ``val_iterations`` covers the validation set exactly once per round.
    """
    config = TrainerConfig.from_dict(stored, "checkpoint_latest.pt: trainer_config") if stored else pretraining_defaults()
    keys = _override_keys(trainer_overrides)
    config = apply_trainer_overrides(config, trainer_overrides)
    if request.iterations is not None:
        iterations = request.iterations
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise VolfnetError(f"--iterations must be a positive integer, got {iterations!r}")
        if "num_epochs" in keys:
            raise VolfnetError("give the length once: --iterations N or --set num_epochs=N, not both")
        per_epoch = min(config.iterations_per_epoch, iterations)
        changes = {"iterations_per_epoch": per_epoch, "num_epochs": math.ceil(iterations / per_epoch)}
        if "step_size" not in keys and not stored:  # a resumed run keeps its schedule
            changes["step_size"] = max(1, round(STEP_FRACTION * iterations))
        config = config.replaced(**changes)
        if config.total_iterations() != iterations:
            logger.info("--iterations %d: %d epochs of %d = %d iterations", iterations, config.num_epochs, per_epoch, config.total_iterations())
    if "checkpoint_every" not in keys and not stored:
        config = config.replaced(checkpoint_every=CHECKPOINT_EVERY)
    if "val_iterations" not in keys and not stored:
        batch = config.batch_size if config.batch_size is not None else batch_size
        config = config.replaced(val_iterations=math.ceil(validation_samples / batch))
    return config


# ---------------------------------------------------------------------------- prepare
def prepare(request: PretrainRequest, write: bool = True) -> PreparedPretraining:
    """Resolve and check a request. With ``write`` (the first process), preprocess pool images,
    make or reuse the validation set and write the model-folder and settings files; without,
    read what the first process wrote."""
    if request.network is not None and request.network not in NETWORK_NAMES:
        raise VolfnetError(f"unknown network {request.network!r}; choose one of {list(NETWORK_NAMES)}")
    check_tag(request.tag)  # before the pool preprocesses anything
    trainer_overrides, volf_overrides = split_overrides(list(request.overrides))
    pool, datasets = build_pool(
        PoolRequest(
            datasets=[str(d) for d in request.datasets],
            configuration=request.configuration,
            extra_folders=[Path(p) for p in request.images],
            include_test_images=request.include_test_images,
            weights=request.weights,
            num_workers=request.preprocess_workers,
            progress=request.progress,
            preprocess=write,
        )
    )
    first: PoolDataset = datasets[0]
    plans = first.plans
    topology, patch = resolve_topology(plans, request.configuration, request.network, request.published)
    tag = request.tag or (PUBLISHED_TAG if request.published else "")
    model_folder = model_folder_path(plans.dataset_name, topology.name, request.configuration, tag=tag)
    run_folder = pretrain_folder(model_folder)
    resumed = _restore(run_folder) if request.resume else None
    stored_settings = resumed.settings if resumed is not None else None
    if resumed is not None:
        topology, patch = resumed.topology, resumed.patch  # the run's network, even if the plans changed since
    volf = volf_settings(patch, volf_overrides, stored_settings, plans.configuration(request.configuration).median_shape)
    if list(volf.patch_size) != list(patch) and topology.name == "pctnet":
        if request.resume:
            raise VolfnetError(f"PCT-Net was built for input size {topology.input_size}; a resumed run cannot change volf.patch_size")
        topology = dataclasses.replace(topology, input_size=list(volf.patch_size))
    plan = dataclasses.replace(plans.configuration(request.configuration), network=topology, patch_size=list(volf.patch_size))
    plan.check()  # before anything is written
    count = int(stored_settings.get("validation_samples", request.validation_samples)) if stored_settings else request.validation_samples
    config = trainer_settings(request, trainer_overrides, plan.batch_size, count, resumed.trainer_config if resumed else None)
    if write:
        validation_set = ensure_validation_set(run_folder, pool, volf, count, config.seed, resume=request.resume)
        folder_plans = dataclasses.replace(plans, configurations={**plans.configurations, request.configuration: plan})
        write_model_folder_files(model_folder, folder_plans, first.folder / DATASET_FILE)
        _write_settings(run_folder, request, datasets, pool, count, topology, volf)
    else:
        stored = read_validation_set(run_folder)
        if stored is None:
            raise VolfnetError(f"{run_folder}: no validation set; the first process makes it before the others start")
        validation_set = stored
    prepared = PreparedPretraining(pool, plans, request.configuration, topology, volf, validation_set, config, model_folder, run_folder)
    if write and (not request.resume or not (run_folder / SAMPLES_PNG).is_file()):
        task = prepared.task()
        save_samples_png(sample_examples(task), run_folder / SAMPLES_PNG, task.num_classes)
    return prepared


@dataclass
class _ResumedRun:
    """What a resumed pretraining keeps from its own files, whatever the plans say now."""

    topology: NetworkTopology
    patch: list[int]
    trainer_config: dict[str, Any] | None
    settings: dict[str, Any] | None


def _restore(run_folder: Path) -> _ResumedRun:
    """The network, patch and settings of the run in ``run_folder``, from its latest checkpoint
    and ``pretrain_settings.json``."""
    latest = checkpoint_path(run_folder, "latest")
    if not latest.is_file():
        raise VolfnetError(f"cannot resume: {latest} does not exist (no epoch was checkpointed yet); start without --c")
    checkpoint = load_checkpoint(latest)
    spec = checkpoint_spec(checkpoint, str(latest))
    if spec is None or spec.kind != VolFPretrainingTask.kind:
        raise VolfnetError(f"cannot resume: {latest} is not a VolF pretraining checkpoint")
    settings = _stored_settings(run_folder)
    if settings is None:
        logger.warning("%s is missing: resuming with the published VolF settings and the checkpoint's patch", run_folder / SETTINGS_FILE)
    return _ResumedRun(spec.network, list(spec.patch_size), checkpoint.get("trainer_config"), settings)


def _write_settings(
    run_folder: Path, request: PretrainRequest, datasets: list[PoolDataset], pool: VolumePool, count: int,
    topology: NetworkTopology, volf: VolFConfig,
) -> None:
    """``pretrain_settings.json``: what a resumed run and a reader of the results need to know."""
    atomic_write_json(
        run_folder / SETTINGS_FILE,
        {
            "datasets": [d.name for d in datasets],
            "configuration": request.configuration,
            "images": [str(Path(p).expanduser().resolve()) for p in request.images],
            "weights": request.weights,
            "validation_samples": count,
            "network": dataclasses.asdict(topology),
            "volf": volf.to_dict(),
            "pool": [{"name": s.name, "folder": str(s.folder), "cases": len(s)} for s in pool.sources],
        },
    )


# -------------------------------------------------------------------------------- run
def pretrain(request: PretrainRequest) -> TrainingResult | None:
    """Run ``volfnet_pretrain``. Returns the result of a single-process run, None otherwise."""
    if isinstance(request.num_gpus, bool) or not isinstance(request.num_gpus, int) or request.num_gpus < 1:
        raise VolfnetError(f"--num-gpus must be a positive integer, got {request.num_gpus!r}")
    launched = distributed.env_context()
    if launched.is_distributed:
        if request.num_gpus > 1:
            raise VolfnetError("already started by torchrun (WORLD_SIZE is set): leave out --num-gpus")
        return _run_under_torchrun(request)
    prepared = prepare(request, write=True)
    if request.num_gpus > 1:
        device_type = "cpu" if request.device == "cpu" else "cuda"
        distributed.launch(_pretrain_process, request.num_gpus, (request,), device_type)
        return None
    return _run(prepared, request)


def _run(prepared: PreparedPretraining, request: PretrainRequest) -> TrainingResult:
    logger.info(
        "VolF pretraining %s (%s) on %s -> %s",
        prepared.topology.name, prepared.topology.feature_channels, prepared.plans.dataset_name, prepared.run_folder,
    )
    return run_training(prepared.task(), prepared.config, prepared.run_folder, resume=request.resume, device=request.device)


def _pretrain_process(request: PretrainRequest) -> None:
    """One process of a ``--num-gpus`` run (the first process prepared everything already)."""
    _run(prepare(request, write=False), request)


def _run_under_torchrun(request: PretrainRequest) -> TrainingResult:
    """Every torchrun process calls :func:`pretrain`: rank 0 prepares (preprocessing, validation
    set) while the others wait at a barrier, then all read the same files and train."""
    with distributed.process_group(resolve_device(request.device).type) as context:
        prepared = prepare(request, write=True) if context.is_main else None
        distributed.barrier()
        if prepared is None:
            prepared = prepare(request, write=False)
        return _run(prepared, request)
