"""``volfnet_demo``: make the built-in synthetic CT dataset and run volfnet on it.

Stages run so far: generate the dataset (no download), check it, fingerprint, plan for the
CPU target and preprocess. Each stage shows progress; the end prints where everything went.
"""

from __future__ import annotations

import argparse
import time

from volfnet import paths
from volfnet.cli._common import run_cli
from volfnet.demo.synthetic import write_demo_dataset
from volfnet.planning.plan_and_preprocess import PlanAndPreprocessRequest, plan_and_preprocess
from volfnet.planning.planner import PlannerOptions

DEMO_DATASET_ID = 900
DEMO_DATASET_NAME = f"Dataset{DEMO_DATASET_ID:03d}_VolfDemo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="volfnet_demo", description="Run volfnet end to end on a built-in synthetic CT dataset.")
    parser.add_argument("--num-labelled", type=int, default=16, help="labelled synthetic scans (default 16)")
    parser.add_argument("--num-unlabelled", type=int, default=16, help="unlabelled synthetic scans for pretraining (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data")
    parser.add_argument("-np", "--num-workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--target", default="cpu", help="compute target for the plans (default cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> None:
        start = time.perf_counter()
        raw_folder = paths.raw_root() / DEMO_DATASET_NAME
        print(f"[1/2] synthetic dataset -> {raw_folder}")
        write_demo_dataset(raw_folder, args.num_labelled, args.num_unlabelled, args.seed)
        print("[2/2] integrity check, fingerprint, plans and preprocessing")
        result = plan_and_preprocess(
            PlanAndPreprocessRequest(dataset=str(DEMO_DATASET_ID), options=PlannerOptions(compute_target=args.target), num_workers=args.num_workers)
        )
        print()
        print(f"{'configuration':<14} {'spacing (mm)':<22} {'patch':<16} {'batch':>5}  network")
        for name, config in result.plans.configurations.items():
            spacing = "x".join(f"{s:.2f}" for s in config.spacing)
            patch = "x".join(str(p) for p in config.patch_size)
            print(f"{name:<14} {spacing:<22} {patch:<16} {config.batch_size:>5}  {config.network.name} {config.network.feature_channels}")
        print()
        print(f"raw data:          {raw_folder}")
        print(f"plans and caches:  {result.output_folder}")
        print(f"done in {time.perf_counter() - start:.1f} s")

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
