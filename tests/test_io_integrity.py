"""The integrity check: a clean dataset passes with a report; every kind of bad input is named
with its file and reason, all problems at once, and nothing is written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from helpers.images import write_volume
from helpers.raw_data import make_raw_dataset

from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.io.dataset import RawDataset
from volfnet.io.integrity import check_dataset_integrity, integer_values
from volfnet.io.nifti_check import nifti_problems

SHAPE = (8, 10, 12)


def _dataset(root, **kwargs) -> RawDataset:
    options = {"num_cases": 3, "shape": SHAPE, "spacing": (2.0, 1.0, 0.5)} | kwargs
    make_raw_dataset(root, **options)
    return RawDataset.open(options.get("dataset_id", 1), root)


def _snapshot(folder) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _problems(dataset: RawDataset, **kwargs) -> list[str]:
    before = _snapshot(dataset.folder)
    with pytest.raises(DataIntegrityError) as info:
        check_dataset_integrity(dataset, **kwargs)
    assert _snapshot(dataset.folder) == before, "the check must write nothing"
    assert str(dataset.folder) in str(info.value)
    for problem in info.value.problems:
        assert f"  - {problem}" in str(info.value)
    return info.value.problems


def test_clean_dataset_passes_with_report(tmp_path):
    dataset = _dataset(tmp_path, channel_names=("T1", "T2"), num_test=1)
    report = check_dataset_integrity(dataset)
    assert (report.num_training, report.num_test, report.num_channels) == (3, 1, 2)
    assert report.label_values_found == [0, 1, 2]
    assert report.spacing_min == report.spacing_max == [2.0, 1.0, 0.5]
    assert report.shape_min == report.shape_max == list(SHAPE)
    assert report.warnings == []
    assert "3 training and 1 test case(s), 2 channel(s), label values [0, 1, 2]" in report.summary()
    assert json.loads(json.dumps(report.to_dict()))["num_training"] == 3


def test_corrupt_and_truncated_files(tmp_path):
    dataset = _dataset(tmp_path)
    corrupt = dataset.folder / "imagesTr" / "case_000_0000.nii.gz"
    corrupt.write_bytes(b"\x00garbage" * 50)
    truncated = dataset.folder / "labelsTr" / "case_001.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    problems = _problems(dataset)
    assert len(problems) == 2
    assert problems[0].startswith(f"{corrupt}: cannot read image (corrupt, truncated or unsupported format")
    assert problems[1].startswith(f"{truncated}: file is truncated")


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_truncated_nifti_is_detected_though_itk_reads_it(tmp_path, ending, dtype):
    """ITK reads a short NIfTI file without error (zero-filled): the check must not."""
    path = tmp_path / f"image{ending}"
    write_volume(np.ones((10, 10, 10), dtype), path)
    assert nifti_problems(path) == (None, None)
    path.write_bytes(path.read_bytes()[: -100 if ending == ".nii" else -20])
    sitk.ReadImage(str(path))  # no error from ITK
    damage, _ = nifti_problems(path)
    expected_end = 352 + 1000 * np.dtype(dtype).itemsize
    if ending == ".nii":
        assert damage == f"{path}: file is truncated (the NIfTI header needs {expected_end} bytes, the file holds {expected_end - 100})"
    else:
        assert damage.startswith(f"{path}: file is truncated (the gzip stream ends early, after ")
        assert damage.endswith(f"of {expected_end} bytes)")


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_in_nifti_is_found_though_itk_reads_it_as_zero(tmp_path, ending, dtype):
    path = tmp_path / f"image{ending}"
    array = np.ones((4, 5, 6), dtype)
    array[1, 2, :3] = [np.nan, np.inf, -np.inf]
    write_volume(array, path)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # ITK hides them
    assert nifti_problems(path) == (None, f"{path}: contains 1 NaN voxel(s) and 2 infinite voxel(s)")


def test_unknown_label_values_are_named(tmp_path):
    dataset = _dataset(tmp_path)
    label = dataset.folder / "labelsTr" / "case_002.nii.gz"
    seg = np.zeros(SHAPE, np.uint8)
    seg[0, 0, :3] = [1, 5, 7]
    write_volume(seg, label, (2.0, 1.0, 0.5))
    assert _problems(dataset) == [f"{label}: label value(s) [5, 7] not in dataset.json labels [0, 1, 2]"]


def test_non_integer_and_negative_labels(tmp_path):
    dataset = _dataset(tmp_path)
    fractional = dataset.folder / "labelsTr" / "case_000.nii.gz"
    seg = np.zeros(SHAPE, np.float32)
    seg[1, 1, 1] = 0.5
    write_volume(seg, fractional, (2.0, 1.0, 0.5))
    negative = dataset.folder / "labelsTr" / "case_001.nii.gz"
    write_volume(np.full(SHAPE, -1, np.int16), negative, (2.0, 1.0, 0.5))
    problems = _problems(dataset)
    assert problems == [
        f"{fractional}: label map holds 1 voxel(s) with non-integer values (e.g. [0.5])",
        f"{negative}: label value(s) [-1] not in dataset.json labels [0, 1, 2]",
    ]


def test_missing_channel_and_missing_label(tmp_path):
    dataset = _dataset(tmp_path, channel_names=("T1", "T2"))
    (dataset.folder / "imagesTr" / "case_001_0001.nii.gz").unlink()
    (dataset.folder / "labelsTr" / "case_002.nii.gz").unlink()
    problems = _problems(dataset)
    assert f"{dataset.folder / 'imagesTr' / 'case_001'}: missing channel(s) ['0001']" in problems
    assert f"{dataset.folder / 'labelsTr' / 'case_002.nii.gz'}: label file missing for case case_002" in problems
    assert any("numTraining is 3 but" in p and "holds 2 complete case(s)" in p for p in problems)
    assert len(problems) == 3


def test_shape_and_spacing_mismatch_are_errors(tmp_path):
    dataset = _dataset(tmp_path, channel_names=("T1", "T2"))
    label = dataset.folder / "labelsTr" / "case_000.nii.gz"
    write_volume(np.zeros((8, 10, 11), np.uint8), label, (2.0, 1.0, 0.5))
    channel = dataset.folder / "imagesTr" / "case_001_0001.nii.gz"
    write_volume(np.zeros(SHAPE, np.float32), channel, (3.0, 1.0, 0.5))
    problems = _problems(dataset)
    assert problems == [
        f"{label}: shape (z, y, x) [8, 10, 11] differs from [8, 10, 12] in case_000_0000.nii.gz",
        f"{channel}: spacing (z, y, x) [3.0, 1.0, 0.5] differs from [2.0, 1.0, 0.5] in case_001_0000.nii.gz",
    ]


def test_origin_and_direction_mismatch_warn_or_fail_when_strict(tmp_path, caplog):
    dataset = _dataset(tmp_path)
    label = dataset.folder / "labelsTr" / "case_000.nii.gz"
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    write_volume(seg, label, (2.0, 1.0, 0.5), origin=(5.0, 0.0, 0.0), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    report = check_dataset_integrity(dataset)
    assert report.warnings == [
        f"{label}: origin [5.0, 0.0, 0.0] differs from [0.0, 0.0, 0.0] in case_000_0000.nii.gz",
        f"{label}: direction [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0] differs from "
        "[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0] in case_000_0000.nii.gz",
    ]
    assert any("origin [5.0, 0.0, 0.0] differs" in r.getMessage() for r in caplog.records)
    assert _problems(dataset, strict=True) == report.warnings


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd"])
def test_nan_and_inf_voxels(tmp_path, ending):
    dataset = _dataset(tmp_path, num_test=1, ending=ending)
    image = dataset.folder / "imagesTr" / f"case_001_0000{ending}"
    array = np.ones(SHAPE, np.float32)
    array[0, 0, :3] = [np.nan, np.nan, np.inf]
    write_volume(array, image, (2.0, 1.0, 0.5))
    test_image = dataset.folder / "imagesTs" / f"case_003_0000{ending}"
    array = np.ones(SHAPE, np.float32)
    array[2, 2, 2] = -np.inf
    write_volume(array, test_image, (2.0, 1.0, 0.5))
    assert _problems(dataset) == [
        f"{image}: contains 2 NaN voxel(s) and 1 infinite voxel(s)",
        f"{test_image}: contains 1 infinite voxel(s)",
    ]


def test_4d_image_in_raw_layout_points_to_conversion(tmp_path):
    dataset = _dataset(tmp_path)
    image = dataset.folder / "imagesTr" / "case_000_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, *SHAPE), np.float32), isVector=False), str(image))
    (problem,) = _problems(dataset)
    assert problem.startswith(f"{image}: is 4D with size [12, 10, 8, 2]; volfnet expects one 3D file per channel")
    assert "volfnet_convert_msd" in problem


def test_several_problems_are_reported_at_once(tmp_path):
    dataset = _dataset(tmp_path, num_cases=4, channel_names=("T1", "T2"))
    images, labels = dataset.folder / "imagesTr", dataset.folder / "labelsTr"
    (images / "case_000_0001.nii.gz").unlink()
    (images / "case_001_0000.nii.gz").write_bytes(b"broken")
    write_volume(np.full(SHAPE, 9, np.uint8), labels / "case_002.nii.gz", (2.0, 1.0, 0.5))
    nan_image = np.full(SHAPE, np.nan, np.float32)
    write_volume(nan_image, images / "case_003_0001.nii.gz", (2.0, 1.0, 0.5))
    (images / "notes.txt").write_text("not an image")
    problems = _problems(dataset)
    expected = [
        f"{images / 'notes.txt'}: name does not follow {{case}}_{{CCCC}}.nii.gz",
        f"{images / 'case_000'}: missing channel(s) ['0001']",
        "numTraining is 4 but",
        f"{images / 'case_001_0000.nii.gz'}: cannot read image",
        f"{labels / 'case_002.nii.gz'}: label value(s) [9] not in dataset.json labels",
        f"{images / 'case_003_0001.nii.gz'}: contains {np.prod(SHAPE)} NaN voxel(s)",
    ]
    assert len(problems) == len(expected)
    for fragment in expected:
        assert any(fragment in problem for problem in problems), fragment


def test_empty_dataset(tmp_path):
    dataset = _dataset(tmp_path)
    for path in (dataset.folder / "imagesTr").iterdir():
        path.unlink()
    problems = _problems(dataset)
    assert f"no training cases found in {dataset.folder / 'imagesTr'}" in problems
    assert any("label file has no image" in p for p in problems) is False  # orphans are warnings only
    (dataset.folder / "imagesTr").rmdir()
    assert _problems(dataset) == [f"{dataset.folder / 'imagesTr'}: folder missing"]


def test_orphan_labels_and_unused_labels_warn(tmp_path):
    dataset = _dataset(tmp_path, num_labels=3)
    write_volume(np.zeros(SHAPE, np.uint8), dataset.folder / "labelsTr" / "typo_000.nii.gz", (2.0, 1.0, 0.5))
    report = check_dataset_integrity(dataset)
    assert report.label_values_found == [0, 1, 2]
    assert report.warnings == [
        f"{dataset.folder / 'labelsTr' / 'typo_000.nii.gz'}: label file has no image in "
        f"{dataset.folder / 'imagesTr'} (expected typo_000_0000.nii.gz)",
        f"{dataset.folder / 'dataset.json'}: label(s) {{'class3': 3}} occur in no training label map",
    ]


def test_unknown_dataset_id(tmp_path):
    make_raw_dataset(tmp_path, dataset_id=3, num_cases=1, shape=SHAPE)
    with pytest.raises(VolfnetError, match=r"no dataset with id 7 in .* \(found: \['Dataset003_Toy'\]\)"):
        RawDataset.open(7, tmp_path)
    with pytest.raises(VolfnetError, match=r"dataset root .*missing does not exist"):
        RawDataset.open(3, tmp_path / "missing")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_integer_values(dtype):
    array = np.array([[0, 3, 3], [250, 0, 7]], dtype)
    assert integer_values(array) == [0, 3, 7, 250]
    assert integer_values(np.array([-5, 2, -5], np.int8)) == [-5, 2]
    assert integer_values(np.array([0, 1 << 20], np.int32)) == [0, 1 << 20]
    assert integer_values(np.zeros((0,), np.uint8)) == []


def test_parallel_check_equals_serial_check(tmp_path):
    dataset = _dataset(tmp_path, num_cases=3)
    assert check_dataset_integrity(dataset, num_workers=2) == check_dataset_integrity(dataset, num_workers=1)


def test_check_reads_every_file_once(tmp_path, monkeypatch):
    """Each file is opened by ITK once (voxels and geometry together)."""
    dataset = _dataset(tmp_path, channel_names=("T1", "T2"))
    calls = []
    real = sitk.ReadImage
    monkeypatch.setattr(sitk, "ReadImage", lambda path, *a, **k: calls.append(os.path.basename(path)) or real(path, *a, **k))
    check_dataset_integrity(dataset)
    assert len(calls) == len(set(calls)) == 9  # 3 cases x (2 channels + label)
