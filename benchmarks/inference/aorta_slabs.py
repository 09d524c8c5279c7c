"""A real-CT model for the speed levers' Dice: the aorta of the shared thoracic CT, in slabs.

The shared CT examples hold one labelled thoracic CT (``aorta_ct_cropped``: 164 x 126 x 120 at
1.5 mm with a binary aorta mask). This script cuts it along z into slabs: four overlapping
40-slice slabs of the upper 100 slices train a `cpu_small` FMUNet, and the lower 64 slices,
which no training slab contains, are the held-out case. The held-out slab is larger than the
planned patch, so windows overlap and the tiling levers matter, at CT intensities.

    python benchmarks/inference/aorta_slabs.py [--iterations 800]

Then ``tiling_dice.py`` on ``<work>/results/Dataset620_AortaSlabs/fmunet__3d_fullres`` with
``<work>/imagesHeldOut`` and ``<work>/labelsHeldOut`` scores each lever (documentation/benchmarks.md,
"Large volumes on the CPU"). Needs ../shared/data; work folder benchmarks/_work/aorta_slabs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from stage_runner import StageRunner  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "ct_examples"
WORK = ROOT / "benchmarks" / "_work" / "aorta_slabs"
DATASET = "Dataset620_AortaSlabs"
TRAINING_SLABS = [(0, 40), (20, 60), (40, 80), (60, 100)]  # z ranges of the upper part
HELD_OUT_SLAB = (100, 164)


def write_slab(image: sitk.Image, z: tuple[int, int], path: Path) -> None:
    """Slices z[0]..z[1] of ``image`` with their true position (origin moved along z)."""
    slab = image[:, :, z[0] : z[1]]  # SimpleITK indexes (x, y, z)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(slab, str(path), useCompression=True)


def write_dataset() -> None:
    raw = WORK / "raw" / DATASET
    if (raw / "dataset.json").is_file():
        return
    image = sitk.ReadImage(str(SHARED / "aorta_ct_cropped.nii.gz"))
    mask = sitk.ReadImage(str(SHARED / "aorta_ct_cropped_aorta_mask.nii.gz"))
    for index, z in enumerate(TRAINING_SLABS):
        write_slab(image, z, raw / "imagesTr" / f"aorta_{index:03d}_0000.nii.gz")
        write_slab(mask, z, raw / "labelsTr" / f"aorta_{index:03d}.nii.gz")
    write_slab(image, HELD_OUT_SLAB, WORK / "imagesHeldOut" / "aorta_100_0000.nii.gz")
    write_slab(mask, HELD_OUT_SLAB, WORK / "labelsHeldOut" / "aorta_100.nii.gz")
    held = sitk.GetArrayFromImage(mask)[HELD_OUT_SLAB[0] : HELD_OUT_SLAB[1]]
    print(f"held-out slab: {held.shape} voxels, {int(held.sum())} aorta voxels", flush=True)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "aorta": 1},
        "numTraining": len(TRAINING_SLABS), "file_ending": ".nii.gz",
    }, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=800)
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: this benchmark needs the shared CT examples")
    write_dataset()
    runner = StageRunner.in_work_folder(WORK)
    model = WORK / "results" / DATASET / "fmunet__3d_fullres"
    runner.run("plan and preprocess", ["volfnet_plan_and_preprocess", "-d", "620", "--target", "cpu_small", "-np", "1"],
               done=WORK / "preprocessed" / DATASET / "plans.json")
    runner.run(
        "train",
        ["volfnet_train", "620", "3d_fullres", "all", "--device", "cpu", "--set", "recipe=misfm",
         "--set", f"num_epochs={args.iterations // 100}", "--set", "iterations_per_epoch=100", "--set", "num_workers=1",
         "--set", "progress_bar=false"],
        done=model / "fold_all" / "checkpoint_final.pt",
    )
    plans = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
    print(f"model {model}: patch {plans['patch_size']}, widths {plans['network']['feature_channels']}, "
          f"median image {plans['median_shape']}; held-out slab {np.diff(HELD_OUT_SLAB)[0]} slices", flush=True)


if __name__ == "__main__":
    main()
