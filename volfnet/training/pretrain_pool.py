"""The VolF pretraining pool: every image of one or more preprocessed datasets, labels ignored.

Self-supervised pretraining gains from every scan a user has, so the pool gathers, per
dataset given with ``-d``: the preprocessed training cases (their labels are never read),
the unlabelled ``imagesTs`` cases, and, for the first dataset, extra unlabelled folders
(``--images DIR``). ``volfnet_plan_and_preprocess`` caches only the training cases, so
``imagesTs`` and extra folders are preprocessed here, once, with the plans of the dataset
they belong to (extra folders: the first dataset's), into::

    <preprocessed>/<Dataset>/<configuration>_pretrain_pool/imagesTs/
    <preprocessed>/<first Dataset>/<configuration>_pretrain_pool/<folder name>/

A rerun skips complete cases (the case JSON is written last), and a cache is rebuilt when
the plans that made it changed.

Scale: the pool holds only folders and case ids (a few dozen bytes per volume), never an
array. Workers open a sampled case as a read-only memory map (:meth:`VolumePool.volume`,
bounded LRU of open maps), so 10,000 CT volumes cost no more RAM than 10, and pickling the
pool to a spawned worker sends only the names.

Sampling: a *group* is one ``-d`` dataset (training cases and ``imagesTs`` together) or one
extra folder. By default every volume is equally likely; per-group ``weights`` make group
``g`` drawn with probability ``w_g / sum(w)`` and a volume uniformly within it. A
multi-channel case contributes each channel as its own single-channel volume (VolF fuses
one channel; the pretraining network has one input channel and fine-tuning adapts its first
convolution to the downstream channel count).
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from volfnet import paths
from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.io.dataset import (
    CaseFiles,
    DatasetJson,
    RawDataset,
    find_dataset_folder,
    list_cases,
    parse_channel_file,
)
from volfnet.io.files import load_npy
from volfnet.io.image_io import SUPPORTED_ENDINGS
from volfnet.plans import Plans
from volfnet.preprocessing.cache_stamp import CONFIGURATION_STAMP, preprocessing_stamp, recorded_source, renew_stamp
from volfnet.io.case_store import case_paths, list_preprocessed_cases
from volfnet.preprocessing.preprocessor import preprocess_cases

logger = logging.getLogger(__name__)

POOL_FOLDER_SUFFIX = "_pretrain_pool"  # <configuration>_pretrain_pool beside the configuration's cache
TEST_IMAGES = "imagesTs"
DEFAULT_MAX_OPEN_VOLUMES = 256  # per process: memory maps are cheap, but their number is bounded


@dataclass(frozen=True)
class PoolSource:
    """One folder of preprocessed cases in the pool.

    ``name`` says where the images came from (``Dataset001_Toy/imagesTr``,
    ``Dataset001_Toy/imagesTs``, ``extra/scans``); ``group`` indexes the sampling group;
    ``num_channels`` is what the plans that preprocessed the folder expect per case.
    """

    name: str
    folder: Path
    case_ids: tuple[str, ...]
    num_channels: int
    group: int

    def __len__(self) -> int:
        return len(self.case_ids)


@dataclass(frozen=True)
class PoolEntry:
    """One sampled volume: source index, case index within it, and the channel to fuse."""

    source: int
    case: int
    channel: int


@dataclass
class VolumePool:
    """Case paths of every pretraining image, grouped for weighted sampling.

    ``group_names`` name the groups (one per ``-d`` dataset, one per extra folder);
    ``weights`` (one per group, or None for "every volume equally likely") set how often a
    group is drawn. Nothing is opened at construction.
    """

    sources: list[PoolSource]
    group_names: list[str]
    weights: list[float] | None = None
    max_open_volumes: int = DEFAULT_MAX_OPEN_VOLUMES
    _open: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        self.sources = [s for s in self.sources if len(s)]
        if not self.sources:
            raise VolfnetError(
                f"the pretraining pool is empty: no preprocessed image in {self.group_names or 'the given datasets'}; "
                "run `volfnet_plan_and_preprocess -d ID` for each dataset, or add images with --images DIR"
            )
        if self.weights is not None:
            if len(self.weights) != len(self.group_names):
                raise VolfnetError(
                    f"{len(self.weights)} sampling weight(s) for {len(self.group_names)} group(s) "
                    f"({', '.join(self.group_names)}): give one weight per dataset, then one per --images folder"
                )
            if any(not np.isfinite(w) or w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise VolfnetError(f"sampling weights must be non-negative with a positive sum, got {self.weights}")
        for source in self.sources:
            if source.num_channels < 1:
                raise VolfnetError(f"{source.folder}: {source.num_channels} channels per case; the network needs at least one")
        # Per group: the sources and the cumulative volume counts (channels count as volumes).
        self._group_sources: list[list[int]] = [[] for _ in self.group_names]
        for index, source in enumerate(self.sources):
            self._group_sources[source.group].append(index)
        self._group_counts = [
            np.cumsum([len(self.sources[i]) * self.sources[i].num_channels for i in members]).tolist()
            for members in self._group_sources
        ]
        sizes = np.array([counts[-1] if counts else 0 for counts in self._group_counts], dtype=np.float64)
        weights = sizes if self.weights is None else np.array(self.weights, dtype=np.float64) * (sizes > 0)
        if weights.sum() <= 0:
            raise VolfnetError(f"every group with a positive sampling weight is empty (weights {self.weights}, volumes {sizes.tolist()})")
        self._group_probabilities = (weights / weights.sum()).tolist()

    # ----------------------------------------------------------------- info
    @property
    def num_cases(self) -> int:
        return sum(len(s) for s in self.sources)

    @property
    def num_volumes(self) -> int:
        """Single-channel volumes (cases times channels)."""
        return sum(len(s) * s.num_channels for s in self.sources)

    def group_probabilities(self) -> list[float]:
        return list(self._group_probabilities)

    def describe(self) -> str:
        """One line per source, for the log."""
        lines = [f"pretraining pool: {self.num_cases} case(s), {self.num_volumes} single-channel volume(s)"]
        for group, name in enumerate(self.group_names):
            members = [self.sources[i] for i in self._group_sources[group]]
            parts = ", ".join(f"{s.name} ({len(s)})" for s in members) or "empty"
            lines.append(f"  {name}: p = {self._group_probabilities[group]:.3f}: {parts}")
        return "\n".join(lines)

    def case_name(self, entry: PoolEntry) -> str:
        source = self.sources[entry.source]
        suffix = f"[channel {entry.channel}]" if source.num_channels > 1 else ""
        return f"{source.name}/{source.case_ids[entry.case]}{suffix}"

    # ------------------------------------------------------------- sampling
    def draw(self, rng: np.random.Generator, count: int) -> list[PoolEntry]:
        """``count`` volumes, independently: a group by its probability, then a volume
        uniformly within the group. Uses only ``rng`` (reproducible per batch index)."""
        groups = rng.choice(len(self.group_names), size=count, p=self._group_probabilities)
        entries = []
        for group in groups:
            counts = self._group_counts[int(group)]
            position = int(rng.integers(0, counts[-1]))
            member = bisect.bisect_right(counts, position)
            offset = position - (counts[member - 1] if member else 0)
            source_index = self._group_sources[int(group)][member]
            channels = self.sources[source_index].num_channels
            entries.append(PoolEntry(source_index, offset // channels, offset % channels))
        return entries

    def entries(self) -> list[PoolEntry]:
        """Every volume in the pool, in order (for inspection and tests; sampling never needs it)."""
        return [
            PoolEntry(index, case, channel)
            for index, source in enumerate(self.sources)
            for case in range(len(source))
            for channel in range(source.num_channels)
        ]

    # -------------------------------------------------------------- reading
    def volume(self, entry: PoolEntry) -> np.ndarray:
        """The (C, Z, Y, X) case of ``entry`` as a read-only memory map (opened on first use)."""
        key = (entry.source, entry.case)
        array = self._open.get(key)
        if array is not None:
            self._open.move_to_end(key)
            return array
        source = self.sources[entry.source]
        path = case_paths(source.folder, source.case_ids[entry.case])[0]
        array = load_npy(path, mmap=True)
        if array.ndim != 4 or array.shape[0] != source.num_channels or min(array.shape[1:]) < 1:
            raise VolfnetError(
                f"{path}: shape {list(array.shape)}, but {source.name} was preprocessed for (C={source.num_channels}, Z, Y, X); "
                "this cached image has a channel count the pretraining cannot take: preprocess the dataset again"
            )
        self._open[key] = array
        if len(self._open) > self.max_open_volumes:
            self._open.popitem(last=False)
        return array

    def num_open(self) -> int:
        return len(self._open)

    def __getstate__(self) -> dict:
        # A spawned worker gets names only and opens its own maps.
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


# --------------------------------------------------------------------------- building
@dataclass
class PoolRequest:
    """Which images go into the pool. ``datasets`` are ids or names under the preprocessed
    root; ``extra_folders`` are preprocessed with the first dataset's plans; ``weights`` one
    per dataset, then one per extra folder (None: every volume equally likely)."""

    datasets: list[str]
    configuration: str = "3d_fullres"
    extra_folders: list[Path] = field(default_factory=list)
    include_test_images: bool = True
    weights: list[float] | None = None
    num_workers: int = 2
    progress: bool = True
    preprocess: bool = True  # False: use only what is cached (processes other than the first under DDP)


@dataclass
class PoolDataset:
    """A ``-d`` dataset resolved: its preprocessed folder, plans and dataset.json."""

    folder: Path
    plans: Plans
    dataset_json: DatasetJson

    @property
    def name(self) -> str:
        return self.folder.name


DEFAULT_CONFIGURATION = "3d_fullres"


def open_preprocessed_dataset(identifier: str, configuration: str | None) -> PoolDataset:
    """The preprocessed dataset, checked to have plans for ``configuration`` (None: any)."""
    hint = f"volfnet_plan_and_preprocess -d {identifier}"
    try:
        folder = find_dataset_folder(identifier, paths.preprocessed_root())
    except VolfnetError as exc:
        raise VolfnetError(f"dataset {identifier} is not preprocessed ({exc}); run `{hint}` first") from None
    plans_file = folder / "plans.json"
    if not plans_file.is_file():
        raise VolfnetError(f"{plans_file} does not exist: run `{hint}` first")
    plans = Plans.load(plans_file)
    if configuration is not None and configuration not in plans.configurations:
        raise VolfnetError(f"configuration {configuration!r} is not in {plans_file} (planned: {sorted(plans.configurations)})")
    dataset_file = folder / "dataset.json"
    if not dataset_file.is_file():
        raise VolfnetError(f"{dataset_file} does not exist: run `{hint}` again")
    return PoolDataset(folder, plans, DatasetJson.load(dataset_file))


def default_configuration(plans: Plans) -> str:
    """``3d_fullres``, or the single configuration of plans without it (a 2D dataset plans
    ``2d`` alone); an error listing them when the choice is not clear."""
    if DEFAULT_CONFIGURATION in plans.configurations:
        return DEFAULT_CONFIGURATION
    if len(plans.configurations) == 1:
        return next(iter(plans.configurations))
    raise VolfnetError(f"{plans.dataset_name} has no {DEFAULT_CONFIGURATION}; choose one of {sorted(plans.configurations)} with -c")


def default_configuration_of(identifier: str) -> str:
    """:func:`default_configuration` of a preprocessed dataset; 3d_fullres when it cannot be
    read yet (pretraining then names what is missing)."""
    try:
        return default_configuration(open_preprocessed_dataset(identifier, None).plans)
    except VolfnetError:
        return DEFAULT_CONFIGURATION


def pool_folder(dataset_folder: Path, configuration: str) -> Path:
    """Where a dataset's extra pretraining images are cached."""
    return Path(dataset_folder) / f"{configuration}{POOL_FOLDER_SUFFIX}"


def list_image_folder(folder: Path, dataset_json: DatasetJson) -> list[CaseFiles]:
    """The cases of an unlabelled image folder.

    nnU-Net naming (``{case}_{CCCC}{ending}``, the dataset's ending) groups channels into
    cases; otherwise, for single-channel datasets, every image file (any supported ending)
    is one case named after the file. A multi-channel dataset requires nnU-Net naming, and
    a case with missing or extra channels is an error naming the files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolfnetError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.name.endswith(SUPPORTED_ENDINGS)]
    ending = dataset_json.file_ending
    channels = dataset_json.num_channels
    if images and all(p.name.endswith(ending) and parse_channel_file(p.name[: -len(ending)]) for p in images):
        cases, problems = list_cases(folder, dataset_json.file_ending, channels)
        if problems:
            raise DataIntegrityError(
                problems, header=f"{folder}: images with a channel count the network cannot take ({channels} channel(s) per case)"
            )
        return cases
    if channels != 1:
        raise VolfnetError(
            f"{folder}: the dataset has {channels} channels per case ({dataset_json.channel_names}); name the files "
            f"{{case}}_{{CCCC}}{dataset_json.file_ending} (one file per channel, 0000 to {channels - 1:04d})"
        )
    cases = []
    for path in images:
        ending = next(e for e in SUPPORTED_ENDINGS if path.name.endswith(e))
        cases.append(CaseFiles(path.name[: -len(ending)], [path]))
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise VolfnetError(f"{folder}: several files share the case name(s) {duplicates}; keep one file per case")
    return cases


def _folder_for_source(parent: Path, name: str, source: Path) -> Path:
    """``parent/name``, or ``parent/name-N`` when ``name`` is already taken by another source."""
    candidate, index = parent / name, 1
    while (candidate / CONFIGURATION_STAMP).is_file():
        if recorded_source(candidate) == str(source):
            return candidate
        index += 1
        candidate = parent / f"{name}-{index}"
    return candidate


def preprocess_unlabelled(
    cases: list[CaseFiles],
    dataset: PoolDataset,
    configuration: str,
    output: Path,
    source: Path,
    num_workers: int,
    progress: bool,
    preprocess: bool = True,
) -> list[str]:
    """Preprocess unlabelled cases into ``output`` (skipping complete ones; all again when the
    plans changed since) and return the case ids. Without ``preprocess``, only the ids of the
    cases already cached."""
    if not preprocess:
        present = set(list_preprocessed_cases(output)) if output.is_dir() else set()
        return [c.case_id for c in cases if c.case_id in present]
    overwrite = renew_stamp(output, preprocessing_stamp(dataset.plans, configuration, source=str(source)))
    if overwrite:
        logger.info("%s: the plans changed since these images were preprocessed; preprocessing them again", output)
    unlabelled = [CaseFiles(c.case_id, list(c.images), None) for c in cases]
    summary = preprocess_cases(unlabelled, dataset.plans, configuration, output, [], num_workers, overwrite, progress)
    if summary.processed:
        logger.info("%s: preprocessed %d image(s) in %.1f s", output, summary.processed, summary.seconds)
    present = set(list_preprocessed_cases(output))
    return [c.case_id for c in cases if c.case_id in present]


def _test_cases(dataset: PoolDataset) -> tuple[list[CaseFiles], Path | None]:
    """The raw dataset's ``imagesTs`` cases; none (with a note) when the raw data is absent."""
    try:
        raw = RawDataset.open(dataset.name, paths.raw_root())
    except VolfnetError as exc:
        logger.info("%s: raw dataset not found (%s); its imagesTs (if any) are not in the pool", dataset.name, exc)
        return [], None
    cases, problems = raw.test_cases()
    if problems:
        raise DataIntegrityError(problems, header=f"{raw.folder / TEST_IMAGES}: cannot read the test images")
    return cases, raw.folder / TEST_IMAGES


def build_pool(request: PoolRequest) -> tuple[VolumePool, list[PoolDataset]]:
    """Resolve the datasets, preprocess what is not cached yet and return the pool (and the
    resolved datasets, first one first: its plans configure the pretraining)."""
    if not request.datasets:
        raise VolfnetError("give at least one dataset (-d ID) for the pretraining pool")
    datasets = [open_preprocessed_dataset(str(d), request.configuration) for d in request.datasets]
    names = [d.name for d in datasets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VolfnetError(f"dataset(s) {duplicates} given more than once")
    sources: list[PoolSource] = []
    groups: list[str] = []
    for dataset in datasets:
        group = len(groups)
        groups.append(dataset.name)
        plan = dataset.plans.configuration(request.configuration)
        channels = dataset.plans.num_input_channels
        cases_folder = dataset.folder / plan.data_identifier
        training = list_preprocessed_cases(cases_folder) if cases_folder.is_dir() else []
        if not training:
            logger.warning("%s: no preprocessed training cases in %s", dataset.name, cases_folder)
        sources.append(PoolSource(f"{dataset.name}/imagesTr", cases_folder, tuple(training), channels, group))
        if request.include_test_images:
            test_cases, test_folder = _test_cases(dataset)
            if test_cases and test_folder is not None:
                output = pool_folder(dataset.folder, request.configuration) / TEST_IMAGES
                ids = preprocess_unlabelled(
                    test_cases, dataset, request.configuration, output, test_folder.resolve(), request.num_workers,
                    request.progress, request.preprocess,
                )
                sources.append(PoolSource(f"{dataset.name}/{TEST_IMAGES}", output, tuple(ids), channels, group))
    first = datasets[0]
    for folder in request.extra_folders:
        folder = Path(folder).expanduser().resolve()
        cases = list_image_folder(folder, first.dataset_json)
        if not cases:
            raise VolfnetError(f"{folder}: no images found (supported endings: {', '.join(SUPPORTED_ENDINGS)})")
        output = _folder_for_source(pool_folder(first.folder, request.configuration), folder.name, folder)
        ids = preprocess_unlabelled(
            cases, first, request.configuration, output, folder, request.num_workers, request.progress, request.preprocess
        )
        groups.append(f"extra/{folder.name}")
        sources.append(PoolSource(f"extra/{output.name}", output, tuple(ids), first.plans.num_input_channels, len(groups) - 1))
    pool = VolumePool(sources, groups, request.weights)
    logger.info("%s", pool.describe())
    return pool, datasets
