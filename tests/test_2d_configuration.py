"""The 2d configuration: the 3D machinery on patches one slice thick (DESIGN.md). Planned
beside 3d_fullres from the same cache, trained on slices, VolF-pretrained on slices, and
predicted slice by slice over whole volumes in their original geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers.raw_data import make_raw_dataset

from volfnet.cli.plan_and_preprocess import main as plan_main
from volfnet.cli.predict import main as predict_main
from volfnet.cli.pretrain import main as pretrain_main
from volfnet.cli.train import main as train_main
from volfnet.evaluation.evaluate import evaluate_folder
from volfnet.io.dataset import RawDataset
from volfnet.planning.fingerprint import extract_fingerprint
from volfnet.planning.planner import Planner, PlannerOptions


def _plans(roots, **options):
    make_raw_dataset(roots["raw"], dataset_id=1, num_cases=6, shape=(20, 40, 48), spacing=(3.0, 1.0, 1.0))
    raw = RawDataset.open(1, roots["raw"])
    cases, _ = raw.training_cases()
    fingerprint = extract_fingerprint(cases, raw.dataset_json.channel_names, progress=False)
    return Planner(fingerprint, raw.dataset_json, raw.name, PlannerOptions(compute_target="cpu", **options)).plan()


def test_2d_is_planned_on_the_fullres_cache_with_in_plane_kernels(roots):
    plans = _plans(roots)
    fullres, two_d = plans.configuration("3d_fullres"), plans.configuration("2d")
    assert two_d.data_identifier == fullres.data_identifier and two_d.spacing == fullres.spacing  # one cache for both
    assert two_d.patch_size[0] == 1 and two_d.patch_size[1:] == [40, 48]  # the whole median slice fits the budget
    assert all(kernel[0] == 1 for kernel in two_d.network.kernel_sizes)
    assert all(stride[0] == 1 for stride in two_d.network.strides) and len(two_d.network.strides) >= 3
    assert two_d.dummy_2d_augmentation and two_d.mirror_axes == [1, 2]
    assert two_d.batch_size >= fullres.batch_size  # slices are cheap: larger batches
    assert "2d" not in _plans_without_2d(roots).configurations


def _plans_without_2d(roots):
    raw = RawDataset.open(1, roots["raw"])
    cases, _ = raw.training_cases()
    fingerprint = extract_fingerprint(cases, raw.dataset_json.channel_names, progress=False)
    return Planner(fingerprint, raw.dataset_json, raw.name, PlannerOptions(compute_target="cpu", plan_2d=False)).plan()


@pytest.mark.slow
def test_2d_pretraining_fine_tuning_and_whole_volume_prediction(roots, tmp_path):
    torch.set_num_threads(1)
    folder = make_raw_dataset(roots["raw"], dataset_id=1, num_cases=8, shape=(20, 24, 28), num_labels=1, seed=7)
    outside = roots["raw"] / "heldout"
    for sub in ("images", "labels"):
        (outside / sub).mkdir(parents=True)
    for index in (6, 7):
        case = f"case_{index:03d}"
        (folder / "imagesTr" / f"{case}_0000.nii.gz").rename(outside / "images" / f"{case}_0000.nii.gz")
        (folder / "labelsTr" / f"{case}.nii.gz").rename(outside / "labels" / f"{case}.nii.gz")
    data = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**data, "numTraining": 6}))
    assert plan_main(["-d", "1", "--target", "cpu", "-np", "1", "--base-features", "4"]) == 0
    common = ["--device", "cpu", "--set", "num_workers=0", "--set", "progress_bar=false", "--set", "val_iterations=2"]
    assert pretrain_main(["-d", "1", "-c", "2d", "--iterations", "4", *common, "--set", "iterations_per_epoch=2"]) == 0
    assert train_main(["1", "2d", "0", *common, "--pretrained", "--set", "recipe=misfm", "--set", "num_epochs=4",
                       "--set", "iterations_per_epoch=40"]) == 0
    model = roots["results"] / "Dataset001_Toy" / "fmunet__2d"
    assert (model / "pretrain" / "checkpoint_final.pt").is_file() and (model / "fold_0" / "validation" / "summary.json").is_file()
    assert predict_main(["-i", str(outside / "images"), "-o", str(tmp_path / "pred"), "-d", "1", "-c", "2d", "-f", "0",
                         "--device", "cpu"]) == 0
    for case in ("case_006", "case_007"):
        prediction = sitk.ReadImage(str(tmp_path / "pred" / f"{case}.nii.gz"))
        reference = sitk.ReadImage(str(outside / "labels" / f"{case}.nii.gz"))
        assert prediction.GetSize() == reference.GetSize() and prediction.GetSpacing() == reference.GetSpacing()
        assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1}
    summary = evaluate_folder(outside / "labels", tmp_path / "pred", {"background": 0, "blob": 1}, num_workers=1)
    assert summary["mean"]["1"]["Dice"] > 0.7, summary["mean"]["1"]  # learned from slices in 160 iterations
