"""``volfnet_evaluate GT_FOLDER PRED_FOLDER [-l 1 2 | -d DATASET]``: score predictions.

Argument parsing and printing only; the work is in :mod:`volfnet.evaluation`.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

from volfnet.errors import VolfnetError
from volfnet.evaluation.evaluate import DEFAULT_TOLERANCE_MM, OVERLAY_FOLDER, SUMMARY_JSON, evaluate_folder
from volfnet.parallel import default_num_workers
from volfnet.evaluation.postprocessing import POSTPROCESSING_FILE, determine_postprocessing
from volfnet.io.dataset import RawDataset
from volfnet.paths import raw_root

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_evaluate",
        description="Score predicted label maps against references: Dice, IoU, HD95, ASSD and normalised "
        "surface Dice per case and label; writes summary.json and summary.csv.",
    )
    parser.add_argument("gt_folder", type=Path, help="folder with the reference label maps")
    parser.add_argument("pred_folder", type=Path, help="folder with predictions named like the references")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("-l", "--labels", type=int, nargs="+", help="label values to score, e.g. -l 1 2")
    which.add_argument("-d", "--dataset", help="take the foreground labels from this raw dataset's dataset.json (id or name)")
    parser.add_argument("--ignore-label", type=int, default=None,
                        help="with -l: reference voxels of this value are left out of every metric (with -d: dataset.json's 'ignore')")
    parser.add_argument("-o", "--output", type=Path, default=None, help="folder for summary.json/csv (default: PRED_FOLDER)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM, help="NSD tolerance in mm (default: %(default)s)")
    parser.add_argument("--file-ending", default=None, help="image ending, e.g. .nii.gz (default: detected)")
    parser.add_argument("-np", "--num-workers", type=int, default=default_num_workers(), help="processes (default: %(default)s)")
    parser.add_argument("--allow-missing", action="store_true", help="score only the cases that have a prediction")
    parser.add_argument("--overlays", type=Path, default=None, metavar="IMAGES_FOLDER",
                        help="write overlays/<case>.png using the images {case}_0000<ending> from this folder")
    parser.add_argument("--determine-postprocessing", action="store_true",
                        help=f"also decide largest-component postprocessing and write {POSTPROCESSING_FILE}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    return parser


def _labels_from_dataset(identifier: str) -> tuple[dict[str, int], int | None, list[tuple[int, ...]] | None]:
    """The dataset's foreground labels, its ignore label and its regions (None without)."""
    dataset_json = RawDataset.open(identifier, raw_root()).dataset_json
    labels = {name: value for name, value in dataset_json.labels.items() if value > 0}
    return labels, dataset_json.ignore_label, dataset_json.regions or None


def _format(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def print_summary_table(summary: dict) -> None:
    """The per-label means and the foreground mean of a summary, one row each."""
    header = f"{'label':<20} {'Dice':>8} {'IoU':>8} {'HD95 mm':>8} {'ASSD mm':>8} {'NSD':>8}"
    print(header)
    print("-" * len(header))
    rows = [(f"{key} {entry['name']}" if entry["name"] != key else key, entry) for key, entry in summary["mean"].items()]
    rows.append(("foreground mean", summary["foreground_mean"]))
    for name, entry in rows:
        values = " ".join(f"{_format(entry[m]):>8}" for m in ("Dice", "IoU", "HD95", "ASSD", "NSD"))
        print(f"{name[:20]:<20} {values}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``volfnet_evaluate``; returns the exit code (2 for a user error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.labels is not None:
            labels, ignore_label, regions = args.labels, args.ignore_label, None
        else:
            labels, ignore_label, regions = _labels_from_dataset(args.dataset)
        if regions and args.determine_postprocessing:
            raise VolfnetError("--determine-postprocessing works on label maps of classes; this dataset's labels are regions")
        output = args.output if args.output is not None else args.pred_folder
        summary = evaluate_folder(
            args.gt_folder,
            args.pred_folder,
            labels,
            file_ending=args.file_ending,
            tolerance_mm=args.tolerance,
            num_workers=args.num_workers,
            output_folder=output,
            allow_missing=args.allow_missing,
            overlay_images_folder=args.overlays,
            ignore_label=ignore_label,
            regions=regions,
        )
        decision = None
        if args.determine_postprocessing:
            decision = determine_postprocessing(
                args.gt_folder, args.pred_folder, labels, output, args.file_ending, args.num_workers, args.allow_missing, ignore_label
            )
    except VolfnetError as exc:
        print(f"volfnet_evaluate: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"{summary['num_cases']} case(s), NSD tolerance {summary['tolerance_mm']} mm")
    print_summary_table(summary)
    print(f"summary: {output / SUMMARY_JSON} (and summary.csv)")
    if args.overlays is not None:
        print(f"overlays: {output / OVERLAY_FOLDER}")
    if decision is not None:
        print(
            f"postprocessing: foreground largest component {decision.foreground_largest_component}, "
            f"per label {decision.per_label}; foreground Dice {_format(decision.dice_before['foreground_mean'])} -> "
            f"{_format(decision.dice_after['foreground_mean'])} ({output / POSTPROCESSING_FILE})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
