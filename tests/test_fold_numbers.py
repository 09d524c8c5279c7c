"""Any number of folds: a hand-written 10-fold ``splits.json`` trains fold 7 and predicts with it.

How many folds exist is ``splits.json``'s business (nnU-Net allows any number); the command
lines accept any fold number and the training checks it against the splits."""

from __future__ import annotations

import json

import pytest
from helpers.training import plan_tiny_dataset

from volfnet.cli.predict import main as predict_main
from volfnet.cli.train import main as train_main
from volfnet.errors import VolfnetError
from volfnet.model_folder import ModelFolder, checkpoint_path, fold_folder, numbered_folds, parse_fold
from volfnet.training.splits import SPLITS_FILE

TINY = [
    "--device", "cpu",
    "--set", "num_epochs=1", "--set", "iterations_per_epoch=1", "--set", "val_iterations=1",
    "--set", "num_workers=0", "--set", "progress_bar=false",
]
NUM_FOLDS = 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fold_7_of_a_10_fold_splits_file_trains_and_predicts(roots, capsys):
    plan_tiny_dataset(roots["raw"])
    dataset = roots["preprocessed"] / "Dataset001_Toy"
    cases = [f"case_{i:03d}" for i in range(5)]
    splits = [{"train": [c for c in cases if c != cases[k % 5]], "val": [cases[k % 5]]} for k in range(NUM_FOLDS)]
    (dataset / SPLITS_FILE).write_text(json.dumps(splits))

    assert train_main(["1", "3d_fullres", "7", *TINY]) == 0
    model = roots["results"] / "Dataset001_Toy" / "fmunet__3d_fullres"
    assert checkpoint_path(fold_folder(model, 7), "final").is_file()
    summary = json.loads((fold_folder(model, 7) / "validation" / "summary.json").read_text())
    assert [case["case"] for case in summary["per_case"]] == [cases[7 % 5]]  # fold 7's validation case
    assert json.loads((dataset / SPLITS_FILE).read_text()) == splits  # the file is kept as written
    assert ModelFolder.open(model).available_folds("final") == [7]

    # a fold beyond the file is refused by the splits, naming how many there are
    capsys.readouterr()
    assert train_main(["1", "3d_fullres", "10", *TINY]) == 2
    assert "fold 10 does not exist: the splits have folds 0..9" in capsys.readouterr().err

    images = roots["raw"] / "Dataset001_Toy" / "imagesTr"
    out = roots["raw"].parent / "predicted"
    assert predict_main(["-i", str(images), "-o", str(out), "-d", "1", "-c", "3d_fullres", "-f", "7",
                         "--device", "cpu", "--disable-tta", "--step", "1", "-np", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.nii.gz" for c in cases]
    capsys.readouterr()
    assert predict_main(["-i", str(images), "-o", str(out), "-d", "1", "-c", "3d_fullres", "-f", "8", "--device", "cpu"]) == 2
    assert "no checkpoint for fold 8 (folds with checkpoint_final.pt: [7])" in capsys.readouterr().err


def test_fold_folders_are_found_whatever_their_number(tmp_path):
    for name in ("fold_0", "fold_2", "fold_9", "fold_10", "fold_12", "fold_all", "fold_x", "fold_07", "fold_"):
        (tmp_path / name).mkdir()
    (tmp_path / "fold_3").write_text("a file, not a fold")
    assert numbered_folds(tmp_path) == [0, 2, 9, 10, 12]
    assert [parse_fold(v) for v in ("7", 12, "10", "all")] == [7, 12, 10, "all"]
    for bad in ("-1", "seven", "", "1.5", True):
        with pytest.raises(VolfnetError, match="fold"):
            parse_fold(bad)
