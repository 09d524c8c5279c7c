"""``volfnet_ensemble`` and ``volfnet_apply_postprocessing`` end to end on tiny generated folders.

Hand-made prediction folders (label map + ``<case>.npz`` as the predictor writes them) check
the arithmetic exactly; one test ensembles two real folds predicted by ``volfnet_predict``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers.images import assert_same_geometry, read_image
from helpers.model_folder import model_environment

from volfnet.cli.apply_postprocessing import main as apply_main
from volfnet.cli.ensemble import main as ensemble_main
from volfnet.cli.predict import main as predict_main
from volfnet.evaluation.postprocessing import PostprocessingDecision, save_postprocessing
from volfnet.inference.export import ExportedPrediction, load_probabilities, write_prediction
from volfnet.io.image_io import ImageGeometry

GEOMETRY = ImageGeometry(
    spacing=[2.5, 0.8, 0.9], origin=[-10.0, 4.5, 33.0], direction=[0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], shape=[6, 7, 5]
)
NUM_CLASSES = 3


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def write_folder(folder: Path, probabilities: dict[str, np.ndarray], ending: str = ".nii.gz", labels=None) -> None:
    """A prediction folder as volfnet_predict --save-probabilities leaves it."""
    for case, probs in probabilities.items():
        segmentation = labels[case] if labels is not None else probs.argmax(axis=0).astype(np.uint8)
        write_prediction(ExportedPrediction(segmentation, probs), GEOMETRY, folder / f"{case}{ending}")


@pytest.fixture
def two_folders(tmp_path):
    rng = np.random.default_rng(0)
    cases = ("case_a", "case_b")
    first = {c: softmax(rng.normal(size=(NUM_CLASSES, *GEOMETRY.shape)) * 3) for c in cases}
    second = {c: softmax(rng.normal(size=(NUM_CLASSES, *GEOMETRY.shape)) * 3) for c in cases}
    write_folder(tmp_path / "A", first)
    write_folder(tmp_path / "B", second)
    return tmp_path, first, second


def test_ensemble_is_the_argmax_of_the_mean_probabilities(two_folders, capsys):
    base, first, second = two_folders
    out = base / "OUT"
    assert ensemble_main(["-i", str(base / "A"), str(base / "B"), "-o", str(out), "--save-probabilities"]) == 0
    assert "2 case(s) ensembled from 2 folders" in capsys.readouterr().out
    for case in first:
        mean = (first[case] + second[case]) / 2
        labels, image = read_image(out / f"{case}.nii.gz")
        np.testing.assert_array_equal(labels, mean.argmax(axis=0))
        assert labels.dtype == np.uint8
        # the two folders disagree somewhere, so the ensemble is not just one of them
        assert (first[case].argmax(0) != second[case].argmax(0)).any()
        assert_same_geometry(image, read_image(base / "A" / f"{case}.nii.gz")[1])
        assert image.GetSpacing() == pytest.approx(tuple(reversed(GEOMETRY.spacing)))
        assert image.GetOrigin() == pytest.approx(tuple(GEOMETRY.origin))
        np.testing.assert_allclose(load_probabilities(out / f"{case}.npz"), mean, rtol=1e-6, atol=1e-7)
    # without --save-probabilities only the label maps are written
    assert ensemble_main(["-i", str(base / "A"), str(base / "B"), "-o", str(base / "OUT2")]) == 0
    assert sorted(p.name for p in (base / "OUT2").iterdir()) == ["case_a.nii.gz", "case_b.nii.gz"]


def test_geometry_and_format_come_from_the_first_folder(tmp_path):
    rng = np.random.default_rng(1)
    probs = {"c": softmax(rng.normal(size=(NUM_CLASSES, *GEOMETRY.shape)))}
    write_folder(tmp_path / "A", probs, ending=".nrrd")
    write_folder(tmp_path / "B", probs, ending=".nii.gz")
    assert ensemble_main(["-i", str(tmp_path / "A"), str(tmp_path / "B"), "-o", str(tmp_path / "OUT"), "-np", "2"]) == 0
    labels, image = read_image(tmp_path / "OUT" / "c.nrrd")
    np.testing.assert_array_equal(labels, probs["c"].argmax(0))
    assert_same_geometry(image, read_image(tmp_path / "A" / "c.nrrd")[1])


def test_region_probabilities_are_thresholded_in_regions_class_order(tmp_path, capsys):
    # two regions: "whole" = {1, 2} written as 1, "core" = {2} written as 2 (later overwrites)
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "whole": [1, 2], "core": [2]},
        "regions_class_order": [1, 2], "numTraining": 1, "file_ending": ".nii.gz",
    }))
    rng = np.random.default_rng(2)
    first = rng.uniform(size=(2, *GEOMETRY.shape)).astype(np.float32)
    second = rng.uniform(size=(2, *GEOMETRY.shape)).astype(np.float32)
    empty = np.zeros(GEOMETRY.shape, np.uint8)
    write_folder(tmp_path / "A", {"r": first}, labels={"r": empty})
    write_folder(tmp_path / "B", {"r": second}, labels={"r": empty})
    out = tmp_path / "OUT"
    # without the dataset.json these do not sum to 1: refused instead of argmax-ed
    assert ensemble_main(["-i", str(tmp_path / "A"), str(tmp_path / "B"), "-o", str(out)]) == 2
    assert "--dataset-json" in capsys.readouterr().err
    assert ensemble_main(["-i", str(tmp_path / "A"), str(tmp_path / "B"), "-o", str(out), "--dataset-json", str(dataset_json)]) == 0
    mean = (first + second) / 2
    expected = np.zeros(GEOMETRY.shape, np.uint8)
    expected[mean[0] > 0.5] = 1
    expected[mean[1] > 0.5] = 2
    labels, _ = read_image(out / "r.nii.gz")
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_mismatched_folders_are_refused_before_anything_is_written(two_folders, capsys):
    base, first, _ = two_folders
    out = base / "OUT"
    (base / "C").mkdir()
    write_folder(base / "C", {"case_a": first["case_a"]})  # case_b is missing
    assert ensemble_main(["-i", str(base / "A"), str(base / "C"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different cases" in err and str(base / "C") in err and "case_b" in err
    assert not out.exists()

    write_folder(base / "D", {c: p[:, :, :4] for c, p in first.items()}, labels={c: p.argmax(0).astype(np.uint8) for c, p in first.items()})  # other shape
    assert ensemble_main(["-i", str(base / "A"), str(base / "D"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different shapes" in err and "[3, 6, 7, 5]" in err and "[3, 6, 4, 5]" in err
    assert not out.exists()

    (base / "B" / "case_a.nii.gz").unlink()  # the geometry comes from the first folder's label map
    assert ensemble_main(["-i", str(base / "B"), str(base / "A"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no label map case_a" in err and str(base / "B") in err
    assert not out.exists()

    assert ensemble_main(["-i", str(base / "A"), "-o", str(out)]) == 2
    assert "at least two" in capsys.readouterr().err
    assert ensemble_main(["-i", str(base / "A"), str(base / "B"), "-o", str(base / "A")]) == 2
    assert "must not be one of the input folders" in capsys.readouterr().err
    (base / "E").mkdir()
    assert ensemble_main(["-i", str(base / "A"), str(base / "E"), "-o", str(out)]) == 2
    assert "--save-probabilities" in capsys.readouterr().err


def test_damaged_and_mislabelled_probabilities_name_the_file(two_folders, capsys):
    base, _, _ = two_folders
    out = base / "OUT"
    damaged = base / "B" / "case_b.npz"
    damaged.write_bytes(damaged.read_bytes()[:40])
    assert ensemble_main(["-i", str(base / "A"), str(base / "B"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(damaged) in err and "corrupt" in err

    dataset_json = base / "dataset.json"  # two classes, but the files hold three
    dataset_json.write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": {"background": 0, "x": 1}, "numTraining": 1, "file_ending": ".nii.gz"}))
    assert ensemble_main(["-i", str(base / "A"), str(base / "A"), "-o", str(out)]) == 2
    assert "given twice" in capsys.readouterr().err
    (base / "C").mkdir()
    for name in ("case_a.npz", "case_b.npz"):
        (base / "C" / name).write_bytes((base / "A" / name).read_bytes())
    assert ensemble_main(["-i", str(base / "A"), str(base / "C"), "-o", str(out), "--dataset-json", str(dataset_json)]) == 2
    assert "3 probability channels, but the dataset.json has 2 classes" in capsys.readouterr().err


def test_ensemble_of_two_predicted_folds(tmp_path):
    """volfnet_predict per fold with --save-probabilities, then volfnet_ensemble of the two."""
    with model_environment(tmp_path) as setup:
        common = ["-i", str(setup.input_folder), "-m", str(setup.model_folder), "--device", "cpu", "--disable-tta", "-np", "0", "--save-probabilities"]
        for fold in (0, 1):
            assert predict_main([*common, "-o", str(tmp_path / f"fold{fold}"), "-f", str(fold)]) == 0
        out = tmp_path / "ensemble"
        assert ensemble_main(["-i", str(tmp_path / "fold0"), str(tmp_path / "fold1"), "-o", str(out), "--dataset-json",
                              str(setup.model_folder / "dataset.json")]) == 0
        p0, p1 = (load_probabilities(tmp_path / f"fold{f}" / "case_000.npz") for f in (0, 1))
        labels, image = read_image(out / "case_000.nii.gz")
        np.testing.assert_array_equal(labels, ((p0 + p1) / 2).argmax(axis=0))
        assert_same_geometry(image, sitk.ReadImage(str(setup.input_folder / "case_000_0000.nii.gz")))


# --- volfnet_apply_postprocessing ---------------------------------------------------------------


def test_apply_postprocessing_removes_a_small_extra_component_and_keeps_geometry(tmp_path, capsys):
    seg = np.zeros(GEOMETRY.shape, np.uint8)
    seg[0:3, 0:4, 0:3] = 1  # the organ: 36 voxels
    seg[1:3, 1:3, 1:2] = 2  # a second label inside it
    seg[5, 6, 4] = 1  # a spurious voxel far away
    other = np.zeros(GEOMETRY.shape, np.uint8)
    other[2:4, 2:4, 2:4] = 2
    inputs = tmp_path / "IN"
    write_prediction(ExportedPrediction(seg, np.zeros((1, 1, 1, 1), np.float32)), GEOMETRY, inputs / "case_a.nii.gz")
    write_prediction(ExportedPrediction(other), GEOMETRY, inputs / "case_b.nrrd")
    pp = save_postprocessing(PostprocessingDecision(foreground_largest_component=True), tmp_path / "postprocessing.json")
    out = tmp_path / "OUT"
    assert apply_main(["-i", str(inputs), "-o", str(out), "-pp", str(pp), "-np", "1"]) == 0
    assert "2 label map(s) post-processed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["case_a.nii.gz", "case_b.nrrd"]  # no .npz copied
    result, image = read_image(out / "case_a.nii.gz")
    expected = seg.copy()
    expected[5, 6, 4] = 0
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == np.uint8
    assert_same_geometry(image, read_image(inputs / "case_a.nii.gz")[1])
    assert image.GetDirection() == pytest.approx(tuple(GEOMETRY.direction))
    np.testing.assert_array_equal(read_image(out / "case_b.nrrd")[0], other)  # one component: unchanged

    # per-label: label 2 keeps its largest component only
    seg2 = seg.copy()
    seg2[5, 0, 0] = 2
    write_prediction(ExportedPrediction(seg2), GEOMETRY, tmp_path / "IN2" / "c.nii.gz")
    pp2 = save_postprocessing(PostprocessingDecision(per_label=[2]), tmp_path / "pp2.json")
    assert apply_main(["-i", str(tmp_path / "IN2"), "-o", str(tmp_path / "OUT2"), "-pp", str(pp2), "-np", "1"]) == 0
    result2, _ = read_image(tmp_path / "OUT2" / "c.nii.gz")
    np.testing.assert_array_equal(result2, seg)


def test_apply_postprocessing_bad_input_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "IN").mkdir()
    bad = tmp_path / "postprocessing.json"
    bad.write_text('{"foreground_largest_component": "yes", "per_label": []}')
    assert apply_main(["-i", str(tmp_path / "IN"), "-o", str(tmp_path / "OUT"), "-pp", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    good = save_postprocessing(PostprocessingDecision(foreground_largest_component=True), tmp_path / "pp.json")
    assert apply_main(["-i", str(tmp_path / "IN"), "-o", str(tmp_path / "OUT"), "-pp", str(good)]) == 2
    assert "no label maps" in capsys.readouterr().err
    (tmp_path / "IN" / "broken.nii.gz").write_bytes(b"not an image")
    assert apply_main(["-i", str(tmp_path / "IN"), "-o", str(tmp_path / "OUT"), "-pp", str(good), "-np", "1"]) == 2
    assert "broken.nii.gz" in capsys.readouterr().err
    assert apply_main(["-i", str(tmp_path / "IN"), "-o", str(tmp_path / "IN"), "-pp", str(good)]) == 2
    assert "must not be the input folder" in capsys.readouterr().err
