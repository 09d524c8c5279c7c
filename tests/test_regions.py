"""Region-based labels (nnU-Net v2's BraTS convention): dataset.json maps a name to a list of
label values, the network has one sigmoid output per region, training uses BCE + soft Dice per
region, prediction writes the label map in ``regions_class_order`` and evaluation scores
regions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers.images import write_volume
from helpers.raw_data import make_raw_dataset

from volfnet.cli.plan_and_preprocess import main as plan_main
from volfnet.cli.predict import main as predict_main
from volfnet.cli.pretrain import main as pretrain_main
from volfnet.cli.train import main as train_main
from volfnet.errors import VolfnetError
from volfnet.evaluation.evaluate import evaluate_folder
from volfnet.inference.export import cropped_logits_to_original, load_probabilities
from volfnet.io.dataset import DatasetJson
from volfnet.io.image_io import ImageGeometry
from volfnet.io.case_store import CaseProperties
from volfnet.training.losses import DiceCEConfig, dice_ce_loss, hard_dice_counts

BRATS_LABELS = {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing tumour": 3}
REGIONS = ((1, 2, 3), (2, 3), (3,))


def _dataset_json(labels: dict, **extra) -> dict:
    return {"channel_names": {"0": "T1"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz", **extra}


def test_region_labels_are_parsed_as_nnunet_writes_them():
    parsed = DatasetJson.from_dict(_dataset_json(BRATS_LABELS, regions_class_order=[1, 2, 3]), "dataset.json")
    assert parsed.has_regions and parsed.regions == list(REGIONS)
    assert parsed.region_names == ["whole tumour", "tumour core", "enhancing tumour"]
    assert parsed.num_classes == 3  # one sigmoid output per region, no background output
    assert parsed.foreground_labels == [1, 2, 3]  # foreground sampling on the union of the regions
    assert parsed.allowed_label_values == [0, 1, 2, 3]
    # the label map a prediction is written as: each region's value from regions_class_order
    assert parsed.labels == {"background": 0, "whole tumour": 1, "tumour core": 2, "enhancing tumour": 3}


@pytest.mark.parametrize("labels, extra, message", [
    (BRATS_LABELS, {}, "regions_class_order is required"),
    (BRATS_LABELS, {"regions_class_order": [1, 2]}, "regions_class_order has 2 values but there are 3 regions"),
    ({"background": 0, "a": [], "b": [2]}, {"regions_class_order": [1, 2]}, "region 'a' is empty"),
    ({"background": [0, 1], "a": [1]}, {"regions_class_order": [1]}, "background must be the single value 0"),
    ({"background": 0, "a": [1, "x"]}, {"regions_class_order": [1]}, "region 'a' must list integer label values"),
])
def test_bad_region_definitions_are_named(labels, extra, message):
    with pytest.raises(VolfnetError, match=message):
        DatasetJson.from_dict(_dataset_json(labels, **extra), "dataset.json")


def _brats_like_target(generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 4, (2, 1, 6, 6, 6), generator=generator)


def test_region_loss_is_zero_for_a_perfect_prediction_and_bce_matches_torch():
    target = _brats_like_target(torch.Generator().manual_seed(0))
    regions = torch.stack([torch.isin(target[:, 0], torch.tensor(r)) for r in REGIONS], 1).float()
    perfect = (regions * 2 - 1) * 50.0
    config = DiceCEConfig(regions=REGIONS)
    assert dice_ce_loss(perfect, target, config).item() == pytest.approx(0.0, abs=1e-5)
    logits = torch.randn(2, 3, 6, 6, 6, generator=torch.Generator().manual_seed(1))
    bce = dice_ce_loss(logits, target, DiceCEConfig(regions=REGIONS, dice_weight=0.0))
    assert bce.item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, regions).item(), rel=1e-5)


def test_region_loss_leaves_ignored_voxels_out():
    generator = torch.Generator().manual_seed(2)
    target = _brats_like_target(generator)
    ignored = torch.rand(target.shape, generator=generator) < 0.5
    target[ignored] = 4
    logits = torch.randn(2, 3, 6, 6, 6, generator=generator, requires_grad=True)
    dice_ce_loss(logits, target, DiceCEConfig(regions=REGIONS, ignore_label=4)).backward()
    assert torch.count_nonzero(logits.grad.movedim(1, -1)[ignored[:, 0]]) == 0
    assert torch.count_nonzero(logits.grad.movedim(1, -1)[~ignored[:, 0]]) > 0


def test_pseudo_dice_counts_regions_from_thresholded_sigmoids():
    target = torch.zeros(1, 1, 2, 2, 2, dtype=torch.int16)
    target[0, 0, 0] = 3  # four voxels of label 3: in all three regions
    target[0, 0, 1, 0] = 1  # two voxels of label 1: whole tumour only
    logits = torch.full((1, 3, 2, 2, 2), -5.0)
    logits[0, 0] = 5.0  # whole tumour predicted everywhere (8 voxels, 6 true)
    logits[0, 2, 0, 0] = 5.0  # enhancing predicted on two of its four voxels
    counts = hard_dice_counts(logits, target, [1, 2, 3], regions=REGIONS)  # regions numbered from 1
    assert counts.tolist() == [[6, 0, 2], [2, 0, 0], [0, 4, 2]]  # rows: tp, fp, fn; one column per region


def test_export_writes_regions_in_regions_class_order():
    shape = [4, 4, 4]
    logits = torch.full((3, *shape), -4.0)
    logits[0, 1:4] = 4.0  # whole tumour
    logits[1, 2:4] = 4.0  # core inside it
    logits[2, 3] = 4.0  # enhancing inside the core
    geometry = ImageGeometry([1.0] * 3, [0.0] * 3, list(np.eye(3).ravel()), shape)
    properties = CaseProperties("c", geometry, [0, 1, 2], shape, [[0, 4]] * 3, shape, [1.0] * 3, [1.0] * 3, shape)
    exported = cropped_logits_to_original(logits, properties, with_probabilities=True, regions_class_order=[1, 2, 3])
    assert exported.segmentation[:, 0, 0].tolist() == [0, 1, 2, 3]
    assert exported.probabilities.shape == (3, *shape)
    assert exported.probabilities[0, 0, 0, 0] == pytest.approx(torch.sigmoid(torch.tensor(-4.0)).item())
    assert exported.probabilities[2, 3, 0, 0] == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item())


def test_evaluation_scores_regions(tmp_path):
    reference = np.zeros((8, 8, 8), np.uint8)
    reference[1:7, 1:7, 1:7] = 1
    reference[2:6, 2:6, 2:6] = 2
    reference[3:5, 3:5, 3:5] = 3
    prediction = reference.copy()
    prediction[3:5, 3:5, 3:5] = 2  # enhancing missed, but still inside the core and the whole tumour
    write_volume(reference, tmp_path / "gt" / "c.nii.gz")
    write_volume(prediction, tmp_path / "pred" / "c.nii.gz")
    parsed = DatasetJson.from_dict(_dataset_json(BRATS_LABELS, regions_class_order=[1, 2, 3]), "dataset.json")
    summary = evaluate_folder(tmp_path / "gt", tmp_path / "pred", parsed.labels, num_workers=1, regions=parsed.regions)
    dice = {summary["mean"][key]["name"]: summary["mean"][key]["Dice"] for key in ("1", "2", "3")}
    assert dice == {"whole tumour": 1.0, "tumour core": 1.0, "enhancing tumour": 0.0}
    assert summary["regions"] == {"1": [1, 2, 3], "2": [2, 3], "3": [3]}


def _region_dataset(raw_root, dataset_id: int = 1):
    """Blob cases with labels 1 (one half of the blob) and 2 (the other half) as two regions:
    the whole blob [1, 2] and its half [2]; two cases held outside for scoring."""
    folder = make_raw_dataset(raw_root, dataset_id=dataset_id, num_cases=8, shape=(20, 24, 28), num_labels=2, seed=5)
    outside = raw_root / "heldout"
    for sub in ("images", "labels"):
        (outside / sub).mkdir(parents=True, exist_ok=True)
    for index in (6, 7):
        case = f"case_{index:03d}"
        (folder / "imagesTr" / f"{case}_0000.nii.gz").rename(outside / "images" / f"{case}_0000.nii.gz")
        (folder / "labelsTr" / f"{case}.nii.gz").rename(outside / "labels" / f"{case}.nii.gz")
    data = json.loads((folder / "dataset.json").read_text())
    data.update(labels={"background": 0, "blob": [1, 2], "half": [2]}, regions_class_order=[1, 2], numTraining=6)
    (folder / "dataset.json").write_text(json.dumps(data))
    return outside


def test_a_region_value_in_no_label_map_is_an_error_before_anything_is_written(roots, capsys):
    _region_dataset(roots["raw"])
    dataset_file = roots["raw"] / "Dataset001_Toy" / "dataset.json"
    data = json.loads(dataset_file.read_text())
    data["labels"] = {"background": 0, "blob": [1, 2, 3], "half": [2]}  # no case has value 3
    dataset_file.write_text(json.dumps(data))
    assert plan_main(["-d", "1", "--target", "cpu", "-np", "1"]) == 2
    assert "the regions list label value(s) [3] that occur in no training label map (values found: [0, 1, 2])" in capsys.readouterr().err
    assert not (roots["preprocessed"] / "Dataset001_Toy").exists()


@pytest.mark.slow
def test_region_training_prediction_and_evaluation_end_to_end(roots, tmp_path):
    torch.set_num_threads(1)
    outside = _region_dataset(roots["raw"])
    assert plan_main(["-d", "1", "--target", "cpu", "-np", "1", "--base-features", "4"]) == 0
    common = ["--device", "cpu", "--set", "num_workers=0", "--set", "progress_bar=false", "--set", "val_iterations=2"]
    assert pretrain_main(["-d", "1", "--iterations", "4", *common, "--set", "iterations_per_epoch=2"]) == 0
    assert train_main(["1", "3d_fullres", "0", *common, "--pretrained", "--set", "recipe=misfm", "--set", "num_epochs=4",
                       "--set", "iterations_per_epoch=15"]) == 0
    model = roots["results"] / "Dataset001_Toy" / "fmunet__3d_fullres"
    validation = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    assert validation["regions"] == {"1": [1, 2], "2": [2]}
    assert predict_main(["-i", str(outside / "images"), "-o", str(tmp_path / "pred"), "-m", str(model), "-f", "0",
                         "--device", "cpu", "--disable-tta", "--save-probabilities"]) == 0
    for path in sorted((tmp_path / "pred").glob("*.nii.gz")):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        probabilities = load_probabilities(path.with_name(path.name.replace(".nii.gz", ".npz")))
        assert probabilities.shape == (2, *labels.shape)  # the two regions' sigmoid probabilities
        assert set(np.unique(labels)) <= {0, 1, 2}
        expected = np.zeros_like(labels)
        expected[probabilities[0] > 0.5] = 1
        expected[probabilities[1] > 0.5] = 2
        assert np.mean(expected == labels) > 0.999  # the label map is the thresholded regions in order
    summary = evaluate_folder(outside / "labels", tmp_path / "pred", {"background": 0, "blob": 1, "half": 2}, num_workers=1,
                              regions=[(1, 2), (2,)])
    # 60 iterations of a 4-feature network: the blob is learned, its half (50 brighter) partly
    assert summary["mean"]["1"]["Dice"] > 0.75 and summary["mean"]["2"]["Dice"] > 0.4, summary["mean"]
