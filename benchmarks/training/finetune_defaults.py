"""A short experiment behind the fine-tuning defaults: which learning rate and schedule to use
when starting from a VolF-pretrained network.

MSD Hippocampus, planned small enough for a CPU (patch 24 x 32 x 24, FMUNet from 4 features,
at most 32; the planner picks widths 4-16): VolF pretraining on every image (labels ignored,
``volfnet_pretrain``), then the same short fine-tuning budget on 10 labelled cases with several trainer settings, and training from
scratch with nnU-Net's defaults for reference. Every run is validated on the same 40 held-out
cases (full-volume sliding window, original geometry, ``validation/summary.json``).

This is a sanity check of the choice, not a benchmark of VolF: the pretraining and the
fine-tuning are far shorter than in practice, so differences of a point or two are noise.

Usage (from the repository root)::

    python benchmarks/training/finetune_defaults.py [--pretrain-iterations 600] [--iterations 300] [--threads 1] [--run NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "benchmarks" / "_work" / "finetune_defaults"
MSD_TASK = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
DATASET = "Dataset004_Hippocampus"
LABELLED = 10  # labelled training cases: the few-labels setting pretraining is for
VALIDATION = 40  # fixed held-out cases every variant is scored on
SPLIT_SEED = 0

VARIANTS = {
    # name: (pretrained, trainer overrides)
    "scratch, nnU-Net defaults (SGD 1e-2, poly)": (False, []),
    "pretrained, nnU-Net defaults (SGD 1e-2, poly)": (True, ["lr=0.01", "schedule=poly"]),
    "pretrained, fine-tuning defaults (SGD 1e-2, 5% warm-up, poly)": (True, []),
    "pretrained, SGD 3e-3, 5% warm-up, poly": (True, ["lr=0.003"]),
    "pretrained, SGD 1e-3, 5% warm-up, poly (nnssl)": (True, ["lr=0.001"]),
}


def set_roots(run: str) -> Path:
    """Raw and preprocessed data are shared by every run; results go to ``results_<run>``."""
    for name, variable in (("raw", "VOLFNET_raw"), ("preprocessed", "VOLFNET_preprocessed"), (f"results_{run}", "VOLFNET_results")):
        (WORK / name).mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(WORK / name)
    return WORK / f"results_{run}"


def prepare_data() -> Path:
    from volfnet.cli.convert_msd import main as convert_main
    from volfnet.cli.plan_and_preprocess import main as plan_main
    from volfnet.preprocessing.case_store import list_preprocessed_cases

    folder = WORK / "preprocessed" / DATASET
    if not (folder / "plans.json").is_file():
        if not MSD_TASK.is_dir():
            print(f"skipped: {MSD_TASK} not found")
            raise SystemExit(0)
        if not (WORK / "raw" / DATASET).is_dir():
            assert convert_main(["-i", str(MSD_TASK), "-d", "4"]) == 0
        assert plan_main([
            "-d", "4", "--target", "cpu", "-np", "2", "--base-features", "4", "--max-features", "32",
            "--patch-size", "24", "32", "24", "--batch-size", "2",
        ]) == 0
    cases = list_preprocessed_cases(folder / "3d_fullres")
    order = torch.randperm(len(cases), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    chosen = [cases[i] for i in order]
    split = {"train": sorted(chosen[:LABELLED]), "val": sorted(chosen[LABELLED:LABELLED + VALIDATION])}
    (folder / "splits.json").write_text(json.dumps([split] * 5, indent=1))  # fold 0 is used
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description="fine-tuning learning rate / schedule after VolF pretraining")
    parser.add_argument("--pretrain-iterations", type=int, default=600)
    parser.add_argument("--iterations", type=int, default=300, help="fine-tuning iterations per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run", default="default", help="name of this experiment's results folder (reused when it exists)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results_root = set_roots(args.run)
    from volfnet.cli.pretrain import main as pretrain_main
    from volfnet.cli.train import main as train_main

    prepare_data()
    results = results_root / DATASET
    pretrained = results / "fmunet__3d_fullres" / "pretrain" / "checkpoint_final.pt"
    started = time.perf_counter()
    if not pretrained.is_file():
        assert pretrain_main([
            "-d", "4", "--iterations", str(args.pretrain_iterations), "--device", "cpu",
            "--set", "num_workers=1", "--set", "progress_bar=false", "--set", "iterations_per_epoch=100",
        ]) == 0
    pretrain_seconds = time.perf_counter() - started
    epochs = max(1, args.iterations // 50)
    common = [
        "--device", "cpu", "--set", f"num_epochs={epochs}", "--set", "iterations_per_epoch=50", "--set", "val_iterations=10",
        "--set", "num_workers=1", "--set", "progress_bar=false",
    ]
    rows = []
    for index, (name, (use_pretrained, overrides)) in enumerate(VARIANTS.items()):
        tag = f"variant{index}"
        summary_file = results / f"fmunet__3d_fullres__{tag}" / "fold_0" / "validation" / "summary.json"
        if not summary_file.is_file():
            argv = ["4", "3d_fullres", "0", *common, "--tag", tag]
            if use_pretrained:
                argv += ["--pretrained", str(pretrained)]
            for assignment in overrides:
                argv += ["--set", assignment]
            began = time.perf_counter()
            assert train_main(argv) == 0
            print(f"{name}: {time.perf_counter() - began:.0f} s")
        summary = json.loads(summary_file.read_text())
        log = json.loads((summary_file.parents[1] / "training_log.json").read_text())
        rows.append((name, summary["foreground_mean"]["Dice"], [summary["mean"][k]["Dice"] for k in ("1", "2")], log["best_ema_dice"]))

    widths = json.loads((WORK / "preprocessed" / DATASET / "plans.json").read_text())["configurations"]["3d_fullres"]["network"]["feature_channels"]
    print()
    print(
        f"MSD Hippocampus, FMUNet {widths}, patch 24x32x24, batch 2; VolF pretraining {args.pretrain_iterations} "
        f"iterations ({pretrain_seconds:.0f} s); fine-tuning {epochs * 50} iterations on {LABELLED} labelled cases; "
        f"Dice on {VALIDATION} held-out cases (full volumes, original geometry); {args.threads} thread(s)"
    )
    print()
    print("| variant | mean Dice | anterior | posterior | best pseudo Dice (moving avg.) |")
    print("|---|---:|---:|---:|---:|")
    for name, mean, per_class, ema in rows:
        print(f"| {name} | {mean:.4f} | {per_class[0]:.4f} | {per_class[1]:.4f} | {ema:.4f} |")


if __name__ == "__main__":
    main()
