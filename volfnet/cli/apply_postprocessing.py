"""``volfnet_apply_postprocessing -i IN -o OUT -pp postprocessing.json``: post-process a folder of label maps.

Argument parsing only; the work is in :mod:`volfnet.inference.postprocess_folder`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from volfnet.cli._common import run_cli
from volfnet.evaluation.postprocessing import load_postprocessing
from volfnet.inference.postprocess_folder import postprocess_folder
from volfnet.parallel import default_num_workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_apply_postprocessing",
        description="Apply a postprocessing decision (postprocessing.json, written by volfnet_evaluate "
        "--determine-postprocessing) to every label map in a folder; geometry and voxel type are kept.",
    )
    parser.add_argument("-i", "--input", type=Path, required=True, help="folder of label maps")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (created if missing; not the input folder)")
    parser.add_argument("-pp", "--postprocessing", type=Path, required=True, metavar="JSON", help="the postprocessing.json to apply")
    parser.add_argument("-np", "--num-workers", type=int, default=default_num_workers(), help="processes (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``volfnet_apply_postprocessing``; returns the exit code (2 for a user error)."""
    args = build_parser().parse_args(argv)

    def run() -> None:
        decision = load_postprocessing(args.postprocessing)
        summary = postprocess_folder(args.input, args.output, decision, args.num_workers)
        print(f"{len(summary.written)} label map(s) post-processed -> {summary.output_folder}")

    return run_cli(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
