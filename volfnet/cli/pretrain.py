"""``volfnet_pretrain``: VolF self-supervised pretraining on every image of one or more datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from volfnet.cli._common import run_cli
from volfnet.training.pretrain_pool import default_configuration_of
from volfnet.training.pretrain import PretrainRequest, pretrain
from volfnet.training.pretrain_data import DEFAULT_VALIDATION_SAMPLES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_pretrain",
        description=(
            "Pretrain the plans' network with Volume Fusion on every image of the given preprocessed datasets "
            "(training images without their labels, imagesTs, extra folders). Writes "
            "<results>/<first dataset>/<network>__<configuration>/pretrain/."
        ),
    )
    parser.add_argument("-d", "--datasets", nargs="+", required=True, help="dataset id(s) or name(s); the first one's plans configure the run")
    parser.add_argument("-c", "--configuration", default=None,
                        help="configuration whose network, patch and caches are used (default 3d_fullres; 2d for a dataset of 2D pictures)")
    parser.add_argument("--network", choices=["fmunet", "pctnet"], help="network (default: the plans' network)")
    parser.add_argument(
        "--published", action="store_true",
        help="pretrain the published MIS-FM topology (full widths) instead of the plans' (writes to <network>__<configuration>__published)",
    )
    parser.add_argument(
        "--tag", default="",
        help="write to <network>__<configuration>__<tag> (e.g. to compare VolF settings); volfnet_train --tag <tag> --pretrained finds it",
    )
    parser.add_argument(
        "--images", nargs="+", default=[], metavar="DIR", action="extend",
        help="extra folders of unlabelled images, preprocessed once with the first dataset's plans (repeatable)",
    )
    parser.add_argument("--iterations", type=int, help="total training iterations (default 100000; lr halved every fifth)")
    parser.add_argument(
        "--weights", type=float, nargs="+", metavar="W",
        help="sampling weight per dataset, then per --images folder (default: every volume equally likely)",
    )
    parser.add_argument(
        "--val-samples", type=int, default=DEFAULT_VALIDATION_SAMPLES,
        help=f"fused samples in the fixed validation set (default {DEFAULT_VALIDATION_SAMPLES})",
    )
    parser.add_argument("--no-test-images", action="store_true", help="leave the datasets' imagesTs out of the pool")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="trainer setting (e.g. lr=0.0005, batch_size=4) or VolF setting with the volf. prefix "
        "(e.g. volf.fusion_mode=box, volf.num_classes=5); value is JSON; repeatable",
    )
    parser.add_argument("--c", "--continue", dest="resume", action="store_true", help="continue from pretrain/checkpoint_latest.pt")
    parser.add_argument(
        "--num-gpus", type=int, default=1,
        help="train with N processes (DistributedDataParallel; one per GPU, or N CPU processes with --device cpu)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    parser.add_argument("-np", "--num-workers", type=int, default=2, help="processes for preprocessing new pool images (default 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def request_from_args(args: argparse.Namespace) -> PretrainRequest:
    """The library request the parsed arguments describe."""
    return PretrainRequest(
        datasets=list(args.datasets),
        configuration=args.configuration or default_configuration_of(str(args.datasets[0])),
        network=args.network,
        published=args.published,
        tag=args.tag,
        images=[Path(p) for p in args.images],
        iterations=args.iterations,
        overrides=args.overrides,
        resume=args.resume,
        device=args.device,
        num_gpus=args.num_gpus,
        weights=args.weights,
        validation_samples=args.val_samples,
        include_test_images=not args.no_test_images,
        preprocess_workers=args.num_workers,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    request = request_from_args(args)

    def run() -> None:
        result = pretrain(request)
        if result is not None:
            print(
                f"pretraining done: {result.final_checkpoint} (best moving-average Dice over the fusion levels "
                f"{result.best_ema_dice:.4f}); fine-tune with volfnet_train DATASET CONFIGURATION FOLD --pretrained"
            )

    return run_cli(run, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
