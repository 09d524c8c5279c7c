"""DistributedDataParallel on the CPU: two gloo processes end with identical weights."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from training_helpers import (
    blob_task,
    fast_config,
    make_blob_dataset,
    plan_tiny_dataset,
)

from volfnet.errors import VolfnetError
from volfnet.training import distributed
from volfnet.training.loop import run_training


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


def test_torchrun_runs_the_training_command(roots):
    """The documented torchrun command (rendezvous flags as on a cluster, one node here)."""
    plan_tiny_dataset(roots["raw"])
    command = [
        "torchrun", "--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"127.0.0.1:{distributed.free_port()}",
        "-m", "volfnet.cli.train", "1", "3d_fullres", "0", "--device", "cpu",
        "--set", "num_epochs=1", "--set", "iterations_per_epoch=2", "--set", "val_iterations=1",
        "--set", "num_workers=0", "--set", "progress_bar=false",
    ]
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1], check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training done") == 1  # rank 0 only
    fold = roots["results"] / "Dataset001_Toy" / "fmunet__3d_fullres" / "fold_0"
    assert torch.load(fold / "checkpoint_final.pt", weights_only=True)["world_size"] == 2
    assert (fold / "validation" / "summary.json").is_file()
