"""``volfnet_find_best_configuration``: pools each model's cross-validation, ensembles pairs,
ranks them on the same cases, decides postprocessing, and writes commands that work."""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers.model_folder import CONFIGURATION, DATASET_ID, model_environment

from volfnet.checkpoint import load_checkpoint, save_checkpoint
from volfnet.cli.find_best_configuration import main as find_best_main
from volfnet.cli.train import main as train_main
from volfnet.inference.export import load_probabilities
from volfnet.model_folder import checkpoint_path, fold_folder
from volfnet.model_selection.best_configuration import Candidate, inference_commands

SPLITS = [{"train": ["case_001"], "val": ["case_000", "case_002"]}, {"train": ["case_000", "case_002"], "val": ["case_001"]}]
COMMAND_MODULES = {"volfnet_predict": "predict", "volfnet_ensemble": "ensemble", "volfnet_apply_postprocessing": "apply_postprocessing"}


def copy_model(model_folder, tag: str, seed: int, folds=(0, 1)):
    """A second model of the same configuration (other weights) under ``__<tag>``."""
    target = model_folder.with_name(f"{model_folder.name}__{tag}")
    target.mkdir()
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(model_folder / name, target / name)
    for fold in folds:
        checkpoint = load_checkpoint(checkpoint_path(fold_folder(model_folder, fold), "final"))
        generator = torch.Generator().manual_seed(seed + fold)
        weights = {key: value + 0.5 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
                   for key, value in checkpoint["model_state_dict"].items()}
        save_checkpoint(checkpoint_path(fold_folder(target, fold), "final"), {**checkpoint, "model_state_dict": weights})
    return target


def validate(tag: str, folds=(0, 1), npz: bool = True) -> None:
    for fold in folds:
        flags = ["--tag", tag] if tag else []
        assert train_main([str(DATASET_ID), CONFIGURATION, str(fold), "--val", "--device", "cpu", *flags, *(["--npz"] if npz else [])]) == 0


def run_command(line: str, replacements: dict[str, str]) -> None:
    words = [replacements.get(word, word) for word in shlex.split(line)]
    module = importlib.import_module(f"volfnet.cli.{COMMAND_MODULES[words[0]]}")
    assert module.main(words[1:]) == 0, line


@pytest.fixture
def setup(tmp_path):
    with model_environment(tmp_path) as model:
        (model.preprocessed_folder.parent / "splits.json").write_text(json.dumps(SPLITS))
        yield model


def test_ranks_models_and_their_ensemble_and_writes_working_commands(setup, tmp_path, capsys):
    second = copy_model(setup.model_folder, "second", seed=7)
    copy_model(setup.model_folder, "partial", seed=9, folds=(0,))
    copy_model(setup.model_folder, "noprobs", seed=11)
    validate("")
    validate("second")
    validate("partial", folds=(0,))
    validate("noprobs", npz=False)
    capsys.readouterr()

    assert find_best_main(["-d", str(DATASET_ID), "-np", "1"]) == 0
    out = capsys.readouterr().out
    results = setup.model_folder.parent
    instructions = json.loads((results / "inference_instructions.json").read_text())
    names = [c["name"] for c in instructions["candidates"]]
    ensemble = "ensemble__fmunet__3d_fullres__fmunet__3d_fullres__second"
    assert sorted(names) == sorted(["fmunet__3d_fullres", "fmunet__3d_fullres__second", "fmunet__3d_fullres__noprobs", ensemble])
    dice = [c["dice"] for c in instructions["candidates"]]
    assert dice == sorted(dice, reverse=True) and instructions["best"] == names[0]
    assert "folds [1] have no final validation" in instructions["not_candidates"]["fmunet__3d_fullres__partial"]
    assert "no saved probabilities in fmunet__3d_fullres__noprobs" in instructions["not_candidates"]["fmunet__3d_fullres + fmunet__3d_fullres__noprobs"]
    assert f"{instructions['best']}: {dice[0]:.4f}" in out and "volfnet_predict" in out

    # the ensemble's cross-validation label maps are the argmax of the two models' mean probabilities
    folder = results / "ensembles" / ensemble
    for case in ("case_000", "case_001", "case_002"):
        mean = (load_probabilities(setup.model_folder / "crossval_results_folds_0_1" / f"{case}.npz")
                + load_probabilities(second / "crossval_results_folds_0_1" / f"{case}.npz")) / 2
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))
        assert np.array_equal(labels, mean.argmax(0))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["num_cases"] == 3 and summary["foreground_mean"]["Dice"] == pytest.approx(dice[names.index(ensemble)])

    # postprocessing is decided on the winner's cross-validation predictions
    best = next(c for c in instructions["candidates"] if c["name"] == instructions["best"])
    assert instructions["postprocessing"]["file"] == f"{best['folder']}/postprocessing.json"
    assert instructions["postprocessing"]["num_cases"] == 3

    # the written commands segment new images (here the ensemble won, with postprocessing), and
    # so do those of a single model with a chosen postprocessing.json
    assert instructions["best"] == ensemble and len(instructions["commands"]) == 4
    single = next(c for c in instructions["candidates"] if c["name"] == "fmunet__3d_fullres")
    chosen = Candidate(single["name"], [Path(p) for p in single["models"]], Path(single["folder"]), single["dice"])
    decision = Path(instructions["postprocessing"]["file"])
    for name, commands in (("best", instructions["commands"]), ("single", inference_commands(chosen, [0, 1], decision))):
        output = tmp_path / f"out_{name}"
        replacements = {"INPUT_FOLDER": str(setup.input_folder), "OUTPUT_FOLDER": str(output)}
        replacements |= {f"OUTPUT_FOLDER_{part}": str(tmp_path / f"{name}_{part}") for part in ("MODEL1", "MODEL2", "ENSEMBLE")}
        for line in commands:
            run_command(line, replacements)
        assert (output / "case_000.nii.gz").is_file()
    assert inference_commands(chosen, [0, 1], decision) == [
        f"volfnet_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m {setup.model_folder} -f 0 1 --postprocessing {decision}"
    ]


def test_no_complete_model_is_a_clear_error(setup, capsys):
    validate("", folds=(0,))
    assert find_best_main(["-d", str(DATASET_ID)]) == 2
    err = capsys.readouterr().err
    assert "no model of Dataset004_Hippocampus has a complete cross-validation over folds [0, 1]" in err
    assert "folds [1] have no final validation" in err


def test_fold_all_is_not_a_cross_validation_fold(setup, capsys):
    assert find_best_main(["-d", str(DATASET_ID), "-f", "0", "all"]) == 2
    assert "fold 'all' has no held-out validation cases" in capsys.readouterr().err
