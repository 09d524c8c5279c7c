"""volfnet and nnU-Net v2 side by side on the Hippocampus split of run_hippocampus.py, same CPU budget.

    python benchmarks/hippocampus/run_hippocampus.py      # first: volfnet's runs and the split
    python benchmarks/compare_nnunet/run_compare.py [--tag 10_scratch_400it]

nnU-Net v2 runs from its own virtual environment (``benchmarks/_envs/nnunet``, installed on
first use; never a dependency of volfnet) with its default plans, as a user would run it:
``nnUNetv2_convert_MSD_dataset``, ``nnUNetv2_plan_and_preprocess -c 3d_fullres``,
``nnUNetv2_train`` on the same fold of the same ``splits.json`` (written as nnU-Net's
``splits_final.json``), ``nnUNetv2_predict`` of the same held-out cases with mirroring, as
volfnet predicts. Its training gets the wall-clock seconds volfnet's run ``--tag`` spent in
its epochs (trainer ``nnUNetTrainer_CPUBudget``: nnU-Net's defaults with the schedule fitted
to the budget). Both tools' predictions are scored by the same ``volfnet_evaluate``.

Writes ``results.json`` and ``results.md`` under ``--work`` (default
``benchmarks/_work/compare_nnunet``); finished stages are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "hippocampus")]
from peer_envs import peer_bin  # noqa: E402
from run_hippocampus import DATASET, LABEL_NAMES  # noqa: E402  (its work folder is read here)
from stage_runner import StageRunner  # noqa: E402

REPOSITORY = HERE.parents[1]
TRAINER = "nnUNetTrainer_CPUBudget"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msd", type=Path, default=REPOSITORY.parent / "shared" / "data" / "Task04_Hippocampus")
    parser.add_argument("--hippocampus-work", type=Path, default=REPOSITORY / "benchmarks" / "_work" / "hippocampus",
                        help="work folder of run_hippocampus.py (split, volfnet's runs and predictions)")
    parser.add_argument("--tag", default="10_scratch_400it", help="volfnet run to compare with (its fold and training time)")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks" / "_work" / "compare_nnunet")
    parser.add_argument("--iterations-per-epoch", type=int, default=100, help="volfnet's, as run_hippocampus.py set it")
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args()


def install_trainer(bin_dir: Path) -> None:
    """Copy the budget trainer to where nnU-Net looks up trainer classes by name.

    Into ``nnunetv2/training/nnUNetTrainer`` itself: nnU-Net's lookup checks that folder's
    modules before it imports the variant packages, some of which import timm and torchvision,
    and PyPI's torchvision does not load next to the CPU build of torch.
    """
    purelib = subprocess.run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    target = Path(purelib) / "nnunetv2" / "training" / "nnUNetTrainer"
    shutil.copyfile(HERE / f"{TRAINER}.py", target / f"{TRAINER}.py")


def volfnet_side(hippocampus: Path, tag: str, iterations_per_epoch: int) -> dict:
    """volfnet's figures for run ``tag`` from run_hippocampus.py's outputs."""
    stage_seconds = json.loads((hippocampus / "stage_seconds.json").read_text())
    model = next((hippocampus / "results" / DATASET).glob(f"*__{tag}"), None)
    if model is None:
        raise SystemExit(f"no volfnet run tagged {tag} under {hippocampus}; run benchmarks/hippocampus/run_hippocampus.py first")
    fold_folder = next(model.glob("fold_*"))
    log = json.loads((fold_folder / "training_log.json").read_text())
    train_seconds = sum(log["epoch_seconds"])
    iterations = len(log["epoch_seconds"]) * iterations_per_epoch
    return {
        "fold": int(fold_folder.name.split("_")[1]),
        "preprocess_seconds": stage_seconds["plan_and_preprocess"],
        "train_seconds": train_seconds,
        "iterations": iterations,
        "predict_seconds": stage_seconds[f"predict {tag}"],
        "summary": json.loads((hippocampus / "predictions" / tag / "summary.json").read_text()),
    }


def main() -> None:
    args = parse_args()
    hippocampus = args.hippocampus_work.resolve()
    ours = volfnet_side(hippocampus, args.tag, args.iterations_per_epoch)
    split = json.loads((hippocampus / "preprocessed" / DATASET / "splits.json").read_text())
    # The held-out cases run_hippocampus.py linked (the folds validate on a separate split).
    held_out = sorted(path.name[: -len("_0000.nii.gz")] for path in (hippocampus / "imagesHeldOut").glob("*_0000.nii.gz"))
    bin_dir = peer_bin("nnunet")
    install_trainer(bin_dir)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, nnUNet_compile="f", nnUNet_n_proc_DA=str(args.workers), VOLFNET_BENCH_BUDGET_SECONDS=str(ours["train_seconds"]))
    for name in ("raw", "preprocessed", "results"):
        env[f"nnUNet_{name}"] = str(work / name)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    runner = StageRunner(work, env)
    raw, preprocessed = work / "raw" / DATASET, work / "preprocessed" / DATASET
    fold_folder = work / "results" / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / f"fold_{ours['fold']}"
    predictions = work / "predictions"

    runner.run("convert", ["nnUNetv2_convert_MSD_dataset", "-i", str(args.msd), "-np", str(args.workers)], done=raw / "dataset.json")
    runner.run("plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", "4", "-c", "3d_fullres", "-np", str(args.workers),
                                       "-npfp", str(args.workers)], done=preprocessed / "nnUNetPlans.json")
    (preprocessed / "splits_final.json").write_text(json.dumps(split, indent=1))
    runner.run("train", ["nnUNetv2_train", "4", "3d_fullres", str(ours["fold"]), "-tr", TRAINER, "-device", "cpu"],
               done=fold_folder / "checkpoint_final.pth")
    images = work / "imagesHeldOut"
    images.mkdir(exist_ok=True)
    for case in held_out:
        link = images / f"{case}_0000.nii.gz"
        if not link.exists():
            link.symlink_to(raw / "imagesTr" / link.name)
    runner.run("predict", ["nnUNetv2_predict", "-i", str(images), "-o", str(predictions), "-d", "4", "-c", "3d_fullres",
                           "-f", str(ours["fold"]), "-tr", TRAINER, "-chk", "checkpoint_final.pth", "-device", "cpu",
                           "-npp", str(args.workers), "-nps", str(args.workers)], done=predictions / f"{held_out[-1]}.nii.gz")
    evaluation = work / "evaluation"
    if not (evaluation / "summary.json").exists():
        subprocess.run(["volfnet_evaluate", str(hippocampus / "labelsHeldOut"), str(predictions), "-d", "4", "-o", str(evaluation)],
                       check=True, env=dict(os.environ, VOLFNET_raw=str(hippocampus / "raw")))  # -d 4: labels from its dataset.json
    theirs_summary = json.loads((evaluation / "summary.json").read_text())
    budget_log = json.loads((fold_folder / "budget_log.json").read_text())

    def dice(summary: dict) -> list[str]:
        return [f"{summary['mean'][label]['Dice']:.3f}" for label in LABEL_NAMES] + [f"{summary['foreground_mean']['Dice']:.3f}"]

    def hd95(summary: dict) -> str:
        values = [summary["mean"][label]["HD95"] for label in LABEL_NAMES]  # None: no case with that label predicted
        return " / ".join("undefined" if value is None else f"{value:.2f}" for value in values)

    their_train = sum(budget_log["epoch_seconds"])
    rows = [
        ("plan and preprocess (s)", f"{ours['preprocess_seconds']:.0f}", f"{runner.times['plan_and_preprocess']:.0f}"),
        ("training time (s)", f"{ours['train_seconds']:.0f}", f"{their_train:.0f}"),
        ("training iterations done", str(ours["iterations"]), str(budget_log["iterations"])),
        ("training iterations per second (incl. validation)", f"{ours['iterations'] / ours['train_seconds']:.2f}",
         f"{budget_log['iterations'] / their_train:.3f}"),
        ("inference seconds per case (mirroring, 40 cases)", f"{ours['predict_seconds'] / len(held_out):.2f}",
         f"{runner.times['predict'] / len(held_out):.2f}"),
        ("Dice anterior / posterior / mean", " / ".join(dice(ours["summary"])), " / ".join(dice(theirs_summary))),
        ("HD95 anterior / posterior (mm)", hd95(ours["summary"]), hd95(theirs_summary)),
    ]
    lines = [f"| fold {ours['fold']} ({len(split[ours['fold']]['train'])} labelled cases), {len(held_out)} held-out cases "
             f"| volfnet `{args.tag}` | nnU-Net v2 default plans |", "|---|---:|---:|"]
    lines += [f"| {name} | {a} | {b} |" for name, a, b in rows]
    (work / "results.md").write_text("\n".join(lines) + "\n")
    (work / "results.json").write_text(json.dumps({"volfnet": ours, "nnunet": {"stage_seconds": runner.times, "budget_log": budget_log,
                                                                                "summary": theirs_summary}}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
