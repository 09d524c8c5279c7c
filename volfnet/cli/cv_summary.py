"""``volfnet_cv_summary -d ID -c CONFIG``: pool the folds' final validations into one
cross-validation result and print its scores (see :mod:`volfnet.model_selection.cross_validation`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from volfnet.cli._common import run_cli
from volfnet.cli.evaluate import print_summary_table
from volfnet.inference.locate import locate_model_folder
from volfnet.model_folder import parse_cross_validation_folds
from volfnet.model_selection.cross_validation import pool_cross_validation
from volfnet.parallel import default_num_workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_cv_summary",
        description="Pool every trained fold's final validation (fold_<k>/validation) into "
        "<model folder>/crossval_results_folds_<k_...>/ and score it as one: per-label means and per-case tables "
        "(summary.json, summary.csv). Folds of splits.json without a validation are named and left out.",
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name, e.g. 4")
    parser.add_argument("-c", "--configuration", required=True, help="configuration, e.g. 3d_fullres")
    parser.add_argument("--network", default=None, help="network (default: the one the plans chose)")
    parser.add_argument("--tag", default="", help="the model folder's tag (volfnet_train --tag)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, metavar="FOLD", help="folds to pool (default: every fold of splits.json)")
    parser.add_argument("-np", "--num-workers", type=int, default=default_num_workers(), help="processes (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``volfnet_cv_summary``; returns the exit code (2 for a user error)."""
    args = build_parser().parse_args(argv)

    def run() -> None:
        folder = locate_model_folder(args.dataset, args.configuration, args.network, args.tag)
        folds = parse_cross_validation_folds(args.folds)
        result = pool_cross_validation(folder, folds, args.num_workers)
        print(f"cross-validation of folds {result.folds}: {result.summary['num_cases']} case(s)")
        if result.missing_folds:
            print(f"warning: folds {result.missing_folds} have no final validation and are not included")
        print_summary_table(result.summary)
        print(f"summary: {result.folder / 'summary.json'} (and summary.csv)")

    return run_cli(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
