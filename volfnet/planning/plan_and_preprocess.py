"""The ``volfnet_plan_and_preprocess`` pipeline as a library call: integrity check →
fingerprint → plans → npy caches, each stage writing an inspectable artifact.

Layout written under ``VOLFNET_preprocessed/<DatasetXXX_Name>/``: ``dataset.json``,
``fingerprint.json``, ``plans.json`` and one folder per configuration holding the cases.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from volfnet import paths
from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.io.dataset import RawDataset
from volfnet.io.files import atomic_write_json, read_cache_json
from volfnet.io.integrity import check_dataset_integrity
from volfnet.plans import Plans, apply_override
from volfnet.planning.fingerprint import Fingerprint, assemble_fingerprint, extract_fingerprint, fingerprint_arrays, samples_per_case
from volfnet.planning.planner import Planner, PlannerOptions
from volfnet.parallel import select_part
from volfnet.preprocessing.preprocessor import PreprocessSummary, preprocess_cases
from volfnet.preprocessing.cache_stamp import preprocessing_stamp, renew_stamp

logger = logging.getLogger(__name__)



@dataclass
class PlanAndPreprocessRequest:
    dataset: str
    options: PlannerOptions = field(default_factory=PlannerOptions)
    configurations: list[str] | None = None  # None: every planned configuration
    overrides: list[str] = field(default_factory=list)
    num_workers: int = 2
    verify_integrity: bool = True
    clean: bool = False
    plan_only: bool = False
    preprocess_only: bool = False
    part: int = 0
    num_parts: int = 1
    progress: bool = True
    pretrained: Path | None = None  # plan to fit this checkpoint's network (see planning/fit_checkpoint.py)


@dataclass
class PlanAndPreprocessResult:
    output_folder: Path
    plans: Plans
    summaries: list[PreprocessSummary]
    seconds: float


def dataset_output_folder(raw: RawDataset) -> Path:
    return paths.preprocessed_root() / raw.name


def plan_dataset(raw: RawDataset, request: PlanAndPreprocessRequest, output: Path, checked: dict | None = None) -> Plans:
    """Fingerprint (reused unless ``clean``) and plan; save ``plans.json``. ``checked`` holds
    per-case fingerprints computed during the integrity check, so files are not read twice."""
    cases, problems = raw.training_cases()
    if problems:
        raise DataIntegrityError(problems, header=f"{raw.folder}: cannot read the dataset layout")
    fingerprint_path = output / "fingerprint.json"
    fingerprint = None if request.clean else Fingerprint.load_cached(fingerprint_path)
    if fingerprint is not None and sorted(fingerprint.case_ids) != sorted(c.case_id for c in cases):
        logger.info("the training cases changed since %s was written; fingerprinting again", fingerprint_path)
        fingerprint = None
    if fingerprint is None:
        if checked and all(c.case_id in checked for c in cases):
            fingerprint = assemble_fingerprint([checked[c.case_id] for c in cases], raw.dataset_json.channel_names)
        else:
            fingerprint = extract_fingerprint(
                cases, raw.dataset_json.channel_names, request.num_workers, request.progress, raw.dataset_json.ignore_label
            )
        fingerprint.save(fingerprint_path)
    options, fit = request.options, None
    if request.pretrained is not None:
        from volfnet.planning import fit_checkpoint  # imports torch: only when a checkpoint is given

        fit = fit_checkpoint.read_checkpoint_fit(Path(request.pretrained))
        options = fit_checkpoint.planner_options_for(fit, options, raw.dataset_json)
    plans = Planner(fingerprint, raw.dataset_json, raw.name, options).plan()
    if fit is not None:
        plans = fit_checkpoint.finish_plans(plans, fit, raw.dataset_json, output)
    for assignment in request.overrides:
        plans = apply_override(plans, assignment)
    plans_path = output / "plans.json"
    previous = read_cache_json(plans_path)
    if previous is not None:
        if previous != plans.to_dict():
            backup = output / "plans.previous.json"
            shutil.copyfile(plans_path, backup)
            logger.info("plans changed; the previous plans are kept in %s", backup)
    plans.save(plans_path)
    return plans


def preprocess_dataset(raw: RawDataset, plans: Plans, request: PlanAndPreprocessRequest, output: Path) -> list[PreprocessSummary]:
    cases, _ = raw.training_cases()
    cases = select_part(cases, request.part, request.num_parts)
    names = request.configurations or list(plans.configurations)
    summaries = []
    done: set[str] = set()
    for name in names:
        identifier = plans.configuration(name).data_identifier
        if identifier in done:  # the cascade shares 3d_fullres's cases
            continue
        done.add(identifier)
        folder = output / identifier
        overwrite = request.clean
        if renew_stamp(folder, preprocessing_stamp(plans, name)):
            logger.info("%s: the plans changed since the cache was made; preprocessing every case again", name)
            overwrite = True
        summaries.append(
            preprocess_cases(
                cases, plans, name, folder, raw.dataset_json.foreground_labels, request.num_workers, overwrite, request.progress
            )
        )
    return summaries


def plan_and_preprocess(request: PlanAndPreprocessRequest) -> PlanAndPreprocessResult:
    """Run the whole stage for one dataset and return what was written."""
    start = time.perf_counter()
    raw = RawDataset.open(request.dataset, paths.raw_root())
    checked = None
    if request.verify_integrity and not request.preprocess_only:
        analyse = None
        if request.clean or not (dataset_output_folder(raw) / "fingerprint.json").is_file():
            cases, _ = raw.training_cases()
            analyse = functools.partial(
                fingerprint_arrays, num_samples=samples_per_case(len(cases)), ignore_label=raw.dataset_json.ignore_label
            )
        checked = check_dataset_integrity(raw, num_workers=request.num_workers, analyse_training=analyse).case_analyses
    output = paths.ensure_writable_dir(dataset_output_folder(raw), "preprocessed")
    atomic_write_json(output / "dataset.json", raw.dataset_json.raw)
    if request.preprocess_only:
        plans_path = output / "plans.json"
        if not plans_path.is_file():
            raise VolfnetError(f"{plans_path}: no plans yet; run without --preprocess-only first")
        plans = Plans.load(plans_path)
        for assignment in request.overrides:
            plans = apply_override(plans, assignment)
        if request.overrides:
            plans.save(plans_path)
    else:
        plans = plan_dataset(raw, request, output, checked)
    summaries = [] if request.plan_only else preprocess_dataset(raw, plans, request, output)
    return PlanAndPreprocessResult(output, plans, summaries, time.perf_counter() - start)
