"""``volfnet_find_best_configuration -d ID``: choose the final model (or ensemble) and its
postprocessing from the cross-validation, and write the commands that reproduce it.

Argument parsing only; the work is in :mod:`volfnet.model_selection.best_configuration`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from volfnet.cli._common import run_cli
from volfnet.model_folder import parse_cross_validation_folds
from volfnet.model_selection.best_configuration import find_best_configuration
from volfnet.parallel import default_num_workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_find_best_configuration",
        description="Pool the cross-validation of every trained model of a dataset (each configuration, network and tag), "
        "ensemble each pair whose folds kept probabilities (volfnet_train --npz), pick the highest foreground-mean Dice, "
        "decide its postprocessing, and write inference_instructions.json/.txt with the commands to use it.",
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name, e.g. 4")
    parser.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
                        help="only models of these configurations (default: every trained model)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, metavar="FOLD",
                        help="folds every candidate must have validated (default: every fold of splits.json)")
    parser.add_argument("--disable-ensembling", action="store_true", help="compare single models only")
    parser.add_argument("--no-postprocessing", action="store_true", help="do not decide largest-component postprocessing")
    parser.add_argument("-np", "--num-workers", type=int, default=default_num_workers(), help="processes (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``volfnet_find_best_configuration``; returns the exit code (2 for a user error)."""
    args = build_parser().parse_args(argv)

    def run() -> None:
        folds = parse_cross_validation_folds(args.folds)
        result = find_best_configuration(
            args.dataset, args.configurations, folds, ensembles=not args.disable_ensembling,
            postprocessing=not args.no_postprocessing, num_workers=args.num_workers,
        )
        print(result.instructions_txt.read_text(), end="")
        print(f"written: {result.instructions_json} and {result.instructions_txt.name}")

    return run_cli(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
