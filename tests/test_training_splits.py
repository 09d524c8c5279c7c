"""Seeded 5-fold splits in splits.json: created once, user-editable, validated; fold ``all``."""

from __future__ import annotations

import json

import pytest

from volfnet.errors import VolfnetError
from volfnet.training.splits import (
    SPLITS_FILE,
    fold_cases,
    load_or_create_splits,
    make_splits,
    splits_for_fold,
)

CASES = [f"case_{i:02d}" for i in range(12)]


def test_five_seeded_folds_cover_every_case_once():
    splits = make_splits(CASES)
    assert len(splits) == 5
    assert sorted(c for split in splits for c in split["val"]) == CASES
    assert [len(split["val"]) for split in splits] == [3, 3, 2, 2, 2]
    for split in splits:
        assert sorted(split["train"] + split["val"]) == CASES and not set(split["train"]) & set(split["val"])
    assert make_splits(list(reversed(CASES))) == splits  # order of the input does not matter
    assert make_splits(CASES, seed=1) != splits


def test_splits_file_is_written_once_and_user_edits_are_kept(tmp_path):
    first = load_or_create_splits(tmp_path, CASES)
    assert json.loads((tmp_path / SPLITS_FILE).read_text()) == first
    edited = [{"train": CASES[:10], "val": CASES[10:]}, {"train": CASES[2:], "val": CASES[:2]}]
    (tmp_path / SPLITS_FILE).write_text(json.dumps(edited))
    assert load_or_create_splits(tmp_path, CASES) == edited
    assert fold_cases(edited, 1, CASES) == (CASES[2:], CASES[:2])
    with pytest.raises(VolfnetError, match=r"fold 2 does not exist: the splits have folds 0..1"):
        fold_cases(edited, 2, CASES)


def test_unknown_case_ids_and_bad_structure_are_clear_errors(tmp_path):
    (tmp_path / SPLITS_FILE).write_text(json.dumps([{"train": CASES + ["ghost"], "val": []}]))
    with pytest.raises(VolfnetError, match=r"splits.json: fold 0 'train' names 1 case\(s\) that are not preprocessed: ghost"):
        load_or_create_splits(tmp_path, CASES)
    (tmp_path / SPLITS_FILE).write_text(json.dumps({"train": CASES}))
    with pytest.raises(VolfnetError, match="non-empty list"):
        load_or_create_splits(tmp_path, CASES)


def test_fold_all_trains_on_everything_and_validates_on_a_few(tmp_path):
    train, val = splits_for_fold(tmp_path, "all", CASES)
    assert train == CASES and val == make_splits(CASES)[0]["val"]
    few = CASES[:3]
    assert splits_for_fold(tmp_path / "small", "all", few) == (few, few)
    with pytest.raises(VolfnetError, match="needs at least 5 labelled cases"):
        splits_for_fold(tmp_path / "small", 0, few)
