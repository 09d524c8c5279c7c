"""``volfnet_convert_msd``: convert a Medical Segmentation Decathlon task into the raw root."""

from __future__ import annotations

import argparse
from pathlib import Path

from volfnet.cli._common import run_cli
from volfnet.io.msd import convert_msd_dataset
from volfnet.paths import ensure_writable_dir, raw_root


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_convert_msd",
        description="Convert an MSD task folder (TaskXX_Name) into VOLFNET_raw/DatasetXXX_Name: "
        "4D images are split into one file per channel and dataset.json is rewritten.",
    )
    parser.add_argument("-i", "--input", required=True, type=Path, help="the MSD task folder, e.g. Task04_Hippocampus")
    parser.add_argument("-d", "--dataset-id", type=int, default=None, help="dataset id (default: the task number)")
    parser.add_argument("-np", "--num-workers", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder of the same name")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> None:
        root = ensure_writable_dir(raw_root(), "raw data")
        target = convert_msd_dataset(args.input, root, args.dataset_id, args.num_workers, overwrite=args.overwrite)
        print(f"converted {args.input} -> {target}")
        print(f"next: volfnet_plan_and_preprocess -d {int(target.name[7:10])}")

    return run_cli(run, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
