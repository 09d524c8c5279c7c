"""Cross-validation splits: five seeded folds in ``splits.json`` next to the preprocessed data.

The file is created once, from the sorted case ids and a fixed seed, so every fold of every
network sees the same split, and it is plain JSON so a user can edit it (for example to keep
one patient's scans in one fold) — any number of folds is accepted then. It is validated on
every read: unknown case ids are an error naming them. Fold ``all`` trains on every case and
validates on those of fold 0: its validation scores are on training data, so optimistic, and
only a sanity check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from volfnet.errors import VolfnetError
from volfnet.io.files import atomic_write_json, read_json
from volfnet.model_folder import ALL_FOLDS, NUM_FOLDS, Fold

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"
SPLIT_SEED = 12345  # nnU-Net's; fixed so that the folds never change between runs or machines

Split = dict[str, list[str]]  # {"train": [...], "val": [...]}


def make_splits(case_ids: Sequence[str], num_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[Split]:
    """``num_folds`` folds of a seeded shuffle of the sorted ids; fold sizes differ by at most one."""
    ids = sorted(set(case_ids))
    if len(ids) < num_folds:
        raise VolfnetError(
            f"{num_folds}-fold cross-validation needs at least {num_folds} labelled cases, the dataset has "
            f"{len(ids)}; train with fold 'all', or write a {SPLITS_FILE} with fewer folds"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(order, num_folds)
    splits = []
    for part in parts:
        val = sorted(ids[i] for i in part)
        held = set(val)
        splits.append({"train": [c for c in ids if c not in held], "val": val})
    return splits


def validate_splits(splits: object, case_ids: Sequence[str], source: str) -> list[Split]:
    """Check the structure and that every id is a preprocessed case; return the splits."""
    if not isinstance(splits, list) or not splits:
        raise VolfnetError(f"{source}: expected a non-empty list of {{'train': [...], 'val': [...]}} folds")
    known = set(case_ids)
    for index, split in enumerate(splits):
        if not isinstance(split, dict) or set(split) != {"train", "val"}:
            raise VolfnetError(f"{source}: fold {index} must be an object with exactly the keys 'train' and 'val'")
        for key in ("train", "val"):
            ids = split[key]
            if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
                raise VolfnetError(f"{source}: fold {index} '{key}' must be a list of case ids")
            unknown = sorted(set(ids) - known)
            if unknown:
                listed = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
                raise VolfnetError(
                    f"{source}: fold {index} '{key}' names {len(unknown)} case(s) that are not preprocessed: {listed}"
                )
        if not split["train"]:
            raise VolfnetError(f"{source}: fold {index} has no training cases")
    return splits


def load_or_create_splits(folder: Path, case_ids: Sequence[str], write: bool = True) -> list[Split]:
    """The splits in ``folder/splits.json``; created (when ``write``) from :func:`make_splits`
    if absent. Cases missing from every fold are reported, not added."""
    path = Path(folder) / SPLITS_FILE
    if path.is_file():
        splits = validate_splits(read_json(path), case_ids, str(path))
        covered = {c for split in splits for key in ("train", "val") for c in split[key]}
        absent = sorted(set(case_ids) - covered)
        if absent:
            logger.warning("%s: %d preprocessed case(s) are in no fold and are not used: %s", path, len(absent), ", ".join(absent[:10]))
        return splits
    splits = make_splits(case_ids)
    if write:
        atomic_write_json(path, splits)
        logger.info("wrote %d-fold splits to %s", len(splits), path)
    return splits


def fold_cases(splits: Sequence[Split], fold: Fold, case_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Training and validation cases of ``fold``; ``all``: every case, validated on fold 0's
    validation cases (or on every case when there are no splits to speak of)."""
    if fold == ALL_FOLDS:
        val = list(splits[0]["val"]) if splits and splits[0]["val"] else sorted(case_ids)
        return sorted(case_ids), val
    if not isinstance(fold, int) or not 0 <= fold < len(splits):
        raise VolfnetError(f"fold {fold!r} does not exist: the splits have folds 0..{len(splits) - 1} (and 'all')")
    split = splits[fold]
    if not split["val"]:
        raise VolfnetError(f"fold {fold} has no validation cases")
    return list(split["train"]), list(split["val"])


def splits_for_fold(folder: Path, fold: Fold, case_ids: Sequence[str], write: bool = True) -> tuple[list[str], list[str]]:
    """Training and validation cases of ``fold`` from ``folder/splits.json`` (made when absent).
    Fold ``all`` works with any number of cases, even when five folds are impossible."""
    if fold == ALL_FOLDS and len(set(case_ids)) < NUM_FOLDS and not (Path(folder) / SPLITS_FILE).is_file():
        ids = sorted(case_ids)
        return ids, ids
    return fold_cases(load_or_create_splits(folder, case_ids, write), fold, case_ids)
