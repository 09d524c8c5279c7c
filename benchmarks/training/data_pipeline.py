"""Training data-pipeline throughput: volfnet vs nnU-Net v2 on the same preprocessed cases.

Both pipelines read the very same arrays: nnU-Net v2 (2.8.x, in its own virtual environment)
converts and preprocesses MSD Task04_Hippocampus itself, its preprocessed 3d_fullres cases are
exported as plain arrays and written in volfnet's case format, and each side then runs its
full training pipeline (foreground-oversampled patch sampling, the nnU-Net augmentation set,
deep-supervision targets) with the patch and batch size nnU-Net planned. Throughput is samples
per second over ``--batches`` batches after ``--warmup``, with the same number of worker
processes on both sides, measured in alternating rounds (the median is reported) so that
machine load affects both alike, together with the CPU time spent per sample by the whole
process tree (main process and workers), which does not depend on that load.

Usage (from the repository root)::

    python benchmarks/training/data_pipeline.py [--workers 2] [--batches 50] [--rounds 3]

The first run creates ``benchmarks/_envs/nnunet`` (``pip install torch==2.13.0 nnunetv2``) and
``benchmarks/_work/data_pipeline``; later runs reuse them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for its shared modules
from process_tree import tree_cpu_seconds
from peer_envs import peer_bin

from volfnet.data.batches import training_producer
from volfnet.data.loader import BatchLoader
from volfnet.io.image_io import ImageGeometry
from volfnet.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology
from volfnet.io.case_store import (
    CaseProperties,
    list_preprocessed_cases,
    save_case,
)

logger = logging.getLogger("benchmarks.data_pipeline")

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "benchmarks" / "_work" / "data_pipeline"
MSD_TASK = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
NNUNET_SIDE = Path(__file__).resolve().parent / "_nnunet_side.py"
SEED = 12345


def nnunet_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("raw", "preprocessed", "results"):
        env[f"nnUNet_{name}"] = str(WORK / "nnunet" / name)
    env["nnUNet_compile"] = "f"
    return env


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    logger.info("$ %s", " ".join(command))
    return subprocess.run(command, check=True, env=nnunet_env(), **kwargs)


def ensure_nnunet() -> Path:
    """The nnU-Net virtual environment and its preprocessed Hippocampus 3d_fullres folder."""
    peer_bin("nnunet")
    dataset = WORK / "nnunet" / "preprocessed" / "Dataset004_Hippocampus"
    folder = dataset / "nnUNetPlans_3d_fullres"
    if not (dataset / "nnUNetPlans.json").exists() or not any(folder.glob("*.b2nd")):
        if not MSD_TASK.is_dir():
            raise SystemExit(f"{MSD_TASK} not found: the benchmark needs MSD Task04_Hippocampus there")
        for name in ("raw", "preprocessed", "results"):
            (WORK / "nnunet" / name).mkdir(parents=True, exist_ok=True)
        if not (WORK / "nnunet" / "raw" / "Dataset004_Hippocampus").exists():
            run([str(peer_bin("nnunet") / "nnUNetv2_convert_MSD_dataset"), "-i", str(MSD_TASK), "-np", "2"])
        run([str(peer_bin("nnunet") / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres", "-np", "2", "-npfp", "2"])
    return folder


def ensure_volfnet_cases(nnunet_folder: Path) -> Path:
    """nnU-Net's preprocessed arrays, written in volfnet's case format (same voxels, same
    class locations)."""
    cases = WORK / "volfnet_cases"
    export = WORK / "export"
    expected = sorted(p.name[: -len(".b2nd")] for p in nnunet_folder.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))
    if cases.is_dir() and list_preprocessed_cases(cases) == expected:
        return cases
    run([str(peer_bin("nnunet") / "python"), str(NNUNET_SIDE), "export", str(nnunet_folder), str(export)])
    index = json.loads((export / "cases.json").read_text())
    for case_id, info in index.items():
        shape = info["shape"]
        geometry = ImageGeometry(info["spacing"][::-1], [0.0, 0.0, 0.0], [1, 0, 0, 0, 1, 0, 0, 0, 1], shape)
        properties = CaseProperties.unprocessed(case_id, geometry, info["spacing"], {int(k): v for k, v in info["class_locations"].items()})
        image = np.load(export / f"{case_id}.npy")
        seg = np.load(export / f"{case_id}_seg.npy")
        save_case(cases, image, seg, properties)
    logger.info("wrote %d volfnet cases to %s", len(index), cases)
    return cases


def plan_from_nnunet(nnunet_folder: Path) -> tuple[ConfigurationPlan, int]:
    """The same patch, batch size, strides and normalisation masking as nnU-Net's plans; the
    number of deep-supervision outputs nnU-Net trains with (levels - 1)."""
    plans = json.loads((nnunet_folder.parent / "nnUNetPlans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    arch = config["architecture"]["arch_kwargs"]
    strides = [list(s) for s in arch["strides"][1:]]
    levels = len(arch["features_per_stage"])
    network = NetworkTopology(
        name="fmunet",
        feature_channels=list(arch["features_per_stage"]),
        strides=strides,
        kernel_sizes=[list(k) for k in arch["kernel_sizes"]],
        dropout=[0.0] * levels,
    )
    plan = ConfigurationPlan(
        data_identifier="3d_fullres",
        spacing=list(config["spacing"]),
        median_shape=[int(v) for v in config["median_image_size_in_voxels"]],
        patch_size=list(config["patch_size"]),
        batch_size=int(config["batch_size"]),
        network=network,
        normalization=[ChannelNormalization("zscore", use_mask=bool(m)) for m in config["use_mask_for_norm"]],
    )
    return plan, levels - 1


def measure_volfnet(cases: Path, plan: ConfigurationPlan, outputs: int, workers: int, batches: int, warmup: int) -> dict:
    producer = training_producer(cases, None, plan, seed=SEED, num_outputs=outputs)
    with BatchLoader(producer, num_workers=workers) as loader:
        for _ in range(warmup):
            batch = next(loader)
        cpu_start, start = tree_cpu_seconds(), time.perf_counter()
        for _ in range(batches):
            batch = next(loader)
        elapsed = time.perf_counter() - start
        cpu = tree_cpu_seconds() - cpu_start
    return {
        "side": "volfnet",
        "workers": workers,
        "seconds": elapsed,
        "samples_per_second": batches * plan.batch_size / elapsed,
        "cpu_ms_per_sample": 1000 * cpu / (batches * plan.batch_size),
        "targets": [list(t.shape) for t in batch.target],
    }


def measure_nnunet(folder: Path, workers: int, batches: int, warmup: int) -> dict:
    result = run(
        [str(peer_bin("nnunet") / "python"), str(NNUNET_SIDE), "measure", str(folder), "--workers", str(workers),
         "--batches", str(batches), "--warmup", str(warmup)],
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description="volfnet vs nnU-Net v2 training data-pipeline throughput")
    parser.add_argument("--workers", type=int, default=2, help="worker processes on both sides (default 2)")
    parser.add_argument("--batches", type=int, default=50, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--skip-in-process", action="store_true", help="only measure with worker processes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    nnunet_folder = ensure_nnunet()
    cases = ensure_volfnet_cases(nnunet_folder)
    plan, outputs = plan_from_nnunet(nnunet_folder)
    settings = [args.workers] if args.skip_in_process else [args.workers, 0]
    results: dict[tuple[str, int], list[dict]] = {}
    for round_index in range(args.rounds):
        for workers in settings:
            for side in ("volfnet", "nnunet"):
                if side == "volfnet":
                    result = measure_volfnet(cases, plan, outputs, workers, args.batches, args.warmup)
                else:
                    result = measure_nnunet(nnunet_folder, workers, args.batches, args.warmup)
                logger.info(
                    "round %d: %s, %d workers: %.1f samples/s, %.1f CPU ms/sample",
                    round_index + 1, side, workers, result["samples_per_second"], result["cpu_ms_per_sample"],
                )
                results.setdefault((side, workers), []).append(result)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print()
    print(f"Hippocampus 3d_fullres, patch {plan.patch_size}, batch {plan.batch_size}, {outputs} deep-supervision targets, "
          f"{len(list_preprocessed_cases(cases))} cases, {cpus} CPUs; {args.batches} batches after {args.warmup} warm-up, "
          f"median of {args.rounds} alternating rounds")
    print()
    print("| workers | volfnet samples/s | nnU-Net v2 samples/s | ratio | volfnet CPU ms/sample | nnU-Net v2 CPU ms/sample | ratio |")
    print("|---|---|---|---|---|---|---|")
    for workers in settings:
        ours, theirs = results[("volfnet", workers)], results[("nnunet", workers)]
        rate = [statistics.median(r["samples_per_second"] for r in side) for side in (ours, theirs)]
        cpu = [statistics.median(r["cpu_ms_per_sample"] for r in side) for side in (ours, theirs)]
        label = f"{workers}" if workers else "0 (in-process)"
        print(f"| {label} | {rate[0]:.1f} | {rate[1]:.1f} | {rate[0] / rate[1]:.2f}x | {cpu[0]:.1f} | {cpu[1]:.1f} | {cpu[1] / cpu[0]:.2f}x |")
    print()
    print("ratio: volfnet's advantage (higher throughput, or fewer CPU ms per sample). CPU ms/sample sums the main")
    print("process and its workers, so it does not depend on what else the machine runs; samples/s does.")


if __name__ == "__main__":
    main()
