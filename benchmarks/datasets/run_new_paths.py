"""The region path and the 2D-picture path on real data (MSD Hippocampus), end to end with the
documented commands, Dice on held-out cases.

    python benchmarks/datasets/run_new_paths.py [--runs regions pictures] [--iterations 600]

Two datasets are written from ``../shared/data/Task04_Hippocampus`` (never copied into the
repository: the work folder is ``benchmarks/_work/new_paths``, git-ignored):

- **regions** (``Dataset610_HippocampusRegions``): BraTS-style overlapping regions on a
  two-channel 3D dataset. Labels ``{"hippocampus": [1, 2], "posterior": [2]}`` with
  ``regions_class_order`` [1, 2]; channel 0 is the MRI, channel 1 a second contrast made
  from it (inverted and smoothed with a 1-voxel Gaussian: a different intensity profile on
  the same anatomy, as a second MRI sequence gives);
- **pictures** (``Dataset611_HippocampusSlices``): one axial 8-bit PNG per case (the slice with
  the most hippocampus, intensities scaled per case to 0..255) and its PNG label map; the
  planner plans the 2d configuration alone.

The same seeded 40 cases are held out of both (written to ``imagesHeldOut``/``labelsHeldOut``,
not to ``imagesTr``); the others train one model (``fold all``) with MIS-FM's recipe. Each
run predicts the held-out cases with ``volfnet_predict`` and scores them with
``volfnet_evaluate``; ``results.md`` and ``results.json`` in the work folder hold the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for its shared modules
from stage_runner import StageRunner  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]
HELD_OUT = 40
SEED = 0  # the seeded choice of held-out cases
SMOOTHING_SIGMA = 1.0  # voxels, for the second contrast of the region dataset
PERCENTILES = (0.5, 99.5)  # intensity window of the 8-bit pictures
DATASETS = {
    "regions": ("Dataset610_HippocampusRegions", "3d_fullres", ".nii.gz"),
    "pictures": ("Dataset611_HippocampusSlices", "2d", ".png"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msd", type=Path, default=REPOSITORY.parent / "shared" / "data" / "Task04_Hippocampus")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks" / "_work" / "new_paths")
    parser.add_argument("--runs", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--iterations", type=int, default=600, help="training iterations of the 3D region model")
    parser.add_argument("--iterations-2d", type=int, default=1000, help="training iterations of the 2D picture model")
    parser.add_argument("--patch-size", type=int, nargs=3, default=None, help="patch of the 3D region plans (default: the planner's)")
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args()


def msd_cases(msd: Path) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (msd / "labelsTr").glob("*.nii.gz") if not p.name.startswith("."))


def held_out_cases(cases: list[str]) -> set[str]:
    order = np.random.default_rng(SEED).permutation(len(cases))
    return {cases[i] for i in order[:HELD_OUT]}


def write_image(array: np.ndarray, like: sitk.Image, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_regions_dataset(msd: Path, raw: Path, work: Path, cases: list[str], held: set[str]) -> None:
    """Two channels (MRI, inverted-smoothed MRI) and the labels, regions in dataset.json."""
    name, _, ending = DATASETS["regions"]
    folder = raw / name
    for case in cases:
        image = sitk.ReadImage(str(msd / "imagesTr" / f"{case}{ending}"))
        label = sitk.ReadImage(str(msd / "labelsTr" / f"{case}{ending}"))
        mri = sitk.GetArrayFromImage(image).astype(np.float32)
        second = mri.max() - ndimage.gaussian_filter(mri, SMOOTHING_SIGMA)
        images, labels = (work / "imagesHeldOut" / name, work / "labelsHeldOut" / name) if case in held else (folder / "imagesTr", folder / "labelsTr")
        write_image(mri, image, images / f"{case}_0000{ending}")
        write_image(second.astype(np.float32), image, images / f"{case}_0001{ending}")
        write_image(sitk.GetArrayFromImage(label).astype(np.uint8), label, labels / f"{case}{ending}")
    dataset = {
        "name": "HippocampusRegions",
        "description": "MSD Task04 Hippocampus with two channels and BraTS-style overlapping regions (volfnet benchmark)",
        "channel_names": {"0": "MRI", "1": "MRI_inverted_smoothed"},
        "labels": {"background": 0, "hippocampus": [1, 2], "posterior": [2]},
        "regions_class_order": [1, 2],
        "numTraining": len(cases) - len(held),
        "file_ending": ending,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


def to_8_bit(slice_: np.ndarray) -> np.ndarray:
    low, high = np.percentile(slice_, PERCENTILES)
    return np.round(np.clip((slice_ - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def write_pictures_dataset(msd: Path, raw: Path, work: Path, cases: list[str], held: set[str]) -> None:
    """One 8-bit PNG per case: the axial slice with the most labelled voxels, and its labels."""
    name, _, ending = DATASETS["pictures"]
    folder = raw / name
    for case in cases:
        mri = sitk.GetArrayFromImage(sitk.ReadImage(str(msd / "imagesTr" / f"{case}.nii.gz"))).astype(np.float32)
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(msd / "labelsTr" / f"{case}.nii.gz")))
        index = int(np.argmax((label > 0).sum(axis=(1, 2))))
        images, labels = (work / "imagesHeldOut" / name, work / "labelsHeldOut" / name) if case in held else (folder / "imagesTr", folder / "labelsTr")
        for target, array in ((images / f"{case}_0000{ending}", to_8_bit(mri[index])), (labels / f"{case}{ending}", label[index].astype(np.uint8))):
            target.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(array), str(target))
    dataset = {
        "name": "HippocampusSlices",
        "description": "one axial slice per MSD Task04 Hippocampus case as 8-bit PNG (volfnet benchmark)",
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "anterior": 1, "posterior": 2},
        "numTraining": len(cases) - len(held),
        "file_ending": ending,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


WRITERS = {"regions": write_regions_dataset, "pictures": write_pictures_dataset}


def main() -> None:
    args = parse_args()
    if not args.msd.is_dir():
        raise SystemExit(f"{args.msd} not found: this benchmark needs the shared Hippocampus data (../shared/data)")
    work = args.work.resolve()
    raw, results = work / "raw", work / "results"
    runner = StageRunner.in_work_folder(work)
    cases = msd_cases(args.msd)
    held = held_out_cases(cases)
    table = {}
    for run in args.runs:
        name, configuration, ending = DATASETS[run]
        dataset_id = name[len("Dataset"):len("Dataset") + 3]
        if not (raw / name / "dataset.json").is_file():
            WRITERS[run](args.msd, raw, work, cases, held)
        plan = ["volfnet_plan_and_preprocess", "-d", dataset_id, "--target", "cpu_small", "-np", str(args.workers)]
        if args.patch_size and configuration == "3d_fullres":
            plan += ["--patch-size", *map(str, args.patch_size)]
        runner.run(f"plan {run}", plan, done=work / "preprocessed" / name / "plans.json")
        iterations = args.iterations if configuration == "3d_fullres" else args.iterations_2d
        plans = json.loads((work / "preprocessed" / name / "plans.json").read_text())
        network = plans["configurations"][configuration]["network"]["name"]
        model = results / name / f"{network}__{configuration}"
        runner.run(
            f"train {run}",
            ["volfnet_train", dataset_id, configuration, "all", "--device", "cpu", "--set", "recipe=misfm",
             "--set", f"num_epochs={iterations // 100}", "--set", "iterations_per_epoch=100",
             "--set", f"num_workers={args.workers}", "--set", "progress_bar=false"],
            done=model / "fold_all" / "checkpoint_final.pt",
        )
        predictions = work / "predictions" / name
        images, labels = work / "imagesHeldOut" / name, work / "labelsHeldOut" / name
        runner.run(f"predict {run}", ["volfnet_predict", "-i", str(images), "-o", str(predictions), "-m", str(model), "-f", "all", "--device", "cpu"],
                   done=predictions / f"{sorted(held)[-1]}{ending}")
        runner.run(f"evaluate {run}", ["volfnet_evaluate", str(labels), str(predictions), "-d", dataset_id], done=predictions / "summary.json")
        summary = json.loads((predictions / "summary.json").read_text())
        table[run] = {
            "dataset": name, "configuration": configuration, "network": plans["configurations"][configuration]["network"]["feature_channels"],
            "patch": plans["configurations"][configuration]["patch_size"], "training_cases": len(cases) - len(held), "held_out": len(held),
            "iterations": iterations, "train_seconds": runner.times.get(f"train {run}"),
            "dice": {entry["name"]: entry["Dice"] for key, entry in summary["mean"].items() if key != "0"},
            "hd95": {entry["name"]: entry["HD95"] for key, entry in summary["mean"].items() if key != "0"},
            "mean_dice": summary["foreground_mean"]["Dice"],
        }
    (work / "results.json").write_text(json.dumps(table, indent=1))
    lines = ["| path | dataset | configuration | network widths, patch | training cases, iterations | train s | Dice per region/label | mean Dice | HD95 (mm or pixels) |",
             "|---|---|---|---|---|---:|---|---:|---|"]
    for run, row in table.items():
        dice = ", ".join(f"{k} {v:.3f}" for k, v in row["dice"].items())
        hd95 = ", ".join(f"{k} {v:.2f}" for k, v in row["hd95"].items())
        lines.append(f"| {run} | {row['dataset']} | {row['configuration']} | {row['network']}, {row['patch']} | {row['training_cases']}, {row['iterations']} "
                     f"| {row['train_seconds']} | {dice} | {row['mean_dice']:.3f} | {hd95} |")
    (work / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
