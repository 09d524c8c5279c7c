"""``volfnet_plan_and_preprocess``: check, fingerprint, plan and preprocess a raw dataset."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from volfnet.cli._common import run_cli
from volfnet.errors import VolfnetError
from volfnet.planning.compute_targets import COMPUTE_TARGETS, DEFAULT_COMPUTE_TARGET
from volfnet.planning.plan_and_preprocess import PlanAndPreprocessRequest, plan_and_preprocess
from volfnet.planning.planner import PlannerOptions

logger = logging.getLogger("volfnet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_plan_and_preprocess",
        description="Check a raw dataset, fingerprint it, plan the configurations and write the npy caches.",
    )
    parser.add_argument("-d", "--dataset", nargs="+", required=True, help="dataset id(s) (e.g. 4) or full name(s) (Dataset004_Hippocampus)")
    parser.add_argument("-c", "--configurations", nargs="+", default=None, help="configurations to preprocess (default: all planned)")
    parser.add_argument("-np", "--num-workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--target", default=DEFAULT_COMPUTE_TARGET, choices=sorted(COMPUTE_TARGETS),
        help=f"compute target the plans are sized for (default {DEFAULT_COMPUTE_TARGET}; 'cpu' for small CPU machines)",
    )
    parser.add_argument("--network", choices=["fmunet", "pctnet"], help="network (default fmunet; with --pretrained, the checkpoint's)")
    parser.add_argument(
        "--pretrained", type=Path, metavar="CKPT",
        help="plan to fit this pretrained checkpoint (volfnet, or a released MIS-FM FMUNet/PCT-Net file): "
        "its network, normalisation family; spacing and patch adapted",
    )
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), help="target spacing in mm")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="patch size in voxels")
    parser.add_argument("--batch-size", type=int, help="batch size")
    parser.add_argument("--base-features", type=int, help="feature channels of the first level (doubled per level)")
    parser.add_argument("--max-features", type=int, help="maximum feature channels per level")
    parser.add_argument("--no-lowres", action="store_true", help="never plan a 3d_lowres configuration")
    parser.add_argument(
        "--lowres-factor", type=float, default=None, metavar="F",
        help="plan 3d_lowres at F times the fullres spacing (and 3d_cascade_fullres) even where the patch covers the "
        "images, as nnU-Net's add_lowres_and_cascade",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
        help="override any plans field, e.g. --set 3d_fullres.batch_size=4 (repeatable; value is JSON)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the dataset integrity check")
    parser.add_argument("--clean", action="store_true", help="recompute the fingerprint and rewrite every cached case")
    parser.add_argument("--plan-only", action="store_true", help="write fingerprint and plans, no preprocessing")
    parser.add_argument("--preprocess-only", action="store_true", help="use the existing plans.json, only preprocess")
    parser.add_argument("--part", type=int, default=0, help="with --num-parts: which part of the cases to preprocess (0-based)")
    parser.add_argument("--num-parts", type=int, default=1, help="split the cases into this many parts (one per job or machine)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = PlannerOptions(
        compute_target=args.target,
        network=args.network or "fmunet",
        target_spacing=args.spacing,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        base_features=args.base_features,
        max_features=args.max_features,
        lowres=not args.no_lowres,
        lowres_factor=args.lowres_factor,
    )

    def run() -> None:
        if args.pretrained is not None and args.network is not None:
            raise VolfnetError("--network and --pretrained exclude each other: the checkpoint decides the network")
        for dataset in args.dataset:
            request = PlanAndPreprocessRequest(
                dataset=dataset,
                options=options,
                configurations=args.configurations,
                overrides=args.overrides,
                num_workers=args.num_workers,
                verify_integrity=not args.no_verify,
                clean=args.clean,
                plan_only=args.plan_only,
                preprocess_only=args.preprocess_only,
                part=args.part,
                num_parts=args.num_parts,
                pretrained=args.pretrained,
            )
            result = plan_and_preprocess(request)
            for name, config in result.plans.configurations.items():
                print(
                    f"{name}: spacing {[round(s, 3) for s in config.spacing]}, patch {config.patch_size}, "
                    f"batch {config.batch_size}, {config.network.name} {config.network.feature_channels}"
                )
            cases = sum(s.processed for s in result.summaries)
            skipped = sum(s.skipped for s in result.summaries)
            print(
                f"{result.plans.dataset_name}: {cases} case(s) preprocessed, {skipped} already done, "
                f"{result.seconds:.1f} s -> {result.output_folder}"
            )

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
