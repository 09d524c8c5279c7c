"""Preprocessing side by side: volfnet_plan_and_preprocess vs nnUNetv2_plan_and_preprocess.

Both tools convert the same MSD task (not timed), then plan and preprocess it with the same
worker count on the same machine (timed, cold: their output folders are removed first). The
table reports wall time, peak memory of the whole process tree, and the chosen 3d_fullres
spacing, patch and batch size. nnU-Net v2 is installed by this script into its own virtual
environment (benchmarks/_envs/nnunet); it is never a dependency of volfnet.

    python benchmarks/preprocess_vs_nnunet.py [--msd ../shared/data/Task04_Hippocampus] [-np 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from measure import measure  # noqa: E402
from peer_envs import peer_bin  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run_checked(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--msd", type=Path, default=REPO.parent / "shared" / "data" / "Task04_Hippocampus")
    parser.add_argument("-np", "--num-workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=HERE / "_work" / "preprocess_vs_nnunet")
    args = parser.parse_args()
    if not args.msd.is_dir():
        raise SystemExit(f"MSD folder {args.msd} not found")
    nnunet_bin = peer_bin("nnunet")
    work = args.work
    volfnet_env = {f"VOLFNET_{k}": str(work / "volfnet" / k) for k in ("raw", "preprocessed", "results")}
    nnunet_env = {f"nnUNet_{k}": str(work / "nnunet" / k) for k in ("raw", "preprocessed", "results")}
    nnunet_env["PATH"] = f"{nnunet_bin}:{os.environ['PATH']}"
    for env in (volfnet_env, nnunet_env):
        for key, value in env.items():
            if key != "PATH":
                Path(value).mkdir(parents=True, exist_ok=True)

    if not any(Path(volfnet_env["VOLFNET_raw"]).glob("Dataset004_*")):
        run_checked([sys.executable, "-m", "volfnet.cli.convert_msd", "-i", str(args.msd), "-np", str(args.num_workers)], volfnet_env)
    if not any(Path(nnunet_env["nnUNet_raw"]).glob("Dataset004_*")):
        run_checked([str(nnunet_bin / "nnUNetv2_convert_MSD_dataset"), "-i", str(args.msd), "-np", str(args.num_workers)], nnunet_env)

    shutil.rmtree(volfnet_env["VOLFNET_preprocessed"])
    shutil.rmtree(nnunet_env["nnUNet_preprocessed"])
    workers = str(args.num_workers)
    ours = measure([sys.executable, "-m", "volfnet.cli.plan_and_preprocess", "-d", "4", "-c", "3d_fullres", "-np", workers], env=volfnet_env)
    if ours.returncode:
        raise SystemExit(f"volfnet failed:\n{ours.output[-3000:]}")
    theirs = measure(
        [str(nnunet_bin / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres", "-np", workers, "-npfp", workers],
        env=nnunet_env,
    )
    if theirs.returncode:
        raise SystemExit(f"nnU-Net failed:\n{theirs.output[-3000:]}")

    our_plans = json.loads(next(Path(volfnet_env["VOLFNET_preprocessed"]).glob("Dataset004_*/plans.json")).read_text())
    their_plans = json.loads(next(Path(nnunet_env["nnUNet_preprocessed"]).glob("Dataset004_*/nnUNetPlans.json")).read_text())
    ours_config = our_plans["configurations"]["3d_fullres"]
    theirs_config = their_plans["configurations"]["3d_fullres"]
    rows = [
        ("wall time (s)", f"{ours.seconds:.1f}", f"{theirs.seconds:.1f}"),
        ("peak memory, process tree (MB)", f"{ours.peak_rss_mb:.0f}", f"{theirs.peak_rss_mb:.0f}"),
        ("spacing (mm)", str([round(s, 3) for s in ours_config["spacing"]]), str([round(s, 3) for s in theirs_config["spacing"]])),
        ("patch", str(ours_config["patch_size"]), str(theirs_config["patch_size"])),
        ("batch", str(ours_config["batch_size"]), str(theirs_config["batch_size"])),
    ]
    print(f"\nHippocampus ({args.msd.name}), {args.num_workers} workers, {os.cpu_count()} CPUs")
    print("| | volfnet | nnU-Net v2 |\n|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a} | {b} |")
    print(f"\nspeed-up: {theirs.seconds / ours.seconds:.2f}x, memory ratio (volfnet/nnU-Net): {ours.peak_rss_mb / theirs.peak_rss_mb:.2f}")
    print("volfnet runs its dataset integrity check (default on); nnU-Net's is off by default and was not run.")


if __name__ == "__main__":
    main()
