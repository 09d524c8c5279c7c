"""Largest-connected-component postprocessing: the operation, the decision and its file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.images import write_volume

from volfnet.errors import VolfnetError
from volfnet.evaluation.postprocessing import (
    POSTPROCESSING_FILE,
    PostprocessingDecision,
    apply_postprocessing,
    determine_postprocessing,
    keep_largest_component,
    largest_component,
    load_postprocessing,
)

SHAPE = (12, 12, 16)


def test_largest_component_uses_full_26_connectivity():
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 3] = True  # a diagonal chain touching at corners
    mask[5, 0, 5] = mask[5, 0, 4] = True  # two face neighbours, apart from the chain
    kept = largest_component(mask)
    assert kept.sum() == 3 and kept[1, 1, 1] and kept[3, 3, 3] and not kept[5, 0, 5]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_keep_largest_component_foreground_versus_per_label():
    seg = np.zeros((4, 4, 12), np.uint8)
    seg[0:2, 0:2, 0:2] = 1  # 8 voxels of label 1 ...
    seg[0:2, 0:2, 2:3] = 2  # ... touching 4 voxels of label 2: one foreground component
    seg[0, 0, 10] = 1  # stray label-1 voxel
    seg[0:2, 0:2, 6:8] = 2  # a second, larger label-2 component (8 voxels)
    foreground = keep_largest_component(seg)
    assert foreground[0, 0, 10] == 0 and not foreground[0:2, 0:2, 6:8].any()
    # The union {label 1 block + label 2 block} has 12 voxels and wins over 8 and 1.
    assert (foreground == 1).sum() == 8 and (foreground == 2).sum() == 4
    per_label = keep_largest_component(seg, [2])
    assert (per_label == 2).sum() == 8 and per_label[0, 0, 2] == 0
    assert (per_label == 1).sum() == 9  # label 1 untouched
    assert (seg == 1).sum() == 9  # input unchanged


def _write_case(gt, pred, case, reference, prediction):
    write_volume(reference, gt / f"{case}.nii.gz")
    write_volume(prediction, pred / f"{case}.nii.gz")


def test_spurious_blob_makes_foreground_postprocessing_win(tmp_path):
    """Reference cube of 64 voxels; prediction = cube + a far 8-voxel blob:
    Dice 128/136 before, 1 after keeping the largest component."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    reference = np.zeros(SHAPE, np.uint8)
    reference[2:6, 2:6, 2:6] = 1
    prediction = reference.copy()
    prediction[9:11, 9:11, 12:14] = 1
    _write_case(gt, pred, "case_0", reference, prediction)
    decision = determine_postprocessing(gt, pred, [1], num_workers=1)
    assert decision.foreground_largest_component is True
    assert decision.per_label == []  # nothing left to gain after the foreground step
    assert decision.dice_before["foreground_mean"] == pytest.approx(128 / 136)
    assert decision.dice_after["foreground_mean"] == pytest.approx(1.0)
    saved = json.loads((pred / POSTPROCESSING_FILE).read_text())
    assert saved["foreground_largest_component"] is True and saved["connectivity"] == 26
    assert (apply_postprocessing(prediction, load_postprocessing(pred / POSTPROCESSING_FILE)) == reference).all()


def test_structure_with_two_true_parts_rejects_postprocessing(tmp_path):
    """Reference has two separate parts (64 + 27 voxels) predicted exactly: keeping the
    largest would drop to Dice 128/155, so nothing is kept."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    reference = np.zeros(SHAPE, np.uint8)
    reference[2:6, 2:6, 2:6] = 1
    reference[8:11, 8:11, 10:13] = 1
    _write_case(gt, pred, "case_0", reference, reference)
    decision = determine_postprocessing(gt, pred, {"organ": 1}, output_folder=tmp_path / "out", num_workers=1)
    assert decision.foreground_largest_component is False and decision.per_label == []
    assert decision.dice_after["foreground_mean"] == pytest.approx(1.0)
    assert (tmp_path / "out" / POSTPROCESSING_FILE).is_file()
    assert (apply_postprocessing(reference, decision) == reference).all()


def test_foreground_step_refused_when_any_label_gets_worse(tmp_path):
    """Label 1: 8-voxel cube + 8-voxel spurious blob (Dice 16/24). Label 2: a 64-voxel part
    touching label 1 plus a true single voxel elsewhere. The foreground step raises the
    foreground mean (5/6 -> (1 + 128/129)/2) but lowers label 2 (1 -> 128/129), so nnU-Net's
    rule refuses it; the label-1 step alone is accepted."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    reference = np.zeros(SHAPE, np.uint8)
    reference[2:4, 2:4, 2:4] = 1
    reference[2:6, 2:6, 4:8] = 2  # touches label 1 across the x=3|4 face
    reference[10, 0, 0] = 2  # separate true part
    prediction = reference.copy()
    prediction[9:11, 9:11, 12:14] = 1
    _write_case(gt, pred, "case_0", reference, prediction)
    decision = determine_postprocessing(gt, pred, [1, 2], num_workers=1)
    assert decision.foreground_largest_component is False
    assert decision.per_label == [1]
    assert decision.dice_before["per_label"] == pytest.approx({"1": 2 / 3, "2": 1.0})
    assert decision.dice_before["foreground_mean"] == pytest.approx(5 / 6)
    assert decision.dice_after["per_label"] == pytest.approx({"1": 1.0, "2": 1.0})
    assert (apply_postprocessing(prediction, decision) == reference).all()


def test_decision_file_validation_names_the_file(tmp_path):
    path = tmp_path / POSTPROCESSING_FILE
    path.write_text(json.dumps({"foreground_largest_component": "yes", "per_label": []}))
    with pytest.raises(VolfnetError, match=str(path)):
        load_postprocessing(path)
    path.write_text(json.dumps({"foreground_largest_component": False, "per_label": [0]}))
    with pytest.raises(VolfnetError, match="per_label"):
        load_postprocessing(path)
    with pytest.raises(VolfnetError, match="not found"):
        load_postprocessing(tmp_path / "missing.json")


def test_empty_decision_returns_an_unchanged_copy():
    seg = np.zeros((3, 3, 3), np.uint8)
    seg[0, 0, 0] = seg[2, 2, 2] = 1
    out = apply_postprocessing(seg, PostprocessingDecision())
    assert out is not seg and (out == seg).all()
