"""The demo: its synthetic CT dataset, and the whole ``volfnet_demo`` path at tiny budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.images import read_image

from volfnet.checkpoint import load_checkpoint
from volfnet.cli import demo as cli
from volfnet.demo.pipeline import DEMO_DATASET_NAME
from volfnet.demo.synthetic import HU, LABELS, DemoDatasetSizes, write_demo_dataset


def test_synthetic_dataset_is_a_valid_raw_dataset_with_plausible_ct(tmp_path):
    folder = write_demo_dataset(tmp_path / "Demo", DemoDatasetSizes(train=3, test=1, unlabelled=2), seed=3)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == LABELS and dataset["numTraining"] == 3 and dataset["channel_names"] == {"0": "CT"}
    assert len(list((folder / "imagesTr").iterdir())) == 3 and len(list((folder / "labelsTr").iterdir())) == 3
    assert len(list((folder / "imagesTs").iterdir())) == 1 and len(list((folder / "labelsTs").iterdir())) == 1
    assert len(list((folder / "imagesUnlabelled").iterdir())) == 2
    spacings = set()
    for label_file in sorted((folder / "labelsTr").iterdir()):
        case = label_file.name.removesuffix(".nii.gz")
        values, image = read_image(folder / "imagesTr" / f"{case}_0000.nii.gz")
        classes, label = read_image(label_file)
        assert image.GetSize() == label.GetSize() and image.GetSpacing() == label.GetSpacing()
        assert image.GetOrigin() == label.GetOrigin()
        spacings.add(image.GetSpacing())
        assert set(np.unique(classes)) == {0, 1, 2, 3}  # every organ in every scan
        assert values.min() < -900  # air around the body
        for organ, low, high in (("liver", 20, 100), ("spine", 150, 900)):
            assert low < np.median(values[classes == LABELS[organ]]) < high, organ
        assert np.median(values[classes == LABELS["liver"]]) == pytest.approx(HU["liver"], abs=25)
    assert len(spacings) == 3  # spacing varies per scan


def test_same_seed_same_scans_and_a_complete_dataset_is_kept(tmp_path):
    sizes = DemoDatasetSizes(train=1, test=0, unlabelled=0)
    first = write_demo_dataset(tmp_path / "a", sizes, seed=5)
    second = write_demo_dataset(tmp_path / "b", sizes, seed=5)
    np.testing.assert_array_equal(read_image(first / "imagesTr" / "demo_000_0000.nii.gz")[0], read_image(second / "imagesTr" / "demo_000_0000.nii.gz")[0])
    before = (first / "imagesTr" / "demo_000_0000.nii.gz").stat().st_mtime_ns
    write_demo_dataset(first, DemoDatasetSizes(train=2, test=0, unlabelled=0), seed=6)
    assert (first / "imagesTr" / "demo_000_0000.nii.gz").stat().st_mtime_ns == before
    assert len(list((first / "imagesTr").iterdir())) == 1


def test_demo_runs_every_stage_and_prints_the_table(roots, capsys):
    args = ["--num-train", "3", "--num-test", "1", "--num-unlabelled", "1", "--pretrain-iterations", "3",
            "--epochs", "1", "--iterations-per-epoch", "2", "-np", "0", "--device", "cpu"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for stage in range(1, 8):
        assert f"[{stage}/7]" in out
    table = out[out.index("Dice on the held-out scans"):].splitlines()
    assert table[1].split() == ["model", "liver", "kidney", "spine", "mean", "HD95", "mm"]
    rows = {line.split()[0]: line.split() for line in table[3:5]}
    assert set(rows) == {"from", "VolF-pretrained"}
    models = roots["results"] / DEMO_DATASET_NAME
    pretrained, scratch = models / "fmunet__3d_fullres", models / "fmunet__3d_fullres__scratch"
    for path in (pretrained / "pretrain" / "checkpoint_final.pt", pretrained / "pretrain" / "samples.png",
                 pretrained / "fold_all" / "progress.png", scratch / "fold_all" / "checkpoint_final.pt"):
        assert path.is_file(), path
    for model, row in ((pretrained, rows["VolF-pretrained"]), (scratch, rows["from"][1:])):
        summary = json.loads((model / "demo_predictions" / "summary.json").read_text())
        assert summary["num_cases"] == 1
        assert float(row[1]) == pytest.approx(summary["mean"]["1"]["Dice"], abs=5e-4), (model, row, out)
        _, prediction = read_image(model / "demo_predictions" / "demo_003.nii.gz")
        _, reference = read_image(roots["raw"] / DEMO_DATASET_NAME / "labelsTs" / "demo_003.nii.gz")
        assert prediction.GetSize() == reference.GetSize() and prediction.GetOrigin() == reference.GetOrigin()
    # A rerun finds every stage done and only reprints the results.
    stamp = (pretrained / "fold_all" / "checkpoint_final.pt").stat().st_mtime_ns
    assert cli.main(args) == 0
    assert (pretrained / "fold_all" / "checkpoint_final.pt").stat().st_mtime_ns == stamp
    assert "Dice on the held-out scans" in capsys.readouterr().out
    # Another trainer seed trains both models into folders of its own, from the same
    # pretraining, and scratch uses the fine-tuning recipe (the table compares initialisations).
    pretrain_stamp = (pretrained / "pretrain" / "checkpoint_final.pt").stat().st_mtime_ns
    assert cli.main([*args, "--train-seed", "1"]) == 0
    assert (pretrained / "pretrain" / "checkpoint_final.pt").stat().st_mtime_ns == pretrain_stamp
    for folder in ("fmunet__3d_fullres__seed1", "fmunet__3d_fullres__scratch-seed1"):
        config = load_checkpoint(models / folder / "fold_all" / "checkpoint_final.pt")["trainer_config"]
        assert (config["seed"], config["optimizer"], config["lr"], config["deep_supervision"]) == (1, "adam", 1e-3, False), folder
    assert load_checkpoint(scratch / "fold_all" / "checkpoint_final.pt")["trainer_config"]["optimizer"] == "adam"
