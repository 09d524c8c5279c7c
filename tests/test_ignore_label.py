"""nnU-Net's ignore label (sparse annotations): voxels labelled ``ignore`` carry no training
signal, are never foreground centres, are left out of the fingerprint and of every score, and
the network never predicts them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers.images import write_volume
from helpers.raw_data import make_raw_dataset

from volfnet.cli.plan_and_preprocess import main as plan_main
from volfnet.cli.train import main as train_main
from volfnet.errors import VolfnetError
from volfnet.evaluation.evaluate import evaluate_folder
from volfnet.inference.predictor import Predictor
from volfnet.io.dataset import DatasetJson, RawDataset
from volfnet.io.integrity import check_dataset_integrity
from volfnet.planning.fingerprint import fingerprint_arrays
from volfnet.io.case_store import list_preprocessed_cases, load_properties
from volfnet.training.losses import DiceCEConfig, dice_ce_loss

IGNORE = 3


def _dataset_json(labels: dict) -> dict:
    return {"channel_names": {"0": "MR"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}


def test_dataset_json_keeps_ignore_apart_from_the_classes():
    parsed = DatasetJson.from_dict(_dataset_json({"background": 0, "a": 1, "b": 2, "ignore": IGNORE}), "dataset.json")
    assert parsed.labels == {"background": 0, "a": 1, "b": 2}
    assert parsed.ignore_label == IGNORE and parsed.num_classes == 3 and parsed.foreground_labels == [1, 2]
    assert parsed.allowed_label_values == [0, 1, 2, IGNORE]
    assert DatasetJson.from_dict(_dataset_json({"background": 0, "a": 1}), "dataset.json").ignore_label is None


def test_ignore_must_be_the_highest_label_value():
    with pytest.raises(VolfnetError, match=r"dataset.json: the 'ignore' label must have the highest value .*got 1 .*up to 2"):
        DatasetJson.from_dict(_dataset_json({"background": 0, "ignore": 1, "a": 2}), "dataset.json")
    with pytest.raises(VolfnetError, match="'ignore' label"):
        DatasetJson.from_dict(_dataset_json({"background": 0, "a": 1, "ignore": [2, 3]}), "dataset.json")


def test_ignored_voxels_give_no_loss_and_no_gradient():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 6, 6, 6), generator=generator)
    ignored = torch.rand(target.shape, generator=generator) < 0.6
    target[ignored] = IGNORE
    logits = torch.randn(2, 3, 6, 6, 6, generator=generator, requires_grad=True)
    config = DiceCEConfig(ignore_label=IGNORE)
    loss = dice_ce_loss(logits, target, config)
    loss.backward()
    grad_at_ignored = logits.grad.movedim(1, -1)[ignored[:, 0]]
    assert torch.count_nonzero(grad_at_ignored) == 0
    assert torch.count_nonzero(logits.grad.movedim(1, -1)[~ignored[:, 0]]) > 0
    # the cross-entropy part is the mean over the annotated voxels only
    ce_only = dice_ce_loss(logits.detach(), target, DiceCEConfig(dice_weight=0.0, ignore_label=IGNORE))
    valid = ~ignored[:, 0]
    manual = torch.nn.functional.cross_entropy(logits.detach().movedim(1, -1)[valid], target[:, 0][valid])
    assert ce_only.item() == pytest.approx(manual.item(), rel=1e-5)
    # whatever the network says inside the ignored voxels, the loss does not change
    changed = logits.detach().clone()
    changed.movedim(1, -1)[ignored[:, 0]] = torch.randn(int(ignored.sum()), 3, generator=generator) * 10
    assert dice_ce_loss(changed, target, config).item() == pytest.approx(dice_ce_loss(logits.detach(), target, config).item(), rel=1e-5)


def test_a_patch_with_only_ignored_voxels_has_a_finite_zero_cross_entropy():
    target = torch.full((1, 1, 4, 4, 4), IGNORE)
    loss = dice_ce_loss(torch.randn(1, 3, 4, 4, 4), target, DiceCEConfig(dice_weight=0.0, ignore_label=IGNORE))
    assert loss.item() == 0.0


def test_fingerprint_leaves_ignored_voxels_out_of_the_foreground_intensities(tmp_path):
    image = np.full((1, 8, 8, 8), 10.0, np.float32)
    seg = np.zeros((1, 8, 8, 8), np.int16)
    seg[0, 2:4] = 1
    seg[0, 4:8] = IGNORE
    image[0, 4:8] = 1000.0  # the ignored voxels are far brighter: they must not appear
    image[0, 2:4] = 50.0
    from volfnet.io.dataset import CaseFiles
    from volfnet.io.image_io import ImageGeometry

    geometry = ImageGeometry([1.0] * 3, [0.0] * 3, list(np.eye(3).ravel()), [8, 8, 8])
    *_, samples = fingerprint_arrays(CaseFiles("c", []), image, geometry, seg, 100, ignore_label=IGNORE)
    assert set(np.unique(samples[0])) == {50.0}


def test_evaluation_leaves_ignored_voxels_out(tmp_path):
    reference = np.zeros((10, 10, 10), np.uint8)
    reference[2:5, 2:5, 2:5] = 1
    reference[6:, :, :] = IGNORE
    prediction = np.zeros_like(reference)
    prediction[2:5, 2:5, 2:5] = 1
    prediction[6:, :5, :] = 1  # anything inside the ignored region is not scored
    write_volume(reference, tmp_path / "gt" / "case.nii.gz")
    write_volume(prediction, tmp_path / "pred" / "case.nii.gz")
    summary = evaluate_folder(tmp_path / "gt", tmp_path / "pred", {"background": 0, "a": 1}, num_workers=1, ignore_label=IGNORE)
    assert summary["mean"]["1"]["Dice"] == 1.0
    assert summary["per_case"][0]["metrics"]["1"]["FP"] == 0
    assert summary["ignore_label"] == IGNORE
    unmasked = evaluate_folder(tmp_path / "gt", tmp_path / "pred", {"background": 0, "a": 1}, num_workers=1)
    assert unmasked["mean"]["1"]["Dice"] < 0.5  # the same files scored without the ignore label


def _sparse_dataset(raw_root, dataset_id: int = 1, held_out: int = 2):
    """Blob cases whose labels are kept on three slices only (the rest is ``ignore``: about 85% of
    the voxels), plus ``held_out`` fully labelled cases outside the dataset for scoring."""
    folder = make_raw_dataset(raw_root, dataset_id=dataset_id, num_cases=8, shape=(20, 24, 28), num_labels=1, seed=3)
    outside = raw_root / "heldout"
    for index in range(8 - held_out, 8):
        case = f"case_{index:03d}"
        (outside / "images").mkdir(parents=True, exist_ok=True)
        (outside / "labels").mkdir(parents=True, exist_ok=True)
        (folder / "imagesTr" / f"{case}_0000.nii.gz").rename(outside / "images" / f"{case}_0000.nii.gz")
        (folder / "labelsTr" / f"{case}.nii.gz").rename(outside / "labels" / f"{case}.nii.gz")
    for path in sorted((folder / "labelsTr").iterdir()):
        image = sitk.ReadImage(str(path))
        labels = sitk.GetArrayFromImage(image)
        sparse = np.full_like(labels, 2)
        for z in (8, 10, 12):  # through the blob: both classes annotated there
            sparse[z] = labels[z]
        out = sitk.GetImageFromArray(sparse)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(path))
    data = json.loads((folder / "dataset.json").read_text())
    data["labels"] = {"background": 0, "blob": 1, "ignore": 2}
    data["numTraining"] = 8 - held_out
    (folder / "dataset.json").write_text(json.dumps(data))
    return folder, outside


def test_integrity_accepts_the_ignore_value_and_nothing_above_it(roots):
    folder, _ = _sparse_dataset(roots["raw"])
    report = check_dataset_integrity(RawDataset.open(1, roots["raw"]))
    assert report.label_values_found == [0, 1, 2]
    path = folder / "labelsTr" / "case_000.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    labels[0, 0, 0] = 3
    write_volume(labels, path)
    with pytest.raises(VolfnetError, match=r"case_000.nii.gz: label value\(s\) \[3\] not in dataset.json labels \[0, 1, 2\]"):
        check_dataset_integrity(RawDataset.open(1, roots["raw"]))


@pytest.mark.slow
def test_a_model_trained_on_mostly_ignored_labels_learns_the_annotated_part(roots, tmp_path):
    torch.set_num_threads(1)
    _, outside = _sparse_dataset(roots["raw"])
    assert plan_main(["-d", "1", "--target", "cpu", "-np", "1", "--base-features", "4"]) == 0
    cache = roots["preprocessed"] / "Dataset001_Toy" / "3d_fullres"
    for case in list_preprocessed_cases(cache):  # the ignore value is never a foreground centre
        assert set(load_properties(cache, case).class_locations) <= {1}
    fingerprint = json.loads((roots["preprocessed"] / "Dataset001_Toy" / "fingerprint.json").read_text())
    assert fingerprint["foreground_intensity_per_channel"][0]["max"] < 400  # blobs (~210-250), not ignored background
    assert train_main(["1", "3d_fullres", "0", "--device", "cpu", "--set", "recipe=misfm", "--set", "num_epochs=4",
                       "--set", "iterations_per_epoch=15", "--set", "num_workers=0", "--set", "progress_bar=false",
                       "--set", "val_iterations=2"]) == 0
    model = roots["results"] / "Dataset001_Toy" / "fmunet__3d_fullres"
    validation = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    assert validation["ignore_label"] == 2  # validation scored the annotated slices only
    assert validation["mean"]["1"]["Dice"] > 0.85, validation["mean"]["1"]
    predictor = Predictor.from_model_folder(model, folds=[0], device="cpu", use_mirroring=False, num_workers=0, progress=False)
    predictor.predict_folder(outside / "images", tmp_path / "pred")
    for path in (tmp_path / "pred").glob("*.nii.gz"):
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))) <= {0, 1}  # never "ignore"
    summary = evaluate_folder(outside / "labels", tmp_path / "pred", {"background": 0, "blob": 1}, num_workers=1)
    # whole held-out volumes, fully labelled: learned from 15% of the voxels in 60 iterations
    assert summary["mean"]["1"]["Dice"] > 0.7, summary["mean"]["1"]
