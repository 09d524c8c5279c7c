"""``volfnet_predict -i IN -o OUT (-d DATASET -c CONFIG | -m MODEL_FOLDER)``: segment new scans.

Argument parsing only; the work is in :class:`volfnet.inference.predictor.Predictor`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from volfnet.cli._common import check_model_choice, run_cli
from volfnet.evaluation.postprocessing import load_postprocessing
from volfnet.inference.locate import locate_model_folder
from volfnet.inference.openvino_backend import BACKENDS, DEFAULT_BACKEND
from volfnet.inference.predictor import Predictor
from volfnet.inference.sliding_window import DEFAULT_STEP_FRACTION

CHECKPOINT_CHOICES = ("final", "best")
NO_POSTPROCESSING = "none"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_predict",
        description="Segment images with a trained model. Outputs <case><ending> label maps in the geometry of the "
        "input images (and <case>.npz probabilities with --save-probabilities).",
    )
    parser.add_argument("-i", "--input", type=Path, required=True,
                        help="folder of images named {case}_0000<ending> (one file per channel; single-channel models "
                        "also take freely named files), or one image file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (created if missing)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("-d", "--dataset", help="dataset id or name, e.g. 4 or Dataset004_Hippocampus (needs -c)")
    model.add_argument("-m", "--model-folder", type=Path, help="a model folder <results>/<dataset>/<network>__<configuration>")
    parser.add_argument("-c", "--configuration", help="configuration with -d, e.g. 3d_fullres")
    parser.add_argument("--network", default=None, help="network with -d (default: the one the plans chose)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, metavar="FOLD",
                        help="folds to average: fold numbers (0 1 2 ...) and/or all (default: every fold that has the checkpoint)")
    parser.add_argument("-chk", "--checkpoint", choices=CHECKPOINT_CHOICES, default="final",
                        help="checkpoint_<name>.pt to use (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--step", type=float, default=DEFAULT_STEP_FRACTION,
                        help="sliding-window step as a fraction of the patch (default: %(default)s)")
    parser.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation (up to 8x faster)")
    parser.add_argument("--mirror-axes", type=int, nargs="+", default=None, metavar="AXIS",
                        help="mirror only along these axes (0 = Z), a subset of those training mirrored: "
                        "2^n passes per window (default: every axis training mirrored)")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="what runs the network: torch (default), or openvino on the CPU (pip install openvino; "
                        "1.6-2.2x faster forward passes on 2 cores, see documentation/inference.md)")
    parser.add_argument("--compile", action="store_true",
                        help="run the network through torch.compile: 3-20 s of compilation per window shape, then faster "
                        "windows (1.2x for a long prediction with mirroring on 2 CPU cores; see documentation/inference.md)")
    parser.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz with the class probabilities")
    parser.add_argument(
        "--prev-stage", "-prev-stage", dest="prev_stage", type=Path, default=None, metavar="FOLDER",
        help="3d_cascade_fullres only: a folder with the 3d_lowres predictions of the input cases (<case><ending>); "
        "default: run the 3d_lowres model beside the cascade's model folder on each case first",
    )
    parser.add_argument(
        "--postprocessing", default=None, metavar="JSON|none",
        help="the postprocessing.json to apply (e.g. the one volfnet_find_best_configuration decided), or 'none'; "
        "default: the model folder's postprocessing.json when it has one",
    )
    parser.add_argument("--continue", dest="skip_existing", action="store_true",
                        help="skip cases whose outputs exist (resume an interrupted run)")
    parser.add_argument("--part", type=int, default=0,
                        help="with --num-parts: predict only this share (0-based) of the cases, to split a folder over jobs")
    parser.add_argument("--num-parts", type=int, default=1, help="number of jobs sharing the input folder (default: 1)")
    parser.add_argument("-np", "--num-workers", type=int, default=None,
                        help="preprocessing processes running ahead of the network; 0: none "
                        "(default: 2 with a GPU, 0 on the CPU, where the network already uses every core)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``volfnet_predict``; returns the exit code (2 for a user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_choice(parser, args)

    def run() -> None:
        folder = args.model_folder or locate_model_folder(args.dataset, args.configuration, args.network)
        options = {}
        if args.postprocessing is not None:  # else the model folder's own decision, when it has one
            options["postprocessing"] = None if args.postprocessing == NO_POSTPROCESSING else load_postprocessing(Path(args.postprocessing))
        predictor = Predictor.from_model_folder(
            folder, folds=args.folds, checkpoint=args.checkpoint, device=args.device, step_fraction=args.step,
            use_mirroring=not args.disable_tta, mirror_axes=args.mirror_axes, backend=args.backend, compile=args.compile,
            num_workers=args.num_workers, previous_stage_folder=args.prev_stage, **options,
        )
        summary = predictor.predict(args.input, args.output, args.save_probabilities, args.skip_existing, args.part, args.num_parts)
        skipped = f", {len(summary.skipped)} skipped (already there)" if summary.skipped else ""
        print(f"{len(summary.predicted)} case(s) predicted{skipped} in {summary.seconds:.1f} s -> {summary.output_folder}")

    return run_cli(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
