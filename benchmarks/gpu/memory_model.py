"""The planner's GPU memory model against one real training step (issue 19, item 2).

Patch and batch size of every GPU plan come from ``volfnet.planning.cost``: activation
elements counted on the real network x bytes per element under mixed precision, plus weights,
gradients and optimiser state, plus a fixed 0.8 GB for the CUDA context and workspaces. This
script plans two datasets (``common.DATASETS``: a Hippocampus-like MR and an abdominal-CT-like
one) for the ``gpu8``, ``gpu24`` and ``gpu80`` targets, builds each planned network and takes
training steps at the planned patch and batch exactly as the trainer does (its default AMP:
bf16 where the GPU has it, else fp16 with a gradient scaler), with the caching allocator capped
at the target's memory, so a plan that would not fit an 8 GB card fails here too.

Measured = peak ``torch.cuda.max_memory_allocated`` of the second step (the first one also
holds cuDNN's algorithm search) + this process's CUDA context (device memory in use outside
the allocator), the same parts the model's figure adds up. The checks: measured within
+-20 % of the prediction, and the step runs under the target's cap with measured <= the
target's memory. ``benchmarks/planner_memory.py`` checks the CPU (fp32) figure on hand-picked
configurations; this script checks the GPU figure on the planner's own output.

    python benchmarks/gpu/memory_model.py [--device cuda] [--json OUT.json]
    python benchmarks/gpu/memory_model.py --device cpu --smoke      # plumbing only, tiny patches

``--smoke`` plans as usual but steps each planned network at its smallest valid patch with a
batch of 2 and measures no memory: it proves the code path, not the model.
"""

from __future__ import annotations

import argparse
import gc
import logging
import time

import torch
from common import DATASETS, GIB, TrainingStep, describe_device, fmt, markdown_table, synchronize, write_json

from volfnet.networks.build import build_network_from_topology
from volfnet.planning.compute_targets import get_compute_target
from volfnet.planning.cost import measure_cost
from volfnet.planning.planner import Planner, PlannerOptions
from volfnet.plans import ConfigurationPlan

logger = logging.getLogger("memory_model")

TARGETS = ("gpu8", "gpu24", "gpu80")
TOLERANCE = 0.20  # the bar: the model within +-20 % of the measured peak
SMOKE_BATCH = 2
CONFIGURATION = "3d_fullres"


def plan_configuration(dataset: str, target: str) -> tuple[ConfigurationPlan, int, int]:
    """The dataset's fullres plan for ``target`` (no lowres search: it is not measured here)."""
    fingerprint, dataset_json = DATASETS[dataset]()
    planner = Planner(fingerprint, dataset_json, f"Dataset900_{dataset}", PlannerOptions(compute_target=target, lowres=False))
    return planner.plan().configuration(CONFIGURATION), dataset_json.num_channels, dataset_json.num_classes


def context_gib(device: torch.device) -> float:
    """Device memory this process uses outside the caching allocator (CUDA context, cuDNN and
    cuBLAS handles), after one small convolution step has created them."""
    conv = torch.nn.Conv3d(1, 8, 3).to(device)
    with torch.autocast(device.type):
        conv(torch.randn(1, 1, 8, 8, 8, device=device)).float().sum().backward()
    del conv
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    return (total - free - torch.cuda.memory_reserved(device)) / GIB


def measure(plan: ConfigurationPlan, channels: int, classes: int, device: torch.device, cap_gib: float | None, smoke: bool) -> dict:
    """Two training steps of the planned network; peak memory of the second (CUDA only)."""
    patch = [2 * d for d in plan.network.total_downsampling()] if smoke else list(plan.patch_size)
    batch = SMOKE_BATCH if smoke else plan.batch_size
    result: dict = {"step_patch": patch, "step_batch": batch, "status": "ok"}
    cuda = device.type == "cuda"
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory / GIB
        torch.cuda.set_per_process_memory_fraction(min(1.0, max(cap_gib, 0.0) / total) if cap_gib else 1.0, device)
        torch.cuda.reset_peak_memory_stats(device)
    network = step = None
    try:
        network = build_network_from_topology(plan.network, channels, classes, deep_supervision=True)
        step = TrainingStep(network, channels, classes, patch, batch, device)
        loss = step()
        synchronize(device)
        if cuda:
            result["first_step_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        loss = step()
        synchronize(device)
        result["seconds_per_step"] = time.perf_counter() - start
        result["loss_finite"] = bool(torch.isfinite(loss))
        if cuda:
            result["allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
            result["reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    except torch.OutOfMemoryError as error:
        result["status"] = "out of memory"
        result["error"] = str(error).splitlines()[0]
    finally:
        del network, step  # before emptying the cache: the next plan starts from an empty GPU
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    return result


def table_row(row: dict, smoke: bool) -> list:
    verdict = {True: "yes", False: "NO"}
    status = row["status"]
    if smoke:
        status += f" (smoke: stepped at {'x'.join(map(str, row['step_patch']))}, batch {row['step_batch']})"
    return [
        row["dataset"], row["target"], "x".join(map(str, row["patch"])), row["batch"], f"{row['features'][0]}-{row['features'][-1]}",
        fmt(row["predicted_gib"]), fmt(row.get("measured_gib")), fmt(row.get("ratio")), verdict.get(row.get("within_tolerance"), "n/a"),
        verdict.get(row.get("fits_target"), "n/a"), fmt(row.get("seconds_per_step")), status,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="tiny patches, no memory measurement (a CPU check of the code path)")
    parser.add_argument("--json", type=str, default=None, help="write the rows and verdict here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU visible; use --device cpu --smoke for a plumbing check")
    if args.device == "cpu" and not args.smoke:
        parser.error("the memory model is a GPU model: on the CPU only --smoke runs")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as the trainer (deterministic=false, its default)
    context = context_gib(device) if device.type == "cuda" else None
    logger.info("device: %s%s", describe_device(device), f"; CUDA context {context:.2f} GiB" if context is not None else "")

    rows = []
    for dataset in DATASETS:
        for target_name in TARGETS:
            target = get_compute_target(target_name)
            plan, channels, classes = plan_configuration(dataset, target_name)
            predicted = measure_cost(plan.network, plan.patch_size, channels, classes).gpu_memory_gb(plan.batch_size)
            cap = None if context is None else target.memory_gb - context
            logger.info("%s %s: patch %s batch %d %s, predicted %.2f GiB", dataset, target_name, plan.patch_size, plan.batch_size,
                        plan.network.feature_channels, predicted)
            row = {
                "dataset": dataset, "target": target_name, "target_gib": target.memory_gb, "patch": plan.patch_size,
                "batch": plan.batch_size, "features": plan.network.feature_channels, "predicted_gib": predicted,
                **measure(plan, channels, classes, device, cap, args.smoke),
            }
            if context is not None and row["status"] == "ok":
                row["context_gib"] = context
                row["measured_gib"] = row["allocated_gib"] + context
                row["ratio"] = row["measured_gib"] / predicted
                row["within_tolerance"] = abs(row["ratio"] - 1) <= TOLERANCE
                row["fits_target"] = row["measured_gib"] <= target.memory_gb
            elif context is not None:  # out of memory under the target's cap
                row.update(within_tolerance=False, fits_target=False)
            rows.append(row)

    passed = all(r["status"] == "ok" and r.get("loss_finite", False) for r in rows)
    if not args.smoke:
        passed = passed and all(r["within_tolerance"] and r["fits_target"] for r in rows)
    header = ["dataset", "target", "patch", "batch", "widths", "predicted GiB", "measured GiB", "ratio", "within +-20 %",
              "fits target", "s/step", "status"]
    table = markdown_table(header, [table_row(r, args.smoke) for r in rows])
    print(table)
    write_json(args.json, {
        "check": "memory_model", "device": describe_device(device), "smoke": args.smoke, "context_gib": context,
        "tolerance": TOLERANCE, "passed": passed, "rows": rows, "table": table,
    })
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
