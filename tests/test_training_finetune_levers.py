"""The fine-tuning levers of issue 15: the MIS-FM recipe, staged fine-tuning (frozen, then
ramped encoder) and training without deep supervision, each switched with ``--set``."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.checkpoints import volf_checkpoint
from helpers.training import blob_task, fast_config, make_blob_dataset

from volfnet.checkpoint import load_checkpoint
from volfnet.errors import VolfnetError
from volfnet.model_folder import list_snapshots
from volfnet.training.config import (
    RECIPES,
    apply_trainer_overrides,
    finetune_defaults,
    supervised_defaults,
)
from volfnet.training.initial_weights import load_initial_weights
from volfnet.training.loop import run_training
from volfnet.training.optim import (
    ENCODER_GROUP,
    LRSchedule,
    build_optimizer,
    encoder_lr_factor,
    parameter_groups,
)


def test_misfm_recipe_sets_every_field_and_later_keys_still_win():
    config = apply_trainer_overrides(finetune_defaults(), ["recipe=misfm", "lr=5e-4"])
    assert (config.optimizer, config.weight_decay, config.betas) == ("adam", 1e-5, [0.9, 0.999])
    assert (config.schedule, config.poly_exponent, config.warmup_fraction, config.grad_clip) == ("poly", 0.8, 0.0, None)
    assert config.deep_supervision is False and config.lr == 5e-4
    back = apply_trainer_overrides(config, ["recipe=nnunet"])
    assert (back.optimizer, back.lr, back.momentum, back.grad_clip, back.deep_supervision) == ("sgd", 1e-2, 0.99, 12.0, True)
    assert set(RECIPES["misfm"]) <= set(supervised_defaults().to_dict())


def test_overrides_that_belong_together_may_come_in_any_order():
    # Validated once at the end: warmup_poly alone (no warm-up length yet) would be refused.
    config = apply_trainer_overrides(finetune_defaults(), ["recipe=nnunet", "schedule=warmup_poly", "warmup_fraction=0.05"])
    assert (config.optimizer, config.schedule, config.warmup_fraction) == ("sgd", "warmup_poly", 0.05)
    with pytest.raises(VolfnetError, match="needs warmup_iterations > 0 or warmup_fraction > 0"):
        apply_trainer_overrides(finetune_defaults(), ["schedule=warmup_poly"])


def test_unknown_recipe_names_the_choices():
    with pytest.raises(VolfnetError, match=r"unknown recipe 'lamb'.*misfm.*nnunet"):
        apply_trainer_overrides(supervised_defaults(), ["recipe=lamb"])


def test_encoder_factor_is_zero_while_frozen_then_ramps_to_the_scale():
    config = supervised_defaults().replaced(encoder_frozen_iterations=10, encoder_warmup_iterations=4, encoder_lr_scale=0.5)
    factors = [encoder_lr_factor(config, t) for t in range(9, 16)]
    assert factors == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5])
    plain = supervised_defaults()
    assert not plain.stages_encoder() and encoder_lr_factor(plain, 0) == 1.0
    with pytest.raises(VolfnetError, match="encoder_frozen_iterations must be an integer >= 0"):
        supervised_defaults().replaced(encoder_frozen_iterations=-1)


def test_frozen_encoder_does_not_move_while_the_decoder_learns(tmp_path):
    config = fast_config(num_epochs=1, iterations_per_epoch=3, val_iterations=1, optimizer="adam", lr=1e-2, encoder_frozen_iterations=3)
    task = blob_task(tmp_path / "pre", config)
    model = task.build_network()
    groups = parameter_groups(model, config)
    assert [group.get("name") for group in groups] == [ENCODER_GROUP, "decoder"]
    prefixes = model.encoder_key_prefixes
    names = dict(model.named_parameters())
    assert len(groups[0]["params"]) == sum(name.startswith(prefixes) for name in names)
    schedule = LRSchedule(build_optimizer(groups, config), config)
    schedule.apply()
    assert [group["lr"] for group in schedule.optimizer.param_groups] == [0.0, pytest.approx(1e-2)]

    volf_checkpoint(tmp_path / "volf.pt")
    before = {k: v.clone() for k, v in torch.load(tmp_path / "volf.pt", weights_only=True)["model_state_dict"].items()}
    result = run_training(task, config, tmp_path / "run", device="cpu", pretrained=tmp_path / "volf.pt")
    after = result.model.state_dict()
    encoder = [k for k in after if k.startswith(prefixes) and after[k].is_floating_point() and "running" not in k]
    decoder = [k for k in after if k.startswith("decoder.") and k.endswith("weight")]
    assert encoder and all(torch.equal(after[k], before[k]) for k in encoder)
    assert any(not torch.equal(after[k], before[k]) for k in decoder)


def test_without_deep_supervision_one_output_and_one_target(tmp_path):
    make_blob_dataset(tmp_path / "pre", count=4)
    deep = blob_task(tmp_path / "pre", fast_config())
    flat = blob_task(tmp_path / "pre", fast_config(deep_supervision=False))
    assert deep.num_outputs > 1 and flat.num_outputs == 1
    batch = flat.training_producer(0)(0)
    assert len(batch.target) == 1 and batch.target[0].shape[2:] == batch.data.shape[2:]
    network = flat.build_network()
    output = network(torch.from_numpy(batch.data))
    assert isinstance(output, torch.Tensor) and output.shape[1] == 3
    assert sorted(network.state_dict()) == sorted(deep.build_network().state_dict())  # checkpoints stay interchangeable
    result = run_training(flat, flat.config, tmp_path / "run", device="cpu")
    assert result.epochs == 2 and all(math.isfinite(v) for v in result.log.train_loss)


def test_snapshots_keep_earlier_weights_that_fine_tuning_can_start_from(tmp_path):
    config = fast_config(num_epochs=3, iterations_per_epoch=2, val_iterations=1, snapshot_every=2, optimizer="adam", lr=1e-2)
    task = blob_task(tmp_path / "pre", config)
    result = run_training(task, config, tmp_path / "run", device="cpu")
    snapshots = list_snapshots(tmp_path / "run")
    assert [path.name for path in snapshots] == ["checkpoint_it0000004.pt"]  # after epoch 2 of 3 only
    state = load_checkpoint(snapshots[0])  # weights_only=True
    assert state["iteration"] == 4 and state["checkpoint_kind"] == "snapshot" and "optimizer_state_dict" not in state
    final = result.model.state_dict()
    assert any(not torch.equal(state["model_state_dict"][key], final[key]) for key in final if key.endswith("weight"))
    model = task.build_network()
    report = load_initial_weights(model, snapshots[0], task.spec())
    loaded = model.state_dict()
    assert not report.missing and all(torch.equal(loaded[key], value) for key, value in state["model_state_dict"].items())
