"""VolF sample making: volfnet vs PyMIC (Crop4VolumeFusion + VolumeFusion), one CPU core.

Usage (from the repository root):  python benchmarks/volf/bench_volf.py [--rounds 3]

* Creates ``benchmarks/_envs/pymic`` on first use (``torch==2.13.0 pymic imops``; PyMIC's
  ``pymic.transform`` imports ``imops`` without declaring it) and runs PyMIC there, in a
  subprocess; volfnet runs in subprocesses of this python. Every worker is limited to one
  thread (OMP/MKL/torch) and pinned to one core.
* Input: a seeded CT-like phantom of 96x192x192 in [-1, 1] (the LUNA sub-volume size of the
  published lung demo), patch 64x128x128, blocks [5,8,8]-[20,32,32], augmentation mode 3.
* Rounds alternate the implementations, so load from other processes on a shared machine
  hits all of them alike; speed is the median per-sample time over all rounds.
* Statistics: fused-label foreground and class fractions over the timed samples (30 per
  implementation with the defaults) and over 400 cheap label-only draws; fused-image mean/std.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for its shared modules
from peer_envs import peer_python  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "benchmarks" / "_work" / "volf"
WORKER = Path(__file__).resolve().parent / "volf_worker.py"


def phantom(shape=(96, 192, 192), seed: int = 0) -> np.ndarray:
    """CT-like volume in [-1, 1] (HU / 1000): air, body, lungs, a spine, noise."""
    rng = np.random.default_rng(seed)
    _, y, x = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    body = (y / 0.75) ** 2 + (x / 0.9) ** 2 < 1
    hu[body] = 40.0
    lungs = (((x - 0.4) / 0.3) ** 2 + (y / 0.5) ** 2 < 1) | (((x + 0.4) / 0.3) ** 2 + (y / 0.5) ** 2 < 1)
    hu[lungs & body] = -850.0
    hu[((y - 0.5) / 0.12) ** 2 + (x / 0.12) ** 2 < 1] = 700.0
    hu += rng.normal(0, 30, shape).astype(np.float32)
    return (np.clip(hu, -1000, 1000) / 1000.0)[None].astype(np.float32)


def run_worker(python: Path, impl: str, volume: Path, samples: int, seed: int, label_draws: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [str(python), str(WORKER), "--impl", impl, "--volume", str(volume), "--samples", str(samples), "--seed", str(seed), "--label-draws", str(label_draws)]
    result = subprocess.run(command, env=env, cwd=str(ROOT), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{impl} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pymic-samples", type=int, default=10, help="timed PyMIC samples per round")
    parser.add_argument("--volfnet-samples", type=int, default=10, help="timed volfnet samples per round")
    parser.add_argument("--label-draws", type=int, default=400)
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    volume_path = WORK / "phantom_96x192x192.npy"
    np.save(volume_path, phantom())
    pythons = {"pymic": peer_python("pymic"), "volfnet-torch": Path(sys.executable), "volfnet-numpy": Path(sys.executable)}
    counts = {"pymic": args.pymic_samples, "volfnet-torch": args.volfnet_samples, "volfnet-numpy": args.volfnet_samples}
    results: dict[str, dict[str, list]] = {impl: {"seconds": [], "fractions": [], "image": [], "label_only": []} for impl in pythons}
    for round_index in range(args.rounds):
        for impl, python in pythons.items():
            draws = args.label_draws if round_index == 0 else 0
            out = run_worker(python, impl, volume_path, counts[impl], seed=round_index, label_draws=draws)
            for key in results[impl]:
                results[impl][key].extend(out[key])
            print(f"round {round_index + 1}/{args.rounds} {impl:14s} median {1000 * np.median(out['seconds']):7.1f} ms/sample", flush=True)

    version = subprocess.run([str(pythons["pymic"]), "-m", "pip", "show", "pymic"], capture_output=True, text=True, check=False).stdout
    pymic_version = next((line.split(":", 1)[1].strip() for line in version.splitlines() if line.startswith("Version")), "?")
    names = {"pymic": f"PyMIC {pymic_version}", "volfnet-torch": "volfnet (torch)", "volfnet-numpy": "volfnet (numpy)"}
    baseline = float(np.median(results["pymic"]["seconds"]))
    print()
    print("VolF sample making on one CPU core: input 96x192x192 float32, patch 64x128x128,")
    print("blocks [5,8,8]-[20,32,32], K = 4, augmentation mode 3 (crop pair + grid fusion)")
    print(f"{'implementation':18s} {'samples':>7s} {'ms/sample':>10s} {'samples/s':>10s} {'speed-up':>9s}")
    for impl, data in results.items():
        median = float(np.median(data["seconds"]))
        print(f"{names[impl]:18s} {len(data['seconds']):7d} {1000 * median:10.1f} {1 / median:10.2f} {baseline / median:8.1f}x")
    print()
    print("Fused label statistics (mean over samples); fg = 1 - class 0")
    print(f"{'implementation':18s} {'source':>18s} {'fg fraction':>11s}  class fractions 0..4")
    for impl, data in results.items():
        for source, rows in (("timed samples", data["fractions"]), ("label-only draws", data["label_only"])):
            if not rows:
                continue
            mean = np.mean(rows, axis=0)
            label = f"{len(rows)} {source}"
            print(f"{names[impl]:18s} {label:>18s} {1 - mean[0]:11.3f}  [{', '.join(f'{v:.3f}' for v in mean)}]")
    print()
    print("Fused image statistics over the timed samples (mean of per-sample values)")
    print(f"{'implementation':18s} {'mean':>7s} {'std':>7s} {'min':>7s} {'max':>7s}")
    for impl, data in results.items():
        mean = np.mean(data["image"], axis=0)
        print(f"{names[impl]:18s} " + " ".join(f"{v:7.3f}" for v in mean))


if __name__ == "__main__":
    main()
