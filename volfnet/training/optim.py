"""The optimiser and the learning-rate schedule a :class:`TrainerConfig` asks for.

The schedule is a pure function of the global iteration (:func:`learning_rate`), applied to the
optimiser before every step. Its whole state is therefore one integer, stored in checkpoints,
so a resumed run continues at exactly the learning rate it stopped at, and the schedule can be
tested at known iterations without running an optimiser. nnU-Net steps its poly schedule once
per epoch; stepping per iteration gives the same curve without the staircase.
"""

from __future__ import annotations

from collections.abc import Iterable

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
            group["lr"] = lr
        return lr

    def step(self) -> None:
        self.iteration += 1

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.iteration = int(state["iteration"])


def build_optimizer(parameters: Iterable[nn.Parameter], config: TrainerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam (L2 weight decay, as PyMIC) or AdamW."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
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
