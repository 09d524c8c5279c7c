"""MSD Hippocampus end to end with the documented commands: scratch vs VolF-pretrained at two
label budgets, scored on cases held out from every training run.

    python benchmarks/hippocampus/run_hippocampus.py [--msd ../shared/data/Task04_Hippocampus]
        [--target cpu_small --patch-size 40 56 40] [--pretrain-iterations 2000] [--iterations 400 --iterations-all 3000]
        [--runs small_scratch small_scratchadam small_volfbox24adam all_scratch ...] [--validation 20]
        [--train-seeds 12345 1 2]

Stages, each a console command run as a user would type it (printed, timed, logged):

1. ``volfnet_convert_msd`` and ``volfnet_plan_and_preprocess`` for the compute target;
2. a ``splits.json`` (nnU-Net's user-editable format) from one seeded permutation: ``--held-out``
   test cases kept out of every run and scored once per run, ``--validation`` cases that are
   both folds' ``val`` (every choice is made on them), fold 0 training on all other cases and
   fold 1 on ``--small`` of them;
3. ``volfnet_pretrain`` on every image of the dataset (labels unused), once per pretraining
   that the runs need (``PRETRAININGS``): the published grid fusion, box fusion (``--tag
   box``), and box fusion on smaller crops for four times the iterations (``--tag box24``);
4. ``volfnet_train`` for fold 1 (``small``) and fold 0 (``all``), each from scratch and
   fine-tuned with the same number of iterations (``--iterations`` for the small label budget,
   ``--iterations-all`` for all cases); ``VARIANTS`` says which pretraining a run starts
   from and with which recipe and flags (``scratchadam``: MIS-FM's Adam recipe from scratch,
   ``volfbox24adam``: the fine-tuning preset, ``volfbox24``: the SGD preset before it,
   ``volfbox24staged``: frozen then ramped encoder, ``volfbox24adamlr``: a tenth of the rate
   for the encoder, ``volfbox24adamenc``: encoder weights only); ``--runs`` picks runs and
   their order, and the run folders carry the budget in their tag (``10_volf_400it``) so
   budgets sit side by side; ``--train-seeds`` trains each run once per trainer seed (tag
   suffix ``_s1`` for seeds other than the default), and the report adds the mean and spread
   of the validation and held-out Dice over the seeds and the paired differences per seed;
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

from volfnet.io.files import atomic_write_json
from volfnet.model_folder import checkpoint_path, fold_folder, model_folder_path, pretrain_folder, snapshot_path
from volfnet.io.case_store import list_preprocessed_cases
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
    # grid fusion (one image) on the same crops and budget as box24, keeping a snapshot every
    # 3 epochs (3000 iterations) for the snapshot probe below
    "grid24": ("grid24", ["--set", "volf.patch_size=[24,32,24]", "--set", "snapshot_every=3"], 12000),
}
SNAPSHOT_SEPARATOR = "@"  # "grid24@3000": that pretraining's snapshot after 3000 iterations
# Recipes, spelled out so that a variant means the same whatever volfnet_train's presets are:
# MIS-FM's Adam recipe (the fine-tuning preset since issue 15), the SGD fine-tuning preset
# before it, and staged fine-tuning on top of Adam (encoder frozen for the first epoch while
# decoder and head settle, then ramped up over the next). Scratch variants without flags use
# volfnet_train's from-scratch preset, nnU-Net's SGD recipe.
MISFM = ["--set", "recipe=misfm"]
# Which pretrained weights load: every one that fits (the preset until issue 15's levers were
# measured) or the encoder alone (the preset since).
ALL_WEIGHTS = ["--set", "pretrained_weights=all"]
ENCODER_ONLY = ["--set", "pretrained_weights=encoder"]
# The fine-tuning preset before issue 15 (nnU-Net's SGD, lr 1e-2, 5% warm-up, then poly 0.9).
SGD_FINETUNE = ["--set", "recipe=nnunet", "--set", "schedule=warmup_poly", "--set", "warmup_fraction=0.05", *ALL_WEIGHTS]
STAGED = [*MISFM, *ALL_WEIGHTS, "--set", "encoder_frozen_iterations=100", "--set", "encoder_warmup_iterations=100"]
# A tenth of the learning rate for the pretrained encoder throughout (decoder and head at 1e-3).
ENCODER_LR = [*MISFM, *ALL_WEIGHTS, "--set", "encoder_lr_scale=0.1"]
# Variants: (pretraining or None for scratch, extra volfnet_train flags, description). Names
# carry no underscore (run names are BUDGET_VARIANT).
VARIANTS = {
    "scratch": (None, [], "scratch (SGD 1e-2)"),
    "scratchadam": (None, MISFM, "scratch (Adam 1e-3)"),
    "volf": ("grid", SGD_FINETUNE, "VolF grid (SGD)"),
    "volfenc": ("grid", [*SGD_FINETUNE, *ENCODER_ONLY], "VolF grid, encoder only (SGD)"),
    "volfadamenc": ("grid", [*MISFM, *ENCODER_ONLY], "VolF grid, encoder only (Adam 1e-3)"),
    "volfbox": ("box", SGD_FINETUNE, "VolF box (SGD)"),
    "volfboxadam": ("box", [*MISFM, *ALL_WEIGHTS], "VolF box (Adam 1e-3)"),
    "volfboxadamenc": ("box", [*MISFM, *ENCODER_ONLY], "VolF box, encoder only (Adam 1e-3)"),
    "volfbox24": ("box24", SGD_FINETUNE, "VolF box24 (SGD)"),
    "volfbox24adam": ("box24", [*MISFM, *ALL_WEIGHTS], "VolF box24 (Adam 1e-3)"),
    "volfbox24adamenc": ("box24", [*MISFM, *ENCODER_ONLY], "VolF box24, encoder only (Adam 1e-3)"),
    "volfgrid24enc": ("grid24", [*MISFM, *ENCODER_ONLY], "VolF grid24, encoder only (Adam 1e-3)"),
    "volfgrid24adam": ("grid24", [*MISFM, *ALL_WEIGHTS], "VolF grid24 (Adam 1e-3)"),
    "volfbox24staged": ("box24", STAGED, "VolF box24 (Adam 1e-3, staged)"),
    "volfbox24adamlr": ("box24", ENCODER_LR, "VolF box24 (Adam 1e-3, encoder lr x0.1)"),
}
# The snapshot probe: fine-tune from each kept pretraining snapshot (short budget, validation
# split) and keep the best, instead of assuming the last is.
PROBED_SNAPSHOTS = (3000, 6000, 9000)
for _iteration in PROBED_SNAPSHOTS:
    VARIANTS[f"volfgrid24it{_iteration}"] = (
        f"grid24{SNAPSHOT_SEPARATOR}{_iteration}", [*MISFM, *ALL_WEIGHTS], f"VolF grid24 after {_iteration} iterations (Adam 1e-3)"
    )
RUN_NAMES = tuple(f"{budget}_{variant}" for variant in VARIANTS for budget in ("small", "all"))
DEFAULT_RUNS = ["small_scratch", "small_scratchadam", "small_volfbox24adam", "all_scratch", "all_volfbox24adam"]
TARGET_DICE = 0.80  # "reaches 0.80 validation Dice in at most half the iterations scratch needs"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msd", type=Path, default=REPOSITORY.parent / "shared" / "data" / "Task04_Hippocampus")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks" / "_work" / "hippocampus")
    parser.add_argument("--target", default="cpu_small", help="compute target of the plans (default cpu_small)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=[40, 56, 40], help="patch override; 0 0 0: the planner's choice")
    parser.add_argument("--held-out", type=int, default=40, help="labelled cases kept out of every training run")
    parser.add_argument("--small", type=int, default=10, help="labelled cases of the small label budget")
    parser.add_argument("--validation", type=int, default=20, help="cases of the validation split (choices are made on them)")
    parser.add_argument("--pretrain-iterations", type=int, default=2000)
    parser.add_argument("--pretraining-iterations", nargs="+", default=[], metavar="NAME=N",
                        help="iterations of named pretrainings instead of PRETRAININGS' (e.g. box24=4000 for a wider network "
                        "in the same CPU time)")
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


def write_splits(preprocessed: Path, held_out: int, small: int, validation: int, seed: int) -> dict[str, list[str]]:
    """Three disjoint sets from one seeded permutation: ``held_out`` test cases (scored once per
    run, never used for a choice), ``validation`` cases (the folds' ``val``: every choice of
    recipe or checkpoint is made on them), and the training cases. Fold 0 trains on every
    training case, fold 1 on the first ``small`` of them. The test and small sets are the same
    as before the validation split existed (the permutation's first ``held_out`` cases, then
    ``small``), so older tables stay comparable."""
    cases = list_preprocessed_cases(preprocessed / DATASET / CONFIGURATION)
    rng = np.random.default_rng(seed)
    order = [cases[i] for i in rng.permutation(len(cases))]
    test, rest = sorted(order[:held_out]), order[held_out:]
    subset = sorted(rest[:small])
    val = sorted(rest[small:small + validation])
    train = sorted(set(rest) - set(val))
    splits = [{"train": train, "val": val}, {"train": subset, "val": val}]
    path = preprocessed / DATASET / "splits.json"
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != splits:
            raise SystemExit(f"{path} exists with other folds; remove it (and the results) to rerun with these settings")
    else:  # atomic: a second benchmark process started beside this one may be reading it
        atomic_write_json(path, splits, indent=1)
    return {"train": train, "small": subset, "val": val, "test": test}


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


def validation_dice(run_folder: Path) -> float:
    """Mean foreground Dice of the run's final full-volume validation (the validation split)."""
    summary = json.loads((run_folder / "validation" / "summary.json").read_text())
    return float(summary["foreground_mean"]["Dice"])


def iterations_to_target(run_folder: Path, iterations_per_epoch: int) -> int | None:
    """Iterations after which the validation pseudo Dice (mean over classes, logged once per
    epoch) first reached :data:`TARGET_DICE`; None when it never did."""
    log = json.loads((run_folder / "training_log.json").read_text())
    for epoch, dice in zip(log["epoch"], log["mean_dice"]):
        if dice is not None and dice >= TARGET_DICE:
            return (int(epoch) + 1) * iterations_per_epoch
    return None


def _stats(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def seed_summary(runs) -> list[str]:
    """Mean and spread over the trainer seeds of each (labelled cases, initialisation,
    iterations) group, on the validation split (where choices are made) and on the held-out
    cases: at small budgets the seed alone moves the Dice by tens of points, so single runs
    cannot rank recipes."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["labelled_cases"], run["initialisation"], run["iterations"]), []).append(run)
    header = ("| labelled cases | initialisation | iterations | seeds | validation Dice: mean | sd | held-out Dice: mean | sd | min | max "
              f"| iterations to {TARGET_DICE:.2f} val. pseudo Dice |")
    lines = [header,
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for (cases, initialisation, iterations), group in groups.items():
        test = [run["mean_dice"] for run in group]
        val_mean, val_sd = _stats([run["validation_dice"] for run in group])
        test_mean, test_sd = _stats(test)
        reached = ", ".join(str(run["iterations_to_target"]) if run["iterations_to_target"] else "-" for run in group)
        lines.append(f"| {cases} | {initialisation} | {iterations} | {len(group)} | {val_mean:.3f} | {val_sd:.3f} | "
                     f"{test_mean:.3f} | {test_sd:.3f} | {min(test):.3f} | {max(test):.3f} | {reached} |")
    return lines


def paired_differences(runs, reference: str) -> list[str]:
    """Per trainer seed, each variant's held-out Dice minus the ``reference`` variant's at the
    same labelled cases and iterations (the seed fixes the initial decoder, the batches and
    the augmentation, so the pairs share everything but the recipe)."""
    by_key = {(run["labelled_cases"], run["iterations"], run["seed"], run["variant"]): run for run in runs}
    lines = [f"| labelled cases | iterations | variant | paired seeds | held-out Dice minus {reference}: mean | sd | per seed |",
             "|---:|---:|---|---:|---:|---:|---|"]
    pairs: dict[tuple, list[tuple[int, float]]] = {}  # (cases, iterations, variant) -> [(seed, difference)]
    for (cases, iterations, seed, variant), run in by_key.items():
        base = by_key.get((cases, iterations, seed, reference))
        if variant != reference and base is not None:
            pairs.setdefault((cases, iterations, variant), []).append((seed, run["mean_dice"] - base["mean_dice"]))
    for (cases, iterations, variant), differences in pairs.items():
        mean, sd = _stats([d for _, d in differences])
        per_seed = ", ".join(f"{seed}: {d:+.3f}" for seed, d in differences)
        lines.append(f"| {cases} | {iterations} | {VARIANTS[variant][2]} | {len(differences)} | {mean:+.3f} | {sd:.3f} | {per_seed} |")
    return lines


def main() -> None:
    args = parse_args()
    work = args.work.resolve()
    runner = StageRunner.in_work_folder(work)
    raw, preprocessed, results = (work / n for n in ("raw", "preprocessed", "results"))
    runner.run("convert", ["volfnet_convert_msd", "-i", str(args.msd), "-d", "4"], done=raw / DATASET / "dataset.json")
    plan = ["volfnet_plan_and_preprocess", "-d", "4", "--target", args.target, "-np", str(args.workers)]
    if any(args.patch_size):
        plan += ["--patch-size", *map(str, args.patch_size)]
    runner.run("plan_and_preprocess", plan, done=preprocessed / DATASET / "plans.json")
    cases = write_splits(preprocessed, args.held_out, args.small, args.validation, args.seed)
    plans = json.loads((preprocessed / DATASET / "plans.json").read_text())
    network = plans["configurations"][CONFIGURATION]["network"]["name"]
    pretrained = {}
    overrides = dict(item.split("=", 1) for item in args.pretraining_iterations)
    unknown = sorted(set(overrides) - set(PRETRAININGS))
    if unknown:
        raise SystemExit(f"--pretraining-iterations: unknown pretraining(s) {unknown}; choose among {sorted(PRETRAININGS)}")
    needed = dict.fromkeys(VARIANTS[run.split("_")[1]][0] for run in args.runs)
    for source in [source for source in needed if source is not None]:  # only the pretrainings some run needs
        name, _, snapshot = source.partition(SNAPSHOT_SEPARATOR)
        tag, settings, iterations = PRETRAININGS[name]
        iterations = int(overrides[name]) if name in overrides else iterations
        folder = pretrain_folder(model_folder_path(DATASET, network, CONFIGURATION, results, tag))
        pretrained[source] = snapshot_path(folder, int(snapshot)) if snapshot else checkpoint_path(folder, "final")
        runner.run("pretrain" + (f" {tag}" if tag else ""),
                   ["volfnet_pretrain", "-d", "4", "--iterations", str(iterations or args.pretrain_iterations), "--device", args.device,
                    *(["--tag", tag] if tag else []), "--set", f"num_workers={args.workers}", "--set", "progress_bar=false", *settings],
                   done=checkpoint_path(folder, "final"))
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
        pretraining, flags, description = VARIANTS[variant]
        if pretraining is not None:
            command += ["--pretrained", str(pretrained[pretraining])]
        command += flags
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
            "initialisation": description,
            "variant": variant,
            "validation_dice": validation_dice(fold_folder(folder, fold)),
            "iterations_to_target": iterations_to_target(fold_folder(folder, fold), args.iterations_per_epoch),
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
    lines = ["| labelled cases | initialisation | iterations | seed | validation Dice | Dice anterior | Dice posterior | mean Dice | HD95 anterior (mm) | HD95 posterior (mm) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs.values():
        lines.append(
            f"| {run['labelled_cases']} | {run['initialisation']} | {run['iterations']} | {run['seed']} | {run['validation_dice']:.3f} | "
            f"{run['dice']['anterior']:.3f} | {run['dice']['posterior']:.3f} | {run['mean_dice']:.3f} | "
            f"{run['hd95']['anterior']:.2f} | {run['hd95']['posterior']:.2f} |"
        )
    lines += ["", *seed_summary(runs.values()), "", *paired_differences(runs.values(), "scratch"),
              "", *paired_differences(runs.values(), "scratchadam")]
    lines += ["", "| stage | seconds | command |", "|---|---:|---|"]
    lines += [f"| {s['stage']} | {s['seconds'] if s['seconds'] is not None else 'not recorded'} | `{s['command']}` |" for s in runner.stages]
    (work / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
