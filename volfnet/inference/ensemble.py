"""Ensemble several prediction folders by averaging their saved probabilities.

``volfnet_predict --save-probabilities`` writes ``<case>.npz`` (the probabilities in the
original geometry, see :mod:`volfnet.inference.export`) beside each ``<case><ending>`` label
map. Predicting the same images with several models (configurations, networks, pretrained
and from scratch) and averaging those probabilities gives a prediction that is usually
better than any one of them; this is how nnU-Net ensembles its configurations.

For every case this module

1. checks, before anything is written, that every folder holds the same cases and that their
   probability arrays have one shape (read from the ``.npz`` headers only);
2. adds the folders' probabilities one at a time into one float32 sum and divides (one case,
   two class-by-volume arrays in memory per worker);
3. turns the mean into a label map the way export does: the argmax over classes, or, for a
   region dataset, every region whose mean sigmoid is above 0.5 written with its
   ``regions_class_order`` value, in that order;
4. writes it with the geometry of the first folder's label map of that case (the predictor
   wrote it in the original geometry, so no resampling is needed), and with
   ``save_probabilities`` the mean probabilities as ``<case>.npz`` beside it.

The ``.npz`` files do not say whether their channels are softmax classes or sigmoid regions.
Classes are assumed unless a ``dataset.json`` with regions is given; a case whose mean
probabilities do not sum to 1 is then refused, so region outputs are never argmax-ed by
mistake.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from volfnet.errors import VolfnetError
from volfnet.inference.export import (
    PROBABILITIES_ENDING,
    PROBABILITIES_KEY,
    ExportedPrediction,
    regions_to_labels,
    slabs,
    label_dtype,
    load_probabilities,
    write_prediction,
)
from volfnet.inference.inputs import output_ending
from volfnet.io.dataset import DatasetJson
from volfnet.io.image_io import SUPPORTED_ENDINGS, file_ending, read_geometry
from volfnet.parallel import parallel_map, starmap_function

__all__ = ["EnsembleCase", "REGION_THRESHOLD", "SUM_TOLERANCE", "ensemble_case", "ensemble_folders", "find_ensemble_cases", "probabilities_header"]

logger = logging.getLogger(__name__)

REGION_THRESHOLD = 0.5  # a region is present where its mean sigmoid is above this (export's rule)
# Softmax probabilities sum to 1; stored as float16 (14 classes, 2**-11 rounding each) they
# still sum to 1 within 0.01. Region sigmoids sum to anything, and are 0 outside the crop.
SUM_TOLERANCE = 0.02
MAX_NAMES_IN_MESSAGE = 10


@dataclass
class EnsembleCase:
    """One case to ensemble: its ``<case>.npz`` in every input folder, the first folder's label
    map (whose geometry and ending the output takes) and the output label map."""

    case_id: str
    probability_files: list[Path]
    reference_label_map: Path
    output_file: Path


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    more = len(names) - MAX_NAMES_IN_MESSAGE
    return shown + (f" and {more} more" if more > 0 else "")


def probabilities_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``probabilities`` array in a ``<case>.npz``, from its header only
    (the data is not decompressed). A file that is not such an archive is a :class:`VolfnetError`."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{PROBABILITIES_KEY}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(member)
    except KeyError:
        raise VolfnetError(f"{path}: has no '{PROBABILITIES_KEY}' array; expected a <case>.npz written by volfnet_predict --save-probabilities") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise VolfnetError(f"{path}: not a readable probabilities archive (truncated or corrupt: {exc})") from exc
    if dtype.hasobject or not np.issubdtype(dtype, np.floating):
        raise VolfnetError(f"{path}: probabilities must be floating point, the archive holds {dtype}")
    if len(shape) != 4:
        raise VolfnetError(f"{path}: probabilities must have shape (classes, Z, Y, X), got {list(shape)}")
    return tuple(int(v) for v in shape), dtype


def _probability_files(folder: Path) -> dict[str, Path]:
    return {
        p.name[: -len(PROBABILITIES_ENDING)]: p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(PROBABILITIES_ENDING)
    }


def _label_map(folder: Path, case_id: str) -> Path | str:
    """The label map ``<case><ending>`` in ``folder``, or why there is not exactly one."""
    found = [folder / f"{case_id}{ending}" for ending in SUPPORTED_ENDINGS if (folder / f"{case_id}{ending}").is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        return f"no label map {case_id}<ending> (one of {', '.join(SUPPORTED_ENDINGS)})"
    return f"several label maps for {case_id}: {', '.join(p.name for p in found)}"


def find_ensemble_cases(input_folders: Sequence[Path], output_folder: Path) -> list[EnsembleCase]:
    """The cases to ensemble, checked before anything is written: at least two distinct
    folders, each with the same ``<case>.npz`` files, arrays of one shape per case, and a
    label map of every case in the first folder (it gives the geometry)."""
    folders = [Path(f) for f in input_folders]
    if len(folders) < 2:
        raise VolfnetError(f"an ensemble needs at least two prediction folders, got {len(folders)}")
    resolved = [f.resolve() for f in folders]
    if len(set(resolved)) != len(resolved):
        raise VolfnetError(f"the same prediction folder is given twice: {[str(f) for f in folders]}")
    if Path(output_folder).resolve() in resolved:
        raise VolfnetError(f"{output_folder}: the output folder must not be one of the input folders")
    listings = []
    for folder in folders:
        if not folder.is_dir():
            raise VolfnetError(f"{folder}: prediction folder not found")
        files = _probability_files(folder)
        if not files:
            raise VolfnetError(f"{folder}: no <case>{PROBABILITIES_ENDING} probabilities; predict with volfnet_predict --save-probabilities")
        listings.append(files)
    cases = sorted(listings[0])
    problems = []
    for folder, files in zip(folders[1:], listings[1:]):
        missing, extra = sorted(set(cases) - set(files)), sorted(set(files) - set(cases))
        if missing:
            problems.append(f"{folder}: no probabilities for {len(missing)} case(s) that {folders[0]} has: {_names(missing)}")
        if extra:
            problems.append(f"{folder}: {len(extra)} case(s) that {folders[0]} does not have: {_names(extra)}")
    if problems:
        raise VolfnetError("the prediction folders hold different cases:\n  " + "\n  ".join(problems))
    result = []
    for case_id in cases:
        case_files = [listing[case_id] for listing in listings]
        shapes = [probabilities_header(path)[0] for path in case_files]
        if len(set(shapes)) > 1:
            listed = ", ".join(f"{path} {list(shape)}" for path, shape in zip(case_files, shapes))
            problems.append(f"case {case_id}: probabilities of different shapes ({listed})")
            continue
        reference = _label_map(folders[0], case_id)
        if isinstance(reference, str):
            problems.append(f"{folders[0]}: {reference}; the ensemble takes each case's geometry from it")
            continue
        output = Path(output_folder) / f"{case_id}{output_ending(file_ending(reference))}"
        result.append(EnsembleCase(case_id, case_files, reference, output))
    if problems:
        raise VolfnetError(f"cannot ensemble ({len(problems)} problem(s)):\n  " + "\n  ".join(problems[:MAX_NAMES_IN_MESSAGE]))
    return result


def _load(path: Path) -> np.ndarray:
    try:
        return load_probabilities(path)
    except (zipfile.BadZipFile, zlib.error, KeyError, ValueError, OSError, EOFError) as exc:
        raise VolfnetError(f"{path}: cannot read the probabilities (truncated or corrupt: {exc})") from exc


def _mean_probabilities(files: Sequence[Path]) -> np.ndarray:
    """The mean of the files' probabilities as float32, holding one file's array besides the sum."""
    total: np.ndarray | None = None
    for path in files:
        probabilities = _load(path)
        if total is None:
            total = probabilities.astype(np.float32, copy=False)
            if not total.flags.writeable:
                total = total.copy()
        elif probabilities.shape != total.shape:
            raise VolfnetError(f"{path}: probabilities of shape {list(probabilities.shape)}, but {files[0]} has {list(total.shape)}")
        else:
            total += probabilities
        del probabilities
    assert total is not None
    total /= len(files)
    return total


def _class_labels(mean: np.ndarray, source: Path) -> np.ndarray:
    """Argmax over the classes, slab by slab; the probabilities must sum to 1 (softmax)."""
    labels = np.empty(mean.shape[1:], dtype=label_dtype(int(mean.shape[0])))
    worst = 0.0
    for slab in slabs(mean.shape[1:]):
        part = mean[:, slab]
        worst = max(worst, float(np.abs(part.sum(axis=0) - 1.0).max(initial=0.0)))
        labels[slab] = part.argmax(axis=0)
    if worst > SUM_TOLERANCE:
        raise VolfnetError(
            f"{source}: the probabilities do not sum to 1 over the classes (off by up to {worst:.3g}), so they are not "
            "softmax class probabilities; for a region dataset give its dataset.json with --dataset-json"
        )
    return labels


def ensemble_case(case: EnsembleCase, num_outputs: int | None = None, regions_class_order: list[int] | None = None, save_probabilities: bool = False) -> Path:
    """Average one case's probabilities, write its label map (and mean probabilities); returns
    the label map's path. ``num_outputs``, when given, is the number of channels expected."""
    geometry = read_geometry(case.reference_label_map)
    mean = _mean_probabilities(case.probability_files)
    if num_outputs is not None and mean.shape[0] != num_outputs:
        kind = "regions" if regions_class_order is not None else "classes"
        raise VolfnetError(f"{case.probability_files[0]}: {mean.shape[0]} probability channels, but the dataset.json has {num_outputs} {kind}")
    if list(mean.shape[1:]) != list(geometry.shape):
        raise VolfnetError(
            f"{case.probability_files[0]}: probabilities of spatial shape {list(mean.shape[1:])} do not match the label map "
            f"{case.reference_label_map} {geometry.shape}"
        )
    if regions_class_order is not None:
        segmentation = regions_to_labels(torch.from_numpy(mean), regions_class_order, REGION_THRESHOLD)
    else:
        segmentation = _class_labels(mean, case.probability_files[0])
    prediction = ExportedPrediction(segmentation, mean if save_probabilities else None)
    return write_prediction(prediction, geometry, case.output_file)


@dataclass
class EnsembleSummary:
    """What :func:`ensemble_folders` wrote."""

    output_folder: Path
    written: list[Path]


def ensemble_folders(
    input_folders: Sequence[Path],
    output_folder: Path,
    num_workers: int = 1,
    save_probabilities: bool = False,
    dataset_json: DatasetJson | None = None,
    progress: bool = True,
) -> EnsembleSummary:
    """Average the probabilities of every case in ``input_folders`` and write the label maps
    (and, with ``save_probabilities``, ``<case>.npz``) to ``output_folder``.

    ``dataset_json`` says whether the channels are classes or sigmoid regions (and how many
    there are); without it they must be softmax classes. ``num_workers`` cases are processed
    at once (each in its own process when above 1); memory is about two class-by-volume
    float32 arrays per worker. Every case's problem is reported together at the end.
    """
    cases = find_ensemble_cases(input_folders, output_folder)
    regions = dataset_json.regions_class_order if dataset_json is not None and dataset_json.has_regions else None
    num_outputs = dataset_json.num_classes if dataset_json is not None else None
    os.makedirs(output_folder, exist_ok=True)
    logger.info("ensembling %d case(s) from %d folders into %s", len(cases), len(input_folders), output_folder)
    tasks = [(case, num_outputs, regions, save_probabilities) for case in cases]
    written = parallel_map(starmap_function(ensemble_case), tasks, num_workers, desc="ensemble", collect_user_errors=True, progress=progress)
    return EnsembleSummary(Path(output_folder), written)
