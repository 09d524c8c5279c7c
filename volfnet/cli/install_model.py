"""``volfnet_install_model model.zip [--force]``: check a model archive and install it under VOLFNET_results.

Argument parsing only; the work is in :mod:`volfnet.model_sharing`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from volfnet.cli._common import run_cli
from volfnet.model_sharing import install_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_install_model",
        description="Install a model archive written by volfnet_export_model into $VOLFNET_results/<dataset>/<model folder>, "
        "after checking every file against the archive's manifest (checksums, no missing or extra files, safe paths, "
        "a format version this volfnet reads). A bad archive installs nothing.",
    )
    parser.add_argument("archive", type=Path, help="the zip file, e.g. model.zip")
    parser.add_argument("--force", action="store_true", help="replace a model folder that is installed there already")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``volfnet_install_model``; returns the exit code (2 for a user error)."""
    args = build_parser().parse_args(argv)

    def run() -> None:
        folder = install_model(args.archive, force=args.force)
        print(f"installed {folder}\npredict with: volfnet_predict -i IN -o OUT -m {folder}")

    return run_cli(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
