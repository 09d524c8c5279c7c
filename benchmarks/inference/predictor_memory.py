"""Seconds per case and peak memory of the whole predictor: read + preprocess, sliding window, export.

Each row runs in a fresh process (this script calls itself with `--row`), so its peak RSS
(`resource.getrusage`) belongs to that case alone. A row builds a model folder with a tiny
FMUNet (widths 4/8/16, random weights: speed and memory do not depend on the weights), loads
it with `Predictor.from_model_folder` and predicts one case with the functions
`Predictor.predict_folder` runs for it, one after the other (`-np 0`), timing each stage:

- read + preprocess: `volfnet.inference.inputs.load_input_case`
- network: `Predictor.predict_logits` (sliding window, folds, TTA)
- export: `take_logits_to_original` + `write_prediction` (resample to the scan's spacing,
  argmax, paste the crop back, transpose back, write atomically; `.npz` with probabilities)

Cases: a Hippocampus MRI (the real `hippocampus_001` from ../shared/data when present, else a
synthetic volume of its size) and a synthetic CT of 200 x 256 x 256 voxels at 2.5 x 0.8 x 0.8 mm,
predicted at 2.5 x 1 x 1 mm, so export really resamples, with a zero border, so it really pastes.

A second table compares a folder of CT cases predicted stage after stage (`predict_files` per
case) with `predict_folder`, which exports on a thread behind the network and, with `-np N`,
preprocesses in N processes ahead of it (process start-up included).

    python benchmarks/inference/predictor_memory.py [--threads 1] [--rows ct] [--skip-folder]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent
from common import WORK, table

from volfnet.checkpoint import CheckpointSpec, save_checkpoint
from volfnet.inference.export import probabilities_path, take_logits_to_original, write_prediction
from volfnet.inference.inputs import find_input_cases, load_input_case
from volfnet.inference.predictor import Predictor
from volfnet.io.image_io import ImageGeometry
from volfnet.model_folder import checkpoint_path, fold_folder, write_model_folder_files
from volfnet.networks.build import build_network_from_topology
from volfnet.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans, ResamplingSpec
from volfnet.io.case_store import CaseProperties

KB_PER_MB = 1024  # ru_maxrss is in kilobytes on Linux
MB = 2**20
HIPPOCAMPUS = HERE.parents[2] / "shared" / "data" / "Task04_Hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
WIDTHS = [4, 8, 16]
CT_NORMALIZATION = ChannelNormalization("ct", clip_lower=-1000.0, clip_upper=1500.0, mean=40.0, std=300.0)

# name: (shape zyx, spacing zyx, target spacing, patch, classes, mirroring TTA, probabilities)
ROWS = {
    "hippocampus": ((36, 50, 35), (1.0, 1.0, 1.0), [1.0, 1.0, 1.0], [40, 56, 40], 3, True, False),
    "hippocampus_probabilities": ((36, 50, 35), (1.0, 1.0, 1.0), [1.0, 1.0, 1.0], [40, 56, 40], 3, True, True),
    "ct": ((200, 256, 256), (2.5, 0.8, 0.8), [2.5, 1.0, 1.0], [64, 128, 128], 4, False, False),
    "ct_probabilities": ((200, 256, 256), (2.5, 0.8, 0.8), [2.5, 1.0, 1.0], [64, 128, 128], 4, False, True),
}


def rss_mb() -> float:
    """Current resident set size."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / MB


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KB_PER_MB


class RssSampler:
    """Highest RSS seen while the block runs (sampled every few ms on a thread), because the
    process-wide peak is usually set earlier, by the sliding window."""

    INTERVAL_S = 0.002

    def __enter__(self) -> RssSampler:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def make_plans(name: str, spacing: list[float], patch: list[int], normalization: ChannelNormalization) -> Plans:
    network = NetworkTopology("fmunet", WIDTHS, [[1, 2, 2], [2, 2, 2]], [[3, 3, 3]] * 3, [0.0] * 3, depth=1)
    configuration = ConfigurationPlan("3d_fullres", spacing, patch, patch, 2, network, [normalization])
    return Plans(f"Dataset900_{name}", "cpu", 1, [0, 1, 2], [0, 1, 2], spacing, patch, {"3d_fullres": configuration})


def write_model_folder(folder: Path, plans: Plans, classes: int) -> None:
    dataset_json = folder.parent / "dataset.json"
    folder.mkdir(parents=True, exist_ok=True)
    labels = {"background": 0, **{f"class{k}": k for k in range(1, classes)}}
    dataset_json.write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}))
    write_model_folder_files(folder, plans, dataset_json)
    configuration = plans.configuration("3d_fullres")
    spec = CheckpointSpec("segmentation", configuration.network, 1, classes, configuration.patch_size, configuration.spacing,
                          configuration.normalization)
    torch.manual_seed(0)
    network = build_network_from_topology(configuration.network, 1, classes, deep_supervision=False)
    save_checkpoint(checkpoint_path(fold_folder(folder, 0), "final"), {"model_state_dict": network.state_dict(), "spec": spec.to_dict()})


def write_input(path: Path, shape: tuple[int, ...], spacing: tuple[float, ...], ct: bool) -> None:
    """The real Hippocampus case when available, otherwise smooth blobs (CT: HU with a zero border)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not ct and HIPPOCAMPUS.is_file():
        sitk.WriteImage(sitk.ReadImage(str(HIPPOCAMPUS)), str(path))
        return
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.standard_normal((1, 1, *[max(s // 16, 2) for s in shape])).astype(np.float32))
    image = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    if ct:
        image = -1000 + 1100 * (image > -0.5) + 200 * image
        image[:8], image[:, :8], image[:, :, -8:] = 0, 0, 0  # outside the scanner's field of view
    volume = sitk.GetImageFromArray(image.astype(np.float32))
    volume.SetSpacing(list(reversed(spacing)))
    sitk.WriteImage(volume, str(path))


def run_row(name: str, threads: int) -> dict:
    """One case in this process: build, load, predict stage by stage, report."""
    torch.set_num_threads(threads)
    shape, spacing, target, patch, classes, tta, probabilities = ROWS[name]
    ct = name.startswith("ct")
    base = WORK / "predictor" / name.replace("_probabilities", "")
    plans = make_plans(name, target, patch, CT_NORMALIZATION if ct else ChannelNormalization("zscore"))
    folder = base / "model" / "fmunet__3d_fullres"
    write_model_folder(folder, plans, classes)
    write_input(base / "input" / "case_0000.nii.gz", shape, spacing, ct)
    predictor = Predictor.from_model_folder(folder, device="cpu", use_mirroring=tta, num_workers=0, progress=False)
    (case,) = find_input_cases(base / "input", 1)
    output = base / "output" / f"{name}.nii.gz"
    rss_before = rss_mb()

    start = time.perf_counter()
    prepared = load_input_case(case, plans, "3d_fullres")
    after_preprocess = time.perf_counter()
    peak_preprocess = peak_rss_mb()
    logits = predictor.predict_logits(prepared.data)
    after_network = time.perf_counter()
    peak_network = peak_rss_mb()
    logits_mb = logits.nbytes / MB
    holder = [logits]
    del logits
    del prepared.data  # as in predict_folder: the input is dropped once the network has run
    rss_export_start = rss_mb()
    with RssSampler() as export_rss:
        prediction = take_logits_to_original(holder, prepared.properties, plans.configuration("3d_fullres").resampling, probabilities)
        write_prediction(prediction, prepared.properties.original_geometry, output)
    end = time.perf_counter()
    original_voxels = int(np.prod(prepared.properties.original_geometry.shape))
    return {
        "name": name,
        "shape": "x".join(map(str, prepared.properties.original_geometry.shape)),
        "preprocessed": "x".join(map(str, prepared.properties.shape_after_resampling)),
        "classes": classes,
        "tta": tta,
        "probabilities": probabilities,
        "seconds": end - start,
        "preprocess_s": after_preprocess - start,
        "network_s": after_network - after_preprocess,
        "export_s": end - after_network,
        "rss_before_mb": rss_before,
        "peak_preprocess_mb": peak_preprocess,
        "peak_network_mb": peak_network,
        "peak_mb": peak_rss_mb(),
        "export_extra_mb": export_rss.peak - rss_export_start,
        "logits_mb": logits_mb,
        "original_logits_mb": classes * original_voxels * 4 / MB,
        "npz_mb": probabilities_path(output).stat().st_size / MB if probabilities else 0.0,
    }


FOLDER_CASES = 6
FOLDER_SHAPE = (96, 160, 160)  # at 2.5 x 0.8 x 0.8 mm: 2 windows per case, so no stage dominates
# sequential: predict_files per case, everything inline; np<N>: predict_folder with N preprocessing
# processes ahead of the network (0: inline) and the export thread behind it.
FOLDER_MODES = ("sequential", "np0", "np1", "np2")


def run_folder(mode: str, threads: int) -> dict:
    """Several CT cases: one after the other with everything inline (``predict_files`` per case),
    or ``predict_folder`` with preprocessing processes ahead and the export thread behind."""
    torch.set_num_threads(threads)
    _, spacing, target, patch, classes, _, _ = ROWS["ct"]
    base = WORK / "predictor" / "folder"
    plans = make_plans("folder", target, patch, CT_NORMALIZATION)
    folder = base / "model" / "fmunet__3d_fullres"
    write_model_folder(folder, plans, classes)
    for index in range(FOLDER_CASES):
        path = base / "input" / f"case{index}_0000.nii.gz"
        if not path.is_file():
            write_input(path, FOLDER_SHAPE, spacing, ct=True)
    workers = int(mode.removeprefix("np")) if mode.startswith("np") else 0
    predictor = Predictor.from_model_folder(folder, device="cpu", use_mirroring=False, num_workers=workers, progress=False)
    output = base / f"output_{mode}"
    shutil.rmtree(output, ignore_errors=True)
    rss_before = rss_mb()
    start = time.perf_counter()
    if mode != "sequential":
        predictor.predict_folder(base / "input", output)
    else:
        for case in find_input_cases(base / "input", 1):
            predictor.predict_files(case.images, case.output_file(output))
    seconds = time.perf_counter() - start
    return {"mode": mode, "workers": workers, "seconds_per_case": seconds / FOLDER_CASES, "rss_before_mb": rss_before, "peak_mb": peak_rss_mb()}


# Export alone at full CT size: the network would take hours on this CPU, but the memory claim
# (a 512 x 512 x 400 CT with a few classes fits in 24 GB) is about the export.
LARGE_SHAPE = [400, 512, 512]
LARGE_SPACING = [2.0, 0.875, 0.875]  # predicted at 2 x 1 x 1 mm
LARGE_MARGIN = 16  # voxels cropped off each in-plane side, pasted back by the export
LARGE_CLASSES = 4


def run_large_export(probabilities: bool, threads: int) -> dict:
    """take_logits_to_original + write_prediction for random logits of a 512 x 512 x 400 CT."""
    torch.set_num_threads(threads)
    geometry = ImageGeometry(LARGE_SPACING, [0.0, 0.0, 0.0], [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], LARGE_SHAPE)
    box = [[0, LARGE_SHAPE[0]], *[[LARGE_MARGIN, s - LARGE_MARGIN] for s in LARGE_SHAPE[1:]]]
    cropped = [b - a for a, b in box]
    target = [LARGE_SPACING[0], 1.0, 1.0]
    grid = [round(s * sp / t) for s, sp, t in zip(cropped, LARGE_SPACING, target)]
    properties = CaseProperties("large", geometry, [0, 1, 2], LARGE_SHAPE, box, cropped, LARGE_SPACING, target, grid)
    holder = [torch.randn((LARGE_CLASSES, *properties.shape_after_resampling), generator=torch.Generator().manual_seed(0))]
    logits_mb = holder[0].nbytes / MB
    output = WORK / "predictor" / "large" / f"large{'_probabilities' if probabilities else ''}.nii.gz"
    start_rss = rss_mb()
    start = time.perf_counter()
    with RssSampler() as sampler:
        prediction = take_logits_to_original(holder, properties, ResamplingSpec(), probabilities)
        converted = time.perf_counter()
        write_prediction(prediction, geometry, output)
    end = time.perf_counter()
    return {
        "probabilities": probabilities, "grid": grid, "logits_mb": logits_mb, "scan_logits_mb": LARGE_CLASSES * np.prod(LARGE_SHAPE) * 4 / MB,
        "rss_start_mb": start_rss, "peak_mb": sampler.peak, "extra_mb": sampler.peak - start_rss,
        "convert_s": converted - start, "write_s": end - converted,
    }


def child(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", choices=sorted(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the shared 2-core machine: 1)")
    parser.add_argument("--folder-mode", choices=FOLDER_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--rows", nargs="*", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--skip-folder", action="store_true", help="leave out the folder (overlap) comparison")
    parser.add_argument("--large-export", choices=("labels", "probabilities"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-large", action="store_true", help="leave out the 512 x 512 x 400 export")
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args.row, args.threads)))
        return
    if args.folder_mode:
        print(json.dumps(run_folder(args.folder_mode, args.threads)))
        return
    if args.large_export:
        print(json.dumps(run_large_export(args.large_export == "probabilities", args.threads)))
        return
    rows = []
    for name in args.rows:
        r = child(["--row", name, "--threads", str(args.threads)])
        rows.append([
            r["name"], r["shape"], r["preprocessed"], r["classes"], "8" if r["tta"] else "1",
            f"{r['seconds']:.1f}", f"{r['preprocess_s']:.1f}", f"{r['network_s']:.1f}", f"{r['export_s']:.1f}",
            f"{r['rss_before_mb']:.0f}", f"{r['peak_network_mb']:.0f}", f"{r['peak_mb']:.0f}", f"{r['export_extra_mb']:.0f}",
            f"{r['logits_mb']:.0f} / {r['original_logits_mb']:.0f}", f"{r['npz_mb']:.1f}" if r["probabilities"] else "-",
        ])
        print(f"done {name}", file=sys.stderr, flush=True)
    if rows:
        print(f"volfnet predictor, one case per process, CPU, {args.threads} torch thread(s), tiny FMUNet widths {WIDTHS}, fold 0")
        print(table(
            ["case", "scan (ZxYxX)", "network grid", "classes", "passes", "s/case", "preprocess s", "network s", "export s",
             "RSS before MB", "peak after network MB", "peak MB", "export peak above its start MB",
             "logits MB (network / scan grid)", "npz MB"],
            rows,
        ))
    if not args.skip_large:
        large_rows = []
        for kind in ("labels", "probabilities"):
            r = child(["--large-export", kind, "--threads", str(args.threads)])
            large_rows.append([kind, f"{r['logits_mb']:.0f} / {r['scan_logits_mb']:.0f}", f"{r['rss_start_mb']:.0f}",
                               f"{r['peak_mb']:.0f}", f"{r['extra_mb']:.0f}", f"{r['convert_s']:.1f}", f"{r['write_s']:.1f}"])
            print(f"done large export {kind}", file=sys.stderr, flush=True)
        print(f"\nexport alone, {'x'.join(map(str, LARGE_SHAPE))} CT (network grid {'x'.join(map(str, r['grid']))}), "
              f"{LARGE_CLASSES} classes, random logits")
        print(table(["output", "logits MB (network / scan grid)", "RSS at start MB", "peak MB", "peak above start MB",
                     "resample+argmax s", "write s"], large_rows))
    if args.skip_folder:
        return
    folder_rows = []
    for mode in FOLDER_MODES:
        r = child(["--folder-mode", mode, "--threads", str(args.threads)])
        name = "predict_files per case" if mode == "sequential" else "predict_folder"
        folder_rows.append([name, r["workers"], f"{r['seconds_per_case']:.1f}", f"{r['rss_before_mb']:.0f}", f"{r['peak_mb']:.0f}"])
        print(f"done folder {mode}", file=sys.stderr, flush=True)
    print(f"\n{FOLDER_CASES} CT cases of {'x'.join(map(str, FOLDER_SHAPE))}, no TTA, including worker start-up: predict_files "
          "runs every stage inline; predict_folder exports on a thread behind the network and, with -np N, preprocesses "
          "in N processes ahead of it")
    print(table(["how", "-np", "s/case", "RSS before MB", "peak MB"], folder_rows))


if __name__ == "__main__":
    main()
