"""What a run records: per-epoch values, ``log.txt``, ``training_log.json`` and ``progress.png``.

:class:`TrainingLog` keeps exactly one value per epoch in plain lists. It travels inside every
checkpoint (numbers and lists only, so ``weights_only`` loading works), which is what makes a
resumed run's logs and plots continue seamlessly. :class:`ProgressWriter` (rank 0 only) mirrors
the package's log messages into ``log.txt`` and writes the JSON and the plot, each atomically,
so a crash never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from volfnet.values import json_safe, nanmean
from volfnet.io.files import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

LOG_FILE = "log.txt"
LOG_JSON = "training_log.json"
PROGRESS_PNG = "progress.png"
PACKAGE_LOGGER = "volfnet"
PLOT_SIZE_INCHES = (10.0, 12.0)
PLOT_DPI = 80  # readable and a few hundred kB at most, drawn in a fraction of a second


@dataclass
class TrainingLog:
    """One entry per finished epoch. ``pseudo_dice[e]`` holds one value per evaluated class
    (NaN where a class never occurred in the validation patches)."""

    class_names: list[str] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    pseudo_dice: list[list[float]] = field(default_factory=list)
    mean_dice: list[float] = field(default_factory=list)
    ema_dice: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_ema_dice: float = -math.inf
    best_epoch: int = -1

    def append(
        self, epoch: int, train_loss: float, val_loss: float, pseudo_dice: Sequence[float], lr: float, seconds: float, ema_weight: float
    ) -> bool:
        """Record an epoch, update the moving average and return whether it is a new best."""
        mean = nanmean(pseudo_dice)
        previous = self.ema_dice[-1] if self.ema_dice else math.nan
        if math.isnan(previous):
            ema = mean
        elif math.isnan(mean):
            ema = previous
        else:
            ema = ema_weight * previous + (1 - ema_weight) * mean
        self.epoch.append(int(epoch))
        self.train_loss.append(float(train_loss))
        self.val_loss.append(float(val_loss))
        self.pseudo_dice.append([float(v) for v in pseudo_dice])
        self.mean_dice.append(float(mean))
        self.ema_dice.append(float(ema))
        self.lr.append(float(lr))
        self.epoch_seconds.append(float(seconds))
        if not math.isnan(ema) and ema > self.best_ema_dice:
            self.best_ema_dice = float(ema)
            self.best_epoch = int(epoch)
            return True
        return False

    def __len__(self) -> int:
        return len(self.epoch)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> dict[str, Any]:
        """As :meth:`to_dict` with NaN and infinities as null (valid JSON)."""
        return json_safe(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingLog:
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})




def format_epoch(log: TrainingLog, index: int = -1) -> str:
    """One log line for an epoch: losses, pseudo Dice per class, its average, lr, time."""
    dice = ", ".join(f"{name} {value:.4f}" for name, value in zip(log.class_names, log.pseudo_dice[index]))
    return (
        f"epoch {log.epoch[index]}: train loss {log.train_loss[index]:.4f}, val loss {log.val_loss[index]:.4f}, "
        f"pseudo Dice [{dice}] mean {log.mean_dice[index]:.4f} (moving average {log.ema_dice[index]:.4f}), "
        f"lr {log.lr[index]:.3g}, {log.epoch_seconds[index]:.1f} s"
    )


class ProgressWriter:
    """Writes a run's ``log.txt`` (every ``volfnet`` log record at INFO or above while open),
    ``training_log.json`` and ``progress.png``. Use as a context manager."""

    def __init__(self, run_folder: Path) -> None:
        self.run_folder = Path(run_folder)
        self.run_folder.mkdir(parents=True, exist_ok=True)
        self._handler = logging.FileHandler(self.run_folder / LOG_FILE, encoding="utf-8")
        self._handler.setLevel(logging.INFO)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._package = logging.getLogger(PACKAGE_LOGGER)
        self._previous_level = self._package.level
        if self._package.getEffectiveLevel() > logging.INFO:  # else INFO records never reach the file
            self._package.setLevel(logging.INFO)
        self._package.addHandler(self._handler)

    def write(self, log: TrainingLog, plot: bool = True) -> None:
        atomic_write_json(self.run_folder / LOG_JSON, log.to_json())
        if plot and len(log):
            plot_progress(log, self.run_folder / PROGRESS_PNG)

    def close(self) -> None:
        self._package.removeHandler(self._handler)
        self._package.setLevel(self._previous_level)
        self._handler.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def plot_progress(log: TrainingLog, path: Path) -> None:
    """Three panels: losses with the pseudo Dice and its moving average (twin axis), the
    learning rate, and the epoch duration. Written atomically."""
    from matplotlib.figure import (
        Figure,  # no pyplot: no GUI backend, no global figure state
    )

    figure = Figure(figsize=PLOT_SIZE_INCHES)
    loss_axis, lr_axis, time_axis = figure.subplots(3, 1, sharex=True)
    epochs = log.epoch
    loss_axis.plot(epochs, log.train_loss, color="tab:blue", label="train loss")
    loss_axis.plot(epochs, log.val_loss, color="tab:red", label="validation loss")
    loss_axis.set_ylabel("loss")
    dice_axis = loss_axis.twinx()
    dice_axis.plot(epochs, log.mean_dice, color="tab:green", linestyle=":", label="pseudo Dice")
    dice_axis.plot(epochs, log.ema_dice, color="tab:green", label="pseudo Dice (moving average)")
    dice_axis.set_ylabel("pseudo Dice")
    dice_axis.set_ylim(0, 1)
    handles = loss_axis.get_legend_handles_labels()
    more = dice_axis.get_legend_handles_labels()
    loss_axis.legend(handles[0] + more[0], handles[1] + more[1], loc="center right")
    lr_axis.plot(epochs, log.lr, color="black")
    lr_axis.set_ylabel("learning rate")
    time_axis.plot(epochs, log.epoch_seconds, color="tab:purple")
    time_axis.set_ylabel("epoch time (s)")
    time_axis.set_xlabel("epoch")
    for axis in (loss_axis, lr_axis, time_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=PLOT_DPI)
