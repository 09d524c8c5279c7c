"""DistributedDataParallel on the CPU: two gloo processes end with identical weights, follow the
one-process loss curve at equal global batch, and every tensor of both networks can be
broadcast (gloo here; NCCL too where a GPU is). The launchers end to end, as commands, are in
``test_training_launchers.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from helpers.training import PatchOnlyTask, blob_task, fast_config, make_blob_dataset, tiny_plans

from volfnet.data.worker import NumpyBatch
from volfnet.errors import VolfnetError
from volfnet.networks.build import build_network_from_topology
from volfnet.networks.runtime import architecture_buffer_names
from volfnet.planning.topology import pctnet_topology
from volfnet.training import distributed
from volfnet.training.loop import run_training

# One vs two processes at equal global batch: the same losses up to float32 summation order
# (measured: relative differences of at most 5e-8 over these iterations).
LOSS_CURVE_RTOL = 1e-5
WEIGHTS_ATOL = 1e-5
GLOBAL_BATCH = 4
CURVE_ITERATIONS = 4


def train_one_rank(folder: Path) -> None:
    """Body of each spawned process (module level, so spawn can pickle it)."""
    torch.set_num_threads(1)
    config = fast_config(num_epochs=1, iterations_per_epoch=3, val_iterations=1)
    task = blob_task(folder / "pre", config, dropout=0.2)
    result = run_training(task, config, folder / "run", device="cpu")
    rank = distributed.current_context().rank
    torch.save(result.model.state_dict(), folder / f"weights_rank{rank}.pt")
    torch.save({"dice": torch.tensor(result.log.mean_dice)}, folder / f"log_rank{rank}.pt")


def test_two_gloo_processes_train_in_lockstep(tmp_path):
    make_blob_dataset(tmp_path / "pre", count=4)
    distributed.launch(train_one_rank, 2, (tmp_path,), device_type="cpu")
    first = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    second = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
    assert all(torch.equal(first[key], second[key]) for key in first)
    # The validation Dice is reduced over both processes: the same on each.
    assert torch.equal(torch.load(tmp_path / "log_rank0.pt")["dice"], torch.load(tmp_path / "log_rank1.pt")["dice"])
    # Only rank 0 writes the run's files.
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*.pt")) == [
        "checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_latest.pt"
    ]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_final.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and not any(key.startswith("module.") for key in checkpoint["model_state_dict"])


def test_environment_of_torchrun_is_read(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    context = distributed.env_context()
    assert (context.rank, context.world_size, context.local_rank, context.is_main) == (3, 4, 1, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(VolfnetError, match="inconsistent distributed environment"):
        distributed.env_context()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(VolfnetError, match="RANK='x' is not an integer"):
        distributed.env_context()
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert distributed.env_context() == distributed.DistContext(0, 1, 0)
    assert distributed.rank_seed(5, 2) == 5 + 2 * distributed.RANK_SEED_STRIDE


def test_launch_rejects_a_bad_process_count():
    with pytest.raises(VolfnetError, match="positive integer"):
        distributed.launch(train_one_rank, 0, (), device_type="cpu")


# ------------------------------------------------------------------ one vs two processes
class RankShare:
    """Rank ``r`` of ``w``'s share of every global batch: samples ``[r B/w, (r+1) B/w)`` of the
    batch the one-process stream draws. Labels are clipped to >= 0: cross-entropy averages over
    the voxels that are not ignored, which would weight halves with different counts of ignored
    voxels unequally, and this test is about DDP, not that."""

    def __init__(self, producer, rank: int, world_size: int) -> None:
        self.producer, self.rank, self.world_size = producer, rank, world_size

    def prepare(self) -> None:
        self.producer.prepare()

    def __call__(self, index: int) -> NumpyBatch:
        batch = self.producer(index)
        share = len(batch.data) // self.world_size
        part = slice(self.rank * share, (self.rank + 1) * share)
        return NumpyBatch(index, batch.data[part], [np.maximum(t[part], 0) for t in batch.target], batch.case_ids[part])


class GlobalBatchTask(PatchOnlyTask):
    """Every process draws from the one-process stream (the plans' batch is the global batch)
    and keeps its share, so one and two processes train on exactly the same samples."""

    def training_producer(self, seed: int):
        context = distributed.current_context()
        return RankShare(super().training_producer(self.config.seed), context.rank, context.world_size)


def curve_config():
    # One iteration per epoch: the log's train loss of epoch e is iteration e's loss. Per-sample
    # Dice (batch Dice couples the samples), no dropout (ranks draw their own masks).
    return fast_config(num_epochs=CURVE_ITERATIONS, iterations_per_epoch=1, val_iterations=0, batch_dice=False)


def train_global_batch(folder: Path, run: str) -> None:
    """Body of each process (module level, so spawn can pickle it); also the one-process run."""
    torch.set_num_threads(1)
    config = curve_config()
    task = blob_task(folder / "pre", config, task_class=GlobalBatchTask, batch_size=GLOBAL_BATCH)
    result = run_training(task, config, folder / run, device="cpu")
    if distributed.current_context().is_main:
        torch.save(result.model.state_dict(), folder / f"{run}_weights.pt")
        (folder / f"{run}_losses.json").write_text(json.dumps(result.log.train_loss))


def test_one_and_two_processes_follow_the_same_loss_curve(tmp_path):
    """Equal global batch and seed: two processes with half the batch each (different halves)
    give the one-process losses and weights, i.e. DDP averages the gradients (a sum, or both
    ranks seeing the same half, would change the curve by far more than the tolerance)."""
    make_blob_dataset(tmp_path / "pre", count=4)
    threads = torch.get_num_threads()
    try:
        train_global_batch(tmp_path, "one")
    finally:
        torch.set_num_threads(threads)
    distributed.launch(train_global_batch, 2, (tmp_path, "two"), device_type="cpu")
    one = json.loads((tmp_path / "one_losses.json").read_text())
    two = json.loads((tmp_path / "two_losses.json").read_text())
    assert len(one) == len(two) == CURVE_ITERATIONS and one[-1] < one[0]
    relative = [abs(a - b) / abs(a) for a, b in zip(one, two)]
    print(f"one process {one}\ntwo processes {two}\nrelative differences {relative}")
    assert max(relative) < LOSS_CURVE_RTOL, (one, two)
    first = torch.load(tmp_path / "one_weights.pt", weights_only=True)
    second = torch.load(tmp_path / "two_weights.pt", weights_only=True)
    largest = max(float((first[key].double() - second[key].double()).abs().max()) for key in first)
    print(f"largest weight difference {largest:.2e}")
    assert largest < WEIGHTS_ATOL


# ------------------------------------------------------------------ broadcastable tensors
def small_networks() -> list[nn.Module]:
    """A tiny FMUNet, and a tiny PCT-Net whose 32-voxel patch gives shifted windows (and so
    the shift-region buffers) at its first transformer level."""
    fmunet = tiny_plans().configurations["3d_fullres"].network
    pctnet = pctnet_topology([1.0, 1.0, 1.0], [32, 32, 32], base_features=4, max_features=64)
    return [build_network_from_topology(topology, 1, 3) for topology in (fmunet, pctnet)]


@pytest.mark.parametrize(
    "backend",
    [
        "gloo",
        pytest.param(
            "nccl",
            marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs a CUDA GPU")],
        ),
    ],
)
def test_every_parameter_and_buffer_of_both_networks_broadcasts(tmp_path, backend):
    """DDP broadcasts every parameter and buffer from rank 0 when it wraps a network; a dtype
    the backend lacks (int16 on gloo and NCCL) failed that with 'Invalid scalar type'. A
    one-process group is enough to check the dtypes."""
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for model in small_networks():
            model.to(device)
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                try:
                    dist.broadcast(tensor.data, 0)
                except RuntimeError as exc:
                    raise AssertionError(f"{name} ({tensor.dtype}) cannot be broadcast over {backend}: {exc}") from None
            device_ids = [device.index] if device.type == "cuda" else None
            nn.parallel.DistributedDataParallel(model, device_ids=device_ids)  # its own start-up broadcast, nothing ignored
        assert any(name.endswith("shift_regions") for name in architecture_buffer_names(model))
    finally:
        dist.destroy_process_group()


def test_architecture_buffers_are_the_ones_every_rank_builds_alike():
    """The buffers DDP skips are fixed by the architecture: two networks built with different
    seeds hold the same values there (and different parameters)."""
    builds = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        builds.append(small_networks()[1])
    names = architecture_buffer_names(builds[0])
    assert names and all(name.endswith(("relative_position_index", "shift_regions")) for name in names)
    buffers = [dict(model.named_buffers()) for model in builds]
    assert all(torch.equal(buffers[0][name], buffers[1][name]) for name in names)
    assert not torch.equal(*(dict(model.named_parameters())["pyramid_ct.convtrans_e2.trans.blocks.0.attn.qkv.weight"] for model in builds))
