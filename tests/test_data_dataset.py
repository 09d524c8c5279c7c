"""The cached (memory-mapped) dataset: memory maps, bounded open cases, missing and unlabelled cases."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers.cached_cases import make_blob_cases, make_case

from volfnet.data.cached_dataset import CachedDataset
from volfnet.errors import VolfnetError


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
