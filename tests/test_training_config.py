"""Trainer presets, ``--set`` overrides, learning-rate schedules and optimisers."""

from __future__ import annotations

import pytest
import torch

from volfnet.errors import VolfnetError
from volfnet.training.config import (
    TrainerConfig,
    apply_trainer_override,
    apply_trainer_overrides,
    finetune_defaults,
    pretraining_defaults,
    supervised_defaults,
)
from volfnet.training.optim import LRSchedule, build_optimizer, learning_rate


def test_supervised_defaults_are_nnunets():
    config = supervised_defaults()
    assert (config.optimizer, config.lr, config.momentum, config.nesterov) == ("sgd", 1e-2, 0.99, True)
    assert (config.schedule, config.poly_exponent, config.weight_decay, config.grad_clip) == ("poly", 0.9, 3e-5, 12.0)
    assert (config.num_epochs, config.iterations_per_epoch, config.val_iterations) == (1000, 250, 50)
    assert (config.dice_include_background, config.dice_ema) == (False, 0.9)


def test_finetune_and_pretraining_presets():
    finetune = finetune_defaults()  # MIS-FM's recipe, chosen on the Hippocampus validation split
    assert (finetune.optimizer, finetune.lr, finetune.weight_decay, finetune.schedule, finetune.poly_exponent) == ("adam", 1e-3, 1e-5, "poly", 0.8)
    assert (finetune.warmup_steps(), finetune.grad_clip, finetune.deep_supervision) == (0, None, False)
    assert (finetune.pretrained_weights, supervised_defaults().pretrained_weights) == ("all", "all")
    assert finetune.total_iterations() == supervised_defaults().total_iterations()
    pretrain = pretraining_defaults()
    assert (pretrain.optimizer, pretrain.lr, pretrain.weight_decay, pretrain.schedule) == ("adam", 1e-3, 1e-5, "step")
    assert (pretrain.step_size, pretrain.step_gamma, pretrain.total_iterations()) == (20000, 0.5, 100000)
    assert (pretrain.dice_weight, pretrain.ce_weight, pretrain.dice_include_background, pretrain.batch_dice) == (0.5, 0.5, True, True)


def test_overrides_parse_json_and_bare_words():
    config = apply_trainer_overrides(
        supervised_defaults(),
        ["lr=3e-3", "optimizer=adam", "batch_size=4", "grad_clip=null", "betas=[0.9, 0.99]", "amp=false", "lr=1"],
    )
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert (config.optimizer, config.batch_size, config.grad_clip, config.betas, config.amp) == ("adam", 4, None, [0.9, 0.99], False)
    augmented = apply_trainer_override(config, "augmentation.rotation_p=0")
    assert augmented.augmentation == {"rotation_p": 0} and augmented.augmentation_config().rotation_p == 0.0
    assert supervised_defaults().augmentation == {}  # the original is unchanged


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("learning_rate=0.1", "unknown trainer setting 'learning_rate'; valid keys: num_epochs"),
        ("lr", "must look like key=value"),
        ("lr=-1", "lr must be a positive float32 number"),
        ("optimizer=rmsprop", "optimizer must be one of"),
        ("num_epochs=2.5", "num_epochs must be an integer"),
        ("batch_size=0", "batch_size must be null or an integer >= 1"),
        ("augmentation.rotation=1", "unknown augmentation field"),
        ("augmentation.rotation_p=2", "probability"),
        ("schedule=warmup_poly", "warmup_poly' needs warmup_iterations"),
        ("class_weights=[0, 0]", "class_weights"),
        ("pretrained_weights=decoder", "pretrained_weights must be one of ['all', 'encoder']"),
    ],
)
def test_bad_overrides_are_clear_errors(assignment, message):
    with pytest.raises(VolfnetError, match=message.replace("(", r"\(").replace("[", r"\[")):
        apply_trainer_override(supervised_defaults(), assignment)


def test_warmup_longer_than_training_is_an_error():
    with pytest.raises(VolfnetError, match="warm-up"):
        TrainerConfig(num_epochs=2, iterations_per_epoch=5, schedule="warmup_poly", warmup_iterations=10)


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys():
    config = apply_trainer_override(finetune_defaults(), "augmentation.mirror=false")
    assert TrainerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(VolfnetError, match="unknown field"):
        TrainerConfig.from_dict({**config.to_dict(), "bogus": 1})
    older = {key: value for key, value in config.to_dict().items() if key != "pretrained_weights"}
    assert TrainerConfig.from_dict(older).pretrained_weights == "all"  # checkpoints from before the setting existed


def test_poly_schedule_at_known_iterations():
    config = TrainerConfig(num_epochs=10, iterations_per_epoch=10)
    assert learning_rate(config, 0) == pytest.approx(1e-2)
    assert learning_rate(config, 50) == pytest.approx(0.0053589, rel=1e-4)  # 1e-2 * (1 - 50/100)^0.9
    assert learning_rate(config, 99) == pytest.approx(0.00015849, rel=1e-4)  # 1e-2 * (1 - 99/100)^0.9
    assert learning_rate(config, 100) == 0.0
    # nnU-Net's verified value at epoch 1 of 2 (stepped per epoch): 0.00536
    assert learning_rate(TrainerConfig(num_epochs=2, iterations_per_epoch=1), 1) == pytest.approx(0.00536, abs=1e-5)


def test_warmup_then_poly():
    config = TrainerConfig(num_epochs=1, iterations_per_epoch=110, lr=1e-3, schedule="warmup_poly", warmup_iterations=10)
    assert [learning_rate(config, t) for t in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert learning_rate(config, 10) == pytest.approx(1e-3)
    assert learning_rate(config, 60) == pytest.approx(0.00053589, rel=1e-4)  # poly over the 100 steps after warm-up: halfway
    by_fraction = TrainerConfig(num_epochs=1, iterations_per_epoch=200, schedule="warmup_poly", warmup_fraction=0.05)
    assert by_fraction.warmup_steps() == 10


def test_step_and_constant_schedules():
    config = TrainerConfig(num_epochs=1, iterations_per_epoch=100, lr=1e-3, schedule="step", step_size=30, step_gamma=0.5)
    assert [learning_rate(config, t) for t in (0, 29, 30, 60, 99)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4])
    assert learning_rate(config.replaced(schedule="constant"), 99) == 1e-3


def test_schedule_sets_the_optimizer_and_resumes_from_its_state():
    config = TrainerConfig(num_epochs=1, iterations_per_epoch=10)
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), config)
    schedule = LRSchedule(optimizer, config)
    for _ in range(5):
        schedule.apply()
        schedule.step()
    resumed = LRSchedule(optimizer, config)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.apply() == pytest.approx(learning_rate(config, 5)) == optimizer.param_groups[0]["lr"]


def test_optimizers():
    params = list(torch.nn.Linear(2, 2).parameters())
    sgd = build_optimizer(params, supervised_defaults())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.99
    adam = build_optimizer(params, pretraining_defaults())
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 1e-5
    assert type(build_optimizer(params, supervised_defaults().replaced(optimizer="adamw"))) is torch.optim.AdamW


def test_channels_last_is_a_trainer_setting_reaching_the_network(tmp_path):
    """``--set channels_last=true`` puts the network and the batches in NDHWC memory (on any
    device); the default follows the device (off on the CPU, where it measured slower)."""
    from helpers.training import blob_task, fast_config, make_blob_dataset

    from volfnet.checkpoint import load_checkpoint
    from volfnet.training.loop import run_training

    assert apply_trainer_overrides(TrainerConfig(), ["channels_last=true"]).channels_last is True
    with pytest.raises(VolfnetError, match="channels_last must be null, true or false"):
        apply_trainer_overrides(TrainerConfig(), ["channels_last=3"])
    make_blob_dataset(tmp_path / "pre", count=4)
    config = fast_config(num_epochs=1, iterations_per_epoch=1, val_iterations=1, channels_last=True)
    result = run_training(blob_task(tmp_path / "pre", config), config, tmp_path / "run", device="cpu")
    state = load_checkpoint(result.final_checkpoint)["model_state_dict"]
    weight = next(w for w in state.values() if w.dim() == 5 and w.shape[1] > 1 and w.shape[-1] > 1)  # saved with its training strides
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()


def test_encoder_only_flag_is_the_pretrained_weights_setting(tmp_path):
    from volfnet.training.train import TrainRequest, trainer_config

    flagged = trainer_config(TrainRequest("1", "3d_fullres", 0, pretrained="final", encoder_only=True), tmp_path, pretrained=True)
    plain = trainer_config(TrainRequest("1", "3d_fullres", 0, pretrained="final"), tmp_path, pretrained=True)
    assert (flagged.pretrained_weights, plain.pretrained_weights) == ("encoder", "all")
    assert flagged.replaced(pretrained_weights="all") == plain  # nothing else differs
