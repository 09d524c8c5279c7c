"""``volfnet_train`` and ``volfnet_pretrain`` with two CPU processes (gloo) under both launchers,
``--num-gpus 2`` and ``torchrun --nproc_per_node 2``, for both networks, end to end as a user
runs them: a separate command that must exit 0 within a bounded time (a hang fails the test
instead of hanging CI), after two tiny epochs and the final validation.

The FMUNet dataset has 10 cases, so a fold validates 2: with two or more cases the final
validation's evaluation starts a worker pool, the one that used to keep a ``--num-gpus`` rank
from exiting (the PCT-Net dataset has 5, to save that pool's start-up where it adds nothing).
The PCT-Net plan uses windows of 2 so that its tiny patch still has shifted windows, whose
shift-region buffer DDP failed to broadcast. Pretraining runs each network under one launcher
(PCT-Net under ``--num-gpus``, FMUNet under ``torchrun``): what differs between the networks
under DDP is the training loop's, which the training tests cover for every pair.

``torchrun`` is run as ``python -m torch.distributed.run`` (the same entry point), so the tests
need nothing on PATH.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers.commands import NUM_CASES, TINY_PRETRAINING, TINY_TRAINING, Finished, model_folder, plan_dataset, run_bounded
from rank_failure_driver import MESSAGE as FAILURE_MESSAGE

from volfnet.training.distributed import free_port

DRIVER = Path(__file__).with_name("rank_failure_driver.py")
RUN_TIMEOUT = 300  # s: a tiny two-process run takes 20-40 s on a busy 2-core machine; past this it hangs
FAILURE_TIMEOUT = 120  # s: a failing rank must end the command long before gloo's own 30-minute timeout
LAUNCHERS = ("num-gpus", "torchrun")


def launcher_prefix(launcher: str, module: str | None = None, script: Path | None = None) -> list[str]:
    """The command up to the program's own arguments: ``python -m MODULE`` (or ``python SCRIPT``)
    for ``--num-gpus``, the same under ``torchrun`` with two processes on one node (rendezvous
    flags as on a cluster)."""
    target = ["-m", module] if module is not None else [str(script)]
    if launcher == "num-gpus":
        return [sys.executable, *target]
    rendezvous = ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}"]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", *rendezvous, *target]


def launcher_suffix(launcher: str) -> list[str]:
    return ["--num-gpus", "2"] if launcher == "num-gpus" else []


@pytest.fixture(scope="module")
def fmunet_roots(tmp_path_factory) -> dict:
    return plan_dataset(tmp_path_factory.mktemp("fmunet"), "fmunet")


@pytest.fixture(scope="module")
def pctnet_roots(tmp_path_factory) -> dict:
    return plan_dataset(tmp_path_factory.mktemp("pctnet"), "pctnet")


@pytest.fixture(params=["fmunet", "pctnet"])
def planned(request) -> tuple[str, dict]:
    """(network, roots) with dataset 1 planned for the network (once per module)."""
    return request.param, request.getfixturevalue(f"{request.param}_roots")


def check_two_process_training(network: str, roots: dict, launcher: str, device: str) -> Finished:
    """Train fold 0 for two tiny epochs with two processes under ``launcher`` on ``device``;
    check the exit, the checkpoint and the final validation."""
    tag = f"{device}{launcher.replace('-', '')}"
    command = [*launcher_prefix(launcher, module="volfnet.cli.train"), "1", "3d_fullres", "0", "--device", device, *TINY_TRAINING]
    done = run_bounded([*command, "--tag", tag, *launcher_suffix(launcher)], roots, RUN_TIMEOUT)
    assert done.returncode == 0, done.tail()
    assert "Traceback" not in done.stderr, done.tail()  # e.g. a pool worker started while its rank was exiting
    assert done.stdout.count("training done") == (1 if launcher == "torchrun" else 0)  # torchrun: rank 0 only
    fold = model_folder(roots, network, tag) / "fold_0"
    final = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert final["world_size"] == 2 and final["epoch"] == 2 and final["spec"]["network"]["name"] == network
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["num_cases"] == NUM_CASES[network] // 5
    print(f"{network} training on {device} under {launcher}: {done.seconds:.1f} s")
    return done


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_process_training_with_final_validation_exits(planned, launcher):
    check_two_process_training(*planned, launcher, "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between two processes needs two GPUs")
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_gpu_training_over_nccl_exits(planned, launcher):
    """The same over NCCL, one process per GPU (NCCL refuses two processes on one GPU; the
    one-GPU NCCL check is the broadcast test of ``test_training_distributed.py``)."""
    check_two_process_training(*planned, launcher, "cuda")


@pytest.mark.parametrize("network, launcher", [("pctnet", "num-gpus"), ("fmunet", "torchrun")])
def test_two_process_pretraining_exits(request, network, launcher):
    roots = request.getfixturevalue(f"{network}_roots")
    tag = f"pre{launcher.replace('-', '')}"
    command = [*launcher_prefix(launcher, module="volfnet.cli.pretrain"), "-d", "1", *TINY_PRETRAINING, "--tag", tag]
    done = run_bounded([*command, *launcher_suffix(launcher)], roots, RUN_TIMEOUT)
    assert done.returncode == 0, done.tail()
    assert "Traceback" not in done.stderr, done.tail()
    run = model_folder(roots, network, tag) / "pretrain"
    final = torch.load(run / "checkpoint_final.pt", weights_only=True)
    assert final["world_size"] == 2 and final["epoch"] == 2 and final["spec"]["network"]["name"] == network
    assert (run / "samples.png").is_file()
    print(f"{network} pretraining under {launcher}: {done.seconds:.1f} s")


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_failing_rank_ends_the_command_promptly_with_an_error(fmunet_roots, launcher):
    """Rank 1 raises at its first step while rank 0 waits in the gradient all-reduce: the
    command must exit non-zero with rank 1's error, not wait for gloo's timeout. (The failure
    path does not depend on the network: FMUNet only.)"""
    network, roots = "fmunet", fmunet_roots
    tag = f"fail{launcher.replace('-', '')}"
    command = [*launcher_prefix(launcher, script=DRIVER), "1", "3d_fullres", "0", "--device", "cpu", *TINY_TRAINING, "--tag", tag]
    done = run_bounded([*command, *launcher_suffix(launcher)], roots, FAILURE_TIMEOUT)
    assert done.returncode != 0, done.tail()
    assert FAILURE_MESSAGE in done.stderr, done.tail()
    assert not (model_folder(roots, network, tag) / "fold_0" / "checkpoint_final.pt").exists()
    print(f"failing rank under {launcher}: exit {done.returncode} after {done.seconds:.1f} s")
