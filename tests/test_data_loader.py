"""The multiprocess loader: reproducible order, surfaced worker errors, clean shutdown."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.cached_cases import make_blob_cases
from helpers.workers import FailingProducer

from volfnet.data.batches import BatchProducer, training_producer, validation_producer
from volfnet.data.loader import BatchLoader, WorkerError, default_num_workers
from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology


def tiny_plan(patch=(16, 20, 16), batch_size=3) -> ConfigurationPlan:
    network = NetworkTopology("fmunet", [8, 16, 32], [[2, 2, 2], [2, 2, 2]], [[3, 3, 3]] * 3, [0.0] * 3)
    return ConfigurationPlan("3d_fullres", [1.0, 1.0, 1.0], [24, 28, 26], list(patch), batch_size, network, [ChannelNormalization("zscore")])


def collect(loader: BatchLoader, count: int) -> list:
    return [next(loader) for _ in range(count)]


def test_batches_are_reproducible_for_any_worker_count(tmp_path):
    make_blob_cases(tmp_path, count=3)
    producer = training_producer(tmp_path, None, tiny_plan(), seed=7, num_outputs=3)
    with BatchLoader(producer, num_workers=2) as loader:
        first = collect(loader, 6)
    with BatchLoader(producer, num_workers=2) as loader:
        second = collect(loader, 6)
    with BatchLoader(producer, num_workers=0, start_index=3) as loader:
        resumed = collect(loader, 3)
    for a, b in zip(first, second):
        assert torch.equal(a.data, b.data) and all(torch.equal(x, y) for x, y in zip(a.target, b.target))
        assert a.case_ids == b.case_ids
    for a, b in zip(first[3:], resumed):  # in-process, resumed at batch 3: the same stream
        assert a.index == b.index and torch.equal(a.data, b.data)
    assert not torch.equal(first[0].data, first[1].data)
    batch = first[0]
    assert batch.data.dtype == torch.float32 and tuple(batch.data.shape) == (3, 1, 16, 20, 16)
    assert [tuple(t.shape) for t in batch.target] == [(3, 1, 16, 20, 16), (3, 1, 8, 10, 8), (3, 1, 4, 5, 4)]
    assert batch.target[0].dtype == torch.int16 and int(batch.target[0].min()) >= 0


def test_validation_producer_crops_final_patch_without_augmentation(tmp_path):
    make_blob_cases(tmp_path, count=2)
    producer = validation_producer(tmp_path, None, tiny_plan(), seed=1, num_outputs=1)
    batch = producer(0)
    assert batch.data.shape == (3, 1, 16, 20, 16) and len(batch.target) == 1
    assert np.array_equal(producer(0).data, batch.data)
    with pytest.raises(VolfnetError, match="seed"):
        BatchProducer(producer.sampler, producer.pipeline, seed=-1)


def test_worker_exception_surfaces_with_type_message_and_traceback():
    loader = BatchLoader(FailingProducer(fail_at=3), num_workers=2)
    got = collect(loader, 3)
    assert [int(b.data[0, 0, 0, 0, 0]) for b in got] == [0, 1, 2]
    with pytest.raises(ValueError, match="boom at batch 3") as caught:
        next(loader)
    remote = str(caught.value.__cause__)
    assert "worker 1 failed on batch 3" in remote and "_explode" in remote and "ValueError: boom at batch 3" in remote
    assert all(not p.is_alive() for p in loader._processes) and loader._processes == []
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)


def test_user_error_types_survive_with_their_message():
    with (
        BatchLoader(FailingProducer(fail_at=0, kind="integrity"), num_workers=1) as loader,
        pytest.raises(DataIntegrityError, match="label 9 not in dataset.json"),
    ):
        next(loader)


def test_silently_killed_worker_is_named_with_its_signal():
    with BatchLoader(FailingProducer(fail_at=1, kind="kill"), num_workers=2) as loader:
        next(loader)
        with pytest.raises(WorkerError, match="SIGKILL"):
            next(loader)


def test_spawned_workers_and_clean_shutdown():
    loader = BatchLoader(FailingProducer(fail_at=-1), num_workers=2, start_method="spawn", prefetch_per_worker=1)
    processes = list(loader._processes)
    assert [b.index for b in collect(loader, 4)] == [0, 1, 2, 3]
    loader.close()
    assert all(not p.is_alive() for p in processes)
    loader.close()  # idempotent


def test_in_process_errors_raise_directly_and_options_are_checked():
    with BatchLoader(FailingProducer(fail_at=0), num_workers=0) as loader, pytest.raises(ValueError, match="boom at batch 0"):
        next(loader)
    with pytest.raises(VolfnetError, match="num_workers"):
        BatchLoader(FailingProducer(fail_at=0), num_workers=-1)
    assert 1 <= default_num_workers() <= 12
    with BatchLoader(FailingProducer(fail_at=-1), num_workers=0, pin_memory=True) as loader:
        assert next(loader).index == 0  # no CUDA here: pinning is skipped, not an error
