"""Folder evaluation, the summary files, overlays and the volfnet_evaluate CLI on tiny NIfTI cases."""

from __future__ import annotations

import csv
import json
import math
import struct

import numpy as np
import pytest
from helpers.images import write_volume
from helpers.raw_data import SHARED_DATA, make_raw_dataset

from volfnet.cli import evaluate as cli
from volfnet.errors import VolfnetError
from volfnet.evaluation.cases import find_case_pairs, normalize_labels
from volfnet.evaluation.evaluate import evaluate_folder
from volfnet.evaluation.overlays import overlay_slice_indices, save_overlay_png

SPACING = (3.0, 1.0, 1.0)
SHAPE = (10, 10, 12)


def _cube(z, y, x, label=1):
    seg = np.zeros(SHAPE, np.uint8)
    seg[z, y, x] = label
    return seg


@pytest.fixture
def folders(tmp_path):
    """Three cases with hand-known scores.

    case_a: both labels predicted exactly (Dice 1, HD95 0).
    case_b: label 1 shifted 2 slices (Dice 0.5, HD95 6 mm, ASSD 17/7 mm); label 2 absent in both.
    case_c: label 1 exact; label 2 in the reference only (Dice 0, HD95 undefined).
    """
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    label2 = (slice(6, 9), slice(0, 2), slice(8, 11))
    a = _cube(slice(2, 6), slice(3, 7), slice(3, 7))
    a[label2] = 2
    b_ref = _cube(slice(2, 6), slice(3, 7), slice(3, 7))
    b_pred = _cube(slice(4, 8), slice(3, 7), slice(3, 7))
    c_ref = a.copy()
    c_pred = _cube(slice(2, 6), slice(3, 7), slice(3, 7))
    for case, ref, prd in (("case_a", a, a), ("case_b", b_ref, b_pred), ("case_c", c_ref, c_pred)):
        write_volume(ref, gt / f"{case}.nii.gz", SPACING)
        write_volume(prd, pred / f"{case}.nii.gz", SPACING)
    return gt, pred


def test_evaluate_folder_hand_computed_means(folders):
    gt, pred = folders
    summary = evaluate_folder(gt, pred, {"background": 0, "liver": 1, "tumour": 2}, num_workers=1)
    assert summary["num_cases"] == 3
    assert list(summary["labels"]) == ["0", "1", "2"]
    label1, label2 = summary["mean"]["1"], summary["mean"]["2"]
    assert label1["name"] == "liver"
    assert label1["Dice"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert label1["HD95"] == pytest.approx(6.0 / 3)
    assert label1["ASSD"] == pytest.approx((17 / 7) / 3)
    assert label2["Dice"] == pytest.approx(0.5)  # case_a 1, case_c 0, case_b undefined
    assert label2["HD95"] == pytest.approx(0.0)  # only case_a is defined
    assert (label2["n_both_empty"], label2["n_prediction_empty_only"], label2["n_reference_empty_only"]) == (1, 1, 0)
    # Background is scored when asked for but is not part of the foreground mean.
    assert summary["foreground_mean"]["Dice"] == pytest.approx((5 / 6 + 0.5) / 2)
    case_b = next(c for c in summary["per_case"] if c["case"] == "case_b")
    assert math.isnan(case_b["metrics"]["2"]["Dice"])


def test_summary_files_written_atomically_with_null_for_nan(folders):
    gt, pred = folders
    evaluate_folder(gt, pred, [1, 2], num_workers=1)
    data = json.loads((pred / "summary.json").read_text())  # strict JSON: NaN would not parse in other tools
    case_b = next(c for c in data["per_case"] if c["case"] == "case_b")
    assert case_b["metrics"]["2"]["Dice"] is None
    assert case_b["metrics"]["1"]["Dice"] == pytest.approx(0.5)
    assert "NaN" not in (pred / "summary.json").read_text()
    with open(pred / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6  # 3 cases x 2 labels
    row = next(r for r in rows if r["case"] == "case_b" and r["label"] == "1")
    assert float(row["HD95"]) == pytest.approx(6.0) and int(row["TP"]) == 32
    assert not [p for p in pred.iterdir() if p.name.endswith(".tmp")]


def test_output_folder_and_parallel_workers_agree(folders, tmp_path):
    gt, pred = folders
    serial = evaluate_folder(gt, pred, [1, 2], num_workers=1, output_folder=tmp_path / "serial")
    parallel = evaluate_folder(gt, pred, [1, 2], num_workers=2, output_folder=tmp_path / "parallel")
    assert (tmp_path / "parallel" / "summary.json").is_file()
    assert json.dumps(serial["mean"], sort_keys=True) == json.dumps(parallel["mean"], sort_keys=True)


def test_geometry_mismatch_names_both_files(folders):
    gt, pred = folders
    write_volume(_cube(slice(2, 6), slice(3, 7), slice(3, 7)), pred / "case_a.nii.gz", (2.0, 1.0, 1.0))
    with pytest.raises(VolfnetError) as info:
        evaluate_folder(gt, pred, [1], num_workers=1)
    message = str(info.value)
    assert str(pred / "case_a.nii.gz") in message and str(gt / "case_a.nii.gz") in message
    assert "spacing" in message


def test_shape_mismatch_is_an_error(folders):
    gt, pred = folders
    write_volume(np.zeros((10, 10, 11), np.uint8), pred / "case_c.nii.gz", SPACING)
    with pytest.raises(VolfnetError, match="shape"):
        evaluate_folder(gt, pred, [1], num_workers=1)


def test_missing_prediction_is_an_error_unless_allowed(folders):
    gt, pred = folders
    (pred / "case_b.nii.gz").unlink()
    with pytest.raises(VolfnetError, match="case_b"):
        evaluate_folder(gt, pred, [1], num_workers=1)
    summary = evaluate_folder(gt, pred, [1], num_workers=1, allow_missing=True)
    assert [c["case"] for c in summary["per_case"]] == ["case_a", "case_c"]
    assert summary["mean"]["1"]["Dice"] == pytest.approx(1.0)


def test_extra_predictions_and_other_files_are_ignored(folders):
    gt, pred = folders
    write_volume(np.zeros(SHAPE, np.uint8), pred / "test_case.nii.gz", SPACING)
    (pred / "notes.txt").write_text("hello")
    pairs = find_case_pairs(gt, pred)
    assert [p.case_id for p in pairs] == ["case_a", "case_b", "case_c"]


def test_label_normalisation_refuses_bad_input():
    assert normalize_labels([2, 1]) == {1: "1", 2: "2"}
    assert normalize_labels({"a": 1, "background": 0}) == {0: "background", 1: "a"}
    with pytest.raises(VolfnetError, match="twice"):
        normalize_labels([1, 1])
    with pytest.raises(VolfnetError, match="negative"):
        normalize_labels([-1])


def _png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_overlay_png_has_expected_size(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=SHAPE).astype(np.float32)
    reference = _cube(slice(4, 9), slice(2, 8), slice(2, 8))
    prediction = _cube(slice(4, 9), slice(3, 8), slice(2, 7), label=2)
    assert overlay_slice_indices(prediction, reference, 3) == [5, 6, 7]  # 25/50/75 % of z 4..8
    path = save_overlay_png(image, prediction, reference, tmp_path / "o.png", spacing=SPACING)
    assert _png_size(path) == (900, 300)
    assert _png_size(save_overlay_png(image, prediction, reference, tmp_path / "two.png", num_slices=2)) == (600, 300)


def test_cli_prints_table_and_writes_summary(folders, capsys):
    gt, pred = folders
    assert cli.main([str(gt), str(pred), "-l", "1", "2", "-np", "1", "--tolerance", "2"]) == 0
    out = capsys.readouterr().out
    assert "foreground mean" in out and str(pred / "summary.json") in out
    assert "0.8333" in out  # label 1 mean Dice
    assert json.loads((pred / "summary.json").read_text())["tolerance_mm"] == 2.0


def test_cli_user_error_exit_code_2_without_traceback(folders, capsys):
    gt, pred = folders
    write_volume(_cube(slice(2, 6), slice(3, 7), slice(3, 7)), pred / "case_a.nii.gz", (2.0, 1.0, 1.0))
    assert cli.main([str(gt), str(pred), "-l", "1", "-np", "1"]) == 2
    err = capsys.readouterr().err
    assert "geometry differs" in err and "case_a.nii.gz" in err and "Traceback" not in err


def test_cli_dataset_labels_overlays_and_postprocessing(roots, tmp_path, capsys):
    folder = make_raw_dataset(roots["raw"], dataset_id=7, num_cases=2, shape=(10, 12, 14))
    labels_dir = folder / "labelsTr"
    out = tmp_path / "out"
    argv = [str(labels_dir), str(labels_dir), "-d", "7", "-o", str(out), "-np", "1",
            "--overlays", str(folder / "imagesTr"), "--determine-postprocessing"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == {"1": "class1", "2": "class2"}
    assert summary["foreground_mean"]["Dice"] == 1.0
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["case_000.png", "case_001.png"]
    decision = json.loads((out / "postprocessing.json").read_text())
    assert decision["foreground_largest_component"] is False and decision["per_label"] == []
    assert "postprocessing:" in capsys.readouterr().out


def test_cli_missing_overlay_images_is_an_error(folders, tmp_path, capsys):
    gt, pred = folders
    assert cli.main([str(gt), str(pred), "-l", "1", "-np", "1", "--overlays", str(tmp_path / "nothing")]) == 2
    assert "case_a_0000.nii.gz" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "ct_examples").is_dir(), reason="shared real data (../shared/data/ct_examples) not present")
def test_real_aorta_mask_against_itself(tmp_path):
    source = SHARED_DATA / "ct_examples" / "aorta_ct_cropped_aorta_mask.nii.gz"
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "aorta.nii.gz").symlink_to(source)  # read in place, never copied
    summary = evaluate_folder(tmp_path / "gt", tmp_path / "gt", [1], num_workers=1, output_folder=tmp_path)
    assert summary["num_cases"] == 1 and summary["per_case"][0]["case"] == "aorta"
    values = summary["mean"]["1"]
    assert values["Dice"] == 1.0 and values["HD95"] == 0.0 and values["ASSD"] == 0.0 and values["NSD"] == 1.0


def test_a_truncated_prediction_is_named_and_nothing_is_scored(tmp_path, capsys):
    """ITK reads a gzip stream that ends early without an error (zeros for the rest), which
    scored a prediction identical to its reference at Dice 0.4: now the file is named."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    rng = np.random.default_rng(0)
    for case in ("case_a", "case_b"):
        seg = rng.integers(0, 3, (24, 24, 24)).astype(np.uint8)  # noise: compresses poorly, so the cut lands in the voxels
        write_volume(seg, gt / f"{case}.nii.gz")
        write_volume(seg, pred / f"{case}.nii.gz")
    cut = pred / "case_b.nii.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 6 // 10])
    assert cli.main([str(gt), str(pred), "-l", "1", "2", "-np", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{cut}: file is truncated (the gzip stream ends early" in err and "Traceback" not in err
    assert not (pred / "summary.json").exists()  # a mean over the readable cases only would mislead
