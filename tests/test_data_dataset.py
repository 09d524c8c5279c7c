"""The cached (memory-mapped) dataset, plus helpers the other data tests use to make cases."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from volfnet.data.cached_dataset import CachedDataset
from volfnet.errors import VolfnetError
from volfnet.io.image_io import ImageGeometry
from volfnet.preprocessing.case_store import CaseProperties, save_case


def make_case(folder: Path, case_id: str, image: np.ndarray, seg: np.ndarray | None) -> None:
    """Save a preprocessed case; class locations are every voxel of each foreground label."""
    shape = list(image.shape[1:])
    locations = {}
    if seg is not None:
        for label in np.unique(seg):
            if label > 0:
                locations[int(label)] = np.argwhere(seg[0] == label).tolist()
    geometry = ImageGeometry([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1, 0, 0, 0, 1, 0, 0, 0, 1], shape)
    properties = CaseProperties(
        case_id=case_id,
        original_geometry=geometry,
        transpose_forward=[0, 1, 2],
        shape_before_cropping=shape,
        bbox=[[0, s] for s in shape],
        shape_after_cropping=shape,
        spacing_before_resampling=[1.0, 1.0, 1.0],
        spacing_after_resampling=[1.0, 1.0, 1.0],
        shape_after_resampling=shape,
        class_locations=locations,
    )
    save_case(folder, image.astype(np.float32), seg, properties)


def make_blob_cases(folder: Path, count: int = 3, shape=(24, 28, 26), seed: int = 0) -> list[str]:
    """Cases with a two-label box and a -1 rim (outside the nonzero mask)."""
    rng = np.random.default_rng(seed)
    ids = []
    for index in range(count):
        seg = np.zeros((1, *shape), np.int8)
        seg[0, 6:14, 8:18, 6:16] = 1
        seg[0, 14:18, 8:18, 6:16] = 2
        seg[0, :2] = -1
        image = (rng.standard_normal((1, *shape)) + 3.0 * (seg > 0)).astype(np.float32)
        case_id = f"case_{index:03d}"
        make_case(folder, case_id, image, seg)
        ids.append(case_id)
    return ids


def test_dataset_holds_memory_maps_not_loaded_arrays(tmp_path):
    ids = make_blob_cases(tmp_path, count=2)
    dataset = CachedDataset(tmp_path)
    assert dataset.case_ids == ids and len(dataset) == 2
    case = dataset.load(ids[0])
    assert isinstance(case.image, np.memmap) and isinstance(case.seg, np.memmap)
    assert case.image.shape == (1, 24, 28, 26) and case.seg.shape == (1, 24, 28, 26)
    assert case.spatial_shape == (24, 28, 26)
    # class locations are compact int arrays, the properties keep no copy of them
    assert sorted(case.class_locations) == [1, 2]
    assert case.class_locations[2].dtype == np.int32 and case.class_locations[2].shape == (4 * 10 * 10, 3)
    assert case.properties.class_locations == {}
    assert dataset.load(ids[0]) is case  # opened once per process


def test_dataset_open_cases_are_bounded_and_not_pickled(tmp_path):
    ids = make_blob_cases(tmp_path, count=3)
    dataset = CachedDataset(tmp_path, ids[:2], max_open_cases=1)
    dataset.load(ids[0])
    dataset.load(ids[1])
    assert list(dataset._open) == [ids[1]]
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(clone._open) == 0 and clone.case_ids == ids[:2]
    everything = CachedDataset(tmp_path)
    everything.open_all()
    assert list(everything._open) == ids


def test_dataset_reports_missing_and_unlabelled_cases(tmp_path):
    make_blob_cases(tmp_path, count=1)
    with pytest.raises(VolfnetError, match="case_404"):
        CachedDataset(tmp_path, ["case_000", "case_404"])
    with pytest.raises(VolfnetError, match="not found"):
        CachedDataset(tmp_path / "nowhere")
    make_case(tmp_path, "unlabelled", np.zeros((1, 4, 4, 4), np.float32), None)
    (tmp_path / "unlabelled_seg.npy").write_bytes(b"")
    (tmp_path / "unlabelled_seg.npy").unlink()
    with pytest.raises(VolfnetError, match="unlabelled"):
        CachedDataset(tmp_path, ["unlabelled"])
