"""Export to the original geometry: undo resampling, crop and transpose; write atomically."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from volfnet.evaluation.postprocessing import PostprocessingDecision
from volfnet.inference.export import (
    LogitsHandover,
    PROBABILITIES_KEY,
    export_logits,
    label_dtype,
    load_probabilities,
    logits_to_original,
    probabilities_path,
)
from volfnet.io.image_io import ImageGeometry
from volfnet.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans
from volfnet.io.case_store import OUTSIDE_MASK_LABEL
from volfnet.preprocessing.preprocessor import preprocess_array

NUM_CLASSES = 3
SHAPE = (14, 20, 16)  # (z, y, x) as read
SPACING = (0.8, 1.0, 3.0)  # x is the thick axis, so the plans transpose it to the front
TRANSPOSE = [2, 0, 1]
ROTATION = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # a permutation of the world axes (det +1)
ORIGIN = [12.5, -40.0, 7.25]
PERFECT_LOGIT = 10.0


def make_plans(target_spacing: list[float], transpose: list[int] = TRANSPOSE) -> Plans:
    network = NetworkTopology("fmunet", [4, 8], [[2, 2, 2]], [[3, 3, 3], [3, 3, 3]], [0.0, 0.0])
    configuration = ConfigurationPlan(
        data_identifier="3d_fullres", spacing=list(target_spacing), median_shape=[8, 8, 8], patch_size=[8, 8, 8],
        batch_size=2, network=network, normalization=[ChannelNormalization("zscore")],
    )
    backward = [int(i) for i in np.argsort(transpose)]
    return Plans("Dataset999_Export", "cpu", 1, list(transpose), backward, list(SPACING), list(SHAPE), {"3d_fullres": configuration})


def make_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, ImageGeometry]:
    """Image (1, Z, Y, X) with a zero border (so cropping has work) and labels 1, 2 inside."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    label = np.zeros(SHAPE, np.int16)
    ball = (zz - 7) ** 2 / 16 + (yy - 10) ** 2 / 25 + (xx - 8) ** 2 / 9 < 1
    label[ball] = 1
    label[ball & (yy > 10)] = 2
    image = 100 + 10 * rng.standard_normal(SHAPE) + 300 * (label > 0)
    image[:2] = 0
    image[:, -3:] = 0
    image[:, :, :1] = 0
    label[image == 0] = 0
    geometry = ImageGeometry(spacing=list(SPACING), origin=ORIGIN, direction=ROTATION, shape=list(SHAPE))
    return image[None].astype(np.float32), label, geometry


def perfect_logits(seg: np.ndarray) -> torch.Tensor:
    """One-hot logits of a preprocessed (1, z, y, x) seg (the ignore label counts as background)."""
    labels = np.where(seg[0] == OUTSIDE_MASK_LABEL, 0, seg[0])
    one_hot = np.stack([labels == k for k in range(NUM_CLASSES)]).astype(np.float32)
    return torch.from_numpy(one_hot * PERFECT_LOGIT)


def preprocess(plans: Plans, image: np.ndarray, label: np.ndarray, geometry: ImageGeometry):
    return preprocess_array(image, geometry, label[None], plans, "3d_fullres", "case", foreground_labels=[1, 2])


def read_back(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def test_label_dtype_grows_past_256_classes():
    assert label_dtype(3) == np.uint8 and label_dtype(256) == np.uint8 and label_dtype(257) == np.uint16


def test_round_trip_restores_labels_and_geometry_exactly_without_resampling(tmp_path):
    image, label, geometry = make_case()
    plans = make_plans([SPACING[t] for t in TRANSPOSE])  # target = original spacing: no resampling
    _, seg, properties = preprocess(plans, image, label, geometry)
    assert properties.bbox != [[0, s] for s in properties.shape_before_cropping]  # the crop did something
    assert properties.shape_before_cropping == [SHAPE[t] for t in TRANSPOSE]
    output = tmp_path / "case.nii.gz"
    export_logits(perfect_logits(seg), properties, plans.configuration("3d_fullres").resampling, output)
    array, written = read_back(output)
    np.testing.assert_array_equal(array, label)
    assert array.dtype == np.uint8
    assert written.GetSize() == tuple(reversed(SHAPE))
    assert written.GetSpacing() == pytest.approx(tuple(reversed(SPACING)))
    assert written.GetOrigin() == pytest.approx(tuple(ORIGIN))
    assert written.GetDirection() == pytest.approx(tuple(ROTATION))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz"]  # no temporary left behind


def test_round_trip_through_resampling_differs_only_at_label_borders(tmp_path):
    image, label, geometry = make_case()
    plans = make_plans([3.0, 1.6, 1.5])  # coarser in-plane than the scan
    _, seg, properties = preprocess(plans, image, label, geometry)
    assert properties.shape_after_resampling != properties.shape_after_cropping
    prediction = logits_to_original(perfect_logits(seg), properties, plans.configuration("3d_fullres").resampling)
    assert prediction.segmentation.shape == SHAPE
    wrong = prediction.segmentation != label
    border = ndimage.maximum_filter(label, size=3) != ndimage.minimum_filter(label, size=3)
    near_border = ndimage.binary_dilation(border, iterations=1)
    assert wrong.mean() < 0.03, f"{wrong.sum()} of {wrong.size} voxels differ"
    assert not np.any(wrong & ~near_border)
    for value in (1, 2):  # ~130-voxel structures through a 1.6x coarser grid keep their size within 20%
        assert np.sum(prediction.segmentation == value) == pytest.approx(np.sum(label == value), rel=0.2)


def test_probabilities_sum_to_one_follow_the_labels_and_load_without_pickle(tmp_path):
    image, label, geometry = make_case()
    plans = make_plans([3.0, 1.2, 1.0])
    _, seg, properties = preprocess(plans, image, label, geometry)
    logits = perfect_logits(seg) + torch.randn((NUM_CLASSES, *seg.shape[1:]), generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    output = tmp_path / "case.nii.gz"
    prediction = export_logits(logits, properties, plans.configuration("3d_fullres").resampling, output, save_probabilities=True)
    torch.testing.assert_close(logits, before)  # the caller's logits are left alone
    npz = probabilities_path(output)
    assert npz.name == "case.npz"
    with np.load(npz, allow_pickle=False) as archive:
        assert list(archive.keys()) == [PROBABILITIES_KEY]
        probabilities = archive[PROBABILITIES_KEY]
    assert probabilities.dtype == np.float32 and probabilities.shape == (NUM_CLASSES, *SHAPE)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    assert probabilities.min() >= 0
    array, _ = read_back(output)
    np.testing.assert_array_equal(np.argmax(probabilities, axis=0), array)
    np.testing.assert_array_equal(prediction.segmentation, array)
    # outside the crop box: certainly background
    outside = np.ones(SHAPE, bool)
    box = [properties.bbox[TRANSPOSE.index(axis)] for axis in range(3)]  # the box in the scan's axis order
    outside[tuple(slice(a, b) for a, b in box)] = False
    assert outside.any()
    assert np.all(probabilities[0][outside] == 1) and np.all(probabilities[1:][:, outside] == 0)
    np.testing.assert_array_equal(load_probabilities(npz), probabilities)


def test_probabilities_match_a_reference_softmax_without_resampling_and_float16_rounds_them():
    image, label, geometry = make_case()
    plans = make_plans([SPACING[t] for t in TRANSPOSE])
    _, seg, properties = preprocess(plans, image, label, geometry)
    logits = torch.randn((NUM_CLASSES, *seg.shape[1:]), generator=torch.Generator().manual_seed(1))
    spec = plans.configuration("3d_fullres").resampling
    expected = torch.softmax(logits, 0).numpy()  # in the transposed, cropped grid
    before = logits.clone()
    prediction = logits_to_original(logits, properties, spec, True)
    torch.testing.assert_close(logits, before)  # no resampling, yet the caller's logits are left alone
    box = tuple(slice(a, b) for a, b in properties.bbox)
    back = np.transpose(prediction.probabilities, (0, *[t + 1 for t in TRANSPOSE]))[(slice(None), *box)]
    np.testing.assert_allclose(back, expected, rtol=1e-5, atol=1e-6)
    # the label map of logits without probabilities is the same
    np.testing.assert_array_equal(logits_to_original(logits, properties, spec).segmentation, prediction.segmentation)
    half = logits_to_original(logits, properties, spec, True, probabilities_dtype=np.float16).probabilities
    assert half.dtype == np.float16
    # handed over, the same logits give the same prediction, and the handover lets go of them
    handover = LogitsHandover(logits.clone())
    taken = logits_to_original(handover, properties, spec, True)
    np.testing.assert_allclose(taken.probabilities, prediction.probabilities, rtol=1e-6)
    with pytest.raises(RuntimeError, match="handed over already"):
        handover.take()
    np.testing.assert_allclose(half.astype(np.float32), prediction.probabilities, atol=5e-4)


def test_postprocessing_changes_the_labels_but_not_the_probabilities():
    image, label, geometry = make_case()
    plans = make_plans([SPACING[t] for t in TRANSPOSE])
    _, seg, properties = preprocess(plans, image, label, geometry)
    seg = seg.copy()
    blob = tuple(slice(1, 3) for _ in range(3))
    seg[(0, *blob)] = 1  # a small extra component far from the ball
    logits = perfect_logits(seg)
    spec = plans.configuration("3d_fullres").resampling
    raw = logits_to_original(logits, properties, spec, True)
    decision = PostprocessingDecision(foreground_largest_component=True)
    cleaned = logits_to_original(logits, properties, spec, True, postprocessing=decision)
    _, count = ndimage.label(raw.segmentation > 0, structure=np.ones((3, 3, 3)))
    assert count == 2
    np.testing.assert_array_equal(cleaned.segmentation, label)  # the blob is gone, the ball intact
    np.testing.assert_array_equal(cleaned.probabilities, raw.probabilities)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    image, label, geometry = make_case()
    plans = make_plans([SPACING[t] for t in TRANSPOSE])
    _, seg, properties = preprocess(plans, image, label, geometry)

    def broken_write(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        export_logits(perfect_logits(seg), properties, plans.configuration("3d_fullres").resampling, tmp_path / "case.nii.gz", True)
    # the probabilities were complete and stay; the label map, which marks a finished case, is absent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.npz"]


def test_logits_of_the_wrong_shape_are_refused():
    image, label, geometry = make_case()
    plans = make_plans([SPACING[t] for t in TRANSPOSE])
    _, _, properties = preprocess(plans, image, label, geometry)
    with pytest.raises(ValueError, match="do not match the preprocessed shape"):
        logits_to_original(torch.zeros((NUM_CLASSES, 4, 4, 4)), properties, plans.configuration("3d_fullres").resampling)
