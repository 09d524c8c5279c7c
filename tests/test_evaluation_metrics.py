"""Metrics against hand-computed cases (anisotropic spacing z 3 mm, y/x 1 mm) and the
empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from volfnet.evaluation import metrics
from volfnet.evaluation.metrics import (
    assd,
    bounding_box,
    dice,
    hd95,
    iou,
    label_map_metrics,
    mask_metrics,
    normalized_surface_dice,
    surface,
    surface_distances,
)

SPACING = (3.0, 1.0, 1.0)


def two_cubes_shifted_in_z() -> tuple[np.ndarray, np.ndarray]:
    """4x4x4 cubes, the second shifted by 2 voxels (6 mm) along z.

    Hand count (each cube has 56 surface voxels, the same by symmetry both ways):
    24 at 0 mm (the faces/rings that lie on the other cube's surface), 4 at 1 mm (the inner
    2x2 of a face, 1 mm in plane from the other's ring), 12 at 3 mm (ring one slice away from
    the other's face), 16 at 6 mm (the far face). Sum 136 per direction.
    """
    reference = np.zeros((12, 12, 12), bool)
    prediction = np.zeros_like(reference)
    reference[2:6, 3:7, 3:7] = True
    prediction[4:8, 3:7, 3:7] = True
    return reference, prediction


def test_cube_shift_overlap_scores():
    reference, prediction = two_cubes_shifted_in_z()
    assert dice(reference, prediction) == pytest.approx(0.5)  # 2*32 / (64+64)
    assert iou(reference, prediction) == pytest.approx(1 / 3)  # 32 / 96


def test_cube_shift_surface_distances_by_hand():
    reference, prediction = two_cubes_shifted_in_z()
    distances = surface_distances(reference, prediction, SPACING)
    expected = sorted([0.0] * 24 + [1.0] * 4 + [3.0] * 12 + [6.0] * 16)
    assert sorted(distances.prediction_to_reference.tolist()) == pytest.approx(expected)
    assert sorted(distances.reference_to_prediction.tolist()) == pytest.approx(expected)
    # 95th percentile of 56 sorted values sits between indices 52 and 53, both 6 mm.
    assert hd95(reference, prediction, SPACING) == pytest.approx(6.0)
    assert assd(reference, prediction, SPACING) == pytest.approx(272 / 112)


@pytest.mark.parametrize(
    "tolerance, expected",
    [(0.5, 48 / 112), (2.0, 56 / 112), (3.0, 80 / 112), (5.9, 80 / 112), (6.0, 1.0)],
)
def test_cube_shift_nsd_at_tolerances(tolerance, expected):
    reference, prediction = two_cubes_shifted_in_z()
    assert normalized_surface_dice(reference, prediction, SPACING, tolerance) == pytest.approx(expected)


def test_spacing_is_used():
    """With isotropic spacing the same shift is 2 mm, not 6 mm: spacing must matter."""
    reference, prediction = two_cubes_shifted_in_z()
    assert hd95(reference, prediction, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert assd(reference, prediction, (1.0, 1.0, 1.0)) == pytest.approx((4 * 1 + 12 * 1 + 16 * 2) * 2 / 112)


def test_single_voxel_against_diagonally_shifted_voxel():
    reference = np.zeros((8, 8, 8), bool)
    prediction = np.zeros_like(reference)
    reference[3, 3, 3] = True
    prediction[4, 4, 3] = True  # one slice (3 mm) and one row (1 mm) away
    values = mask_metrics(reference, prediction, SPACING, tolerance_mm=3.0)
    assert values["Dice"] == 0.0 and values["IoU"] == 0.0
    assert values["HD95"] == pytest.approx(math.sqrt(10))
    assert values["ASSD"] == pytest.approx(math.sqrt(10))
    assert values["NSD"] == 0.0
    assert mask_metrics(reference, prediction, SPACING, tolerance_mm=3.2)["NSD"] == 1.0
    assert (values["n_ref"], values["n_pred"], values["TP"], values["FP"], values["FN"]) == (1, 1, 0, 1, 1)


def test_hd95_ignores_a_small_outlier_that_assd_sees():
    """Cube plus one stray voxel 7 mm away along x: 57 predicted surface voxels, 56 at 0 mm
    and one at 7 mm, so the 95th percentile is 0 while the ASSD is 7/(57+56)."""
    reference = np.zeros((10, 10, 16), bool)
    reference[2:6, 3:7, 3:7] = True
    prediction = reference.copy()
    prediction[2, 3, 13] = True  # nearest reference surface voxel is (2, 3, 6)
    assert hd95(reference, prediction, SPACING) == 0.0
    assert assd(reference, prediction, SPACING) == pytest.approx(7 / 113)
    assert normalized_surface_dice(reference, prediction, SPACING, 1.0) == pytest.approx(112 / 113)


def test_identical_masks_are_perfect():
    reference, _ = two_cubes_shifted_in_z()
    values = mask_metrics(reference, reference.copy(), SPACING, 1.0)
    assert values["Dice"] == 1.0 and values["IoU"] == 1.0
    assert values["HD95"] == 0.0 and values["ASSD"] == 0.0 and values["NSD"] == 1.0


def test_both_empty_convention():
    empty = np.zeros((5, 5, 5), bool)
    values = mask_metrics(empty, empty, SPACING, 1.0)
    for name in ("Dice", "IoU", "HD95", "ASSD", "NSD"):
        assert math.isnan(values[name]), name
    assert math.isnan(metrics.OVERLAP_WHEN_BOTH_EMPTY)


@pytest.mark.parametrize("empty_side", ["reference", "prediction"])
def test_exactly_one_empty_convention(empty_side):
    mask = np.zeros((6, 6, 6), bool)
    mask[1:3, 1:3, 1:3] = True
    empty = np.zeros_like(mask)
    reference, prediction = (empty, mask) if empty_side == "reference" else (mask, empty)
    values = mask_metrics(reference, prediction, SPACING, 100.0)
    assert values["Dice"] == 0.0 and values["IoU"] == 0.0
    assert values["NSD"] == metrics.NSD_WHEN_ONE_EMPTY == 0.0
    assert math.isnan(values["HD95"]) and math.isnan(values["ASSD"])
    assert math.isnan(hd95(reference, prediction, SPACING))


def test_surface_is_mask_minus_six_connected_erosion():
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    shell = surface(mask)
    assert shell.sum() == 26 and not shell[2, 2, 2]
    edge = np.ones((3, 3, 3), bool)  # touching the array border: the border counts as outside
    assert surface(edge).sum() == 26


def test_bounding_box_with_margin_is_clipped():
    mask = np.zeros((6, 7, 8), bool)
    mask[0, 2:4, 7] = True
    assert bounding_box(mask, margin=1) == (slice(0, 2), slice(1, 5), slice(6, 8))
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None


def test_cropped_distances_equal_full_volume():
    rng = np.random.default_rng(3)
    shape = (14, 30, 26)
    reference = np.zeros(shape, bool)
    prediction = np.zeros(shape, bool)
    reference[3:9, 5:20, 0:12] = True  # touches the x border
    prediction[4:11, 8:24, 2:15] = True
    prediction[12:14, 25:30, 20:26] = True  # a far blob in the corner
    reference |= rng.random(shape) > 0.995  # scattered specks
    cropped = surface_distances(reference, prediction, SPACING, crop=True)
    full = surface_distances(reference, prediction, SPACING, crop=False)
    np.testing.assert_array_equal(cropped.prediction_to_reference, full.prediction_to_reference)
    np.testing.assert_array_equal(cropped.reference_to_prediction, full.reference_to_prediction)


def test_label_map_metrics_match_per_mask_metrics():
    reference = np.zeros((10, 12, 12), np.int16)
    prediction = np.zeros_like(reference)
    reference[2:6, 3:7, 3:7] = 1
    prediction[4:8, 3:7, 3:7] = 1
    reference[1:3, 8:11, 8:11] = 2
    prediction[1:3, 8:11, 9:12] = 2
    results = label_map_metrics(reference, prediction, [0, 1, 2, 3], SPACING, 2.0)
    for label in (0, 1, 2):
        expected = mask_metrics(reference == label, prediction == label, SPACING, 2.0)
        assert results[label] == pytest.approx(expected), label
    assert results[1]["HD95"] == pytest.approx(6.0)
    assert math.isnan(results[3]["Dice"]) and results[3]["n_ref"] == 0 and results[3]["n_pred"] == 0


def test_mismatched_shapes_are_a_programming_error():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1.0, 1.0))
