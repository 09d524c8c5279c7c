"""Commands run end to end as separate processes, as a user runs them: a dataset planned for one
network, flags for a tiny training run, a run bounded in time (a hang fails the test instead of
hanging CI), and where a run's model folder lands."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers.raw_data import make_raw_dataset
from helpers.roots import make_roots, point_environment_at

from volfnet.cli.plan_and_preprocess import main as plan_main
from volfnet.plans import Plans

REPO = Path(__file__).resolve().parents[2]
NUM_CASES = {"fmunet": 10, "pctnet": 5}  # 2 (a pool evaluates them) and 1 validation case per fold
PCTNET_WINDOW = 2  # shifted windows on the tiny patch's 4 x 8 x 8 token grid (the planned 6 has none)
TINY_TRAINING = [
    "--set", "num_epochs=2", "--set", "iterations_per_epoch=1", "--set", "val_iterations=1",
    "--set", "num_workers=0", "--set", "progress_bar=false",
]
TINY_PRETRAINING = [
    "--device", "cpu", "-np", "1", "--iterations", "2", "--val-samples", "2",
    "--set", "iterations_per_epoch=1", "--set", "num_workers=0", "--set", "val_num_workers=0",
    "--set", "progress_bar=false",
]


@dataclasses.dataclass
class Finished:
    """What a bounded command left: its exit status, its output, and how long it ran."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def tail(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.1f} s\n{self.stdout[-1000:]}\n{self.stderr[-4000:]}"


def run_bounded(command: list[str], roots: dict, timeout: float) -> Finished:
    """Run ``command`` in its own process group with the data roots of ``roots``. Past
    ``timeout``, the whole group (launcher, ranks, their workers) is killed and the test fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.update({f"VOLFNET_{name}": str(path) for name, path in roots.items()})
    started = time.monotonic()
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"`{shlex.join(command)}` did not end within {timeout} s (hung); its output ended with:\n{stderr[-4000:]}")
    return Finished(process.returncode, stdout, stderr, time.monotonic() - started)


def plan_dataset(base: Path, network: str) -> dict:
    """Raw, preprocessed and results roots under ``base`` with dataset 1 planned for ``network``
    on the CPU target with a 4-feature first level."""
    roots = make_roots(base)
    with pytest.MonkeyPatch.context() as patch:
        point_environment_at(roots, patch)
        make_raw_dataset(roots["raw"], dataset_id=1, num_cases=NUM_CASES[network], shape=(16, 20, 20))
        assert plan_main(["-d", "1", "--target", "cpu", "-np", "1", "--base-features", "4", "--network", network]) == 0
    if network == "pctnet":
        plans_file = roots["preprocessed"] / "Dataset001_Toy" / "plans.json"
        plans = Plans.load(plans_file)
        plan = plans.configurations["3d_fullres"]
        network_plan = dataclasses.replace(plan.network, window_size=PCTNET_WINDOW)
        configurations = {**plans.configurations, "3d_fullres": dataclasses.replace(plan, network=network_plan)}
        dataclasses.replace(plans, configurations=configurations).save(plans_file)
    return roots


def model_folder(roots: dict, network: str, tag: str) -> Path:
    """The model folder a ``volfnet_train 1 3d_fullres ... --tag TAG`` run of ``network`` writes."""
    return roots["results"] / "Dataset001_Toy" / f"{network}__3d_fullres__{tag}"
