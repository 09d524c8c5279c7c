"""Training speed on MSD Hippocampus at the CPU preset: network step vs data pipeline vs loop.

Three numbers, measured separately so that one can see which part limits training:

- **network step**: forward + loss + backward + optimiser step of the plans' network on
  batches made in advance (no data loading), as :func:`volfnet.training.loop.run_training`
  runs it (SGD, gradient clipping, deep supervision, fp32 on the CPU);
- **data pipeline**: batches per second of the training :class:`~volfnet.data.loader.BatchLoader`
  (sampling with foreground oversampling, the nnU-Net augmentation set, deep-supervision
  targets) in the main process and with worker processes;
- **training loop**: iterations per second of ``run_training`` itself (one epoch, validation
  off), where the workers prepare batches while the network trains.

The preprocessed data is made on first use from ``../shared/data/Task04_Hippocampus`` with
``volfnet_convert_msd`` and ``volfnet_plan_and_preprocess --target cpu`` into
``benchmarks/_work/train_step``; without the MSD folder the script says so and exits.

Usage (from the repository root)::

    python benchmarks/training/train_step.py [--steps 10] [--batches 30] [--workers 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "benchmarks" / "_work" / "train_step"
MSD_TASK = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
DATASET = "Dataset004_Hippocampus"
CONFIGURATION = "3d_fullres"

def set_roots() -> None:
    for name, variable in (("raw", "VOLFNET_raw"), ("preprocessed", "VOLFNET_preprocessed"), ("results", "VOLFNET_results")):
        (WORK / name).mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(WORK / name)


def ensure_preprocessed() -> Path:
    """The preprocessed Hippocampus folder, made with the console scripts' own code on first use."""
    from volfnet.cli.convert_msd import main as convert_main
    from volfnet.cli.plan_and_preprocess import main as plan_main

    folder = WORK / "preprocessed" / DATASET
    if (folder / "plans.json").is_file() and any((folder / CONFIGURATION).glob("*_seg.npy")):
        return folder
    if not MSD_TASK.is_dir():
        print(f"skipped: {MSD_TASK} not found (the benchmark needs MSD Task04_Hippocampus there)")
        raise SystemExit(0)
    if not (WORK / "raw" / DATASET).is_dir() and convert_main(["-i", str(MSD_TASK), "-d", "4"]) != 0:
        raise SystemExit("volfnet_convert_msd failed")
    if plan_main(["-d", "4", "--target", "cpu", "-np", "2", "-c", CONFIGURATION]) != 0:
        raise SystemExit("volfnet_plan_and_preprocess failed")
    return folder


def make_task(folder: Path, config):
    from volfnet.io.dataset import DatasetJson
    from volfnet.plans import Plans
    from volfnet.io.case_store import list_preprocessed_cases
    from volfnet.training.segmentation import SegmentationTask

    plans = Plans.load(folder / "plans.json")
    cases = list_preprocessed_cases(folder / plans.configuration(CONFIGURATION).data_identifier)
    dataset_json = DatasetJson.load(folder / "dataset.json")
    return SegmentationTask(plans, CONFIGURATION, folder, dataset_json, 0, cases[:-5], cases[-5:], config)


def measure_step(task, config, steps: int, warmup: int) -> dict:
    """Forward, loss, backward, clipping and SGD step on pre-made batches, as the loop runs them."""
    from volfnet.networks.runtime import prepare_model
    from volfnet.training.optim import build_optimizer

    producer = task.training_producer(seed=1)
    producer.prepare()
    batches = [producer(i) for i in range(min(steps + warmup, 8))]
    torch.manual_seed(0)
    model = prepare_model(task.build_network(), "cpu").train()
    optimizer = build_optimizer(model.parameters(), config)
    times = []
    for index in range(steps + warmup):
        batch = batches[index % len(batches)]
        data = torch.from_numpy(batch.data)
        targets = [torch.from_numpy(t) for t in batch.target]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model(data), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    seconds = sum(times) / len(times)
    return {"seconds": seconds, "per_second": 1 / seconds}


def measure_pipeline(task, workers: int, batches: int, warmup: int) -> dict:
    from volfnet.data.loader import BatchLoader

    with BatchLoader(task.training_producer(seed=2), num_workers=workers) as loader:
        for _ in range(warmup):
            next(loader)
        start = time.perf_counter()
        for _ in range(batches):
            next(loader)
        seconds = (time.perf_counter() - start) / batches
    return {"seconds": seconds, "per_second": 1 / seconds}


def measure_loop(folder: Path, config, iterations: int, workers: int) -> dict:
    from volfnet.training.loop import run_training

    class NoFinalValidation:
        """The segmentation task without the full-volume validation at the end."""

        def __init__(self, task) -> None:
            self._task = task
            self.kind, self.num_classes, self.evaluated_classes = task.kind, task.num_classes, task.evaluated_classes
            self.spec, self.build_network, self.loss = task.spec, task.build_network, task.loss
            self.training_producer, self.validation_producer = task.training_producer, task.validation_producer

        def after_training(self, model, run_folder, device) -> None:
            return None

    loop_config = config.replaced(
        num_epochs=1, iterations_per_epoch=iterations, val_iterations=0, num_workers=workers, progress_bar=False
    )
    task = NoFinalValidation(make_task(folder, loop_config))
    with tempfile.TemporaryDirectory() as run_folder:
        result = run_training(task, loop_config, Path(run_folder), device="cpu")
    seconds = result.log.epoch_seconds[0] / iterations
    return {"seconds": seconds, "per_second": 1 / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description="volfnet training speed: network step, data pipeline, loop")
    parser.add_argument("--steps", type=int, default=10, help="timed network steps (after 2 warm-up steps)")
    parser.add_argument("--batches", type=int, default=30, help="timed pipeline batches (after 3 warm-up batches)")
    parser.add_argument("--workers", type=int, default=1, help="data worker processes for the pipeline and loop rows")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--loop-iterations", type=int, default=10, help="iterations of the loop measurement (0: skip)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    set_roots()
    from volfnet.training.config import supervised_defaults

    folder = ensure_preprocessed()
    config = supervised_defaults()
    task = make_task(folder, config)
    plan = task.plan
    flops_note = f"FMUNet {plan.network.feature_channels}"
    step = measure_step(task, config, args.steps, warmup=2)
    in_process = measure_pipeline(task, 0, args.batches, warmup=3)
    with_workers = measure_pipeline(task, args.workers, args.batches, warmup=3) if args.workers > 0 else None
    loop = measure_loop(folder, config, args.loop_iterations, args.workers) if args.loop_iterations else None

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print()
    print(
        f"Hippocampus {CONFIGURATION} at the CPU preset: patch {plan.patch_size}, batch {plan.batch_size}, {flops_note}, "
        f"{task.num_outputs} deep-supervision outputs; {cpus} CPUs, {torch.get_num_threads()} torch threads, fp32"
    )
    print()
    print("| measurement | s / iteration | iterations / s | samples / s |")
    print("|---|---:|---:|---:|")
    rows = [("network step (forward + backward + SGD)", step), ("data pipeline, in-process", in_process)]
    if with_workers is not None:
        rows.append((f"data pipeline, {args.workers} worker(s)", with_workers))
    if loop is not None:
        rows.append((f"training loop (run_training, {args.workers} worker(s))", loop))
    for name, row in rows:
        print(f"| {name} | {row['seconds']:.3f} | {row['per_second']:.2f} | {row['per_second'] * plan.batch_size:.1f} |")
    print()
    ratio = in_process["per_second"] / step["per_second"]
    print(f"The in-process data pipeline alone is {ratio:.1f}x faster than the network step.")


if __name__ == "__main__":
    main()
