"""``volfnet_export_model -d ID -c CONFIG -f 0 1 ... -o model.zip``: a trained model as one zip.

Argument parsing only; the work is in :mod:`volfnet.model_sharing`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from volfnet.cli._common import check_model_choice, run_cli
from volfnet.inference.locate import locate_model_folder
from volfnet.model_sharing import EXPORT_CHECKPOINTS, export_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_export_model",
        description="Write a trained model (plans, dataset.json, postprocessing.json, the chosen folds' checkpoints "
        "and a manifest with SHA-256 checksums) to one zip that volfnet_install_model installs on another machine.",
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("-d", "--dataset", help="dataset id or name, e.g. 4 or Dataset004_Hippocampus (needs -c)")
    model.add_argument("-m", "--model-folder", type=Path, help="a model folder <results>/<dataset>/<network>__<configuration>[__<tag>]")
    parser.add_argument("-c", "--configuration", help="configuration with -d, e.g. 3d_fullres")
    parser.add_argument("--network", default=None, help="network with -d (default: the one the plans chose)")
    parser.add_argument("--tag", default="", help="with -d: the model folder's tag (volfnet_train --tag)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, metavar="FOLD",
                        help="folds to include: fold numbers and/or all (default: every fold that has the checkpoint)")
    parser.add_argument("-chk", "--checkpoint", choices=EXPORT_CHECKPOINTS, default="final",
                        help="which checkpoint_<name>.pt of each fold (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the zip file to write, e.g. model.zip")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``volfnet_export_model``; returns the exit code (2 for a user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_choice(parser, args)

    def run() -> None:
        folder = args.model_folder or locate_model_folder(args.dataset, args.configuration, args.network, args.tag)
        manifest = export_model(folder, args.output, args.folds, args.checkpoint)
        size = args.output.stat().st_size / 2**20
        print(f"{manifest.prefix.rstrip('/')}: folds {manifest.folds}, checkpoint_{manifest.checkpoint}, "
              f"{len(manifest.files)} file(s) -> {args.output} ({size:.1f} MiB)")

    return run_cli(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
