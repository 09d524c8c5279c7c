"""The training loop on tiny synthetic data: it learns, resumes exactly, survives failed
checkpoint writes, and starts from pretrained weights (or refuses ones that do not fit)."""

from __future__ import annotations

import errno

import pytest
import torch
from helpers.checkpoints import volf_checkpoint
from helpers.training import Interrupted, InterruptingTask, blob_task, fast_config, make_blob_dataset

from volfnet.checkpoint import load_checkpoint
from volfnet.errors import VolfnetError
from volfnet.model_folder import checkpoint_path
from volfnet.training.initial_weights import load_initial_weights
from volfnet.training.loop import run_training, validate_checkpoint
from volfnet.training.progress import LOG_FILE, LOG_JSON


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiny_run_learns_and_writes_its_outputs(tmp_path):
    make_blob_dataset(tmp_path / "pre", count=5)
    config = fast_config(
        num_epochs=8, iterations_per_epoch=5, val_iterations=3, optimizer="adam", lr=1e-2, checkpoint_every=4,
        augmentation={"rotation_p": 0.0, "scaling_p": 0.0},
    )
    task = blob_task(tmp_path / "pre", config)
    result = run_training(task, config, tmp_path / "run", device="cpu")
    dice = result.log.mean_dice
    # Chance: marking every voxel as the class gives Dice ~0.17 (ball) and ~0.07 (cap).
    assert dice[-1] > 0.45 and dice[-1] > dice[0] + 0.2, dice
    assert result.epochs == 8 and task.after_training_calls == 1
    for kind in ("latest", "best", "final"):
        assert checkpoint_path(tmp_path / "run", kind).is_file()
    final = load_checkpoint(result.final_checkpoint)  # weights_only=True
    assert final["epoch"] == 8 and final["iteration"] == 40 and final["spec"]["kind"] == "segmentation"
    assert final["trainer_config"]["lr"] == 1e-2 and len(final["logs"]["ema_dice"]) == 8
    best = load_checkpoint(checkpoint_path(tmp_path / "run", "best"))
    assert best["logs"]["best_ema_dice"] == pytest.approx(max(result.log.ema_dice))
    assert "new best moving-average pseudo Dice" in (tmp_path / "run" / LOG_FILE).read_text()
    assert (tmp_path / "run" / LOG_JSON).is_file()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    make_blob_dataset(tmp_path / "pre", count=4)
    config = fast_config(num_epochs=4, iterations_per_epoch=2, val_iterations=1)
    task = blob_task(tmp_path / "pre", config, task_class=InterruptingTask, dropout=0.3)  # dropout: torch RNG must resume
    whole = run_training(task, config, tmp_path / "whole", device="cpu")
    task.interrupt_at = 5  # second batch of epoch 2; "latest" holds epoch 1
    with pytest.raises(Interrupted):
        run_training(task, config, tmp_path / "parts", device="cpu")
    assert load_checkpoint(tmp_path / "parts" / "checkpoint_latest.pt")["epoch"] == 2
    task.interrupt_at = None
    resumed = run_training(task, config, tmp_path / "parts", resume=True, device="cpu")
    expected, got = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert resumed.log.train_loss == whole.log.train_loss and resumed.log.epoch == [0, 1, 2, 3]
    assert resumed.log.lr == whole.log.lr
    momentum = [s["momentum_buffer"] for s in load_checkpoint(tmp_path / "parts" / "checkpoint_final.pt")["optimizer_state_dict"]["state"].values()]
    reference = [s["momentum_buffer"] for s in load_checkpoint(tmp_path / "whole" / "checkpoint_final.pt")["optimizer_state_dict"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, reference))


def test_failed_checkpoint_write_keeps_the_previous_latest(tmp_path, monkeypatch):
    make_blob_dataset(tmp_path / "pre", count=4)
    config = fast_config(num_epochs=1, iterations_per_epoch=1, val_iterations=1)
    task = blob_task(tmp_path / "pre", config)
    run_training(task, config, tmp_path / "run", device="cpu")
    latest = checkpoint_path(tmp_path / "run", "latest")
    before = latest.read_bytes()

    def disk_full(obj, handle, *args, **kwargs):  # half a file, then the disk is full
        handle.write(b"PK\x03\x04 truncated")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("volfnet.checkpoint.torch.save", disk_full)
    with pytest.raises(VolfnetError, match="No space left on device; the previous checkpoint"):
        run_training(task, config.replaced(num_epochs=2), tmp_path / "run", resume=True, device="cpu")
    monkeypatch.undo()
    assert latest.read_bytes() == before and load_checkpoint(latest)["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_resume_and_validation_without_checkpoints_are_clear_errors(tmp_path):
    make_blob_dataset(tmp_path / "pre", count=4)
    task = blob_task(tmp_path / "pre", fast_config())
    with pytest.raises(VolfnetError, match="cannot resume: .*checkpoint_latest.pt does not exist"):
        run_training(task, fast_config(), tmp_path / "run", resume=True, device="cpu")
    with pytest.raises(VolfnetError, match="checkpoint_final.pt does not exist: train this fold first"):
        validate_checkpoint(task, tmp_path / "run", device="cpu")


def test_training_starts_from_pretrained_weights_and_skips_the_head(tmp_path):
    make_blob_dataset(tmp_path / "pre", count=4)
    config = fast_config(num_epochs=1, iterations_per_epoch=1, val_iterations=1)
    task = blob_task(tmp_path / "pre", config)
    source = volf_checkpoint(tmp_path / "volf.pt")
    model = task.build_network()
    report = load_initial_weights(model, tmp_path / "volf.pt", task.spec())
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], source[key]) for key in source if key.startswith(("project.", "encoder.", "decoder.")))
    assert report.skipped and all(key.startswith("out_layers.") and "shape" in reason for key, reason in report.skipped.items())
    assert sorted(report.missing) == sorted(report.skipped)  # only the heads keep their initialisation
    result = run_training(task, config, tmp_path / "run", device="cpu", pretrained=tmp_path / "volf.pt")
    assert result.load_report is not None and len(result.load_report.loaded) == len(report.loaded)
    encoder = load_initial_weights(task.build_network(), tmp_path / "volf.pt", task.spec(), encoder_only=True)
    assert encoder.loaded and all(key.startswith(("project.", "encoder.")) for key in encoder.loaded)


def test_incompatible_pretrained_checkpoints_are_refused_with_what_differs(tmp_path):
    make_blob_dataset(tmp_path / "pre", count=4)
    task = blob_task(tmp_path / "pre", fast_config())
    volf_checkpoint(tmp_path / "wide.pt", widths=(8, 16, 32))
    with pytest.raises(VolfnetError, match=r"feature_channels: checkpoint \[8, 16, 32\], plans \[4, 8, 16\].*volfnet_plan_and_preprocess"):
        load_initial_weights(task.build_network(), tmp_path / "wide.pt", task.spec())
    volf_checkpoint(tmp_path / "foreign.pt", widths=(4, 8, 32), with_spec=False)
    with pytest.raises(VolfnetError, match=r"encoder weights of the network do not load .*shape"):
        run_training(task, fast_config(), tmp_path / "run", device="cpu", pretrained=tmp_path / "foreign.pt")

