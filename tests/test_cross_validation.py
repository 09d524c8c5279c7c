"""``volfnet_train --val --npz`` keeps the validation probabilities, and ``volfnet_cv_summary``
pools the folds' validations into one scored cross-validation, naming missing folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers.model_folder import CONFIGURATION, DATASET_ID, model_environment

from volfnet.cli.cv_summary import main as cv_main
from volfnet.cli.train import main as train_main
from volfnet.evaluation.evaluate import evaluate_folder
from volfnet.inference.export import load_probabilities


@pytest.fixture
def setup(tmp_path):
    with model_environment(tmp_path) as model:
        # three folds: 0 and 1 validate one case each, fold 2 is never validated
        splits = [{"train": ["case_001", "case_002"], "val": ["case_000"]},
                  {"train": ["case_000", "case_002"], "val": ["case_001"]},
                  {"train": ["case_000", "case_001"], "val": ["case_002"]}]
        (model.preprocessed_folder.parent / "splits.json").write_text(json.dumps(splits))
        yield model


def test_val_npz_then_pooled_cross_validation(setup, capsys):
    for fold in ("0", "1"):
        assert train_main([str(DATASET_ID), CONFIGURATION, fold, "--val", "--npz", "--device", "cpu"]) == 0
    validation = setup.model_folder / "fold_0" / "validation"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(validation / "case_000.nii.gz")))
    probabilities = load_probabilities(validation / "case_000.npz")
    assert probabilities.shape[1:] == labels.shape and np.allclose(probabilities.sum(0), 1, atol=1e-4)
    assert np.array_equal(probabilities.argmax(0), labels)  # the label map is their argmax (no postprocessing here)
    capsys.readouterr()

    assert cv_main(["-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert "warning: folds [2] have no final validation" in out and "foreground mean" in out
    pooled = setup.model_folder / "crossval_results_folds_0_1"
    assert sorted(p.name for p in pooled.glob("case_*")) == ["case_000.nii.gz", "case_000.npz", "case_001.nii.gz", "case_001.npz"]
    summary = json.loads((pooled / "summary.json").read_text())
    assert summary["folds"] == [0, 1] and summary["missing_folds"] == [2] and summary["num_cases"] == 2
    # the pooled scores are those of the two predictions scored together by hand
    by_hand = evaluate_folder(setup.raw_folder / "labelsTr", pooled, setup.dataset_json.labels, num_workers=1, allow_missing=True,
                              output_folder=setup.model_folder / "by_hand")
    assert summary["foreground_mean"]["Dice"] == pytest.approx(by_hand["foreground_mean"]["Dice"])


def test_no_validated_fold_is_a_clear_error(setup, capsys):
    assert cv_main(["-d", str(DATASET_ID), "-c", CONFIGURATION]) == 2
    assert "no fold has a final validation" in capsys.readouterr().err
