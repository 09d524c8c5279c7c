"""Finding, reading and preprocessing the images a user asks to predict.

An input folder holds either the raw layout ``{case}_{CCCC}{ending}`` (one file per channel,
as in ``imagesTs``; an RGB picture holds three) or, for single-channel models and for
pictures, freely named files, one case each. Every
problem (bad names, missing or extra channels) is found before any prediction starts and
reported at once, each naming its file.

This module imports no torch at the top, so the preprocessing worker processes that run
:func:`load_input_case` start quickly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from volfnet.data.previous_stage import load_previous_stage
from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.io.dataset import channel_file_name, channel_problems, parse_channel_file
from volfnet.io.image_io import (
    PICTURE_ENDINGS,
    SIDECAR_ENDING,
    SUPPORTED_ENDINGS,
    TIFF_ENDINGS,
    ImageGeometry,
    file_ending,
    is_picture,
    read_case,
    read_segmentation,
)
from volfnet.plans import Plans
from volfnet.io.case_store import CaseProperties, load_case
from volfnet.preprocessing.preprocessor import preprocess_array

logger = logging.getLogger(__name__)

FIRST_CHANNEL = "0000"  # a file with this suffix marks a folder in the raw, one-file-per-channel layout
MAX_LISTED_IGNORED = 5  # non-image files named in the warning before "and N more"
# Header + data-file formats are written as their one-file twins: an atomic rename can move
# only one file, and the header would keep naming a temporary data file.
SINGLE_FILE_ENDING = {".mhd": ".mha", ".nhdr": ".nrrd"}


def output_ending(input_ending: str) -> str:
    """The ending of a prediction for an input with ``input_ending`` (the same format)."""
    return SINGLE_FILE_ENDING.get(input_ending, input_ending)


@dataclass
class InputCase:
    """One case to predict: its channel files in channel order, and the ending of its output."""

    case_id: str
    images: list[Path]
    output_ending: str

    def output_file(self, output_folder: Path) -> Path:
        return Path(output_folder) / f"{self.case_id}{self.output_ending}"


@dataclass
class PreparedCase:
    """A preprocessed case, ready for the network: (C, Z, Y, X) float32 data and properties.

    For a cascade it carries what the previous stage contributes: ``previous_stage``, its
    (Z, Y, X) label map on this grid (given predictions, or the cache's), or
    ``previous_stage_case``, the same scan preprocessed for the previous stage, which the
    predictor runs that stage on.
    """

    case_id: str
    data: np.ndarray
    properties: CaseProperties
    source_files: list[Path] = field(default_factory=list)
    previous_stage: np.ndarray | None = None
    previous_stage_case: PreparedCase | None = None


def _name_without_ending(path: Path) -> str:
    ending = file_ending(path)
    return path.name[: -len(ending)]


def _image_files(folder: Path) -> list[Path]:
    """Image files (supported endings, not hidden) in ``folder``; others are logged and ignored,
    except the spacing sidecars of TIFF stacks (``{case}.json``), which belong there."""
    files: list[Path] = []
    ignored: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        (files if file_ending(path) in SUPPORTED_ENDINGS else ignored).append(path)
    if any(file_ending(p) in TIFF_ENDINGS for p in files):
        ignored = [p for p in ignored if p.suffix.lower() != SIDECAR_ENDING]
    if ignored:
        names = [p.name for p in ignored[:MAX_LISTED_IGNORED]]
        more = f" and {len(ignored) - MAX_LISTED_IGNORED} more" if len(ignored) > MAX_LISTED_IGNORED else ""
        logger.warning("%s: ignoring %d file(s) that are not images (%s%s)", folder, len(ignored), ", ".join(names), more)
    return files


def _expected_names(num_channels: int) -> str:
    return ", ".join(f"{{case}}_{c:04d}<ending>" for c in range(num_channels))


def _freely_named_cases(folder: Path, files: list[Path], num_channels: int) -> tuple[list[InputCase], list[str]]:
    """One case per file: single-channel models, or pictures (an RGB file holds every channel
    of an RGB model; the count is checked when the file is read)."""
    if num_channels > 1 and not all(is_picture(p) for p in files):
        return [], [
            f"{path}: name does not follow {{case}}_{{CCCC}}<ending>; the model takes {num_channels} channels, "
            f"one file each ({_expected_names(num_channels)})"
            for path in files
            if not is_picture(path)
        ]
    cases: list[InputCase] = []
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for path in files:
        case_id = _name_without_ending(path)
        if case_id in seen:
            problems.append(f"{path}: same case name {case_id!r} as {seen[case_id]}")
            continue
        seen[case_id] = path
        cases.append(InputCase(case_id, [path], output_ending(file_ending(path))))
    return cases, problems


def _raw_layout_cases(folder: Path, files: list[Path], num_channels: int) -> tuple[list[InputCase], list[str]]:
    problems: list[str] = []
    channels: dict[str, dict[int, Path]] = {}
    for path in files:
        parsed = parse_channel_file(_name_without_ending(path))
        if parsed is None:
            problems.append(f"{path}: name does not follow {{case}}_{{CCCC}}<ending> like the other files in {folder}")
            continue
        channels.setdefault(parsed[0], {})[parsed[1]] = path
    cases = []
    for case_id, found in sorted(channels.items()):
        endings = {file_ending(p) for p in found.values()}
        if len(endings) == 1 and next(iter(endings)) in PICTURE_ENDINGS:
            picture_problems = channel_problems(folder, case_id, set(found), num_channels, next(iter(endings)))
            problems.extend(picture_problems)
            if not picture_problems:
                images = [found[c] for c in sorted(found)]
                cases.append(InputCase(case_id, images, output_ending(file_ending(images[0]))))
            continue
        expected = set(range(num_channels))
        missing = sorted(expected - set(found))
        extra = sorted(set(found) - expected)
        if extra:
            problems.append(
                f"{folder / case_id}: has channel files {[f'{c:04d}' for c in sorted(found)]} but the model expects "
                f"{num_channels} channel(s) ({_expected_names(num_channels)})"
            )
        elif missing:
            names = [channel_file_name(case_id, c, file_ending(next(iter(found.values())))) for c in missing]
            problems.append(f"{folder / case_id}: missing channel file(s) {names}")
        elif len(endings) > 1:
            problems.append(f"{folder / case_id}: channel files use different endings {sorted(endings)}")
        else:
            images = [found[c] for c in range(num_channels)]
            cases.append(InputCase(case_id, images, output_ending(file_ending(images[0]))))
    return cases, problems


def find_input_cases(folder: Path, num_channels: int) -> list[InputCase]:
    """The cases in an input folder, sorted by case id.

    Raw layout when any file is named ``*_0000<ending>``: then every file must follow
    ``{case}_{CCCC}<ending>`` and every case must have exactly channels 0..num_channels-1.
    Otherwise (single-channel models only) each image file is one case named after the file.
    All problems are raised together as one :class:`~volfnet.errors.DataIntegrityError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolfnetError(f"{folder}: input folder not found")
    files = _image_files(folder)
    if not files:
        raise VolfnetError(
            f"{folder}: no images to predict (expected files named {{case}}_0000<ending>, ending one of {list(SUPPORTED_ENDINGS)})"
        )
    raw_layout = any(_name_without_ending(p).endswith(f"_{FIRST_CHANNEL}") for p in files)
    cases, problems = (_raw_layout_cases if raw_layout else _freely_named_cases)(folder, files, num_channels)
    if problems:
        raise DataIntegrityError(problems, header=f"{folder}: cannot predict these input images")
    return cases


def single_file_case(path: Path, num_channels: int) -> InputCase:
    """An input given as one file: the case is named after it (without ``_0000``)."""
    path = Path(path)
    if not path.is_file():
        raise VolfnetError(f"{path}: input file not found")
    if file_ending(path) not in SUPPORTED_ENDINGS:
        raise VolfnetError(f"{path}: not an image file (endings: {list(SUPPORTED_ENDINGS)})")
    if num_channels > 1 and not is_picture(path):
        raise VolfnetError(
            f"{path}: the model takes {num_channels} channels, one file each; put {_expected_names(num_channels)} "
            "into a folder and pass the folder"
        )
    name = _name_without_ending(path)
    parsed = parse_channel_file(name)
    case_id = parsed[0] if parsed is not None and parsed[1] == 0 else name
    return InputCase(case_id, [path], output_ending(file_ending(path)))


def read_input_images(images: list[Path], num_channels: int | None = None) -> tuple[np.ndarray, ImageGeometry]:
    """Read a case's channels as float32 (C, Z, Y, X), ``num_channels`` of them when given (an
    RGB picture holds three); NaN or infinity is an error naming the file."""
    image, geometry = read_case(images, num_channels)
    one_file_per_channel = len(images) == image.shape[0]
    for index, channel in enumerate(image):
        bad = int(np.count_nonzero(~np.isfinite(channel)))
        if bad:
            path = images[index] if one_file_per_channel else images[0]
            raise VolfnetError(f"{path}: image contains {bad} NaN or infinite voxel(s); replace them before predicting")
    return image, geometry


def load_input_case(
    case: InputCase,
    plans: Plans,
    configuration_name: str,
    previous_stage_folder: Path | None = None,
    previous_stage_configuration: str | None = None,
) -> PreparedCase:
    """Read and preprocess one input case, exactly as training cases were (runs in workers).

    A cascade needs the previous stage: its prediction ``previous_stage_folder/<case><ending>``
    in the scan's geometry (cropped and resampled like a label map), or, with
    ``previous_stage_configuration``, the scan preprocessed for that stage too."""
    image, geometry = read_input_images(case.images, plans.num_input_channels)
    previous_labels = None
    if previous_stage_folder is not None:
        previous_labels = read_previous_stage_prediction(Path(previous_stage_folder), case, geometry)
    return prepare_case(image, geometry, plans, configuration_name, case.case_id, list(case.images), previous_labels, previous_stage_configuration)


def prepare_case(
    image: np.ndarray,
    geometry: ImageGeometry,
    plans: Plans,
    configuration_name: str,
    case_id: str,
    source_files: list[Path] | None = None,
    previous_labels: np.ndarray | None = None,
    previous_stage_configuration: str | None = None,
) -> PreparedCase:
    """Preprocess a case read into memory. A cascade's previous stage comes as ``previous_labels``
    (1, Z, Y, X) in the scan's geometry (cropped and resampled like a label map), or, with
    ``previous_stage_configuration``, as the scan preprocessed for that stage too."""
    sources = [str(p) for p in source_files or []]
    data, seg, properties = preprocess_array(image, geometry, previous_labels, plans, configuration_name, case_id, source_files=sources)
    prepared = PreparedCase(case_id, data, properties, list(source_files or []))
    if previous_labels is not None:
        prepared.previous_stage = np.maximum(seg[0], 0)  # -1 (outside the nonzero crop) is background
    elif previous_stage_configuration is not None:
        low, _, low_properties = preprocess_array(image, geometry, None, plans, previous_stage_configuration, case_id, source_files=sources)
        prepared.previous_stage_case = PreparedCase(case_id, low, low_properties, list(source_files or []))
    return prepared


def read_previous_stage_prediction(folder: Path, case: InputCase, geometry: ImageGeometry) -> np.ndarray:
    """The previous stage's prediction of ``case`` as (1, Z, Y, X) labels, checked to lie on the
    scan's grid."""
    path = folder / f"{case.case_id}{case.output_ending}"
    if not path.is_file():
        found = sorted(p.name for p in folder.glob(f"{case.case_id}.*")) if folder.is_dir() else []
        raise VolfnetError(
            f"{path}: previous-stage prediction of case {case.case_id} not found"
            + (f" (found {found})" if found else "")
            + "; predict the previous stage (3d_lowres) into that folder first, or leave out --prev-stage to run it here"
        )
    labels, label_geometry = read_segmentation(path)
    mismatch = geometry.matches(label_geometry)
    if mismatch:
        raise VolfnetError(f"{path}: previous-stage prediction does not lie on the grid of {case.images[0]} ({mismatch})")
    return labels[None] if labels.ndim == 3 else labels


def load_cached_case(case_id: str, preprocessed_folder: Path, previous_stage_folder: Path | None = None) -> PreparedCase:
    """A case from the preprocessing cache, read into memory (the network reads all of it);
    with its previous-stage label map from ``previous_stage_folder`` in a cascade."""
    data, _, properties = load_case(Path(preprocessed_folder), case_id, mmap=False, with_seg=False)
    prepared = PreparedCase(case_id, data, properties)
    if previous_stage_folder is not None:
        prepared.previous_stage = load_previous_stage(Path(previous_stage_folder), case_id, data.shape[1:], mmap=False)[0]
    return prepared
