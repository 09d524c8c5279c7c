"""2D image formats as nnU-Net v2 reads them: PNG, BMP and TIFF pictures (greyscale or RGB as
channels), TIFF stacks with a spacing sidecar, rgb_to_0_1 normalisation, and the whole path
from a raw folder of PNGs to PNG predictions and their evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from volfnet.cli.evaluate import main as evaluate_main
from volfnet.cli.plan_and_preprocess import main as plan_main
from volfnet.cli.predict import main as predict_main
from volfnet.cli.train import main as train_main
from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.evaluation.evaluate import evaluate_case
from volfnet.evaluation.cases import CasePair
from volfnet.inference.inputs import find_input_cases
from volfnet.io.dataset import RawDataset, list_cases
from volfnet.io.image_io import (
    IDENTITY_DIRECTION,
    PICTURE_SPACING,
    ImageGeometry,
    read_case,
    read_channels,
    read_image,
    read_segmentation,
    write_image,
)
from volfnet.io.integrity import check_dataset_integrity
from volfnet.plans import ChannelNormalization, Plans
from volfnet.planning.fingerprint import extract_fingerprint
from volfnet.planning.planner import Planner, PlannerOptions, normalization_for_channels
from volfnet.preprocessing.normalization import normalize_channel

RNG = np.random.default_rng(0)


def _write_picture(array: np.ndarray, path: Path) -> None:
    """A picture written by SimpleITK directly (not through the code under test)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=array.ndim == 3), str(path))


def _picture_geometry(height: int, width: int) -> ImageGeometry:
    return ImageGeometry(list(PICTURE_SPACING), [0.0, 0.0, 0.0], list(IDENTITY_DIRECTION), [1, height, width])


# --------------------------------------------------------------------------------------------
# reading and writing


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif", ".tiff"])
def test_grey_8_bit_picture_reads_as_one_slice_with_natural_image_geometry(tmp_path, ending):
    pixels = RNG.integers(0, 256, (12, 10)).astype(np.uint8)
    _write_picture(pixels, tmp_path / f"grey{ending}")
    channels, geometry = read_channels(tmp_path / f"grey{ending}")
    assert channels.shape == (1, 1, 12, 10) and channels.dtype == np.uint8
    np.testing.assert_array_equal(channels[0, 0], pixels)
    assert geometry.spacing == [999.0, 1.0, 1.0] and geometry.origin == [0.0, 0.0, 0.0]
    assert geometry.direction == IDENTITY_DIRECTION and geometry.shape == [1, 12, 10] and geometry.is_picture_2d


@pytest.mark.parametrize("ending", [".png", ".tif"])
def test_grey_16_bit_picture_keeps_its_values(tmp_path, ending):
    pixels = (RNG.integers(0, 65536, (9, 7))).astype(np.uint16)
    _write_picture(pixels, tmp_path / f"grey16{ending}")
    image, geometry = read_image(tmp_path / f"grey16{ending}")
    assert image.dtype == np.uint16 and geometry.shape == [1, 9, 7]
    np.testing.assert_array_equal(image[0], pixels)


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif"])
def test_rgb_picture_is_three_channels_in_colour_order(tmp_path, ending):
    pixels = RNG.integers(0, 256, (8, 11, 3)).astype(np.uint8)
    _write_picture(pixels, tmp_path / f"case_0000{ending}")
    image, geometry = read_case([tmp_path / f"case_0000{ending}"], num_channels=3)
    assert image.shape == (3, 1, 8, 11) and image.dtype == np.float32 and geometry.shape == [1, 8, 11]
    for channel in range(3):  # R, G, B
        np.testing.assert_array_equal(image[channel, 0], pixels[..., channel])


def test_channels_of_several_files_follow_file_order(tmp_path):
    rgb = RNG.integers(0, 256, (6, 5, 3)).astype(np.uint8)
    grey = RNG.integers(0, 256, (6, 5)).astype(np.uint8)
    _write_picture(rgb, tmp_path / "case_0000.png")
    _write_picture(grey, tmp_path / "case_0001.png")
    image, _ = read_case([tmp_path / "case_0000.png", tmp_path / "case_0001.png"], num_channels=4)
    np.testing.assert_array_equal(image[2, 0], rgb[..., 2])
    np.testing.assert_array_equal(image[3, 0], grey)


def test_channel_count_mismatch_names_the_file(tmp_path):
    _write_picture(RNG.integers(0, 256, (6, 5, 3)).astype(np.uint8), tmp_path / "case_0000.png")
    with pytest.raises(VolfnetError, match=r"case_0000\.png: the case's file\(s\) hold 3 channel\(s\).*dataset\.json names 1"):
        read_case([tmp_path / "case_0000.png"], num_channels=1)


@pytest.mark.parametrize("components", [2, 4])
def test_alpha_channel_is_refused_with_the_fix(tmp_path, components):
    _write_picture(RNG.integers(0, 256, (6, 5, components)).astype(np.uint8), tmp_path / "alpha.png")
    with pytest.raises(VolfnetError, match=r"alpha\.png: has an alpha channel .*drop the alpha channel"):
        read_channels(tmp_path / "alpha.png")


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif"])
def test_label_map_round_trip_as_uint8(tmp_path, ending):
    labels = np.zeros((1, 16, 12), np.int16)
    labels[0, 4:9, 3:7] = 1
    labels[0, 10:14, 6:11] = 2
    write_image(labels, _picture_geometry(16, 12), tmp_path / f"seg{ending}")
    assert sitk.ReadImage(str(tmp_path / f"seg{ending}")).GetPixelID() in (sitk.sitkUInt8, sitk.sitkVectorUInt8)
    read_back, geometry = read_segmentation(tmp_path / f"seg{ending}")
    np.testing.assert_array_equal(read_back, labels)
    assert geometry.shape == [1, 16, 12]
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*"))  # atomic: nothing left behind


def test_label_values_above_255_are_written_as_uint16(tmp_path):
    labels = np.array([[[0, 1], [300, 65535]]], np.int32)
    write_image(labels, _picture_geometry(2, 2), tmp_path / "seg.png")
    assert sitk.ReadImage(str(tmp_path / "seg.png")).GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(read_image(tmp_path / "seg.png")[0], labels)
    with pytest.raises(VolfnetError, match=r"seg\.bmp: \.bmp stores whole numbers 0\.\.255"):
        write_image(labels, _picture_geometry(2, 2), tmp_path / "seg.bmp")


def test_png_refuses_a_volume(tmp_path):
    volume = np.zeros((3, 4, 4), np.uint8)
    geometry = ImageGeometry([2.0, 1.0, 1.0], [0.0] * 3, list(IDENTITY_DIRECTION), [3, 4, 4])
    with pytest.raises(VolfnetError, match=r"vol\.png: \.png holds one 2D picture but the array has 3 slices"):
        write_image(volume, geometry, tmp_path / "vol.png")


def test_tiff_stack_round_trip_keeps_spacing_in_the_sidecar(tmp_path):
    volume = RNG.integers(0, 4, (5, 9, 7)).astype(np.uint8)
    geometry = ImageGeometry([3.0, 0.5, 0.25], [0.0] * 3, list(IDENTITY_DIRECTION), [5, 9, 7])
    write_image(volume, geometry, tmp_path / "case_001.tif")
    assert json.loads((tmp_path / "case_001.json").read_text()) == {"spacing": [3.0, 0.5, 0.25]}
    read_back, read_geometry = read_segmentation(tmp_path / "case_001.tif")
    np.testing.assert_array_equal(read_back, volume)
    assert read_geometry.spacing == [3.0, 0.5, 0.25] and read_geometry.shape == [5, 9, 7] and not read_geometry.is_picture_2d


def test_tiff_stack_channel_file_uses_the_case_sidecar_as_nnunet(tmp_path):
    volume = RNG.normal(size=(4, 6, 5)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "case_001_0000.tiff"))
    (tmp_path / "case_001.json").write_text(json.dumps({"spacing": [2.0, 0.8, 0.7]}))
    image, geometry = read_case([tmp_path / "case_001_0000.tiff"], num_channels=1)
    np.testing.assert_allclose(image[0], volume)
    assert geometry.spacing == [2.0, 0.8, 0.7]


def test_tiff_stack_without_sidecar_names_the_missing_file(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 4), np.uint8)), str(tmp_path / "case_001_0000.tif"))
    with pytest.raises(VolfnetError, match=r"case_001_0000\.tif: is a 3D TIFF stack but its spacing sidecar .*case_001\.json is missing"):
        read_channels(tmp_path / "case_001_0000.tif")
    (tmp_path / "case_001.json").write_text(json.dumps({"spacing": [1, 2]}))
    with pytest.raises(VolfnetError, match=r"case_001\.json: must hold"):
        read_channels(tmp_path / "case_001_0000.tif")


# --------------------------------------------------------------------------------------------
# normalisation


def test_rgb_to_0_1_divides_by_255_and_refuses_other_ranges():
    spec = ChannelNormalization("rgb_to_0_1")
    channel = np.array([[[0.0, 51.0, 255.0]]], np.float32)
    np.testing.assert_allclose(normalize_channel(channel, spec, None), [[[0.0, 0.2, 1.0]]], atol=1e-7)
    with pytest.raises(VolfnetError, match=r"case_7\.png channel 0: rgb_to_0_1 normalisation expects 8-bit values 0\.\.255 .*1000"):
        normalize_channel(np.array([[[0.0, 1000.0]]], np.float32), spec, None, "case_7.png channel 0")


def test_channel_names_choose_rgb_to_0_1_and_rgb_letters_are_zscored_as_in_nnunet(roots):
    folder = _make_picture_dataset(roots["raw"], rgb=True, channel_names={"0": "R", "1": "G", "2": "B"})
    raw = RawDataset.open(1, roots["raw"])
    fingerprint = extract_fingerprint(raw.training_cases()[0], raw.dataset_json.channel_names, progress=False)
    assert [n.scheme for n in normalization_for_channels(fingerprint, {0: "R", 1: "G", 2: "B"})] == ["zscore"] * 3
    assert [n.scheme for n in normalization_for_channels(fingerprint, {0: "rgb_to_0_1"})] == ["rgb_to_0_1"]
    assert folder.is_dir()


# --------------------------------------------------------------------------------------------
# datasets


def _disc_case(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An RGB picture of a red disc on a dark noisy background, and its label map."""
    yy, xx = np.mgrid[:size, :size]
    centre = size / 2 + rng.uniform(-4, 4, 2)
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < (size / 4 + rng.uniform(-2, 2)) ** 2
    rgb = rng.integers(10, 60, (size, size, 3))
    rgb[disc] = [220, 40, 40] + rng.integers(-20, 20, (int(disc.sum()), 3))
    return rgb.clip(0, 255).astype(np.uint8), disc.astype(np.uint8)


def _make_picture_dataset(root: Path, rgb: bool = True, channel_names: dict | None = None, num_cases: int = 6, num_test: int = 2) -> Path:
    """``Dataset001_Discs``: RGB (or grey) PNG discs in nnU-Net's layout, one file per case."""
    rng = np.random.default_rng(1)
    folder = root / "Dataset001_Discs"
    for index in range(num_cases + num_test):
        picture, labels = _disc_case(rng)
        picture = picture if rgb else picture[..., 0]
        test = index >= num_cases
        _write_picture(picture, folder / ("imagesTs" if test else "imagesTr") / f"disc_{index:03d}_0000.png")
        _write_picture(labels, folder / ("labelsTs" if test else "labelsTr") / f"disc_{index:03d}.png")
    names = channel_names or ({"0": "R", "1": "G", "2": "B"} if rgb else {"0": "grey"})
    dataset = {"channel_names": names, "labels": {"background": 0, "disc": 1}, "numTraining": num_cases, "file_ending": ".png"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def test_rgb_case_lists_one_file_for_three_channels(roots):
    folder = _make_picture_dataset(roots["raw"])
    cases, problems = list_cases(folder / "imagesTr", ".png", 3, folder / "labelsTr")
    assert not problems and len(cases) == 6 and all(len(case.images) == 1 for case in cases)
    report = check_dataset_integrity(RawDataset.open(1, roots["raw"]))
    assert report.num_channels == 3 and report.label_values_found == [0, 1] and report.shape_max == [1, 32, 32]


def test_integrity_names_a_channel_count_mismatch_and_an_rgb_label(roots):
    folder = _make_picture_dataset(roots["raw"], rgb=False, channel_names={"0": "R", "1": "G", "2": "B"})
    _write_picture(np.zeros((32, 32, 3), np.uint8), folder / "labelsTr" / "disc_000.png")
    with pytest.raises(DataIntegrityError) as caught:
        check_dataset_integrity(RawDataset.open(1, roots["raw"]))
    problems = caught.value.problems
    assert any("disc_001_0000.png: the case's file(s) hold 1 channel(s)" in p and "names 3" in p for p in problems)
    assert any(p.startswith(f"{folder / 'labelsTr' / 'disc_000.png'}: label map holds 3 channels") for p in problems)


def test_a_2d_picture_among_3d_volumes_is_named(roots):
    folder = _make_picture_dataset(roots["raw"], rgb=False, channel_names={"0": "MR"}, num_test=0)
    data = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**data, "file_ending": ".nii.gz"}))
    with pytest.raises(DataIntegrityError) as caught:
        check_dataset_integrity(RawDataset.open(1, roots["raw"]))
    assert any("disc_000_0000.png: is a .png file but dataset.json file_ending is .nii.gz" in p for p in caught.value.problems)


def test_tiff_dataset_mixing_pictures_and_stacks_names_the_odd_case(roots):
    folder = roots["raw"] / "Dataset001_Mixed"
    for index in range(3):
        shape = (4, 8, 8) if index < 2 else (1, 8, 8)
        image = np.full(shape, 5, np.uint8)
        image = image if index < 2 else image[0]
        for sub, name in (("imagesTr", f"c{index}_0000.tif"), ("labelsTr", f"c{index}.tif")):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(image if sub == "imagesTr" else np.zeros_like(image)), str(folder / sub / name))
        if index < 2:
            for sub in ("imagesTr", "labelsTr"):
                (folder / sub / f"c{index}.json").write_text(json.dumps({"spacing": [2.0, 1.0, 1.0]}))
    dataset = {"channel_names": {"0": "MR"}, "labels": {"background": 0}, "numTraining": 3, "file_ending": ".tif"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(DataIntegrityError) as caught:
        check_dataset_integrity(RawDataset.open(1, roots["raw"]))
    assert caught.value.problems == [
        f"{folder / 'imagesTr' / 'c2_0000.tif'}: is a 2D picture but most cases of the dataset are 3D; one dataset holds "
        "2D pictures or 3D volumes, not both"
    ]


def test_pure_2d_dataset_plans_only_the_2d_configuration(roots):
    _make_picture_dataset(roots["raw"])
    raw = RawDataset.open(1, roots["raw"])
    fingerprint = extract_fingerprint(raw.training_cases()[0], raw.dataset_json.channel_names, progress=False)
    plans = Planner(fingerprint, raw.dataset_json, raw.name, PlannerOptions(compute_target="cpu")).plan()
    assert list(plans.configurations) == ["2d"]
    two_d = plans.configuration("2d")
    assert two_d.data_identifier == "2d" and two_d.spacing == [999.0, 1.0, 1.0]
    assert two_d.patch_size[0] == 1 and all(kernel[0] == 1 for kernel in two_d.network.kernel_sizes)
    assert all(stride[0] == 1 for stride in two_d.network.strides) and two_d.mirror_axes == [1, 2]
    assert plans.num_input_channels == 3
    with pytest.raises(VolfnetError, match=r"is a 2D dataset .*PCT-Net is a 3D network"):
        Planner(fingerprint, raw.dataset_json, raw.name, PlannerOptions(compute_target="cpu", network="pctnet")).plan()


def test_prediction_inputs_accept_one_rgb_file_per_case(tmp_path):
    for name in ("a_0000.png", "b_0000.png"):
        _write_picture(RNG.integers(0, 256, (6, 6, 3)).astype(np.uint8), tmp_path / name)
    cases = find_input_cases(tmp_path, num_channels=3)
    assert [(c.case_id, [p.name for p in c.images], c.output_ending) for c in cases] == [
        ("a", ["a_0000.png"], ".png"), ("b", ["b_0000.png"], ".png")
    ]


def test_picture_hd95_is_in_plane_pixels(tmp_path):
    reference = np.zeros((1, 40, 40), np.uint8)
    reference[0, 10:30, 10:30] = 1
    prediction = np.zeros_like(reference)
    prediction[0, 10:30, 13:33] = 1  # shifted 3 pixels
    for name, labels in (("ref.png", reference), ("pred.png", prediction)):
        write_image(labels, _picture_geometry(40, 40), tmp_path / name)
    result = evaluate_case(CasePair("c", tmp_path / "ref.png", tmp_path / "pred.png"), [1])
    metrics = result["metrics"]["1"]
    assert metrics["Dice"] == pytest.approx(2 * 20 * 17 / 800)
    assert metrics["HD95"] == pytest.approx(3.0)  # contour to contour, 1 pixel = 1 unit


# --------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_png_dataset_plan_train_predict_evaluate(roots, tmp_path):
    folder = _make_picture_dataset(roots["raw"], channel_names={"0": "rgb_to_0_1", "1": "rgb_to_0_1", "2": "rgb_to_0_1"})
    assert plan_main(["-d", "1", "--target", "cpu", "-np", "1", "--base-features", "4", "--max-features", "16"]) == 0
    preprocessed = roots["preprocessed"] / "Dataset001_Discs"
    plans = Plans.load(preprocessed / "plans.json")
    assert list(plans.configurations) == ["2d"] and sorted(p.name for p in preprocessed.iterdir() if p.is_dir()) == ["2d"]
    assert [n.scheme for n in plans.configuration("2d").normalization] == ["rgb_to_0_1"] * 3
    cached = np.load(preprocessed / "2d" / "disc_000.npy")
    assert cached.shape[:2] == (3, 1) and 0.0 <= cached.min() and cached.max() <= 1.0  # divided by 255

    common = ["--device", "cpu", "--set", "num_workers=0", "--set", "progress_bar=false", "--set", "val_iterations=1"]
    assert train_main(["1", "2d", "all", *common, "--set", "num_epochs=2", "--set", "iterations_per_epoch=30"]) == 0
    model = roots["results"] / "Dataset001_Discs" / "fmunet__2d"
    assert (model / "fold_all" / "checkpoint_final.pt").is_file()
    assert sorted(p.name for p in (model / "fold_all" / "validation").glob("*.png"))  # validated as PNG label maps

    output = tmp_path / "predictions"
    assert predict_main(["-i", str(folder / "imagesTs"), "-o", str(output), "-d", "1", "-c", "2d", "-f", "all", "--device", "cpu"]) == 0
    for case in ("disc_006", "disc_007"):
        written = sitk.ReadImage(str(output / f"{case}.png"))
        assert written.GetDimension() == 2 and written.GetSize() == (32, 32) and written.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayFromImage(written))) <= {0, 1}

    assert evaluate_main([str(folder / "labelsTs"), str(output), "-l", "1", "-np", "1"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert [case["case"] for case in summary["per_case"]] == ["disc_006", "disc_007"]
    assert summary["mean"]["1"]["Dice"] > 0.8  # a red disc on a dark background: learned in 60 iterations
    assert summary["mean"]["1"]["HD95"] < 4.0  # pixels
