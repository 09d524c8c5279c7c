"""MSD Hippocampus end to end with the documented commands: scratch vs VolF-pretrained at two
label budgets, scored on cases held out from every training run.

    python benchmarks/hippocampus/run_hippocampus.py [--msd ../shared/data/Task04_Hippocampus]
        [--target cpu_small --patch-size 40 56 40] [--pretrain-iterations 2000] [--iterations 400 --iterations-all 3000]
        [--runs small_scratch small_volf all_scratch all_volf small_volfenc small_volfbox small_volfbox24 ...]
        [--train-seeds 12345 1 2]

Stages, each a console command run as a user would type it (printed, timed, logged):

1. ``volfnet_convert_msd`` and ``volfnet_plan_and_preprocess`` for the compute target;
2. a ``splits.json`` (nnU-Net's user-editable format) whose folds share one held-out set:
   fold 0 trains on every other labelled case, fold 1 on a seeded subset of ``--small`` cases;
3. ``volfnet_pretrain`` on every image of the dataset (labels unused), once per pretraining
   that the runs need (``PRETRAININGS``): the published grid fusion, box fusion (``--tag
   box``), and box fusion on smaller crops for four times the iterations (``--tag box24``);
4. ``volfnet_train`` for fold 1 (``small``) and fold 0 (``all``), each from scratch and
   fine-tuned with the same number of iterations (``--iterations`` for the small label budget,
   ``--iterations-all`` for all cases); ``VARIANTS`` says which pretraining a run starts
   from and with which flags (``volfenc``: ``--encoder-only``); ``--runs`` picks runs and
   their order, and the run folders carry the budget in their tag (``10_volf_400it``) so
   budgets sit side by side; ``--train-seeds`` trains each run once per trainer seed (tag
   suffix ``_s1`` for seeds other than the default), and the report adds the mean and spread
   of the Dice over the seeds;
5. ``volfnet_predict`` of the held-out images with each model and ``volfnet_evaluate``.

Everything goes under ``--work`` (default ``benchmarks/_work/hippocampus``); a rerun skips
stages whose outputs exist, so an interrupted benchmark resumes. The results (Dice and HD95
per class, seconds per stage, the exact commands) are written to ``results.json`` and
``results.md`` there. With ``--target gpu8`` and no ``--patch-size`` it runs the full-size
recipe on a GPU (give it nnU-Net-like budgets; the command is in documentation/results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from volfnet.model_folder import checkpoint_path, fold_folder, model_folder_path, pretrain_folder
from volfnet.preprocessing.case_store import list_preprocessed_cases
from volfnet.training.config import DEFAULT_SEED

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from stage_runner import StageRunner  # noqa: E402

REPOSITORY = HERE.parents[1]
DATASET = "Dataset004_Hippocampus"
CONFIGURATION = "3d_fullres"
LABEL_NAMES = {"1": "anterior", "2": "posterior"}
# Pretrainings: model-folder tag, extra volfnet_pretrain settings, and iterations (None:
# --pretrain-iterations). "grid" is the published recipe, which mixes two crops of one image;
# "box" (arXiv v1) mixes crops of two different images, the alternative when images are barely
# larger than the patch and two crops of one image show nearly the same anatomy
# (benchmarks/volf_crop_overlap.py). "box24" is box fusion on 24x32x24 crops: a quarter of the
# voxels, so about four times the iterations in the same CPU time (convolution weights do not
# depend on the patch size, so the fine-tuning patch stays the plans').
PRETRAININGS = {
    "grid": ("", [], None),
    "box": ("box", ["--set", "volf.fusion_mode=box"], None),
    "box24": ("box24", ["--set", "volf.fusion_mode=box", "--set", "volf.patch_size=[24,32,24]"], 12000),
}
# Variants: (pretraining or None for scratch, extra volfnet_train flags).
VARIANTS = {
    "scratch": (None, []), "volf": ("grid", []), "volfenc": ("grid", ["--encoder-only"]), "volfbox": ("box", []),
    "volfbox24": ("box24", []),
}
RUN_NAMES = tuple(f"{budget}_{variant}" for variant in VARIANTS for budget in ("small", "all"))
DEFAULT_RUNS = ["small_scratch", "small_volf", "all_scratch", "all_volf"]
INITIALISATIONS = {
    "scratch": "scratch", "volf": "VolF-pretrained", "volfenc": "VolF-pretrained encoder", "volfbox": "VolF-pretrained (box fusion)",
    "volfbox24": "VolF-pretrained (box fusion, 24x32x24 crops)",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msd", type=Path, default=REPOSITORY.parent / "shared" / "data" / "Task04_Hippocampus")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks" / "_work" / "hippocampus")
    parser.add_argument("--target", default="cpu_small", help="compute target of the plans (default cpu_small)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=[40, 56, 40], help="patch override; 0 0 0: the planner's choice")
    parser.add_argument("--held-out", type=int, default=40, help="labelled cases kept out of every training run")
    parser.add_argument("--small", type=int, default=10, help="labelled cases of the small label budget")
    parser.add_argument("--pretrain-iterations", type=int, default=2000)
    parser.add_argument("--iterations", type=int, default=400, help="training iterations of the two small-budget runs")
    parser.add_argument("--iterations-all", type=int, default=3000, help="iterations of the two runs with every training case")
    parser.add_argument("--iterations-per-epoch", type=int, default=100)
    parser.add_argument("--runs", nargs="+", choices=RUN_NAMES, default=DEFAULT_RUNS,
                        help="runs to do, in this order (small: --small labelled cases; all: every training case)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out and small-budget case choice")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[DEFAULT_SEED],
                        help=f"trainer seeds: each run is trained once per seed (default {DEFAULT_SEED}, the trainer's)")
    return parser.parse_args()


def write_splits(preprocessed: Path, held_out: int, small: int, seed: int) -> dict[str, list[str]]:
    """Fold 0: all but the held-out cases; fold 1: ``small`` of them; both validate on the held-out set."""
    cases = list_preprocessed_cases(preprocessed / DATASET / CONFIGURATION)
    rng = np.random.default_rng(seed)
    order = [cases[i] for i in rng.permutation(len(cases))]
    test, train = sorted(order[:held_out]), order[held_out:]
    subset = sorted(train[:small])
    splits = [{"train": sorted(train), "val": test}, {"train": subset, "val": test}]
    path = preprocessed / DATASET / "splits.json"
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != splits:
            raise SystemExit(f"{path} exists with other folds; remove it (and the results) to rerun with these settings")
    path.write_text(json.dumps(splits, indent=1))
    return {"train": sorted(train), "small": subset, "test": test}


def link_held_out(raw: Path, test: list[str], folder: Path) -> tuple[Path, Path]:
    """imagesHeldOut/ and labelsHeldOut/ with links to the held-out raw files."""
    images, labels = folder / "imagesHeldOut", folder / "labelsHeldOut"
    for target in (images, labels):
        target.mkdir(parents=True, exist_ok=True)
    for case in test:
        for source, link in (
            (raw / DATASET / "imagesTr" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz"),
            (raw / DATASET / "labelsTr" / f"{case}.nii.gz", labels / f"{case}.nii.gz"),
        ):
            if not link.exists():
                link.symlink_to(source)
    return images, labels


def seed_summary(runs) -> list[str]:
    """Mean Dice over the trainer seeds of each (labelled cases, initialisation, iterations) group:
    at small budgets the seed alone moves the held-out Dice by tens of points, so single runs
    cannot rank the initialisations."""
    groups: dict[tuple, list[float]] = {}
    for run in runs:
        groups.setdefault((run["labelled_cases"], run["initialisation"], run["iterations"]), []).append(run["mean_dice"])
    lines = ["| labelled cases | initialisation | iterations | seeds | mean Dice: mean | sd | min | max |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for (cases, initialisation, iterations), values in groups.items():
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        lines.append(f"| {cases} | {initialisation} | {iterations} | {len(values)} | {np.mean(values):.3f} | {sd:.3f} | "
                     f"{min(values):.3f} | {max(values):.3f} |")
    return lines


def main() -> None:
    args = parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(work, {**os.environ, **{f"VOLFNET_{name}": str(work / name) for name in ("raw", "preprocessed", "results")}})
    raw, preprocessed, results = (work / n for n in ("raw", "preprocessed", "results"))
    runner.run("convert", ["volfnet_convert_msd", "-i", str(args.msd), "-d", "4"], done=raw / DATASET / "dataset.json")
    plan = ["volfnet_plan_and_preprocess", "-d", "4", "--target", args.target, "-np", str(args.workers)]
    if any(args.patch_size):
        plan += ["--patch-size", *map(str, args.patch_size)]
    runner.run("plan_and_preprocess", plan, done=preprocessed / DATASET / "plans.json")
    cases = write_splits(preprocessed, args.held_out, args.small, args.seed)
    plans = json.loads((preprocessed / DATASET / "plans.json").read_text())
    network = plans["configurations"][CONFIGURATION]["network"]["name"]
    pretrained = {}
    needed = dict.fromkeys(VARIANTS[run.split("_")[1]][0] for run in args.runs)
    for name in [name for name in needed if name is not None]:  # only the pretrainings some run needs
        tag, settings, iterations = PRETRAININGS[name]
        pretrained[name] = checkpoint_path(pretrain_folder(model_folder_path(DATASET, network, CONFIGURATION, results, tag)), "final")
        runner.run("pretrain" + (f" {tag}" if tag else ""),
                   ["volfnet_pretrain", "-d", "4", "--iterations", str(iterations or args.pretrain_iterations), "--device", args.device,
                    *(["--tag", tag] if tag else []), "--set", f"num_workers={args.workers}", "--set", "progress_bar=false", *settings],
                   done=pretrained[name])
    common = ["--set", f"iterations_per_epoch={args.iterations_per_epoch}", "--set", f"num_workers={args.workers}", "--set", "progress_bar=false"]
    iterations = {"small": args.iterations, "all": args.iterations_all}
    epochs = {key: max(1, value // args.iterations_per_epoch) for key, value in iterations.items()}
    images, labels = link_held_out(raw, cases["test"], work)
    runs = {}
    for run_name, seed in [(run_name, seed) for seed in args.train_seeds for run_name in args.runs]:
        key, variant = run_name.split("_")
        fold, budget = (1, str(args.small)) if key == "small" else (0, "all")
        total = epochs[key] * args.iterations_per_epoch
        suffix = "" if seed == DEFAULT_SEED else f"_s{seed}"  # the default seed keeps the untagged name
        tag = f"{budget}_{variant}_{total}it{suffix}"
        seeded = ["--set", f"seed={seed}"] if suffix else []
        folder = model_folder_path(DATASET, network, CONFIGURATION, results, tag)
        command = ["volfnet_train", "4", CONFIGURATION, str(fold), "--tag", tag, "--device", args.device,
                   "--set", f"num_epochs={epochs[key]}", *common, *seeded]
        pretraining, flags = VARIANTS[variant]
        if pretraining is not None:
            command += ["--pretrained", str(pretrained[pretraining]), *flags]
        runner.run(f"train {tag}", command, done=checkpoint_path(fold_folder(folder, fold), "final"))
        predictions = work / "predictions" / tag
        runner.run(
            f"predict {tag}",
            ["volfnet_predict", "-i", str(images), "-o", str(predictions), "-m", str(folder), "-f", str(fold),
             "--device", args.device, "--continue"],
            done=predictions / f"{cases['test'][-1]}.nii.gz",
        )
        runner.run(f"evaluate {tag}", ["volfnet_evaluate", str(labels), str(predictions), "-d", "4"], done=predictions / "summary.json")
        summary = json.loads((predictions / "summary.json").read_text())
        runs[tag] = {
            "labelled_cases": len(cases["train"]) if key == "all" else args.small,
            "initialisation": INITIALISATIONS[variant],
            "iterations": total,
            "seed": seed,
            "dice": {name: summary["mean"][label]["Dice"] for label, name in LABEL_NAMES.items()},
            "hd95": {name: summary["mean"][label]["HD95"] for label, name in LABEL_NAMES.items()},
            "mean_dice": summary["foreground_mean"]["Dice"],
        }
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}",
        "target": args.target, "patch_size": plans["configurations"][CONFIGURATION]["patch_size"],
        "network": plans["configurations"][CONFIGURATION]["network"],
        "held_out_cases": len(cases["test"]), "pretrain_iterations": args.pretrain_iterations,
        "runs": runs, "stages": runner.stages,
    }
    (work / "results.json").write_text(json.dumps(report, indent=1))
    lines = ["| labelled cases | initialisation | iterations | seed | Dice anterior | Dice posterior | mean Dice | HD95 anterior (mm) | HD95 posterior (mm) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs.values():
        lines.append(
            f"| {run['labelled_cases']} | {run['initialisation']} | {run['iterations']} | {run['seed']} | "
            f"{run['dice']['anterior']:.3f} | {run['dice']['posterior']:.3f} | {run['mean_dice']:.3f} | "
            f"{run['hd95']['anterior']:.2f} | {run['hd95']['posterior']:.2f} |"
        )
    lines += ["", *seed_summary(runs.values())]
    lines += ["", "| stage | seconds | command |", "|---|---:|---|"]
    lines += [f"| {s['stage']} | {s['seconds'] if s['seconds'] is not None else 'not recorded'} | `{s['command']}` |" for s in runner.stages]
    (work / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
