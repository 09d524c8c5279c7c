"""From five folds to a final model on MSD Hippocampus, with the documented commands.

    python benchmarks/model_selection/run_hippocampus_cv.py [--iterations 200] [--configurations 3d_fullres 2d]
    python benchmarks/model_selection/run_hippocampus_cv.py --lowres-factor 2 --configurations 3d_fullres 2d 3d_lowres 3d_cascade_fullres

The path of documentation/model_selection.md at the CPU preset with a small budget: convert,
plan (``cpu_small``), five folds of each configuration with ``--npz``, ``volfnet_cv_summary``
for each, ``volfnet_find_best_configuration``, then the chosen model's commands (from
``inference_instructions.json``) on 40 held-out cases, beside a single fold of the best single
configuration. The held-out cases (the same seeded 40 as ``run_hippocampus.py``) are in no
fold: ``splits.json`` is written over the other 160. The planner plans no ``3d_lowres`` for Hippocampus (the patch covers most of an
image); ``--lowres-factor 2`` plans one at twice the spacing, with the cascade, as nnU-Net's
``add_lowres_and_cascade`` does, re-planning an earlier work folder without changing its
other configurations. Every configuration's five folds also predict the held-out cases.
Work folder: ``benchmarks/_work/model_selection`` (``results.md`` there holds the table).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for its shared modules
from stage_runner import StageRunner  # noqa: E402

from volfnet.io.case_store import list_preprocessed_cases  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]
DATASET = "Dataset004_Hippocampus"
HELD_OUT = 40
FOLDS = 5
SEED = 0  # the held-out choice of run_hippocampus.py
SPLIT_SEED = 12345  # nnU-Net's fold seed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msd", type=Path, default=REPOSITORY.parent / "shared" / "data" / "Task04_Hippocampus")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks" / "_work" / "model_selection")
    parser.add_argument("--configurations", nargs="+", default=["3d_fullres", "2d"])
    parser.add_argument("--iterations", type=int, default=200, help="training iterations of each fold")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lowres-factor", type=float, default=None, help="force 3d_lowres (and the cascade) at this spacing factor")
    return parser.parse_args()


def write_splits(preprocessed: Path, data_identifier: str) -> list[str]:
    """Five folds over the cases that are not held out; returns the held-out case ids."""
    cases = list_preprocessed_cases(preprocessed / data_identifier)
    order = [cases[i] for i in np.random.default_rng(SEED).permutation(len(cases))]
    held_out, rest = sorted(order[:HELD_OUT]), order[HELD_OUT:]
    shuffled = [rest[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(rest))]
    folds = [sorted(shuffled[k::FOLDS]) for k in range(FOLDS)]
    splits = [{"train": sorted(set(rest) - set(fold)), "val": fold} for fold in folds]
    path = preprocessed / "splits.json"
    if not path.is_file():
        path.write_text(json.dumps(splits, indent=1))
    elif json.loads(path.read_text()) != splits:
        raise SystemExit(f"{path} holds other folds; remove the work folder to start over")
    return held_out


def main() -> None:
    args = parse_args()
    if not args.msd.is_dir():
        raise SystemExit(f"{args.msd} not found: this benchmark needs the shared Hippocampus data (../shared/data)")
    work = args.work.resolve()
    raw, preprocessed, results = (work / n for n in ("raw", "preprocessed", "results"))
    runner = StageRunner.in_work_folder(work)
    runner.run("convert", ["volfnet_convert_msd", "-i", str(args.msd), "-d", "4"], done=raw / DATASET / "dataset.json")
    runner.run("plan", ["volfnet_plan_and_preprocess", "-d", "4", "--target", "cpu_small", "-np", str(args.workers)],
               done=preprocessed / DATASET / "plans.json")
    plans = json.loads((preprocessed / DATASET / "plans.json").read_text())
    if args.lowres_factor is not None and "3d_lowres" not in plans["configurations"]:
        runner.run("plan lowres", ["volfnet_plan_and_preprocess", "-d", "4", "--target", "cpu_small", "-np", str(args.workers),
                                   "--lowres-factor", str(args.lowres_factor)])
        plans = json.loads((preprocessed / DATASET / "plans.json").read_text())
    held_out = write_splits(preprocessed / DATASET, plans["configurations"]["3d_fullres"]["data_identifier"])
    images, labels = work / "imagesHeldOut", work / "labelsHeldOut"
    for folder in (images, labels):
        folder.mkdir(exist_ok=True)
    for case in held_out:
        for source, link in ((raw / DATASET / "imagesTr" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz"),
                             (raw / DATASET / "labelsTr" / f"{case}.nii.gz", labels / f"{case}.nii.gz")):
            if not link.exists():
                link.symlink_to(source)
    epochs = max(1, args.iterations // 100)
    for configuration in args.configurations:
        model = results / DATASET / f"{plans['configurations'][configuration]['network']['name']}__{configuration}"
        for fold in range(FOLDS):
            runner.run(f"train {configuration} fold {fold}",
                       ["volfnet_train", "4", configuration, str(fold), "--npz", "--device", "cpu", "--set", "recipe=misfm",
                        "--set", f"num_epochs={epochs}", "--set", "iterations_per_epoch=100", "--set", f"num_workers={args.workers}",
                        "--set", "progress_bar=false"],
                       done=model / f"fold_{fold}" / "validation" / "summary.json")
        runner.run(f"cv_summary {configuration}", ["volfnet_cv_summary", "-d", "4", "-c", configuration, "-np", str(args.workers)])
    runner.run("find_best", ["volfnet_find_best_configuration", "-d", "4", "-c", *args.configurations, "-np", str(args.workers)])
    instructions = json.loads((results / DATASET / "inference_instructions.json").read_text())
    chosen_output = work / "predictions" / "chosen"
    replacements = {"INPUT_FOLDER": str(images), "OUTPUT_FOLDER": str(chosen_output)}
    replacements |= {f"OUTPUT_FOLDER_{part}": str(work / "predictions" / f"chosen_{part.lower()}") for part in ("MODEL1", "MODEL2", "ENSEMBLE")}
    for number, line in enumerate(instructions["commands"]):
        words = [replacements.get(word, word) for word in shlex.split(line)]
        runner.run(f"chosen step {number}", words)
    best_single = next(c for c in instructions["candidates"] if len(c["models"]) == 1)
    single_output = work / "predictions" / "single_fold"
    runner.run("single fold", ["volfnet_predict", "-i", str(images), "-o", str(single_output), "-m", best_single["models"][0], "-f", "0", "--device", "cpu"])
    outputs = [("chosen: " + instructions["best"], chosen_output), ("fold 0 of " + best_single["name"], single_output)]
    for configuration in args.configurations:
        name = f"{plans['configurations'][configuration]['network']['name']}__{configuration}"
        folder = work / "predictions" / f"five_folds_{configuration}"
        runner.run(f"five folds {configuration}", ["volfnet_predict", "-i", str(images), "-o", str(folder), "-m", str(results / DATASET / name),
                                                    "--device", "cpu", "--postprocessing", "none"],
                   done=folder / f"{held_out[-1]}.nii.gz")
        outputs.append((f"five folds of {name}, no postprocessing", folder))
    rows = []
    for name, folder in outputs:
        runner.run(f"evaluate {folder.name}", ["volfnet_evaluate", str(labels), str(folder), "-d", "4"])
        summary = json.loads((folder / "summary.json").read_text())
        rows.append((name, summary["foreground_mean"]["Dice"], summary["mean"]["1"]["Dice"], summary["mean"]["2"]["Dice"]))
    lines = ["| candidate (cross-validation, 160 cases) | CV Dice |", "|---|---:|"]
    lines += [f"| {c['name']} | {c['dice']:.4f} |" for c in instructions["candidates"]]
    lines += ["", "| model on the 40 held-out cases | mean Dice | anterior | posterior |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {mean:.4f} | {a:.4f} | {p:.4f} |" for name, mean, a, p in rows]
    decision = instructions.get("postprocessing") or {}
    lines += ["", f"postprocessing: foreground largest component {decision.get('foreground_largest_component')}, per label {decision.get('per_label')}"]
    (work / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
