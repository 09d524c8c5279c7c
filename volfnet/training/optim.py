"""The optimiser and the learning-rate schedule a :class:`TrainerConfig` asks for.

The schedule is a pure function of the global iteration (:func:`learning_rate`), applied to the
optimiser before every step. Its whole state is therefore one integer, stored in checkpoints,
so a resumed run continues at exactly the learning rate it stopped at, and the schedule can be
tested at known iterations without running an optimiser. nnU-Net steps its poly schedule once
per epoch; stepping per iteration gives the same curve without the staircase.
"""

from __future__ import annotations

from collections.abc import Iterable

from typing import Any

import torch
from torch import nn

from volfnet.errors import VolfnetError
from volfnet.training.config import TrainerConfig


def learning_rate(config: TrainerConfig, iteration: int) -> float:
    """The learning rate for the step with 0-based global ``iteration``.

    ``poly``: ``lr * (1 - t/T) ** p``. ``warmup_poly``: ``lr * (t + 1) / W`` for ``t < W``, then
    poly over the remaining ``T - W`` iterations. ``step``: ``lr * gamma ** (t // step_size)``.
    ``constant``: ``lr``.
    """
    total = config.total_iterations()
    t = min(max(int(iteration), 0), total)
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "step":
        return config.lr * config.step_gamma ** (t // config.step_size)
    warmup = config.warmup_steps() if config.schedule == "warmup_poly" else 0
    if t < warmup:
        return config.lr * (t + 1) / warmup
    progress = (t - warmup) / max(total - warmup, 1)
    return config.lr * max(1.0 - progress, 0.0) ** config.poly_exponent


ENCODER_GROUP = "encoder"


def encoder_lr_factor(config: TrainerConfig, iteration: int) -> float:
    """Multiplier of the schedule's rate for the encoder's parameters at ``iteration``.

    Staged fine-tuning (LP-FT, nnssl's sawtooth): a random decoder and head send large, noisy
    gradients into pretrained features, so the encoder waits (factor 0) for
    ``encoder_frozen_iterations`` while they settle, then ramps linearly over
    ``encoder_warmup_iterations`` to ``encoder_lr_scale``.
    """
    since = int(iteration) - config.encoder_frozen_iterations
    if since < 0:
        return 0.0
    ramp = min(1.0, (since + 1) / config.encoder_warmup_iterations) if config.encoder_warmup_iterations > 0 else 1.0
    return config.encoder_lr_scale * ramp


def parameter_groups(model: nn.Module, config: TrainerConfig) -> list[dict]:
    """The optimiser's parameter groups: one, or the encoder (named by the network's
    ``encoder_key_prefixes``, the part pretraining transfers) and the rest when the config
    gives the encoder its own rate."""
    if not config.stages_encoder():
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    prefixes = tuple(getattr(model, "encoder_key_prefixes", ()))
    if not prefixes:
        raise VolfnetError(f"{type(model).__name__} names no encoder, so encoder_lr_scale and encoder_frozen_iterations cannot apply")
    encoder: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (encoder if name.startswith(prefixes) else rest).append(parameter)
    return [{"params": encoder, "name": ENCODER_GROUP}, {"params": rest, "name": "decoder"}]


class LRSchedule:
    """Sets the learning rate of every parameter group for the next step; its state is the
    number of steps taken."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainerConfig, iteration: int = 0) -> None:
        self.optimizer = optimizer
        self.config = config
        self.iteration = iteration

    def apply(self) -> float:
        """Set and return the learning rate of the coming step."""
        lr = learning_rate(self.config, self.iteration)
        for group in self.optimizer.param_groups:
            factor = encoder_lr_factor(self.config, self.iteration) if group.get("name") == ENCODER_GROUP else 1.0
            group["lr"] = lr * factor
        return lr

    def step(self) -> None:
        self.iteration += 1

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.iteration = int(state["iteration"])


def build_optimizer(parameters: Iterable[nn.Parameter] | list[dict], config: TrainerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam (L2 weight decay, as PyMIC) or AdamW over ``parameters``
    (tensors, or groups from :func:`parameter_groups`)."""
    params: list[Any] = list(parameters)
    if not params or not isinstance(params[0], dict):
        params = [{"params": [p for p in params if p.requires_grad]}]
    if not any(group["params"] for group in params):
        raise VolfnetError("the network has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    betas = (float(config.betas[0]), float(config.betas[1]))
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay)
    raise VolfnetError(f"unknown optimizer {config.optimizer!r}")
