"""``volfnet_ensemble -i DIR DIR ... -o OUT``: average the saved probabilities of several predictions.

Argument parsing only; the work is in :mod:`volfnet.inference.ensemble`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from volfnet.cli._common import run_cli
from volfnet.inference.ensemble import ensemble_folders
from volfnet.io.dataset import DatasetJson


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_ensemble",
        description="Ensemble prediction folders written by volfnet_predict --save-probabilities: average each case's "
        "<case>.npz probabilities over the folders and write the label map in the original geometry (taken from the "
        "first folder's label map of the case).",
    )
    parser.add_argument("-i", "--input", dest="inputs", type=Path, nargs="+", required=True, metavar="DIR",
                        help="two or more prediction folders holding the same cases' <case>.npz")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("-np", "--num-workers", type=int, default=1,
                        help="cases processed at once, in separate processes; each holds two probability arrays of "
                        "a case in memory (default: %(default)s)")
    parser.add_argument("--save-probabilities", action="store_true", help="also write the mean probabilities as <case>.npz")
    parser.add_argument("--dataset-json", type=Path, default=None, metavar="FILE",
                        help="the model's dataset.json (in its model folder): needed for region datasets, whose "
                        "probabilities are per-region sigmoids; also checks the number of classes")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``volfnet_ensemble``; returns the exit code (2 for a user error)."""
    args = build_parser().parse_args(argv)

    def run() -> None:
        dataset_json = DatasetJson.load(args.dataset_json) if args.dataset_json is not None else None
        summary = ensemble_folders(args.inputs, args.output, args.num_workers, args.save_probabilities, dataset_json)
        print(f"{len(summary.written)} case(s) ensembled from {len(args.inputs)} folders -> {summary.output_folder}")

    return run_cli(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
