"""Training that meets NaN/inf: a few bad steps are skipped with a warning, a run that keeps
failing (or whose weights turn NaN/inf) stops with a clear error and a non-zero exit, and no
checkpoint is ever written with NaN/inf weights over a good one."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import torch
from helpers.training import PatchOnlyTask, blob_task, fast_config, make_blob_dataset, plan_tiny_dataset

from volfnet.checkpoint import load_checkpoint
from volfnet.cli.train import main as train_main
from volfnet.errors import VolfnetError
from volfnet.model_folder import checkpoint_path
from volfnet.training import loop
from volfnet.training.loop import run_training
from volfnet.training.optim import build_optimizer

KINDS = ("latest", "best", "final")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class NaNDataTask(PatchOnlyTask):
    """Training batches in ``nan_batches``, and every one from ``nan_from`` on, are all NaN
    (images with NaN voxels): their loss and gradients are NaN."""

    nan_batches: frozenset[int] = frozenset()
    nan_from: int | None = None

    def training_producer(self, seed):
        producer = super().training_producer(seed)
        bad, start = set(self.nan_batches), self.nan_from

        def produce(index):
            batch = producer(index)
            if index in bad or (start is not None and index >= start):
                batch.data[...] = np.nan
            return batch

        return produce


def all_finite(state) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_a_few_nan_steps_are_skipped_with_a_warning_and_training_finishes(tmp_path, caplog):
    make_blob_dataset(tmp_path / "pre", count=4)
    config = fast_config(num_epochs=2, iterations_per_epoch=3, val_iterations=1)
    task = blob_task(tmp_path / "pre", config, task_class=NaNDataTask)
    task.nan_batches = frozenset({1, 2})
    with caplog.at_level(logging.WARNING, logger="volfnet.training.loop"):
        result = run_training(task, config, tmp_path / "run", device="cpu")
    assert result.epochs == 2 and task.after_training_calls == 1
    assert all_finite(result.model.state_dict())
    final = load_checkpoint(result.final_checkpoint)  # also refuses NaN/inf weights
    assert all(torch.equal(final["model_state_dict"][key], value) for key, value in result.model.state_dict().items())
    assert "iteration 1: NaN/inf loss or gradients, step skipped (1 in a row; 10 stop training)" in caplog.text
    assert "iteration 2: NaN/inf loss or gradients, step skipped (2 in a row; 10 stop training)" in caplog.text
    assert "epoch 0: 2 of 3 steps skipped (NaN/inf loss or gradients)" in caplog.text
    assert "epoch 1:" not in caplog.text
    assert all(math.isfinite(loss) for loss in result.log.train_loss)  # the mean of the steps taken


def test_persistent_nan_stops_with_an_error_and_keeps_the_good_checkpoints(tmp_path):
    make_blob_dataset(tmp_path / "pre", count=4)
    config = fast_config(num_epochs=1, iterations_per_epoch=3, val_iterations=1)
    task = blob_task(tmp_path / "pre", config, task_class=NaNDataTask)
    run = tmp_path / "run"
    run_training(task, config, run, device="cpu")
    before = {kind: checkpoint_path(run, kind).read_bytes() for kind in KINDS}

    task.nan_from = 3  # every batch of the resumed epoch 1 (iterations 3, 4, 5)
    with pytest.raises(VolfnetError) as caught:
        run_training(task, config.replaced(num_epochs=3, max_nonfinite_steps=3), run, resume=True, device="cpu")
    message = str(caught.value)
    assert message.startswith("training stopped: 3 steps in a row (iterations 3-5, epoch 1) had a NaN/inf loss or gradients")
    assert "lower learning rate" in message and "NaN/inf" in message and "--set amp=false" in message
    assert f"checkpoints already in {run} are kept" in message and "max_nonfinite_steps=3" in message
    assert {kind: checkpoint_path(run, kind).read_bytes() for kind in KINDS} == before


def test_nan_weights_are_never_written_to_a_checkpoint(tmp_path, monkeypatch):
    """An optimiser step that leaves inf in a weight (gradients were finite, the update was not);
    the NaN steps that follow stay under max_nonfinite_steps, so the checkpoint guard must stop it."""
    make_blob_dataset(tmp_path / "pre", count=4)
    config = fast_config(num_epochs=2, iterations_per_epoch=3, val_iterations=1, max_nonfinite_steps=100)
    task = blob_task(tmp_path / "pre", config)
    first_weight = next(iter(task.build_network().state_dict()))

    def poisoning_optimizer(parameters, config):
        optimizer = build_optimizer(parameters, config)
        step = optimizer.step

        def step_then_overflow(*args, **kwargs):
            step(*args, **kwargs)
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(float("inf"))

        optimizer.step = step_then_overflow
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", poisoning_optimizer)
    with pytest.raises(VolfnetError) as caught:
        run_training(task, config, tmp_path / "run", device="cpu")
    message = str(caught.value)
    assert re.match(rf"training stopped before writing checkpoint_(best|latest)\.pt: weight tensor '{re.escape(first_weight)}' holds NaN/inf after epoch 0", message), message
    assert "lower learning rate" in message and "resuming from NaN weights would be useless" in message
    assert not list((tmp_path / "run").glob("checkpoint_*.pt"))


def test_the_cli_exits_non_zero_when_training_diverges(roots, capsys):
    plan_tiny_dataset(roots["raw"])
    argv = [
        "1", "3d_fullres", "0", "--device", "cpu", "--set", "num_epochs=1", "--set", "iterations_per_epoch=4",
        "--set", "val_iterations=1", "--set", "num_workers=0", "--set", "progress_bar=false",
        "--set", "lr=1e30", "--set", "max_nonfinite_steps=2",
    ]
    assert train_main(argv) == 2
    captured = capsys.readouterr()
    assert "error: training stopped: 2 steps in a row (iterations 1-2, epoch 0) had a NaN/inf loss or gradients" in captured.err
    assert "training done" not in captured.out + captured.err
    fold = roots["results"] / "Dataset001_Toy" / "fmunet__3d_fullres" / "fold_0"
    assert not list(fold.glob("checkpoint_*.pt"))
