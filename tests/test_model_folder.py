"""The model-folder layout shared by training (writer) and prediction (reader)."""

from __future__ import annotations

import json

import pytest
from helpers.planning import fingerprint, plan

from volfnet.errors import VolfnetError
from volfnet.model_folder import (
    ModelFolder,
    checkpoint_path,
    fold_folder,
    model_folder_path,
    parse_fold,
    write_model_folder_files,
)


@pytest.mark.parametrize("text,fold", [("0", 0), ("4", 4), ("7", 7), ("12", 12), (3, 3), ("all", "all"), (" ALL ", "all")])
def test_parse_fold_accepts_numbers_and_all(text, fold):
    assert parse_fold(text) == fold  # how many folds exist is splits.json's business, not the parser's


@pytest.mark.parametrize("text,message", [("-1", "out of range"), ("first", "must be a number"), ("2.5", "must be a number")])
def test_parse_fold_rejects_the_rest(text, message):
    with pytest.raises(VolfnetError, match=message):
        parse_fold(text)


def test_paths_follow_the_documented_layout(tmp_path):
    folder = model_folder_path("Dataset004_Hippocampus", "fmunet", "3d_fullres", tmp_path)
    assert folder == tmp_path / "Dataset004_Hippocampus" / "fmunet__3d_fullres"
    tagged = model_folder_path("Dataset004_Hippocampus", "fmunet", "3d_fullres", tmp_path, tag="scratch")
    assert tagged.name == "fmunet__3d_fullres__scratch"
    assert checkpoint_path(fold_folder(folder, "all"), "best") == folder / "fold_all" / "checkpoint_best.pt"
    with pytest.raises(VolfnetError, match="checkpoint must be one of"):
        checkpoint_path(folder, "newest")
    with pytest.raises(VolfnetError, match="must not contain"):
        model_folder_path("D", "fmunet", "3d_fullres", tmp_path, tag="a__b")


def test_written_folder_opens_and_lists_its_folds(tmp_path):
    plans = plan(fingerprint([[1, 1, 1]] * 4, [[40, 50, 40]] * 4), compute_target="cpu")
    dataset_file = tmp_path / "dataset.json"
    dataset_file.write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "l1": 1}, "numTraining": 4, "file_ending": ".nii.gz"}))
    folder = model_folder_path("Dataset001_Test", "fmunet", "3d_fullres", tmp_path, tag="scratch")
    write_model_folder_files(folder, plans, dataset_file)
    for fold in (0, 2, "all"):
        checkpoint_path(fold_folder(folder, fold), "final").parent.mkdir(parents=True)
        checkpoint_path(fold_folder(folder, fold), "final").write_bytes(b"x")
    opened = ModelFolder.open(folder)
    assert (opened.network, opened.configuration) == ("fmunet", "3d_fullres")
    assert opened.plans == plans
    assert opened.available_folds("final") == [0, 2, "all"]
    assert opened.available_folds("best") == []


def test_open_names_what_is_missing(tmp_path):
    with pytest.raises(VolfnetError, match="model folder not found"):
        ModelFolder.open(tmp_path / "nothing")
    bad_name = tmp_path / "fmunet"
    bad_name.mkdir()
    with pytest.raises(VolfnetError, match="must be <network>__<configuration>"):
        ModelFolder.open(bad_name)
    empty = tmp_path / "fmunet__3d_fullres"
    empty.mkdir()
    with pytest.raises(VolfnetError, match="has no plans.json"):
        ModelFolder.open(empty)
