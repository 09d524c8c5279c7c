"""Convert a Medical Segmentation Decathlon task (``TaskXX_Name``) to the raw layout.

MSD differs from the layout volfnet reads in three ways: multi-channel images are single
4D NIfTI files (volfnet wants one 3D file per channel, ``{case}_{CCCC}.nii.gz``), dataset.json
names channels ``modality`` and maps label *values* to names, and it lists files in
``training``/``test`` instead of relying on folder naming. The conversion fixes all three and
keeps every voxel and the 3D geometry unchanged.

The result is built in a hidden sibling folder and renamed into place only when complete,
so an interrupted conversion never leaves a ``DatasetXXX_Name`` that looks usable.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.io.dataset import DATASET_FOLDER_PATTERN, DatasetJson, channel_file_name
from volfnet.io.files import atomic_write_json, read_json
from volfnet.io.image_io import ImageGeometry, write_image
from volfnet.io.nifti_check import nifti_problems
from volfnet.parallel import parallel_map

logger = logging.getLogger(__name__)

TASK_FOLDER_PATTERN = re.compile(r"^Task(\d+)_(.+)$")
#: MSD ships gzipped NIfTI; plain NIfTI is accepted too and compressed on the way.
MSD_ENDINGS = (".nii.gz", ".nii")
OUTPUT_ENDING = ".nii.gz"
#: dataset.json entries carried over unchanged (descriptive only).
CARRIED_KEYS = ("name", "description", "reference", "licence", "release", "tensorImageSize")


@dataclass(frozen=True)
class _CaseJob:
    """One MSD case to convert; plain data so it can travel to a spawned worker."""

    case_id: str
    image: Path
    label: Path | None
    images_out: Path
    labels_out: Path
    num_channels: int


def _strip_ending(name: str) -> str | None:
    for ending in MSD_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return None


def _image_files(folder: Path) -> dict[str, Path]:
    """Case id → image file, skipping hidden files such as macOS ``._`` resource forks."""
    if not folder.is_dir():
        return {}
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        case_id = _strip_ending(path.name)
        if case_id is not None:
            files[case_id] = path
    return files


def msd_to_dataset_json(msd: dict, num_training: int, source: str) -> dict:
    """Rewrite an MSD dataset.json for volfnet: ``modality`` → ``channel_names``, labels
    inverted to name → value, ``file_ending`` set, file lists dropped (folders are scanned)."""
    modality = msd.get("modality")
    if not isinstance(modality, dict) or not modality:
        raise VolfnetError(f"{source}: MSD dataset.json needs a non-empty 'modality' mapping (channel index to name)")
    msd_labels = msd.get("labels")
    if not isinstance(msd_labels, dict) or not msd_labels:
        raise VolfnetError(f"{source}: MSD dataset.json needs a non-empty 'labels' mapping (value to name)")
    labels: dict[str, int] = {}
    for value, name in msd_labels.items():
        try:
            number = int(value)
        except (TypeError, ValueError) as exc:
            raise VolfnetError(f"{source}: label key {value!r} is not an integer") from exc
        if str(name) in labels:
            raise VolfnetError(f"{source}: label name {name!r} is used for values {labels[str(name)]} and {number}")
        labels[str(name)] = number
    result = {key: msd[key] for key in CARRIED_KEYS if key in msd}
    result.update(
        {
            "channel_names": {str(k): str(v) for k, v in modality.items()},
            "labels": dict(sorted(labels.items(), key=lambda item: item[1])),
            "numTraining": num_training,
            "file_ending": OUTPUT_ENDING,
        }
    )
    DatasetJson.from_dict(result, source)
    return result


def _copy_as_output(source: Path, target: Path) -> None:
    """Copy a 3D single-channel file; bytes are copied when the ending already matches."""
    if source.name.endswith(OUTPUT_ENDING):
        shutil.copyfile(source, target)
    else:
        sitk.WriteImage(sitk.ReadImage(str(source)), str(target), useCompression=True)


def _sub_direction(direction: tuple[float, ...], dimension: int) -> list[float]:
    """The spatial 3x3 block of an N-D row-major direction matrix."""
    return [float(direction[row * dimension + col]) for row in range(3) for col in range(3)]


def _split_channels(job: _CaseJob, reader: sitk.ImageFileReader, num_channels: int) -> None:
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)  # (Z, Y, X, C) → (C, Z, Y, X)
    dimension = image.GetDimension()
    geometry = ImageGeometry(
        spacing=[float(v) for v in reversed(image.GetSpacing()[:3])],
        origin=[float(v) for v in image.GetOrigin()[:3]],
        direction=_sub_direction(image.GetDirection(), dimension),
        shape=[int(v) for v in array.shape[1:]],
    )
    for channel in range(num_channels):
        write_image(np.ascontiguousarray(array[channel]), geometry, job.images_out / channel_file_name(job.case_id, channel, OUTPUT_ENDING))


def convert_case(job: _CaseJob) -> list[str]:
    """Convert one case into the output folders; return problems instead of raising so all
    cases can be reported together.

    Truncated NIfTI files and NaN/inf voxels are caught here from the bytes on disk, because
    ITK reads both silently (zero-filled) and the split channels would hide them for good.
    """
    problems = [p for path in (job.image, job.label) if path is not None for p in nifti_problems(path) if p]
    if problems:
        return problems
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(job.image))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return [f"{job.image}: cannot read image header (corrupt, truncated or unsupported format: {str(exc).strip().splitlines()[-1]})"]
    dimension, components = reader.GetDimension(), reader.GetNumberOfComponents()
    if dimension == 3 and components == 1:
        found = 1
    elif dimension == 4 and components == 1:
        found = int(reader.GetSize()[3])
    elif dimension == 3:
        found = components
    else:
        return [f"{job.image}: is {dimension}D with {components} component(s); expected a 3D or 4D image"]
    if found != job.num_channels:
        return [f"{job.image}: has {found} channel(s) but dataset.json 'modality' lists {job.num_channels}"]
    try:
        if dimension == 3 and components == 1:
            _copy_as_output(job.image, job.images_out / f"{job.case_id}_0000{OUTPUT_ENDING}")
        else:
            _split_channels(job, reader, found)
    except RuntimeError as exc:
        return [f"{job.image}: cannot read voxel data (file truncated or corrupt: {str(exc).strip().splitlines()[-1]})"]
    if job.label is not None:
        try:
            _copy_as_output(job.label, job.labels_out / f"{job.case_id}{OUTPUT_ENDING}")
        except RuntimeError as exc:
            return [f"{job.label}: cannot read label ({str(exc).strip().splitlines()[-1]})"]
    return []


def _target_id_and_name(msd_folder: Path, dataset_id: int | None) -> tuple[int, str]:
    match = TASK_FOLDER_PATTERN.match(msd_folder.name)
    name = match.group(2) if match else msd_folder.name
    if dataset_id is None:
        if not match:
            raise VolfnetError(
                f"{msd_folder}: cannot take a dataset id from the folder name (expected TaskXX_Name); give one with -d"
            )
        dataset_id = int(match.group(1))
    if not 1 <= dataset_id <= 999:
        raise VolfnetError(f"dataset id must be between 1 and 999, got {dataset_id}")
    return dataset_id, name


def _check_target(target: Path, dataset_id: int, overwrite: bool) -> None:
    root = target.parent
    if root.is_dir():
        for other in sorted(root.iterdir()):
            match = DATASET_FOLDER_PATTERN.match(other.name)
            if match and int(match.group(1)) == dataset_id and other.name != target.name:
                raise VolfnetError(
                    f"dataset id {dataset_id} is already used by {other}; choose another id with -d"
                )
    if target.exists() and not overwrite:
        raise VolfnetError(f"{target} already exists; pass --overwrite (overwrite=True) to replace it")


def _collect_jobs(msd_folder: Path, build: Path, num_channels: int, case_limit: int | None) -> tuple[list[_CaseJob], list[str]]:
    problems = []
    training = _image_files(msd_folder / "imagesTr")
    labels = _image_files(msd_folder / "labelsTr")
    test = _image_files(msd_folder / "imagesTs")
    if not training:
        problems.append(f"no training images (*.nii.gz) found in {msd_folder / 'imagesTr'}")
    for case_id in sorted(set(training) - set(labels)):
        problems.append(f"{training[case_id]}: no label {case_id}.nii.gz in {msd_folder / 'labelsTr'}")
    for case_id in sorted(set(labels) - set(training)):
        logger.warning("%s: label has no image in %s; skipped", labels[case_id], msd_folder / "imagesTr")
    if case_limit is not None:
        training = dict(sorted(training.items())[:case_limit])
        test = dict(sorted(test.items())[:case_limit])
    jobs = [
        _CaseJob(cid, path, labels.get(cid), build / "imagesTr", build / "labelsTr", num_channels)
        for cid, path in sorted(training.items())
    ]
    jobs += [_CaseJob(cid, path, None, build / "imagesTs", build / "labelsTr", num_channels) for cid, path in sorted(test.items())]
    return jobs, problems


def convert_msd_dataset(
    msd_folder: Path,
    output_root: Path,
    dataset_id: int | None = None,
    num_workers: int = 1,
    overwrite: bool = False,
    case_limit: int | None = None,
) -> Path:
    """Convert ``msd_folder`` (``TaskXX_Name``) into ``output_root/DatasetXXX_Name`` and return it.

    The dataset id defaults to the task number. An existing target is replaced only with
    ``overwrite``. Every problem found (missing labels, wrong channel counts, unreadable
    files) is reported at once in a :class:`DataIntegrityError`, and then nothing is written.
    ``case_limit`` converts only the first N training (and test) cases, for quick trials.
    """
    msd_folder, output_root = Path(msd_folder), Path(output_root)
    if not msd_folder.is_dir():
        raise VolfnetError(f"{msd_folder}: MSD task folder not found")
    dataset_id, name = _target_id_and_name(msd_folder, dataset_id)
    target = output_root / f"Dataset{dataset_id:03d}_{name}"
    _check_target(target, dataset_id, overwrite)
    source_json = msd_folder / "dataset.json"
    msd = read_json(source_json)
    if not isinstance(msd, dict):
        raise VolfnetError(f"{source_json}: expected a JSON object")
    num_channels = len(msd_to_dataset_json(msd, 0, str(source_json))["channel_names"])

    output_root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=output_root))
    try:
        jobs, problems = _collect_jobs(msd_folder, build, num_channels, case_limit)
        if problems:
            raise DataIntegrityError(problems, header=f"{msd_folder}: cannot convert MSD task")
        for folder in {job.images_out for job in jobs} | {build / "labelsTr"}:
            folder.mkdir(parents=True, exist_ok=True)
        logger.info("converting %s (%d case(s), %d channel(s)) into %s", msd_folder, len(jobs), num_channels, target)
        results = parallel_map(convert_case, jobs, num_workers, desc="converting MSD cases")
        problems = [problem for case_problems in results for problem in case_problems]
        if problems:
            raise DataIntegrityError(problems, header=f"{msd_folder}: MSD conversion failed")
        num_training = sum(1 for job in jobs if job.label is not None)
        atomic_write_json(build / "dataset.json", msd_to_dataset_json(msd, num_training, str(source_json)))
        _move_into_place(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    logger.info("wrote %s", target)
    return target


def _move_into_place(build: Path, target: Path) -> None:
    """Rename the finished folder onto ``target``; an old target is moved aside first and
    deleted only after the new one is in place."""
    if not target.exists():
        build.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(old)
    build.rename(target)
    shutil.rmtree(old, ignore_errors=True)
