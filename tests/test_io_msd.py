"""MSD conversion: 4D images split into channels with their 3D geometry, labels copied,
dataset.json rewritten, all problems reported at once, nothing written on failure."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk
from helpers.images import write_volume
from helpers.raw_data import SHARED_DATA

from volfnet.cli._common import run_cli
from volfnet.cli.convert_msd import main
from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.io import msd
from volfnet.io.dataset import RawDataset
from volfnet.io.image_io import read_image
from volfnet.io.integrity import check_dataset_integrity
from volfnet.io.msd import convert_msd_dataset, msd_to_dataset_json

SHAPE = (6, 7, 8)
SPACING_XYZ = (0.6, 0.7, 3.0)
ORIGIN_XYZ = (10.0, -20.0, 30.5)
ROTATION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z, row-major


def _direction_4d() -> list[float]:
    d = np.eye(4)
    d[:3, :3] = np.reshape(ROTATION, (3, 3))
    return d.ravel().tolist()


def _write_4d(array: np.ndarray, path) -> None:
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing((*SPACING_XYZ, 1.0))
    image.SetOrigin((*ORIGIN_XYZ, 0.0))
    image.SetDirection(_direction_4d())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _write_3d(array: np.ndarray, path) -> None:
    write_volume(array, path, tuple(reversed(SPACING_XYZ)), ORIGIN_XYZ, ROTATION)


def make_msd_task(root, name="Task05_Toy", num_cases=3, channels=("T2", "ADC"), num_test=1, seed=0):
    """A small MSD task: 4D (or 3D when one channel) images, 3D labels, MSD dataset.json,
    and macOS ``._`` junk files as found in the published archives."""
    rng = np.random.default_rng(seed)
    folder = root / name
    arrays = {}
    for index in range(num_cases + num_test):
        case = f"toy_{index:03d}"
        is_test = index >= num_cases
        image = rng.normal(100, 20, (len(channels), *SHAPE)).astype(np.float32)
        image_path = folder / ("imagesTs" if is_test else "imagesTr") / f"{case}.nii.gz"
        if len(channels) == 1:
            _write_3d(image[0], image_path)
        else:
            _write_4d(image, image_path)
        arrays[case] = image
        if not is_test:
            _write_3d(rng.integers(0, 3, SHAPE).astype(np.uint8), folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "imagesTr" / "._toy_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / "labelsTr" / "._toy_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Toy",
                "description": "toy prostate",
                "reference": "nowhere",
                "licence": "CC-BY-SA 4.0",
                "release": "1.0",
                "tensorImageSize": "4D",
                "modality": {str(i): c for i, c in enumerate(channels)},
                "labels": {"0": "background", "1": "PZ", "2": "TZ"},
                "numTraining": num_cases,
                "numTest": num_test,
                "training": [{"image": f"./imagesTr/toy_{i:03d}.nii.gz", "label": f"./labelsTr/toy_{i:03d}.nii.gz"} for i in range(num_cases)],
                "test": [f"./imagesTs/toy_{i:03d}.nii.gz" for i in range(num_cases, num_cases + num_test)],
            }
        )
    )
    return folder, arrays


def _listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_convert_4d_task_splits_channels_and_keeps_geometry(tmp_path):
    task, arrays = make_msd_task(tmp_path / "msd")
    out = tmp_path / "raw"
    target = convert_msd_dataset(task, out)
    assert target == out / "Dataset005_Toy"
    assert [p.name for p in out.iterdir()] == ["Dataset005_Toy"]  # no partial folder left
    assert _listing(target) == [
        "dataset.json", "imagesTr",
        *[f"imagesTr/toy_{i:03d}_{c:04d}.nii.gz" for i in range(3) for c in range(2)],
        "imagesTs", "imagesTs/toy_003_0000.nii.gz", "imagesTs/toy_003_0001.nii.gz",
        "labelsTr", *[f"labelsTr/toy_{i:03d}.nii.gz" for i in range(3)],
    ]  # fmt: skip
    for case, image in arrays.items():
        folder = "imagesTs" if case == "toy_003" else "imagesTr"
        for channel in range(2):
            array, geometry = read_image(target / folder / f"{case}_{channel:04d}.nii.gz")
            assert array.dtype == np.float32
            np.testing.assert_array_equal(array, image[channel])
            np.testing.assert_allclose(geometry.spacing, list(reversed(SPACING_XYZ)), atol=1e-6)
            np.testing.assert_allclose(geometry.origin, ORIGIN_XYZ, atol=1e-4)
            np.testing.assert_allclose(geometry.direction, ROTATION, atol=1e-6)
    for i in range(3):
        name = f"toy_{i:03d}.nii.gz"
        assert (target / "labelsTr" / name).read_bytes() == (task / "labelsTr" / name).read_bytes()
    assert json.loads((target / "dataset.json").read_text()) == {
        "name": "Toy",
        "description": "toy prostate",
        "reference": "nowhere",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "tensorImageSize": "4D",
        "channel_names": {"0": "T2", "1": "ADC"},
        "labels": {"background": 0, "PZ": 1, "TZ": 2},
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    report = check_dataset_integrity(RawDataset.open(5, out))
    assert (report.num_training, report.num_test, report.num_channels) == (3, 1, 2)
    assert report.warnings == []


def test_convert_3d_task_copies_files_and_rewrites_plain_nifti(tmp_path):
    task, arrays = make_msd_task(tmp_path / "msd", name="Task02_Heart", channels=("MRI",), num_test=0)
    plain = task / "imagesTr" / "toy_001.nii"
    image = sitk.ReadImage(str(task / "imagesTr" / "toy_001.nii.gz"))
    (task / "imagesTr" / "toy_001.nii.gz").unlink()
    sitk.WriteImage(image, str(plain))
    target = convert_msd_dataset(task, tmp_path / "raw", dataset_id=12, case_limit=2)
    assert target.name == "Dataset012_Heart"
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == ["toy_000_0000.nii.gz", "toy_001_0000.nii.gz"]
    assert (target / "imagesTr" / "toy_000_0000.nii.gz").read_bytes() == (task / "imagesTr" / "toy_000.nii.gz").read_bytes()
    array, geometry = read_image(target / "imagesTr" / "toy_001_0000.nii.gz")
    np.testing.assert_array_equal(array, arrays["toy_001"][0])
    np.testing.assert_allclose(geometry.direction, ROTATION, atol=1e-6)
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 2
    assert not (target / "imagesTs").exists()


def test_existing_target_is_refused_unless_overwrite(tmp_path):
    task, _ = make_msd_task(tmp_path / "msd", num_cases=1, num_test=0)
    out = tmp_path / "raw"
    target = convert_msd_dataset(task, out)
    (target / "stale.txt").write_text("from an older conversion")
    with pytest.raises(VolfnetError, match=r"Dataset005_Toy already exists; pass --overwrite \(overwrite=True\)"):
        convert_msd_dataset(task, out)
    assert (target / "stale.txt").exists()
    assert convert_msd_dataset(task, out, overwrite=True) == target
    assert not (target / "stale.txt").exists()
    assert [p.name for p in out.iterdir()] == ["Dataset005_Toy"]
    (out / "Dataset007_Other").mkdir()
    with pytest.raises(VolfnetError, match=r"dataset id 7 is already used by .*Dataset007_Other; choose another id with -d"):
        convert_msd_dataset(task, out, dataset_id=7, overwrite=True)


def test_bad_task_reports_all_problems_and_writes_nothing(tmp_path):
    task, _ = make_msd_task(tmp_path / "msd", num_cases=5)
    images, labels = task / "imagesTr", task / "labelsTr"
    _write_3d(np.zeros(SHAPE, np.float32), images / "toy_000.nii.gz")  # one channel, two expected
    truncated = images / "toy_001.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:-64])
    nan_image = np.ones((2, *SHAPE), np.float32)
    nan_image[1, 0, 0, 0] = np.nan
    _write_4d(nan_image, images / "toy_002.nii.gz")
    _write_4d(np.ones((3, *SHAPE), np.float32), images / "toy_003.nii.gz")  # three channels
    out = tmp_path / "raw"
    with pytest.raises(DataIntegrityError) as info:
        convert_msd_dataset(task, out)
    assert info.value.problems[0] == f"{images / 'toy_000.nii.gz'}: has 1 channel(s) but dataset.json 'modality' lists 2"
    assert info.value.problems[1].startswith(f"{truncated}: file is truncated")
    assert info.value.problems[2:] == [
        f"{images / 'toy_002.nii.gz'}: contains 1 NaN voxel(s)",
        f"{images / 'toy_003.nii.gz'}: has 3 channel(s) but dataset.json 'modality' lists 2",
    ]
    assert str(info.value).startswith(f"{task}: MSD conversion failed (4 problem(s))")
    assert list(out.iterdir()) == []  # not even a partial folder

    (labels / "toy_004.nii.gz").unlink()
    with pytest.raises(DataIntegrityError) as info:
        convert_msd_dataset(task, out)
    assert info.value.problems == [f"{images / 'toy_004.nii.gz'}: no label toy_004.nii.gz in {labels}"]
    assert list(out.iterdir()) == []


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    task, _ = make_msd_task(tmp_path / "msd", num_cases=3)
    calls = []

    def convert_then_die(job):
        calls.append(job.case_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job)

    real = msd.convert_case
    monkeypatch.setattr(msd, "convert_case", convert_then_die)
    out = tmp_path / "raw"
    with pytest.raises(KeyboardInterrupt):
        convert_msd_dataset(task, out)
    assert list(out.iterdir()) == []


def test_input_errors_name_the_problem(tmp_path):
    out = tmp_path / "raw"
    with pytest.raises(VolfnetError, match=r"nowhere: MSD task folder not found"):
        convert_msd_dataset(tmp_path / "nowhere", out)
    task, _ = make_msd_task(tmp_path / "msd", name="Hippo", num_cases=1, num_test=0)
    with pytest.raises(VolfnetError, match=r"Hippo: cannot take a dataset id from the folder name \(expected TaskXX_Name\); give one with -d"):
        convert_msd_dataset(task, out)
    with pytest.raises(VolfnetError, match=r"dataset id must be between 1 and 999, got 1000"):
        convert_msd_dataset(task, out, dataset_id=1000)
    assert convert_msd_dataset(task, out, dataset_id=104).name == "Dataset104_Hippo"
    empty = tmp_path / "msd" / "Task09_Empty"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background"}}))
    with pytest.raises(DataIntegrityError, match=r"no training images \(\*\.nii\.gz\) found in .*Task09_Empty/imagesTr"):
        convert_msd_dataset(empty, out)
    (empty / "dataset.json").unlink()
    with pytest.raises(VolfnetError, match=r"Task09_Empty/dataset.json: file not found"):
        convert_msd_dataset(empty, out)
    assert sorted(p.name for p in out.iterdir()) == ["Dataset104_Hippo"]


@pytest.mark.parametrize(
    ("msd_json", "message"),
    [
        ({"labels": {"0": "background"}}, "needs a non-empty 'modality' mapping"),
        ({"modality": {"0": "CT"}}, "needs a non-empty 'labels' mapping"),
        ({"modality": {"0": "CT"}, "labels": {"zero": "background"}}, "label key 'zero' is not an integer"),
        ({"modality": {"0": "CT"}, "labels": {"0": "bg", "1": "bg"}}, "label name 'bg' is used for values 0 and 1"),
        ({"modality": {"0": "CT"}, "labels": {"0": "bg", "2": "liver"}}, "label values must be consecutive"),
    ],
)
def test_msd_dataset_json_errors(msd_json, message):
    with pytest.raises(VolfnetError, match=rf"^x/dataset.json: .*{message}"):
        msd_to_dataset_json(msd_json, 1, "x/dataset.json")


def test_cli_converts_into_raw_root_and_reports_errors(tmp_path, roots, capsys):
    task, _ = make_msd_task(tmp_path / "msd", num_cases=2, num_test=0)
    assert main(["-i", str(task), "-d", "42", "-np", "2"]) == 0
    target = roots["raw"] / "Dataset042_Toy"
    assert f"converted {task} -> {target}" in capsys.readouterr().out
    assert len(list((target / "imagesTr").iterdir())) == 4
    assert main(["-i", str(task), "-d", "42"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {target} already exists; pass --overwrite")
    assert "Traceback" not in err
    assert main(["-i", str(task), "-d", "42", "--overwrite"]) == 0


def test_run_cli_turns_user_errors_into_exit_2_and_keeps_bugs_loud(capsys):
    def fails(exc: BaseException):
        def run() -> None:
            raise exc

        return run

    assert run_cli(lambda: None) == 0
    assert run_cli(fails(DataIntegrityError(["a.nii.gz: broken", "b.nii.gz: missing"]))) == 2
    assert capsys.readouterr().err.endswith(
        "error: dataset integrity check failed (2 problem(s)):\n  - a.nii.gz: broken\n  - b.nii.gz: missing\n"
    )
    assert run_cli(fails(KeyboardInterrupt())) == 130
    with pytest.raises(ZeroDivisionError):
        run_cli(fails(ZeroDivisionError("a bug keeps its traceback")))


@pytest.mark.skipif(not (SHARED_DATA / "Task04_Hippocampus").is_dir(), reason="shared data ../shared/data/Task04_Hippocampus not present")
def test_real_hippocampus_converts_and_passes_the_check(tmp_path):
    start = time.perf_counter()
    target = convert_msd_dataset(SHARED_DATA / "Task04_Hippocampus", tmp_path)
    converted = time.perf_counter()
    report = check_dataset_integrity(RawDataset.open(4, tmp_path))
    checked = time.perf_counter()
    assert target.name == "Dataset004_Hippocampus"
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "MRI"}
    assert dataset_json["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert dataset_json["numTraining"] == 200 and dataset_json["licence"] == "CC-BY-SA 4.0"
    assert (report.num_training, report.num_test, report.num_channels) == (200, 1, 1)
    assert report.label_values_found == [0, 1, 2]
    assert report.spacing_min == report.spacing_max == [1.0, 1.0, 1.0]
    assert report.warnings == []
    print(f"Hippocampus: convert {converted - start:.1f} s, check {checked - converted:.1f} s")
