"""volfnet_plan_and_preprocess end to end on tiny synthetic datasets made in the test."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers.raw_data import make_raw_dataset

from volfnet.cli.plan_and_preprocess import main as plan_and_preprocess_main
from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.io.image_io import read_case, read_segmentation
from volfnet.planning.fingerprint import Fingerprint
from volfnet.planning.plan_and_preprocess import PlanAndPreprocessRequest, plan_and_preprocess
from volfnet.planning.planner import PlannerOptions
from volfnet.plans import Plans
from volfnet.io.case_store import list_preprocessed_cases, load_case


def run(dataset, **kwargs):
    options = kwargs.pop("options", PlannerOptions(compute_target="cpu"))
    return plan_and_preprocess(PlanAndPreprocessRequest(dataset=dataset, options=options, num_workers=1, progress=False, **kwargs))


def test_writes_fingerprint_plans_and_cases(roots):
    make_raw_dataset(roots["raw"], dataset_id=1, num_cases=4)
    result = run("1")
    out = roots["preprocessed"] / "Dataset001_Toy"
    assert result.output_folder == out
    for name in ("dataset.json", "fingerprint.json", "plans.json"):
        assert (out / name).is_file()
    plans = Plans.load(out / "plans.json")
    config = plans.configuration("3d_fullres")
    assert config.spacing == [1.0, 1.0, 1.0]
    assert config.network.name == "fmunet"
    assert config.network.feature_channels[0] == 16  # the CPU target's half width
    assert list_preprocessed_cases(out / "3d_fullres") == [f"case_{i:03d}" for i in range(4)]
    image, seg, properties = load_case(out / "3d_fullres", "case_000")
    assert isinstance(image, np.memmap) and image.dtype == np.float32
    assert image.shape[0] == 1 and image.shape[1:] == seg.shape[1:]
    assert seg.dtype == np.int8 and set(np.unique(seg)) <= {-1, 0, 1, 2}
    # z-scored inside the image: mean 0, std 1
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-3
    assert set(properties.class_locations) == {1, 2}
    z, y, x = properties.class_locations[2][0]
    assert seg[0, z, y, x] == 2
    # the crop removed the two zero slices at the start of axes 0 and 2
    assert properties.bbox[0][0] == 2 and properties.bbox[2][0] == 2
    assert properties.shape_before_cropping == [20, 24, 28]


def test_fingerprint_statistics_match_numpy(roots):
    folder = make_raw_dataset(roots["raw"], dataset_id=2, num_cases=3, channel_names=("CT",))
    run("2")
    fingerprint = Fingerprint.load(roots["preprocessed"] / "Dataset002_Toy" / "fingerprint.json")
    foreground = []
    for i in range(3):
        image, _ = read_case([folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz"])
        label, _ = read_segmentation(folder / "labelsTr" / f"case_{i:03d}.nii.gz")
        foreground.append(image[0][label > 0])
    values = np.concatenate(foreground)
    stats = fingerprint.foreground_intensity_per_channel[0]
    assert stats.mean == pytest.approx(values.mean(), rel=0.02)
    assert stats.percentile_99_5 == pytest.approx(np.percentile(values, 99.5), rel=0.05)
    assert fingerprint.shapes_after_crop[0] == [18, 24, 26]
    # CT channel: clip + global z-score with these statistics
    plans = Plans.load(roots["preprocessed"] / "Dataset002_Toy" / "plans.json")
    spec = plans.configuration("3d_fullres").normalization[0]
    assert spec.scheme == "ct"
    assert spec.mean == pytest.approx(stats.mean) and spec.clip_upper == pytest.approx(stats.percentile_99_5)


def test_thick_axis_is_transposed_first_and_properties_undo_it(roots):
    spacing = (1.0, 1.0, 4.0)  # the coarse axis is x here
    make_raw_dataset(roots["raw"], dataset_id=3, num_cases=3, shape=(24, 26, 10), spacing=spacing, num_labels=1)
    result = run("3")
    assert result.plans.transpose_forward == [2, 0, 1]
    assert result.plans.transpose_backward == [1, 2, 0]
    config = result.plans.configuration("3d_fullres")
    assert config.spacing == [4.0, 1.0, 1.0]
    _, seg, properties = load_case(result.output_folder / "3d_fullres", "case_000")
    assert properties.shape_before_cropping == [10, 24, 26]
    assert properties.original_geometry.shape == [24, 26, 10]
    assert properties.original_geometry.spacing == [1.0, 1.0, 4.0]


def test_multichannel_case(roots):
    make_raw_dataset(roots["raw"], dataset_id=4, num_cases=3, channel_names=("T1", "T2"))
    result = run("4")
    image, _, _ = load_case(result.output_folder / "3d_fullres", "case_001")
    assert image.shape[0] == 2
    assert [n.scheme for n in result.plans.configuration("3d_fullres").normalization] == ["zscore", "zscore"]


def test_resampling_to_a_given_spacing(roots):
    make_raw_dataset(roots["raw"], dataset_id=5, num_cases=3)
    result = run("5", options=PlannerOptions(compute_target="cpu", target_spacing=[2.0, 1.0, 0.5]))
    image, seg, properties = load_case(result.output_folder / "3d_fullres", "case_000")
    assert properties.shape_after_cropping == [18, 24, 26]
    assert list(image.shape[1:]) == [9, 24, 52]
    assert seg.shape == (1, 9, 24, 52)


def test_rerun_skips_finished_cases_and_redoes_broken_ones(roots):
    make_raw_dataset(roots["raw"], dataset_id=6, num_cases=3)
    first = run("6")
    assert first.summaries[0].processed == 3
    (first.output_folder / "3d_fullres" / "case_001.json").unlink()  # as if killed mid-case
    second = run("6")
    assert second.summaries[0].processed == 1 and second.summaries[0].skipped == 2


def test_changed_plans_rebuild_the_cache(roots):
    make_raw_dataset(roots["raw"], dataset_id=7, num_cases=3)
    run("7")
    again = run("7", options=PlannerOptions(compute_target="cpu", target_spacing=[2.0, 2.0, 2.0]))
    assert again.summaries[0].processed == 3
    assert (again.output_folder / "plans.previous.json").is_file()


def test_parts_split_the_cases(roots):
    make_raw_dataset(roots["raw"], dataset_id=8, num_cases=5)
    run("8", plan_only=True)
    result = run("8", preprocess_only=True, part=1, num_parts=2)
    assert list_preprocessed_cases(result.output_folder / "3d_fullres") == ["case_001", "case_003"]
    with pytest.raises(VolfnetError, match=r"--part must be between 0 and 1 \(--num-parts 2\), got 2"):
        run("8", preprocess_only=True, part=2, num_parts=2)


def test_corrupt_file_is_reported_and_nothing_is_written(roots):
    folder = make_raw_dataset(roots["raw"], dataset_id=9, num_cases=3)
    (folder / "imagesTr" / "case_001_0000.nii.gz").write_bytes(b"not a nifti file")
    image = sitk.ReadImage(str(folder / "labelsTr" / "case_002.nii.gz"))
    array = sitk.GetArrayFromImage(image)
    array[5, 5, 5] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(folder / "labelsTr" / "case_002.nii.gz"))
    with pytest.raises(DataIntegrityError) as info:
        run("9")
    message = str(info.value)
    assert "case_001_0000.nii.gz" in message
    assert "case_002.nii.gz" in message and "7" in message
    assert not (roots["preprocessed"] / "Dataset009_Toy").exists()


def test_unknown_dataset_id(roots):
    with pytest.raises(VolfnetError, match="no dataset with id 42"):
        run("42")


def test_cli_overrides_and_summary(roots, capsys):
    make_raw_dataset(roots["raw"], dataset_id=10, num_cases=3)
    code = plan_and_preprocess_main(
        ["-d", "10", "--target", "cpu", "-np", "1", "--patch-size", "16", "24", "24", "--set", "3d_fullres.batch_size=3"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "patch [16, 24, 24]" in out and "batch 3" in out
    assert "3 case(s) preprocessed" in out
    plans = json.loads((roots["preprocessed"] / "Dataset010_Toy" / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["batch_size"] == 3


def test_cli_error_exit_code_and_message(roots, capsys):
    make_raw_dataset(roots["raw"], dataset_id=11, num_cases=3)
    code = plan_and_preprocess_main(["-d", "11", "--target", "cpu", "--patch-size", "15", "24", "24"])
    assert code == 2
    assert "divisible" in capsys.readouterr().err


def test_fingerprint_from_the_integrity_pass_equals_a_separate_read(roots):
    make_raw_dataset(roots["raw"], dataset_id=12, num_cases=3, channel_names=("CT", "MR"))
    path = roots["preprocessed"] / "Dataset012_Toy" / "fingerprint.json"
    run("12", plan_only=True)  # fingerprint computed while checking integrity
    combined = json.loads(path.read_text())
    run("12", plan_only=True, verify_integrity=False, clean=True)  # fingerprint from its own read
    assert json.loads(path.read_text()) == combined


def test_single_image_without_label_uses_the_same_code_path(roots):
    """Inference preprocesses one image with no label exactly as training cases were."""
    from volfnet.preprocessing.preprocessor import preprocess_array

    folder = make_raw_dataset(roots["raw"], dataset_id=13, num_cases=3)
    result = run("13")
    image, geometry = read_case([folder / "imagesTr" / "case_002_0000.nii.gz"])
    data, seg, properties = preprocess_array(image, geometry, None, result.plans, "3d_fullres", "case_002")
    cached, _, cached_properties = load_case(result.output_folder / "3d_fullres", "case_002")
    np.testing.assert_array_equal(data, cached)
    assert set(np.unique(seg)) <= {-1, 0} and properties.class_locations == {}
    assert properties.bbox == cached_properties.bbox and properties.shape_after_resampling == cached_properties.shape_after_resampling
    with pytest.raises(VolfnetError, match="has 2 channel"):
        preprocess_array(np.concatenate([image, image]), geometry, None, result.plans, "3d_fullres", "two_channels")
    nan_image = image.copy()
    nan_image[0, 5, 5, 5] = np.nan
    with pytest.raises(VolfnetError, match="NaN"):
        preprocess_array(nan_image, geometry, None, result.plans, "3d_fullres", "nan_case")
