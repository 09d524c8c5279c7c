"""VolF batches: shapes, label range, deep-supervision targets, seeding, padding, and the fixed
validation set."""

import hashlib

import numpy as np
import pytest
from helpers.pretraining import make_preprocessed_dataset

from volfnet.data.loader import BatchLoader
from volfnet.errors import VolfnetError
from volfnet.training.pretrain_data import (
    FixedSetProducer,
    VolFBatchProducer,
    ensure_validation_set,
    read_validation_set,
)
from volfnet.training.pretrain_pool import PoolRequest, build_pool
from volfnet.volf.config import VolFConfig

STRIDES = [[2, 2, 2], [2, 2, 2]]


@pytest.fixture
def pool(roots):
    make_preprocessed_dataset(roots, 1, "Smooth", count=3)
    make_preprocessed_dataset(roots, 2, "Other", count=2, shape=(26, 26, 30), seed=4)
    built, _ = build_pool(PoolRequest(datasets=["1", "2"], num_workers=1, progress=False))
    return built


def digest(*arrays) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def test_batches_have_the_loop_contract_shapes_dtypes_and_label_range(pool):
    config = VolFConfig(patch_size=[24, 24, 24])
    batch = VolFBatchProducer(pool, config, batch_size=3, seed=0, num_outputs=3, strides=STRIDES)(5)
    assert batch.index == 5 and batch.data.shape == (3, 1, 24, 24, 24) and batch.data.dtype == np.float32
    assert [t.shape for t in batch.target] == [(3, 1, 24, 24, 24), (3, 1, 12, 12, 12), (3, 1, 6, 6, 6)]
    assert all(t.dtype == np.int16 for t in batch.target)
    full = batch.target[0]
    assert full.min() == 0 and full.max() <= 4 and len(np.unique(full)) >= 3  # levels 0..K, K = 4
    assert 0.0 <= batch.data.min() and batch.data.max() <= 1.0  # augmentation mode 3 maps crops to [0, 1]
    np.testing.assert_array_equal(batch.target[1], full[:, :, 1::2, 1::2, 1::2])  # nearest, centre voxel
    assert all(name.startswith(("Dataset001_Smooth/", "Dataset002_Other/")) for name in batch.case_ids)
    boxes = VolFBatchProducer(pool, VolFConfig(patch_size=[24, 24, 24], fusion_mode="box", num_classes=3), 2, 0, 1, STRIDES)(0)
    assert boxes.target[0].max() <= 2 and len(boxes.target) == 1


def test_batches_depend_on_seed_and_index_only_not_on_worker_count(pool):
    config = VolFConfig(patch_size=[24, 24, 24])
    producer = VolFBatchProducer(pool, config, batch_size=2, seed=11, num_outputs=2, strides=STRIDES)
    again = VolFBatchProducer(pool, config, batch_size=2, seed=11, num_outputs=2, strides=STRIDES)
    assert digest(producer(3).data, *producer(3).target) == digest(again(3).data, *again(3).target)
    assert digest(producer(3).data) != digest(producer(4).data)
    other_seed = VolFBatchProducer(pool, config, batch_size=2, seed=12, num_outputs=2, strides=STRIDES)
    assert digest(producer(3).data) != digest(other_seed(3).data)
    streams = {}
    for workers in (0, 2):
        with BatchLoader(producer, num_workers=workers, start_index=2) as loader:
            streams[workers] = [digest(b.data.numpy(), *[t.numpy() for t in b.target]) for b in (next(loader) for _ in range(4))]
    assert streams[0] == streams[2]


def test_patch_larger_than_every_image_is_padded(pool):
    config = VolFConfig(patch_size=[32, 40, 36])  # every case is at most 30 voxels per axis
    batch = VolFBatchProducer(pool, config, batch_size=2, seed=1, num_outputs=1, strides=STRIDES)(0)
    assert batch.data.shape == (2, 1, 32, 40, 36) and np.isfinite(batch.data).all()
    assert batch.target[0].shape == (2, 1, 32, 40, 36)


def test_validation_set_is_generated_once_and_identical_after_resume(pool, tmp_path):
    config = VolFConfig(patch_size=[24, 24, 24]).resolved()
    made = ensure_validation_set(tmp_path, pool, config, count=5, seed=3)
    images, labels = np.load(made.images_path), np.load(made.labels_path)
    assert images.shape == (5, 1, 24, 24, 24) and images.dtype == np.float32 and labels.dtype == np.uint8
    stamp = (made.images_path.stat().st_mtime_ns, digest(images, labels))
    # Same settings: reused, not rewritten. Resume with other settings: still the saved set.
    assert ensure_validation_set(tmp_path, pool, config, count=5, seed=3).count == 5
    other = VolFConfig(patch_size=[24, 24, 24], num_classes=3).resolved()
    resumed = ensure_validation_set(tmp_path, pool, other, count=5, seed=99, resume=True)
    assert resumed.num_classes == 5
    reread = np.load(made.images_path), np.load(made.labels_path)
    assert (made.images_path.stat().st_mtime_ns, digest(*reread)) == stamp
    # A fresh run with other settings makes a new set; an incomplete set is not used.
    assert ensure_validation_set(tmp_path, pool, other, count=4, seed=3).count == 4
    (tmp_path / "validation_set" / "labels.npy").unlink()
    assert read_validation_set(tmp_path) is None


def test_fixed_set_producer_covers_the_set_in_order_and_cycles(pool, tmp_path):
    config = VolFConfig(patch_size=[24, 24, 24]).resolved()
    saved = ensure_validation_set(tmp_path, pool, config, count=5, seed=3)
    producer = FixedSetProducer(saved, batch_size=2, num_outputs=3, strides=STRIDES)
    assert producer.batches_per_round == 3
    images = np.load(saved.images_path)
    first, last, wrapped = producer(0), producer(2), producer(3)
    np.testing.assert_array_equal(first.data, images[[0, 1]])
    np.testing.assert_array_equal(last.data, images[[4, 0]])
    np.testing.assert_array_equal(wrapped.data, first.data)
    assert [t.shape[2:] for t in first.target] == [(24, 24, 24), (12, 12, 12), (6, 6, 6)]
    with pytest.raises(VolfnetError, match="at least one sample"):
        ensure_validation_set(tmp_path, pool, config, count=0, seed=3)
