"""nnU-Net v2's default training, cut to a wall-clock budget; runs inside nnU-Net's environment.

``run_compare.py`` copies this file into the nnU-Net environment (nnU-Net finds trainers by
class name under ``nnunetv2/training/nnUNetTrainer``). Plans, network, augmentation, loss,
optimiser and deep supervision stay nnU-Net's defaults; only the schedule changes:

- epochs of 10 iterations with 2 validation iterations, so the budget is checked often and
  spent on training rather than on nnU-Net's 50 validation iterations per epoch;
- after every epoch the number of epochs is set to what the remaining budget holds at the
  measured speed, and the poly learning-rate schedule is stretched to end there, so the run
  anneals the way a full nnU-Net run does instead of stopping at a high learning rate;
- nnU-Net's final validation is skipped: ``run_compare.py`` predicts the held-out cases with
  ``nnUNetv2_predict`` and scores both tools with the same ``volfnet_evaluate``.

The budget comes from the environment variable ``VOLFNET_BENCH_BUDGET_SECONDS``; the epoch
times and the iterations done are written to ``budget_log.json`` in the fold folder.
"""

import json
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

ITERATIONS_PER_EPOCH = 10


class nnUNetTrainer_CPUBudget(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_seconds = float(os.environ["VOLFNET_BENCH_BUDGET_SECONDS"])
        self.num_iterations_per_epoch = ITERATIONS_PER_EPOCH
        self.num_val_iterations_per_epoch = 2
        self.num_epochs = 100_000  # replaced by the budget after the first epoch
        self.save_every = 10**9
        self.epoch_seconds: list[float] = []

    def run_training(self):
        self.on_train_start()
        start = time.perf_counter()
        while self.current_epoch < self.num_epochs:
            epoch_start = time.perf_counter()
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                outputs = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(outputs)
            self.on_epoch_end()
            self.epoch_seconds.append(time.perf_counter() - epoch_start)
            self._fit_schedule_to_budget(time.perf_counter() - start)
        self.on_train_end()
        with open(os.path.join(self.output_folder, "budget_log.json"), "w") as file:
            json.dump({"budget_seconds": self.budget_seconds, "iterations": len(self.epoch_seconds) * self.num_iterations_per_epoch,
                       "iterations_per_epoch": self.num_iterations_per_epoch, "epoch_seconds": self.epoch_seconds}, file, indent=1)

    def _fit_schedule_to_budget(self, elapsed: float) -> None:
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        epochs_left = int(max(0.0, self.budget_seconds - elapsed) // per_epoch)
        self.num_epochs = self.current_epoch + epochs_left
        self.lr_scheduler.max_steps = max(self.num_epochs, self.current_epoch + 1)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped: the benchmark predicts the held-out cases itself")
