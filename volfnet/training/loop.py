"""The training loop shared by supervised training and VolF pretraining.

:func:`run_training` owns what every task needs: device, DistributedDataParallel, optimiser
and schedule, mixed precision, optional ``torch.compile``, background batch loading, the
per-epoch validation (pseudo Dice and its moving average), checkpoints, exact resume, logs,
``progress.png`` and the progress bar. A :class:`~volfnet.training.task.TrainingTask` supplies
the network, batches, loss and the work after training.

Checkpoints in the run folder, each written atomically (a crash or ``kill -9`` mid-write
leaves the previous file intact):

- ``checkpoint_latest.pt`` every ``checkpoint_every`` epochs and after the last epoch: the
  point ``resume=True`` continues from;
- ``checkpoint_best.pt`` whenever the moving average of the pseudo Dice improves;
- ``checkpoint_final.pt`` when training ends;
- ``checkpoint_it<N>.pt`` after every ``snapshot_every`` epochs (when set): the weights and
  spec only, kept so that fine-tuning can start from an earlier pretraining state (a pretext
  learned further is not always the better start).

Each holds the weights, optimiser, schedule position, gradient scaler, epoch, logs, trainer
config, random generator states and the task's spec. Batches are seeded by their index, so a
resumed run restarts the loaders at ``epoch * iterations_per_epoch`` and sees the same data.

A step whose loss or gradients are NaN/inf is skipped with a warning, as fp16's GradScaler
skips overflowing ones; ``max_nonfinite_steps`` of them in a row stop the run with a
:class:`VolfnetError`, and weights are checked before every checkpoint write, so a diverged run
ends with an error (a non-zero exit) and its last good checkpoints, never with NaN weights.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm import tqdm

from volfnet.checkpoint import first_nonfinite_tensor, load_checkpoint, save_checkpoint
from volfnet.data.loader import Batch, BatchLoader, default_num_workers
from volfnet.errors import VolfnetError
from volfnet.model_folder import checkpoint_path, snapshot_path
from volfnet.networks.runtime import (
    architecture_buffer_names,
    autocast,
    autocast_dtype,
    needs_grad_scaler,
    prepare_input,
    prepare_model,
)
from volfnet.networks.runtime import resolve_device as runtime_resolve_device
from volfnet.networks.weights import LoadReport
from volfnet.training import distributed
from volfnet.training.config import TrainerConfig
from volfnet.training.initial_weights import load_initial_weights
from volfnet.training.losses import hard_dice_counts
from volfnet.training.optim import LRSchedule, build_optimizer, learning_rate, parameter_groups
from volfnet.training.progress import ProgressWriter, TrainingLog, format_epoch
from volfnet.training.rng import capture_rng_states, restore_rng_states
from volfnet.training.task import TrainingTask

logger = logging.getLogger(__name__)

NONFINITE_ADVICE = (
    "try a lower learning rate (--set lr=...), check the preprocessed images for NaN/inf, "
    "or train in fp32 (--set amp=false)"
)
NONFINITE_WARNINGS = 5  # skipped steps warned about one by one; later ones in one line per epoch


@dataclass
class TrainingResult:
    """What a finished run produced."""

    run_folder: Path
    epochs: int
    best_ema_dice: float
    final_checkpoint: Path
    log: TrainingLog
    load_report: LoadReport | None = None
    model: nn.Module | None = None  # the trained network (unwrapped, deep supervision on), on its device


def resolve_device(requested: str | torch.device | None, context: distributed.DistContext | None = None) -> torch.device:
    """:func:`~volfnet.networks.runtime.resolve_device`; under DDP on CUDA, this rank's GPU."""
    device = runtime_resolve_device(requested)
    if device.type == "cuda" and context is not None and context.is_distributed:
        return torch.device("cuda", context.local_rank)
    return device


def run_training(
    task: TrainingTask,
    config: TrainerConfig,
    run_folder: Path,
    resume: bool = False,
    device: str | None = None,
    pretrained: Path | None = None,
) -> TrainingResult:
    """Train ``task`` into ``run_folder`` and return the result (on every rank).

    ``resume`` continues from ``checkpoint_latest.pt`` (an error when there is none).
    ``pretrained`` initialises the network from a checkpoint (ignored when resuming: the
    weights are in the checkpoint already), loading what ``config.pretrained_weights`` names.
    Under torchrun (or :func:`volfnet.training.distributed.launch`) every process calls this.
    """
    with distributed.process_group(resolve_device(device).type) as context:
        trainer = _Trainer(task, config, Path(run_folder), resolve_device(device, context), context)
        return trainer.run(resume, pretrained)


def validate_checkpoint(task: TrainingTask, run_folder: Path, device: str | None = None, kind: str = "final") -> None:
    """Run only ``task.after_training`` (full-volume validation) with a saved checkpoint."""
    path = checkpoint_path(run_folder, kind)
    if not path.is_file():
        raise VolfnetError(f"{path} does not exist: train this fold first (validation-only needs checkpoint_{kind}.pt)")
    checkpoint = load_checkpoint(path)
    model = task.build_network()
    model.load_state_dict(checkpoint["model_state_dict"])
    target = resolve_device(device)
    prepare_model(model, target)
    model.eval()
    task.after_training(model, Path(run_folder), target)


def _gradient_norm(model: nn.Module) -> torch.Tensor:
    """The total 2-norm of ``model``'s gradients (NaN/inf when any of them is), without clipping."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(nn.utils, "get_total_norm"):  # torch >= 2.6: one fused pass
        return nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class _Trainer:
    """One run's state; :meth:`run` is the whole loop."""

    def __init__(self, task: TrainingTask, config: TrainerConfig, run_folder: Path, device: torch.device, context: distributed.DistContext) -> None:
        self.task = task
        self.config = config
        self.run_folder = run_folder
        self.device = device
        self.context = context
        self.classes = list(task.evaluated_classes)
        self.log = TrainingLog(class_names=[str(c) for c in self.classes])
        self.amp_dtype = autocast_dtype(device) if config.amp else None
        self.epoch = 0
        self.workers = default_num_workers() if config.num_workers is None else config.num_workers
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0

    # ----------------------------------------------------------------- set-up
    def _build(self, resume: bool, pretrained: Path | None) -> tuple[dict[str, Any] | None, LoadReport | None]:
        torch.manual_seed(self.config.seed)  # the same initial weights on every rank and every rerun
        self.model = self.task.build_network()
        if self.context.is_distributed:  # the same weights everywhere, but each rank its own dropout masks
            torch.manual_seed(distributed.rank_seed(self.config.seed, self.context.rank))
        checkpoint, report = None, None
        if resume:
            path = checkpoint_path(self.run_folder, "latest")
            if not path.is_file():
                raise VolfnetError(
                    f"cannot resume: {path} does not exist (no epoch was checkpointed yet); start without --c"
                )
            checkpoint = load_checkpoint(path)
            self.model.load_state_dict(checkpoint["model_state_dict"])
            if pretrained is not None:
                logger.info("resuming: the pretrained weights are part of the checkpoint; %s is not loaded again", pretrained)
        elif pretrained is not None:
            report = load_initial_weights(
                self.model, Path(pretrained), self.task.spec(), encoder_only=self.config.pretrained_weights == "encoder"
            )
        prepare_model(self.model, self.device, self.config.channels_last)
        self.optimizer = build_optimizer(parameter_groups(self.model, self.config), self.config)
        self.schedule = LRSchedule(self.optimizer, self.config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=needs_grad_scaler(self.amp_dtype))
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
            self.schedule.load_state_dict(checkpoint["schedule_state"])
            if checkpoint.get("grad_scaler_state_dict"):
                self.scaler.load_state_dict(checkpoint["grad_scaler_state_dict"])
            self.log = TrainingLog.from_dict(checkpoint["logs"])
            self.epoch = int(checkpoint["epoch"])
            logger.info("resuming %s after epoch %d (iteration %d)", self.run_folder, self.epoch - 1, self.schedule.iteration)
        self.train_model: nn.Module = self.model
        if self.context.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers every rank builds identically (Swin position indices, shift regions) are
            # not broadcast at start nor before every forward: they cost bandwidth and nothing else.
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self.model, architecture_buffer_names(self.model)
            )
            # static_graph: PCT-Net has branches a given resolution mode never uses; DDP then
            # learns the used set on the first step instead of failing or searching every step.
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids, static_graph=True)
        self.eval_model: nn.Module = self.model
        if self.config.compile:
            logger.info("compiling the network (torch.compile); the first iterations are slow")
            self.train_model = cast(nn.Module, torch.compile(self.train_model))  # an OptimizedModule
            self.eval_model = cast(nn.Module, torch.compile(self.model))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not self.config.deterministic
            torch.backends.cudnn.deterministic = self.config.deterministic
        return checkpoint, report

    def _loaders(self) -> tuple[BatchLoader, BatchLoader | None]:
        workers = self.workers
        val_workers = self.config.val_num_workers
        if val_workers is None:
            val_workers = 0 if workers == 0 else max(1, workers // 2)
        seed = distributed.rank_seed(self.config.seed, self.context.rank)
        pin = self.device.type == "cuda"
        train = BatchLoader(
            self.task.training_producer(seed), workers, start_index=self.epoch * self.config.iterations_per_epoch, pin_memory=pin
        )
        if self.config.val_iterations == 0:
            return train, None
        try:
            val = BatchLoader(
                self.task.validation_producer(seed + distributed.VALIDATION_SEED_OFFSET),
                val_workers,
                start_index=self.epoch * self.config.val_iterations,
                pin_memory=pin,
            )
        except BaseException:
            train.close()
            raise
        return train, val

    # ------------------------------------------------------------------ steps
    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        data = prepare_input(batch.data, self.device, self.config.channels_last)
        targets = [t.to(self.device, non_blocking=True) for t in batch.target]
        return data, targets

    def _train_step(self, batch: Batch) -> tuple[torch.Tensor, bool]:
        """One step; returns the detached loss and whether it was finite (else the step is skipped).

        Skipping is a decision on the host, so this reads one value from the device per step:
        the read GradScaler already makes every fp16 step. It waits for the backward pass;
        the optimiser and the next forward pass are queued right after, so the GPU idles only
        for their launch. Under DDP the flag is summed over processes so all skip together.
        """
        data, targets = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, enabled=self.config.amp):
            outputs = self.train_model(data)
            loss = self.task.loss(outputs, targets)
        self.scaler.scale(loss).backward()
        finite = torch.isfinite(loss.detach())
        if self.scaler.is_enabled():
            # fp16: the scaler skips steps with inf/NaN gradients itself (a NaN loss gives those).
            if self.config.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return loss.detach(), self._everywhere(finite)
        if self.config.grad_clip:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        else:
            norm = _gradient_norm(self.model)
        taken = self._everywhere(finite & torch.isfinite(norm))
        if taken:
            self.optimizer.step()
        return loss.detach(), taken

    def _everywhere(self, flag: torch.Tensor) -> bool:
        """``flag`` (a boolean tensor) on this process and, under DDP, on every other one."""
        if self.context.is_distributed:
            failed = (~flag).to(torch.int32)
            distributed.all_reduce_sum(failed)
            return not bool(failed)
        return bool(flag)

    def _skipped_step(self, iteration: int) -> None:
        """Count a skipped step; raise when ``max_nonfinite_steps`` came in a row."""
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        limit = self.config.max_nonfinite_steps
        if self.nonfinite_in_a_row >= limit:
            first = iteration - self.nonfinite_in_a_row + 1
            raise VolfnetError(
                f"training stopped: {self.nonfinite_in_a_row} steps in a row (iterations {first}-{iteration}, epoch "
                f"{self.epoch}) had a NaN/inf loss or gradients, so the run diverged or its data hold NaN/inf; "
                f"{NONFINITE_ADVICE}. The checkpoints already in {self.run_folder} are kept "
                f"(max_nonfinite_steps={limit} sets how many such steps in a row are tolerated)"
            )
        if self.nonfinite_total <= NONFINITE_WARNINGS and self.context.is_main:
            logger.warning(
                "iteration %d: NaN/inf loss or gradients, step skipped (%d in a row; %d stop training)%s",
                iteration, self.nonfinite_in_a_row, limit,
                "; further skipped steps are counted once per epoch" if self.nonfinite_total == NONFINITE_WARNINGS else "",
            )

    def _require_finite_weights(self, kind: str) -> None:
        """Raise (on every process alike) instead of writing NaN/inf weights over a good checkpoint."""
        bad = first_nonfinite_tensor(self.model.state_dict())
        if bad is not None:
            raise VolfnetError(
                f"training stopped before writing {checkpoint_path(self.run_folder, kind).name}: weight tensor {bad!r} "
                f"holds NaN/inf after epoch {self.epoch - 1} (the run diverged); {NONFINITE_ADVICE}. The checkpoints "
                f"already in {self.run_folder} are kept (resuming from NaN weights would be useless)"
            )

    @torch.no_grad()
    def _validate(self, loader: BatchLoader | None) -> tuple[float, list[float]]:
        """Validation loss and pseudo Dice per evaluated class: hard true/false positives and
        false negatives of the full-resolution output (argmax, or each region's sigmoid above
        0.5; :func:`~volfnet.training.losses.hard_dice_counts`), summed over every
        validation batch (and every process) before dividing, as if the patches were one
        volume; voxels of the task's ignore label are left out. NaN for a class that neither
        occurs nor is predicted."""
        if loader is None:
            return math.nan, [math.nan] * len(self.classes)
        self.eval_model.eval()
        counts = torch.zeros(3, len(self.classes), dtype=torch.float64, device=self.device)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=self.device)
        for _ in range(self.config.val_iterations):
            data, targets = self._to_device(next(loader))
            with autocast(self.device, enabled=self.config.amp):
                outputs = self.eval_model(data)
                loss = self.task.loss(outputs, targets)
            loss_sum[0] += loss.double()
            loss_sum[1] += 1
            first = outputs if isinstance(outputs, torch.Tensor) else outputs[0]
            counts += hard_dice_counts(first, targets[0], self.classes, self.task.ignore_label, self.task.regions)
        distributed.all_reduce_sum(counts)
        distributed.all_reduce_sum(loss_sum)
        tp, fp, fn = counts.cpu().tolist()
        dice = [2 * t / (2 * t + p + n) if (2 * t + p + n) > 0 else math.nan for t, p, n in zip(tp, fp, fn)]
        return float(loss_sum[0] / loss_sum[1].clamp_min(1)), dice

    # ------------------------------------------------------------ checkpoints
    def _state(self, kind: str) -> dict[str, Any]:
        return {
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "schedule_state": self.schedule.state_dict(),
            "grad_scaler_state_dict": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.schedule.iteration,
            "logs": self.log.to_dict(),
            "trainer_config": self.config.to_dict(),
            "rng_states": capture_rng_states(),
            "spec": self.task.spec().to_dict(),
            "checkpoint_kind": kind,
            "world_size": self.context.world_size,
        }

    def _save(self, kind: str) -> Path:
        path = checkpoint_path(self.run_folder, kind)
        save_checkpoint(path, self._state(kind))
        logger.debug("saved %s", path)
        return path

    def _save_snapshot(self) -> Path:
        """Weights and spec only: enough to start fine-tuning from, a third of a full checkpoint."""
        path = snapshot_path(self.run_folder, self.schedule.iteration)
        save_checkpoint(path, {
            "model_state_dict": self.model.state_dict(), "epoch": self.epoch, "iteration": self.schedule.iteration,
            "trainer_config": self.config.to_dict(), "spec": self.task.spec().to_dict(), "checkpoint_kind": "snapshot",
        })
        return path

    # ------------------------------------------------------------------- loop
    def run(self, resume: bool, pretrained: Path | None) -> TrainingResult:
        writer = ProgressWriter(self.run_folder) if self.context.is_main else None  # first: log.txt sees the set-up too
        try:
            checkpoint, report = self._build(resume, pretrained)
            logger.info(
                "training %s: %d epochs x %d iterations on %s%s, %s lr %.3g (%s)",
                self.task.kind, self.config.num_epochs, self.config.iterations_per_epoch, self.device,
                f" x {self.context.world_size} processes" if self.context.is_distributed else "",
                self.config.optimizer, self.config.lr, self.config.schedule,
            )
            if checkpoint is not None:
                # Last, so nothing drawn while building (weights, loaders) shifts the streams.
                restore_rng_states(checkpoint["rng_states"])
                del checkpoint
            train_loader, val_loader = self._loaders()
            try:
                while self.epoch < self.config.num_epochs:
                    self._run_epoch(train_loader, val_loader, writer)
            finally:
                train_loader.close()
                if val_loader is not None:
                    val_loader.close()
            final = checkpoint_path(self.run_folder, "final")
            self._require_finite_weights("final")
            if self.context.is_main:
                final = self._save("final")
                if self.log.best_epoch >= 0:
                    logger.info("training done: best moving-average pseudo Dice %.4f (epoch %d)", self.log.best_ema_dice, self.log.best_epoch)
                else:
                    logger.info("training done (no validation Dice, so no best checkpoint)")
                self.model.eval()
                self.task.after_training(self.model, self.run_folder, self.device)
        finally:
            if writer is not None:
                writer.close()
        return TrainingResult(self.run_folder, self.epoch, self.log.best_ema_dice, final, self.log, report, self.model)

    def _run_epoch(self, train_loader: BatchLoader, val_loader: BatchLoader | None, writer: ProgressWriter | None) -> None:
        config = self.config
        started = time.perf_counter()
        self.train_model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        taken = 0  # steps with a finite loss: the same count on every process
        bar = tqdm(
            range(config.iterations_per_epoch),
            desc=f"epoch {self.epoch}",
            disable=not (config.progress_bar and self.context.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        lr = learning_rate(config, self.schedule.iteration)  # logged per epoch: the rate it started with
        for _ in bar:
            step_lr = self.schedule.apply()
            loss, finite = self._train_step(next(train_loader))
            if finite:
                self.nonfinite_in_a_row = 0
                loss_sum += loss.double()
                taken += 1
            else:
                self._skipped_step(self.schedule.iteration)
            self.schedule.step()  # also when skipped: the iteration numbers the batches and the schedule
            if not bar.disable:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{step_lr:.2g}")
        bar.close()
        skipped = config.iterations_per_epoch - taken
        if skipped and self.context.is_main:
            logger.warning("epoch %d: %d of %d steps skipped (NaN/inf loss or gradients)", self.epoch, skipped, config.iterations_per_epoch)
        distributed.all_reduce_sum(loss_sum)
        train_loss = float(loss_sum) / (taken * self.context.world_size) if taken else math.nan
        val_loss, dice = self._validate(val_loader)
        is_best = self.log.append(self.epoch, train_loss, val_loss, dice, lr, time.perf_counter() - started, config.dice_ema)
        self.epoch += 1
        save_latest = self.epoch % config.checkpoint_every == 0 or self.epoch == config.num_epochs
        save_snapshot = bool(config.snapshot_every) and self.epoch % config.snapshot_every == 0
        if is_best or save_latest or save_snapshot:
            self._require_finite_weights("best" if is_best else "latest")
        if not self.context.is_main or writer is None:
            return
        logger.info("%s", format_epoch(self.log))
        if is_best:
            self._save("best")
            logger.info("new best moving-average pseudo Dice: %.4f", self.log.best_ema_dice)
        if save_latest:
            self._save("latest")
        if save_snapshot:
            self._save_snapshot()
        writer.write(self.log, plot=self.epoch % config.plot_every == 0 or self.epoch == config.num_epochs)
