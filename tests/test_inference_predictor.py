"""The Predictor on a hand-made model folder: folds, geometry, TTA, postprocessing, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers.images import assert_same_geometry, put_nan, read_image, rewrite, write_volume
from helpers.model_folder import CASE_SPACINGS, CONFIGURATION, DATASET_NAME, FOLDS, NUM_CLASSES, PATCH, SHAPE, model_environment
from scipy import ndimage
from torch import nn

from volfnet.checkpoint import CheckpointSpec, save_checkpoint
from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.evaluation.postprocessing import POSTPROCESSING_FILE, PostprocessingDecision, save_postprocessing
from volfnet.inference import openvino_backend
from volfnet.inference.inputs import find_input_cases, single_file_case
from volfnet.inference.openvino_backend import OpenVinoNetwork, check_backend
from volfnet.inference.predictor import Predictor
from volfnet.inference.sliding_window import tile_starts
from volfnet.io.image_io import read_case
from volfnet.model_folder import checkpoint_path, fold_folder, write_model_folder_files
from volfnet.networks.build import build_network_from_topology
from volfnet.networks.pctnet import published_pctnet_topology
from volfnet.plans import apply_override
from volfnet.io.case_store import load_case

ROTATION = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)
SHIFTED_ORIGIN = (-20.0, 33.5, 4.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with model_environment(tmp_path_factory.mktemp("predictor")) as model:
        yield model


@pytest.fixture(scope="module")
def predictor(setup):
    """Both folds, without mirroring (the mirroring test counts passes on its own network)."""
    return Predictor.from_model_folder(setup.model_folder, device="cpu", use_mirroring=False, num_workers=0, progress=False)


class Pointwise(nn.Module):
    """A 1x1x1 convolution (flip-equivariant) that counts its forward passes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv3d(1, NUM_CLASSES, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += x.shape[0]
        return self.conv(x)


class Threshold(nn.Module):
    """Class 1 where the (normalised) intensity is above 0, else background; class 2 never."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x, torch.full_like(x, -100.0)], dim=1)


# --- loading a model folder ---------------------------------------------------------------------


def test_from_model_folder_loads_every_fold_with_its_weights(setup, predictor):
    assert len(predictor.networks) == len(FOLDS)
    assert predictor.patch_size == PATCH and predictor.num_classes == NUM_CLASSES
    assert predictor.postprocessing is None
    for fold, network in zip(FOLDS, predictor.networks):
        saved = torch.load(checkpoint_path(fold_folder(setup.model_folder, fold), "final"), weights_only=True)["model_state_dict"]
        assert network.deep_supervision is False
        for name, tensor in network.state_dict().items():
            torch.testing.assert_close(tensor, saved[name])


def test_fold_average_is_the_mean_of_the_single_fold_logits(setup, predictor):
    data, _, _ = load_case(setup.preprocessed_folder, "case_001", with_seg=False)
    both = predictor.predict_logits(data)
    singles = [
        Predictor.from_model_folder(setup.model_folder, folds=[fold], device="cpu", use_mirroring=False, progress=False).predict_logits(data)
        for fold in FOLDS
    ]
    assert both.shape == (NUM_CLASSES, *data.shape[1:])
    torch.testing.assert_close(both, (singles[0] + singles[1]) / 2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(singles[0], singles[1])  # the folds really differ


# --- predicting ---------------------------------------------------------------------------------


def test_output_geometry_is_the_input_geometry_and_direction_does_not_change_the_labels(setup, predictor, tmp_path):
    source = setup.raw_folder / "imagesTr" / "case_001_0000.nii.gz"
    images = tmp_path / "in"
    images.mkdir()
    shutil.copyfile(source, images / "plain_0000.nii.gz")
    rewrite(source, images / "rotated_0000.nii.gz", origin=SHIFTED_ORIGIN, direction=ROTATION)
    summary = predictor.predict_folder(images, tmp_path / "out")
    assert summary.predicted == ["plain", "rotated"] and summary.skipped == []
    plain, plain_image = read_image(tmp_path / "out" / "plain.nii.gz")
    rotated, rotated_image = read_image(tmp_path / "out" / "rotated.nii.gz")
    assert_same_geometry(plain_image, sitk.ReadImage(str(images / "plain_0000.nii.gz")))
    assert_same_geometry(rotated_image, sitk.ReadImage(str(images / "rotated_0000.nii.gz")))
    assert rotated_image.GetDirection() == pytest.approx(ROTATION)
    assert plain.dtype == np.uint8 and set(np.unique(plain)) <= {0, 1, 2}
    assert len(np.unique(plain)) >= 2  # the random network predicts more than one label, so equality means something
    np.testing.assert_array_equal(plain, rotated)  # voxels are predicted as stored; the direction only places them


def test_raw_images_and_the_preprocessing_cache_give_the_same_prediction(setup, predictor, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for case in ("case_001", "case_002"):
        shutil.copyfile(setup.raw_folder / "imagesTr" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz")
    predictor.predict_folder(images, tmp_path / "from_raw")
    cached = predictor.predict_cached_cases(setup.preprocessed_folder, ["case_001", "case_002"], tmp_path / "from_cache")
    assert cached.predicted == ["case_001", "case_002"]
    for case in ("case_001", "case_002"):
        from_raw, _ = read_image(tmp_path / "from_raw" / f"{case}.nii.gz")
        from_cache, cache_image = read_image(tmp_path / "from_cache" / f"{case}.nii.gz")
        np.testing.assert_array_equal(from_raw, from_cache)
        assert_same_geometry(cache_image, sitk.ReadImage(str(setup.raw_folder / "labelsTr" / f"{case}.nii.gz")))


def test_predict_array_predict_files_and_a_single_file_input_agree(setup, predictor, tmp_path):
    source = setup.raw_folder / "imagesTr" / "case_002_0000.nii.gz"
    array, _ = read_image(source)
    data, geometry = read_case([source])
    in_memory = predictor.predict_array(data, geometry, "case_002", with_probabilities=True)
    from_files = predictor.predict_files([source], tmp_path / "files" / "case_002.nii.gz", save_probabilities=True)
    single = predictor.predict(source, tmp_path / "single")
    assert single.predicted == ["case_002"]  # named after the file without _0000
    written, _ = read_image(tmp_path / "single" / "case_002.nii.gz")
    np.testing.assert_array_equal(in_memory.segmentation, from_files.segmentation)
    np.testing.assert_array_equal(in_memory.segmentation, written)
    np.testing.assert_array_equal(in_memory.probabilities, from_files.probabilities)
    assert in_memory.segmentation.shape == array.shape
    assert (tmp_path / "files" / "case_002.npz").is_file()


def test_background_preprocessing_gives_the_same_outputs(setup, predictor, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for case in ("case_000", "case_001", "case_002"):
        shutil.copyfile(setup.raw_folder / "imagesTr" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz")
    predictor.predict_folder(images, tmp_path / "inline")
    predictor.num_workers = 1
    try:
        predictor.predict_folder(images, tmp_path / "workers")
    finally:
        predictor.num_workers = 0
    for case in ("case_000", "case_001", "case_002"):
        np.testing.assert_array_equal(read_image(tmp_path / "inline" / f"{case}.nii.gz")[0], read_image(tmp_path / "workers" / f"{case}.nii.gz")[0])


def test_mirroring_runs_every_flip_and_disabling_it_runs_one_pass(setup):
    data, _, _ = load_case(setup.preprocessed_folder, "case_000", with_seg=False)
    configuration = setup.plans.configuration(CONFIGURATION)
    padded = [max(s, p) for s, p in zip(data.shape[1:], PATCH)]
    tiles = int(np.prod([len(s) for s in tile_starts(padded, PATCH)]))
    results = {}
    for mirroring in (True, False):
        network = Pointwise()
        predictor = Predictor([network], setup.plans, CONFIGURATION, setup.dataset_json, device="cpu", use_mirroring=mirroring, progress=False)
        results[mirroring] = predictor.predict_logits(data)
        passes = 2 ** len(configuration.mirror_axes) if mirroring else 1
        assert network.calls == tiles * passes
    # a flip-equivariant network: mirroring changes nothing, so the flips are undone correctly
    torch.testing.assert_close(results[True], results[False], rtol=1e-5, atol=1e-5)


def test_deep_supervision_is_off_while_predicting_and_restored_after(setup):
    configuration = setup.plans.configuration(CONFIGURATION)
    network = build_network_from_topology(configuration.network, 1, NUM_CLASSES, deep_supervision=True)
    predictor = Predictor([network], setup.plans, CONFIGURATION, setup.dataset_json, device="cpu", use_mirroring=False, progress=False)
    data, _, _ = load_case(setup.preprocessed_folder, "case_000", with_seg=False)
    logits = predictor.predict_logits(data)
    assert logits.shape == (NUM_CLASSES, *data.shape[1:])
    assert network.deep_supervision is True


def two_blob_image(path: Path, spacing) -> None:
    """A dim body with a big and a small bright blob, zero outside the body."""
    image = np.zeros(SHAPE, np.float32)
    image[2:-2, 2:-2, 1:-1] = 100.0
    image[4:12, 4:12, 2:6] = 1000.0  # 256 voxels
    image[14:16, 15:17, 2:4] = 1000.0  # 8 voxels
    write_volume(image, path, spacing)


def test_postprocessing_json_is_loaded_and_keeps_the_largest_component(setup, tmp_path):
    two_blob_image(tmp_path / "in" / "blobs_0000.nii.gz", CASE_SPACINGS[0])
    decision = PostprocessingDecision(foreground_largest_component=True)
    outputs = {}
    for name, postprocessing in (("raw", None), ("post", decision)):
        predictor = Predictor([Threshold()], setup.plans, CONFIGURATION, setup.dataset_json, device="cpu",
                              postprocessing=postprocessing, num_workers=0, progress=False)
        predictor.predict_folder(tmp_path / "in", tmp_path / name)
        outputs[name], _ = read_image(tmp_path / name / "blobs.nii.gz")
    structure = np.ones((3, 3, 3))
    assert ndimage.label(outputs["raw"] == 1, structure)[1] == 2
    assert ndimage.label(outputs["post"] == 1, structure)[1] == 1
    assert np.sum(outputs["post"] == 1) == np.sum(outputs["raw"] == 1) - np.sum(outputs["raw"][13:18, 14:18, 1:5] == 1)
    # from a model folder: the file beside plans.json is picked up
    copy = tmp_path / "model" / setup.model_folder.name
    shutil.copytree(setup.model_folder, copy)
    save_postprocessing(decision, copy / POSTPROCESSING_FILE)
    loaded = Predictor.from_model_folder(copy, folds=[0], device="cpu", progress=False)
    assert loaded.postprocessing.foreground_largest_component is True and loaded.postprocessing.per_label == []


def test_a_bad_case_does_not_stop_the_others_and_skip_existing_resumes(setup, predictor, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for case in ("case_000", "case_002"):
        shutil.copyfile(setup.raw_folder / "imagesTr" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz")
    source = setup.raw_folder / "imagesTr" / "case_001_0000.nii.gz"
    rewrite(source, images / "case_001_0000.mha", change=put_nan)  # NIfTI readers turn NaN into 0; MetaImage keeps it
    with pytest.raises(DataIntegrityError, match="case_001_0000.mha: image contains 1 NaN") as info:
        predictor.predict_folder(images, tmp_path / "out")
    assert "1 of 3 case(s) could not be predicted" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_000.nii.gz", "case_002.nii.gz"]
    rewrite(source, images / "case_001_0000.mha")
    summary = predictor.predict_folder(images, tmp_path / "out", skip_existing=True)
    assert summary.predicted == ["case_001"] and summary.skipped == ["case_000", "case_002"]
    assert (tmp_path / "out" / "case_001.mha").is_file()  # the output keeps the input's format


def test_pctnet_model_folder_predicts_with_its_fixed_input_size(setup, tmp_path):
    topology = published_pctnet_topology(1, tuple(PATCH), feature_channels=(4, 8, 16, 16, 32), num_heads=(2, 2, 4), window_size=2)
    plans = apply_override(setup.plans, f"{CONFIGURATION}.network={json.dumps(dataclasses.asdict(topology))}")
    configuration = plans.configuration(CONFIGURATION)
    folder = tmp_path / DATASET_NAME / f"pctnet__{CONFIGURATION}"
    write_model_folder_files(folder, plans, setup.preprocessed_folder.parent / "dataset.json")
    spec = CheckpointSpec("segmentation", configuration.network, 1, NUM_CLASSES, configuration.patch_size, configuration.spacing,
                          configuration.normalization, plans.transpose_forward)
    torch.manual_seed(0)
    network = build_network_from_topology(configuration.network, 1, NUM_CLASSES)
    save_checkpoint(checkpoint_path(fold_folder(folder, "all"), "final"), {"model_state_dict": network.state_dict(), "spec": spec.to_dict()})
    predictor = Predictor.from_model_folder(folder, device="cpu", use_mirroring=False, progress=False)
    data, _, _ = load_case(setup.preprocessed_folder, "case_000", with_seg=False)
    assert data.shape[1] < PATCH[0] and data.shape[3] > PATCH[2]  # padded along z, tiled along x
    summary = predictor.predict_folder(setup.input_folder, tmp_path / "out")
    assert summary.predicted == ["case_000"]
    label, image = read_image(tmp_path / "out" / "case_000.nii.gz")
    assert_same_geometry(image, sitk.ReadImage(str(setup.input_folder / "case_000_0000.nii.gz")))
    assert label.shape == SHAPE and set(np.unique(label)) <= {0, 1, 2}


# --- bad input ----------------------------------------------------------------------------------


def test_empty_input_folder(predictor, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    with pytest.raises(VolfnetError, match=r"in: no images to predict"):
        predictor.predict_folder(tmp_path / "in", tmp_path / "out")


def test_output_folder_equal_to_input_folder(setup, predictor):
    with pytest.raises(VolfnetError, match="the output folder is the input folder"):
        predictor.predict_folder(setup.input_folder, setup.input_folder / ".." / setup.input_folder.name)


def test_wrong_naming_names_the_file(setup, predictor, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    shutil.copyfile(setup.input_folder / "case_000_0000.nii.gz", images / "case_000_0000.nii.gz")
    shutil.copyfile(setup.input_folder / "case_000_0000.nii.gz", images / "scan.nii.gz")
    with pytest.raises(DataIntegrityError, match=r"scan.nii.gz: name does not follow \{case\}_\{CCCC\}<ending>"):
        predictor.predict_folder(images, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing predicted before the input is known to be good


def test_a_case_with_more_channels_than_the_model_takes(setup, predictor, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for channel in (0, 1):
        shutil.copyfile(setup.input_folder / "case_000_0000.nii.gz", images / f"case_000_{channel:04d}.nii.gz")
    with pytest.raises(DataIntegrityError, match=r"case_000: has channel files \['0000', '0001'\] but the model expects 1 channel"):
        predictor.predict_folder(images, tmp_path / "out")


def test_missing_channel_file_and_free_names_for_multichannel_models(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataIntegrityError, match=r"b: missing channel file\(s\) \['b_0001.nii.gz'\]") as info:
        find_input_cases(tmp_path, num_channels=2)
    assert len(info.value.problems) == 1
    free = tmp_path / "free"
    free.mkdir()
    (free / "scan one.nrrd").write_bytes(b"")
    (free / "scan two.mhd").write_bytes(b"")
    assert [(c.case_id, c.output_ending) for c in find_input_cases(free, 1)] == [("scan one", ".nrrd"), ("scan two", ".mha")]
    with pytest.raises(DataIntegrityError, match="scan one.nrrd: name does not follow"):
        find_input_cases(free, 2)
    assert single_file_case(tmp_path / "a_0000.nii.gz", 1).case_id == "a"
    with pytest.raises(VolfnetError, match="takes 2 channels"):
        single_file_case(tmp_path / "a_0000.nii.gz", 2)


def test_corrupt_checkpoint(setup, tmp_path):
    copy = tmp_path / setup.model_folder.name
    shutil.copytree(setup.model_folder, copy)
    broken = checkpoint_path(fold_folder(copy, 1), "final")
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(VolfnetError, match=r"fold_1/checkpoint_final.pt: not a readable PyTorch checkpoint"):
        Predictor.from_model_folder(copy, device="cpu")


def test_no_checkpoint_for_a_requested_fold(setup):
    with pytest.raises(VolfnetError, match=r"fold_3/checkpoint_final.pt: no checkpoint for fold 3 \(folds with checkpoint_final.pt: \[0, 1\]\)"):
        Predictor.from_model_folder(setup.model_folder, folds=[0, 3], device="cpu")


def test_checkpoint_that_disagrees_with_the_plans(setup, tmp_path):
    copy = tmp_path / setup.model_folder.name
    shutil.copytree(setup.model_folder, copy)
    path = checkpoint_path(fold_folder(copy, 0), "final")
    state = torch.load(path, weights_only=True)
    state["spec"]["num_classes"] = 5
    save_checkpoint(path, state)
    with pytest.raises(VolfnetError, match=r"fold_0/checkpoint_final.pt: does not match .*classes: checkpoint 5, plans 3"):
        Predictor.from_model_folder(copy, folds=[0], device="cpu")
    state["spec"]["num_classes"] = NUM_CLASSES
    state["model_state_dict"].pop("project.weight")
    save_checkpoint(path, state)
    with pytest.raises(VolfnetError, match=r"the weights do not fit .*project.weight"):
        Predictor.from_model_folder(copy, folds=[0], device="cpu")


def test_nan_in_an_image_names_the_file(setup, predictor, tmp_path):
    rewrite(setup.input_folder / "case_000_0000.nii.gz", tmp_path / "bad_0000.nrrd", change=put_nan)
    with pytest.raises(VolfnetError, match=r"bad_0000.nrrd: image contains 1 NaN or infinite voxel"):
        predictor.predict_files([tmp_path / "bad_0000.nrrd"], tmp_path / "bad.nii.gz")


# --- the CPU speed lever: fewer mirror passes --------------------------------------------------------


def test_mirror_axes_subset_runs_two_passes_per_axis_and_unknown_axes_are_refused(setup):
    data, _, _ = load_case(setup.preprocessed_folder, "case_000", with_seg=False)
    trained = list(setup.plans.configuration(CONFIGURATION).mirror_axes)
    padded = [max(s, p) for s, p in zip(data.shape[1:], PATCH)]
    tiles = int(np.prod([len(s) for s in tile_starts(padded, PATCH)]))
    network = Pointwise()
    predictor = Predictor([network], setup.plans, CONFIGURATION, setup.dataset_json, device="cpu", mirror_axes=trained[-1:], progress=False)
    reference = Predictor([Pointwise()], setup.plans, CONFIGURATION, setup.dataset_json, device="cpu", use_mirroring=False, progress=False)
    torch.testing.assert_close(predictor.predict_logits(data), reference.predict_logits(data), rtol=1e-5, atol=1e-5)
    assert network.calls == tiles * 2
    no_trained_flips = setup.plans.configuration(CONFIGURATION)
    plans = apply_override(setup.plans, f"{CONFIGURATION}.mirror_axes=[1, 2]")
    with pytest.raises(VolfnetError, match=r"mirror axes \[0\]: training mirrored only axes \[1, 2\]"):
        Predictor([Pointwise()], plans, CONFIGURATION, setup.dataset_json, device="cpu", mirror_axes=[0])
    assert no_trained_flips.mirror_axes == trained  # the override made a copy


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside torch.compile
def test_compiled_networks_give_the_eager_logits_and_are_compiled_once(setup):
    data, _, _ = load_case(setup.preprocessed_folder, "case_000", with_seg=False)
    network = Pointwise()
    eager = Predictor([network], setup.plans, CONFIGURATION, setup.dataset_json, device="cpu", use_mirroring=False, progress=False)
    compiled = Predictor([network], setup.plans, CONFIGURATION, setup.dataset_json, device="cpu", use_mirroring=False, compile=True,
                         progress=False)
    expected = eager.predict_logits(data)
    first = compiled.predict_logits(data)
    wrappers = compiled._forward_networks()
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled.predict_logits(data), expected, rtol=1e-5, atol=1e-5)
    assert compiled._forward_networks() is wrappers and wrappers[0] is not network  # one compiled wrapper, reused
    assert eager._forward_networks() == [network]


# --- the OpenVINO backend (optional package) ------------------------------------------------------


def test_openvino_backend_gives_the_torch_logits_and_converts_once_per_shape(setup):
    if not openvino_backend.openvino_available():  # checked without importing it (its import warns about torch.jit)
        pytest.skip("the optional openvino package is not installed (pip install openvino)")
    data, _, _ = load_case(setup.preprocessed_folder, "case_000", with_seg=False)
    torch_predictor = Predictor.from_model_folder(setup.model_folder, folds=[0], device="cpu", progress=False)
    openvino_predictor = Predictor.from_model_folder(setup.model_folder, folds=[0], device="cpu", backend="openvino", progress=False)
    expected = torch_predictor.predict_logits(data)
    torch.testing.assert_close(openvino_predictor.predict_logits(data), expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(openvino_predictor.predict_logits(data), expected, rtol=1e-3, atol=1e-3)
    (wrapper,) = openvino_predictor._forward_networks()
    assert isinstance(wrapper, OpenVinoNetwork)
    assert list(wrapper._compiled) == [(2, 1, *PATCH)]  # one window shape, mirror passes paired: converted once


def test_backend_problems_are_clear_errors(setup, monkeypatch):
    with pytest.raises(VolfnetError, match=r"unknown inference backend 'onnx'; choose one of \['torch', 'openvino'\]"):
        check_backend("onnx", torch.device("cpu"))
    with pytest.raises(VolfnetError, match="the openvino backend runs on the CPU; predict with --device cpu"):
        check_backend("openvino", torch.device("cuda"))
    monkeypatch.setattr(openvino_backend, "openvino_available", lambda: False)
    with pytest.raises(VolfnetError, match=r"needs the openvino package: pip install openvino"):
        Predictor([Pointwise()], setup.plans, CONFIGURATION, setup.dataset_json, device="cpu", backend="openvino")
    monkeypatch.undo()
    if openvino_backend.openvino_available():
        with pytest.raises(VolfnetError, match="compile applies to the torch backend"):
            Predictor([Pointwise()], setup.plans, CONFIGURATION, setup.dataset_json, device="cpu", backend="openvino", compile=True)
