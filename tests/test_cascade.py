"""The cascade (``3d_cascade_fullres``): planned with ``3d_lowres``, trained on the low-resolution
folds' out-of-fold predictions (one-hot input channels, aligned with the image through every
augmentation), predicted with both stages, and ranked by find_best_configuration."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers.commands import TINY_PRETRAINING, TINY_TRAINING
from helpers.planning import fingerprint, plan
from helpers.raw_data import make_raw_dataset
from helpers.roots import make_roots, point_environment_at
from scipy import ndimage

from volfnet.checkpoint import load_checkpoint, save_checkpoint
from volfnet.cli.export_model import main as export_main
from volfnet.cli.find_best_configuration import main as find_best_main
from volfnet.cli.predict import main as predict_main
from volfnet.cli.pretrain import main as pretrain_main
from volfnet.cli.train import main as train_main
from volfnet.data.augmentation import AugmentationConfig
from volfnet.data.batches import PreviousStageInput, training_producer
from volfnet.data.previous_stage import (
    RandomBinaryOperator,
    RemoveRandomComponent,
    _ball,
    binary_operation,
    load_previous_stage,
    one_hot_foreground,
    save_previous_stage,
)
from volfnet.errors import VolfnetError
from volfnet.inference.inputs import find_input_cases, load_input_case
from volfnet.inference.predictor import Predictor
from volfnet.model_folder import checkpoint_path, fold_folder
from volfnet.networks.build import build_network_from_topology
from volfnet.networks.weights import load_weights
from volfnet.planning.plan_and_preprocess import PlanAndPreprocessRequest, plan_and_preprocess
from volfnet.planning.planner import PlannerOptions, cascade_configuration
from volfnet.plans import Plans

DATASET_ID = 7
NETWORK = {
    "name": "fmunet", "feature_channels": [4, 8, 16], "strides": [[2, 2, 2], [2, 2, 2]],
    "kernel_sizes": [[3, 3, 3]] * 3, "dropout": [0.0, 0.0, 0.0], "depth": 1,
}
SPLITS = [{"train": ["case_000", "case_001", "case_002"], "val": ["case_003", "case_004", "case_005"]},
          {"train": ["case_003", "case_004", "case_005"], "val": ["case_000", "case_001", "case_002"]}]
CPU = ["--device", "cpu"]


# ------------------------------------------------------------------ plans
def test_the_planner_adds_the_cascade_with_the_low_resolution_configuration():
    rng = np.random.default_rng(0)
    plans = plan(fingerprint([[1.0, 0.8, 0.8]] * 20, [[rng.integers(250, 350), 420, 420] for _ in range(20)]))
    full, cascade = plans.configuration("3d_fullres"), plans.configuration("3d_cascade_fullres")
    assert cascade.previous_stage == "3d_lowres" and full.previous_stage is None
    assert cascade.data_identifier == full.data_identifier == "3d_fullres"
    assert dataclasses.replace(cascade, previous_stage=None) == full
    assert plans.next_stages("3d_lowres") == ["3d_cascade_fullres"] and plans.next_stages("3d_fullres") == []
    assert cascade.network_input_channels(1, 2) == 3 and full.network_input_channels(1, 2) == 1
    # no low-resolution stage, no cascade
    small = plan(fingerprint([[1.0, 1.0, 1.0]] * 10, [[40, 48, 40]] * 10))
    assert "3d_cascade_fullres" not in small.configurations


def test_a_forced_low_resolution_stage_leaves_the_full_resolution_plan_alone():
    fp = fingerprint([[1.0, 1.0, 1.0]] * 10, [[36, 50, 35]] * 10)
    plain = plan(fp, compute_target="cpu_small")
    forced = plan(fp, compute_target="cpu_small", lowres_factor=2.0)
    assert "3d_lowres" not in plain.configurations
    assert forced.configuration("3d_fullres") == plain.configuration("3d_fullres")
    low = forced.configuration("3d_lowres")
    assert low.spacing == [2.0, 2.0, 2.0] and low.data_identifier == "3d_lowres"
    assert all(m <= p for m, p in zip(low.median_shape, low.patch_size))  # 18 x 25 x 18 fits one patch
    assert forced.configuration("3d_cascade_fullres").previous_stage == "3d_lowres"
    with pytest.raises(VolfnetError, match="--lowres-factor must be above 1"):
        plan(fp, compute_target="cpu_small", lowres_factor=0.5)


def test_a_previous_stage_that_is_not_planned_is_refused():
    plans = plan(fingerprint([[1.0, 1.0, 1.0]] * 10, [[40, 48, 40]] * 10))
    data = plans.to_dict()
    data["configurations"]["3d_cascade_fullres"] = {**data["configurations"]["3d_fullres"], "previous_stage": "3d_lowres"}
    with pytest.raises(VolfnetError, match=r"'3d_cascade_fullres' takes its previous stage from '3d_lowres', which is not planned"):
        Plans.from_dict(data)


# ------------------------------------------------------------------ the data side
def test_binary_operations_equal_those_with_a_ball():
    mask = np.zeros((30, 30, 30), bool)
    mask[6:20, 8:24, 5:25] = True
    mask[22:26, 3:6, 3:6] = True
    for radius in (1, 3):
        ball = _ball(radius)
        assert np.array_equal(binary_operation(mask, "dilation", radius), ndimage.binary_dilation(mask, ball))
        assert np.array_equal(binary_operation(mask, "erosion", radius), ndimage.binary_erosion(mask, ball))
        assert np.array_equal(binary_operation(mask, "opening", radius), ndimage.binary_opening(mask, ball))
        closed = ndimage.binary_erosion(ndimage.binary_dilation(mask, ball), ball, border_value=1)
        assert np.array_equal(binary_operation(mask, "closing", radius), closed)
    # a structure touching the patch border is not eroded from the border (outside counts as inside)
    edge = np.zeros((10, 10, 10), bool)
    edge[:4] = True
    assert binary_operation(edge, "erosion", 2)[0].all() and not binary_operation(edge, "erosion", 2)[3].any()


def test_random_binary_operators_keep_one_label_per_voxel_and_change_the_labels():
    labels = np.zeros((2, 24, 24, 24), np.int16)
    labels[:, 4:12, 4:20, 4:20] = 1
    labels[:, 12:20, 4:20, 4:20] = 2
    data = np.concatenate([np.zeros((2, 1, 24, 24, 24), np.float32), np.stack([one_hot_foreground(s, [1, 2]) for s in labels])], axis=1)
    before = data.copy()
    np.random.seed(3)
    out = RandomBinaryOperator(2, p=1.0, p_per_label=1.0)(data=data)["data"]
    assert (out[:, 1:].sum(axis=1) <= 1).all()  # one-hot stays one-hot (or background)
    assert not np.array_equal(out, before) and np.array_equal(out[:, 0], before[:, 0])  # the image is untouched


def test_remove_random_component_removes_one_small_component_only():
    channel = np.zeros((20, 20, 20), np.float32)
    channel[1:3, 1:3, 1:3] = 1  # small
    channel[10:12, 10:12, 10:12] = 1  # small
    channel[:, :, 14:] = 1  # 30% of the patch: never removed
    data = np.stack([np.zeros_like(channel), channel])[None].copy()
    np.random.seed(0)
    out = RemoveRandomComponent(1, p=1.0, p_per_label=1.0)(data=data)["data"][0, 1]
    assert out.sum() == channel.sum() - 8 and out[:, :, 14:].all()


def test_previous_stage_channels_stay_aligned_with_the_labels_through_augmentation(tmp_path):
    """A previous stage equal to the reference: after rotation, scaling and mirroring, the
    one-hot input channels equal the one-hot of the target wherever the patch is inside."""
    from helpers.training import make_blob_dataset, tiny_plans

    folder = tmp_path / "pre"
    ids = make_blob_dataset(folder, count=3)
    plans = tiny_plans()
    cascade = cascade_configuration(plans.configuration("3d_fullres"), "3d_lowres")
    previous = tmp_path / "previous"
    for case_id in ids:
        seg = np.load(folder / "3d_fullres" / f"{case_id}_seg.npy")[0]
        save_previous_stage(np.maximum(seg, 0), previous, case_id)
    config = AugmentationConfig(rotation_p=1.0, scaling_p=1.0, cascade_binary_operator_p=0.0, cascade_remove_component_p=0.0,
                                noise_p=0, blur_p=0, brightness_p=0, contrast_p=0, low_resolution_p=0, gamma_p=0, inverted_gamma_p=0)
    producer = training_producer(folder / "3d_fullres", ids, cascade, 0, 1, config=config,
                                 previous_stage=PreviousStageInput(previous, (1, 2)))
    for index in range(3):
        batch = producer(index)
        assert batch.data.shape[1] == 3 and batch.data.dtype == np.float32
        target = batch.target[0][:, 0]
        assert np.array_equal(batch.data[:, 1], (target == 1).astype(np.float32))
        assert np.array_equal(batch.data[:, 2], (target == 2).astype(np.float32))
        assert batch.data[:, 1:].sum() > 0
    with pytest.raises(VolfnetError, match="previous stage is '3d_lowres' but previous-stage input was not given"):
        training_producer(folder / "3d_fullres", ids, cascade, 0, 1)
    (previous / f"{ids[1]}.npy").write_bytes(b"")
    with pytest.raises(VolfnetError, match=r"1 previous-stage segmentation\(s\) missing or damaged:\n  .*case_001.npy: the file is empty"):
        training_producer(folder / "3d_fullres", ids, cascade, 0, 1, previous_stage=PreviousStageInput(previous, (1, 2)))
    with pytest.raises(VolfnetError, match=r"does not fit case case_000 of shape"):
        load_previous_stage(previous, ids[0], [1, 2, 3])


def test_pretrained_weights_load_into_the_cascade_with_the_extra_channels_at_zero():
    image_network = build_network_from_topology(_network(), 1, 3)
    cascade_network = build_network_from_topology(_network(), 3, 3)
    report = load_weights(cascade_network, image_network.state_dict(), image_channels=1)
    (key,) = report.adapted_input_channels
    weight = cascade_network.state_dict()[key]
    assert torch.equal(weight[:, :1], image_network.state_dict()[key]) and not weight[:, 1:].any()


def _network():
    from volfnet.plans import NetworkTopology

    return NetworkTopology(**NETWORK)


# ------------------------------------------------------------------ end to end
@pytest.fixture
def cascade_dataset(tmp_path, monkeypatch):
    """A 6-case dataset planned with a tiny network, 3d_lowres at twice the spacing and the
    cascade added (as nnU-Net's add_lowres_and_cascade does), preprocessed, two folds."""
    roots = make_roots(tmp_path)
    point_environment_at(roots, monkeypatch)
    make_raw_dataset(roots["raw"], dataset_id=DATASET_ID, name="Cascade", num_cases=6, shape=(24, 24, 24))
    network = json.dumps(NETWORK)
    request = PlanAndPreprocessRequest(
        dataset=str(DATASET_ID), options=PlannerOptions(compute_target="cpu", lowres=False, plan_2d=False), num_workers=1,
        progress=False, plan_only=True, overrides=["3d_fullres.patch_size=[16, 16, 16]", f"3d_fullres.network={network}"],
    )
    result = plan_and_preprocess(request)
    plans = result.plans
    full = plans.configuration("3d_fullres")
    low = dataclasses.replace(full, data_identifier="3d_lowres", spacing=[2 * s for s in full.spacing], patch_size=[8, 8, 8],
                              median_shape=[s // 2 for s in full.median_shape])
    plans.configurations["3d_lowres"] = low
    plans.configurations["3d_cascade_fullres"] = cascade_configuration(full, "3d_lowres")
    plans.save(result.output_folder / "plans.json")
    plan_and_preprocess(dataclasses.replace(request, plan_only=False, preprocess_only=True, overrides=[]))
    (result.output_folder / "splits.json").write_text(json.dumps(SPLITS))
    return roots, result.output_folder


@pytest.mark.slow
def test_cascade_trains_on_out_of_fold_predictions_and_predicts_with_both_stages(cascade_dataset, tmp_path, capsys, caplog):
    roots, preprocessed = cascade_dataset
    results = roots["results"] / "Dataset007_Cascade"
    # the cascade before its previous stage: a clear error naming the command
    assert train_main(["7", "3d_cascade_fullres", "0", *CPU, *TINY_TRAINING]) == 2
    assert "run `volfnet_train 7 3d_lowres FOLD` for every fold" in capsys.readouterr().err

    for fold in (0, 1):
        assert train_main(["7", "3d_lowres", str(fold), *CPU, *TINY_TRAINING, "--npz"]) == 0
    handover = results / "fmunet__3d_lowres" / "predicted_next_stage" / "3d_cascade_fullres"
    for case in range(6):
        labels = np.load(handover / f"case_{case:03d}.npy")
        image = np.load(preprocessed / "3d_fullres" / f"case_{case:03d}.npy", mmap_mode="r")
        assert labels.shape == image.shape[1:] and set(np.unique(labels)) <= {0, 1, 2}

    for fold in (0, 1):
        assert train_main(["7", "3d_cascade_fullres", str(fold), *CPU, *TINY_TRAINING, "--npz"]) == 0
    cascade_folder = results / "fmunet__3d_cascade_fullres"

    # VolF weights pretrained for 3d_fullres (the cases the cascade shares) load into it: the image
    # filters as pretrained, the previous-stage channels from zero
    assert pretrain_main(["-d", "7", "-c", "3d_fullres", *TINY_PRETRAINING]) == 0
    with caplog.at_level(logging.WARNING, logger="volfnet"):
        assert train_main(["7", "3d_cascade_fullres", "0", *CPU, *TINY_TRAINING, "--pretrained", "--tag", "volf"]) == 0
    assert "the image channels keep their filters, the extra (previous-stage) channels start at zero" in caplog.text
    checkpoint = load_checkpoint(checkpoint_path(fold_folder(cascade_folder, 0), "final"))
    assert checkpoint["spec"]["num_input_channels"] == 3  # the image and labels 1 and 2
    (input_key,) = build_network_from_topology(_network(), 3, 3).input_conv_keys
    assert checkpoint["model_state_dict"][input_key].shape[1] == 3
    assert (fold_folder(cascade_folder, 0) / "validation" / "summary.json").is_file()

    # prediction: the low-resolution stage runs first, from the folder beside the cascade
    images = roots["raw"] / "Dataset007_Cascade" / "imagesTr"
    auto = tmp_path / "auto"
    assert predict_main(["-i", str(images), "-o", str(auto), "-m", str(cascade_folder), *CPU, "--disable-tta", "-np", "1"]) == 0
    reference = sitk.ReadImage(str(images / "case_000_0000.nii.gz"))
    output = sitk.ReadImage(str(auto / "case_000.nii.gz"))
    assert output.GetSize() == reference.GetSize() and output.GetSpacing() == reference.GetSpacing()
    # the previous stage's labels the predictor feeds the cascade are those training fed it:
    # case_000 was validated by fold 1 of 3d_lowres, so that fold alone gives the same map. Two
    # iterations learn nothing, so fold 1's weights are perturbed first (its map then holds
    # every label) and its validation redone with --val, which rewrites the handover.
    lowres_checkpoint = checkpoint_path(fold_folder(results / "fmunet__3d_lowres", 1), "final")
    state = load_checkpoint(lowres_checkpoint)
    generator = torch.Generator().manual_seed(0)
    state["model_state_dict"] = {k: v + 0.5 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                                 for k, v in state["model_state_dict"].items()}
    save_checkpoint(lowres_checkpoint, state)
    assert train_main(["7", "3d_lowres", "1", "--val", *CPU]) == 0
    low_fold = Predictor.from_model_folder(results / "fmunet__3d_lowres", folds=[1], device="cpu", progress=False)
    cascade = Predictor.from_model_folder(cascade_folder, device="cpu", previous_stage=low_fold, progress=False)
    (case,) = [c for c in find_input_cases(images, 1) if c.case_id == "case_000"]
    prepared = load_input_case(case, cascade.plans, "3d_cascade_fullres", previous_stage_configuration="3d_lowres")
    network_input = cascade.network_input(prepared)
    trained_on = np.load(handover / "case_000.npy")
    assert set(np.unique(trained_on)) == {0, 1, 2}
    assert network_input.shape == (3, *trained_on.shape)
    assert np.array_equal(network_input[1:], one_hot_foreground(trained_on, [1, 2]))
    # ... or from its predictions (nnU-Net's -prev_stage_predictions)
    low = tmp_path / "low"
    assert predict_main(["-i", str(images), "-o", str(low), "-d", "7", "-c", "3d_lowres", *CPU, "--disable-tta"]) == 0
    given = tmp_path / "given"
    assert predict_main(["-i", str(images), "-o", str(given), "-m", str(cascade_folder), *CPU, "--disable-tta", "-prev-stage", str(low)]) == 0
    assert len(list(given.glob("*.nii.gz"))) == 6
    missing = tmp_path / "missing"
    missing.mkdir()
    capsys.readouterr()
    assert predict_main(["-i", str(images), "-o", str(tmp_path / "x"), "-m", str(cascade_folder), *CPU, "--prev-stage", str(missing)]) != 0
    assert "previous-stage prediction of case case_000 not found" in capsys.readouterr().err
    assert predict_main(["-i", str(images), "-o", str(tmp_path / "y"), "-d", "7", "-c", "3d_lowres", *CPU, "--prev-stage", str(low)]) == 2
    assert "3d_lowres is not a cascade configuration" in capsys.readouterr().err

    # sharing: the archive of a cascade says that its 3d_lowres model must travel too
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="volfnet"):
        assert export_main(["-m", str(cascade_folder), "-o", str(tmp_path / "cascade.zip")]) == 0
    assert "3d_cascade_fullres is a cascade: it predicts with its 3d_lowres model" in caplog.text

    # model selection sees the cascade like any configuration, and its command predicts
    assert find_best_main(["-d", "7", "-np", "1"]) == 0
    instructions = json.loads((results / "inference_instructions.json").read_text())
    names = [c["name"] for c in instructions["candidates"]]
    assert "fmunet__3d_cascade_fullres" in names and "fmunet__3d_lowres" in names


def test_a_lowres_fold_writes_the_cascade_input_only_where_the_cascade_cases_exist(tmp_path, caplog):
    from volfnet.training.train import next_stage_folders

    plans = plan(fingerprint([[1.0, 1.0, 1.0]] * 10, [[36, 50, 35]] * 10), compute_target="cpu_small", lowres_factor=2.0)
    model = tmp_path / "fmunet__3d_lowres"
    with caplog.at_level(logging.WARNING, logger="volfnet"):
        assert next_stage_folders(plans, "3d_lowres", tmp_path, model) == {}
    assert "3d_cascade_fullres is not preprocessed" in caplog.text and "rerun this fold with --val" in caplog.text
    (tmp_path / "3d_fullres").mkdir()
    assert next_stage_folders(plans, "3d_lowres", tmp_path, model) == {
        "3d_cascade_fullres": model / "predicted_next_stage" / "3d_cascade_fullres"
    }
    assert next_stage_folders(plans, "3d_fullres", tmp_path, model) == {}
