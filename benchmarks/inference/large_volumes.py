"""Large volumes on 2 CPU cores: seconds per case and peak memory of prediction at the `cpu` target.

Two cases, as issue 19 describes them:

- ``brats``: a BraTS-size two-channel MRI, 155 x 240 x 240 at 1 mm, 3 labels, `3d_fullres`
  (patch 24 x 48 x 48, FMUNet 16-128). As in BraTS, the head is an ellipsoid in a zero
  background whose bounding box is 138 x 170 x 138 (BraTS' median shape after cropping), so
  preprocessing crops to it as it does for real cases. The sliding-window-only rows use the
  whole 155 x 240 x 240 (the uncropped worst case).
- ``ct``: a 512 x 512 x 300 CT at 1.5 x 0.8 x 0.8 mm, 3 labels, the `3d_lowres` configuration
  (the whole case resampled to about 4.6 mm, predicted, and the probabilities resampled back).

The plans come from volfnet's planner (a fingerprint of the stated size), the networks have
seeded random weights (time does not depend on them). Each row runs in a fresh process:

- ``volfnet_predict`` end to end (read, preprocess, sliding window, export to the original
  geometry as NIfTI), once per set of predictor options;
- the sliding window alone on the preprocessed array: volfnet's ``predict_sliding_window`` and
  nnU-Net v2's ``nnUNetPredictor.predict_sliding_window_return_logits`` on the same FMUNet,
  the same patch and the same array (benchmarks/inference/large_volume_worker.py; nnU-Net in its
  own environment, see benchmarks/peer_envs.py).

    python benchmarks/inference/large_volumes.py [--cases brats ct] [--skip-nnunet] [--rows ...]

Seconds are wall time; peak memory is the largest RSS of the process tree (benchmarks/measure.py).
Writes ``results.md`` and ``results.json`` to ``benchmarks/_work/large_volumes``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/: measure.py, peer_envs.py
from measure import measure  # noqa: E402
from peer_envs import peer_python  # noqa: E402

from volfnet.checkpoint import CheckpointSpec, save_checkpoint  # noqa: E402
from volfnet.io.dataset import DatasetJson  # noqa: E402
from volfnet.model_folder import checkpoint_path, fold_folder, write_model_folder_files  # noqa: E402
from volfnet.networks.build import build_network_from_topology  # noqa: E402
from volfnet.planning.fingerprint import Fingerprint, IntensityStatistics  # noqa: E402
from volfnet.planning.planner import Planner, PlannerOptions  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "large_volumes"
TARGET = "cpu"
FOLD = 0
NUM_LABELS = 3


@dataclass(frozen=True)
class Case:
    shape: tuple[int, int, int]  # (Z, Y, X)
    spacing: tuple[float, float, float]
    channels: tuple[str, ...]
    configuration: str
    low: float  # intensity range of the synthetic image
    high: float
    foreground: tuple[int, int, int] | None = None  # bounding box of a centred ellipsoid of non-zero voxels (else all)


CASES = {
    "brats": Case((155, 240, 240), (1.0, 1.0, 1.0), ("T1", "T2"), "3d_fullres", 0.0, 1000.0, foreground=(138, 170, 138)),
    "ct": Case((300, 512, 512), (1.5, 0.8, 0.8), ("CT",), "3d_lowres", -1000.0, 1500.0),
}

# volfnet_predict option sets: name -> extra arguments.
ROWS = {
    "default: step 0.5, 8 mirror passes": [],
    "step 0.5, no mirroring": ["--disable-tta"],
    "step 0.5, mirror Y X (4 passes)": ["--mirror-axes", "1", "2"],
    "step 0.75, no mirroring": ["--step", "0.75", "--disable-tta"],
    "step 0.75, mirror Y X (4 passes)": ["--step", "0.75", "--mirror-axes", "1", "2"],
    "step 0.75, 8 mirror passes": ["--step", "0.75"],
    "step 0.5, no mirroring, --compile": ["--disable-tta", "--compile"],
    "step 0.5, 8 mirror passes, --compile": ["--compile"],
    "step 0.5, no mirroring, --backend openvino": ["--disable-tta", "--backend", "openvino"],
    "step 0.5, 8 mirror passes, --backend openvino": ["--backend", "openvino"],
}
# Sliding window alone on the preprocessed array: name -> (worker options, implementations).
# nnU-Net runs its 8 mirror passes one sample at a time (about 4x slower per sample for a
# 16-wide network on 2 cores), so mirrored rows use a 48 x 96 x 96 corner to stay in minutes.
MIRROR_CORNER = ["--crop", "48", "96", "96"]
SLIDING_WINDOW_ROWS = {
    "sliding window only, no mirroring": ([], ("volfnet", "nnunet")),
    "sliding window only, 8 mirror passes, 48x96x96 corner": (["--mirror", *MIRROR_CORNER], ("volfnet", "nnunet")),
    "one window covering the image, no mirroring": (["--whole-image"], ("volfnet",)),
}


def dataset_description(case: Case) -> dict:
    """The dataset.json of a case: its channels and NUM_LABELS labels."""
    labels = {"background": 0, **{f"label{i}": i for i in range(1, NUM_LABELS + 1)}}
    return {"channel_names": {str(i): c for i, c in enumerate(case.channels)}, "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"}


def dataset_file_json(case: Case) -> DatasetJson:
    return DatasetJson.from_dict(dataset_description(case), "large_volumes.py")


def fingerprint(case: Case) -> Fingerprint:
    cropped = list(case.foreground or case.shape)
    ratio = float(np.prod(cropped) / np.prod(case.shape))
    stats = IntensityStatistics(mean=100.0, std=300.0, median=50.0, min=case.low, max=case.high,
                                percentile_00_5=case.low + 10, percentile_99_5=case.high - 10)
    return Fingerprint(
        case_ids=["c0", "c1"], spacings=[list(case.spacing)] * 2, shapes_after_crop=[cropped] * 2,
        crop_ratios=[ratio] * 2, foreground_intensity_per_channel=[stats] * len(case.channels),
        median_relative_size_after_cropping=ratio, channel_names={str(i): c for i, c in enumerate(case.channels)},
        num_foreground_voxels_sampled=1000,
    )


def write_image(array: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing)))  # SimpleITK spacing is (x, y, z)
    sitk.WriteImage(image, str(path), useCompression=True)


def prepare(name: str, case: Case) -> tuple[Path, Path, Path]:
    """Model folder, input folder and the configuration's network plan file for ``name``."""
    folder = WORK / name
    model, inputs = folder / f"fmunet__{case.configuration}", folder / "input"  # the folder name names the configuration
    if (model / "ready").is_file():
        return model, inputs, folder
    shutil.rmtree(folder, ignore_errors=True)
    inputs.mkdir(parents=True)
    dataset_file = folder / "dataset.json"
    dataset_file.write_text(json.dumps(dataset_description(case)))
    dataset_json = DatasetJson.load(dataset_file)
    plans = Planner(fingerprint(case), dataset_json, f"Dataset900_{name}", PlannerOptions(compute_target=TARGET)).plan()
    configuration = plans.configuration(case.configuration)
    write_model_folder_files(model, plans, dataset_file)
    spec = CheckpointSpec(
        kind="segmentation", network=configuration.network, num_input_channels=len(case.channels), num_classes=NUM_LABELS + 1,
        patch_size=configuration.patch_size, spacing=configuration.spacing, normalization=configuration.normalization,
        transpose_forward=plans.transpose_forward, dataset_name=f"Dataset900_{name}", configuration=case.configuration,
        labels=dataset_json.labels,
    )
    torch.manual_seed(0)
    network = build_network_from_topology(configuration.network, len(case.channels), NUM_LABELS + 1, deep_supervision=True)
    save_checkpoint(checkpoint_path(fold_folder(model, FOLD), "final"), {"model_state_dict": network.state_dict(), "spec": spec.to_dict(), "epoch": 1})
    rng = np.random.default_rng(0)
    inside = np.ones(case.shape, dtype=bool)
    if case.foreground is not None:
        grid = np.ogrid[tuple(slice(0, s) for s in case.shape)]
        inside = sum(((g - (s - 1) / 2) / (f / 2)) ** 2 for g, s, f in zip(grid, case.shape, case.foreground)) <= 1
    for channel in range(len(case.channels)):
        # smooth-ish texture: noise at 1/4 resolution, upsampled by repetition, plus fine noise
        coarse = rng.uniform(case.low, case.high, size=[-(-s // 4) for s in case.shape]).astype(np.float32)
        image = np.repeat(np.repeat(np.repeat(coarse, 4, 0), 4, 1), 4, 2)[: case.shape[0], : case.shape[1], : case.shape[2]]
        image += rng.normal(0, (case.high - case.low) / 50, size=case.shape).astype(np.float32)
        image[~inside] = 0
        write_image(image.astype(np.int16 if case.low < 0 else np.float32), case.spacing, inputs / f"{name}_{channel:04d}.nii.gz")
    (model / "ready").write_text("")
    return model, inputs, folder


def volfnet_rows(name: str, case: Case, model: Path, inputs: Path, folder: Path, rows: list[str]) -> list[dict]:
    results = []
    predict = shutil.which("volfnet_predict") or "volfnet_predict"
    for row in rows:
        output = folder / "output"
        shutil.rmtree(output, ignore_errors=True)
        command = [predict, "-i", str(inputs), "-o", str(output), "-m", str(model),
                   "--device", "cpu", *ROWS[row]]
        result = measure(command)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{result.output[-3000:]}")
        results.append({"case": name, "row": row, "implementation": "volfnet_predict (end to end)",
                        "seconds": result.seconds, "peak_rss_mb": result.peak_rss_mb})
        print(f"{name} | {row}: {result.seconds:.1f} s, {result.peak_rss_mb:.0f} MB", file=sys.stderr, flush=True)
    return results


def sliding_window_rows(name: str, case: Case, model: Path, folder: Path, with_nnunet: bool) -> list[dict]:
    """volfnet vs nnU-Net sliding window on the same preprocessed-size array and network."""
    plans = json.loads((model / "plans.json").read_text())
    median_shape = plans["configurations"][case.configuration]["median_shape"]
    # fullres: the uncropped volume (the worst case); lowres: the planned (resampled) shape
    shape = [len(case.channels), *(case.shape if case.configuration == "3d_fullres" else median_shape)]
    array_file = folder / "preprocessed.npy"
    if not array_file.is_file():
        np.save(array_file, np.random.default_rng(1).normal(size=shape).astype(np.float32))
    worker = HERE / "large_volume_worker.py"
    common = ["--model", str(model), "--configuration", case.configuration, "--array", str(array_file)]
    pythons = {"volfnet": sys.executable, "nnunet": str(peer_python("nnunet")) if with_nnunet else None}
    results = []
    for row, (options, implementations) in SLIDING_WINDOW_ROWS.items():
        for impl in implementations:
            if pythons[impl] is None:
                continue
            command = [pythons[impl], str(worker), "--impl", impl, *common, *options]
            result = measure(command)
            if result.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed:\n{result.output[-3000:]}")
            report = json.loads(result.output.strip().splitlines()[-1])
            results.append({"case": name, "row": f"{row} ({report['tiles']} windows)", "implementation": impl,
                            "seconds": report["seconds"], "peak_rss_mb": result.peak_rss_mb})
            print(f"{name} | {row} | {impl}: {report['seconds']:.1f} s", file=sys.stderr, flush=True)
    return results


def merge_saved(results: list[dict]) -> list[dict]:
    """This run's rows merged into ``results.json`` (a rerun of a row replaces it), so rows can be
    measured in several runs; returns every saved row."""
    path = WORK / "results.json"
    saved = json.loads(path.read_text()) if path.is_file() else []
    key = lambda r: (r["case"], r["row"], r["implementation"])  # noqa: E731
    fresh = {key(r) for r in results}
    merged = [r for r in saved if key(r) not in fresh] + results
    order = {name: i for i, name in enumerate(CASES)}
    merged.sort(key=lambda r: order.get(r["case"], len(order)))
    path.write_text(json.dumps(merged, indent=1))
    return merged


def markdown(results: list[dict]) -> str:
    lines = ["| case | what | implementation | s/case | peak RSS MB |", "|---|---|---|---:|---:|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['row']} | {r['implementation']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="ROW")
    parser.add_argument("--skip-nnunet", action="store_true", help="leave out nnU-Net's sliding window")
    parser.add_argument("--skip-sliding-window", action="store_true", help="only the end-to-end rows")
    args = parser.parse_args()
    results = []
    for name in args.cases:
        case = CASES[name]
        model, inputs, folder = prepare(name, case)
        results += volfnet_rows(name, case, model, inputs, folder, args.rows)
        if not args.skip_sliding_window:
            results += sliding_window_rows(name, case, model, folder, not args.skip_nnunet)
    table = markdown(merge_saved(results))
    print(table)
    (WORK / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
