"""``volfnet_train``: train (or fine-tune) one fold of a configuration."""

from __future__ import annotations

import argparse

from volfnet.cli._common import run_cli
from volfnet.training.train import DEFAULT_PRETRAINED, TrainRequest, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volfnet_train",
        description="Train one fold of a preprocessed configuration, from scratch or from pretrained weights.",
    )
    parser.add_argument("dataset", help="dataset id (e.g. 4) or full name (Dataset004_Hippocampus)")
    parser.add_argument("configuration", help="configuration, e.g. 3d_fullres")
    parser.add_argument("fold", help="fold 0..N-1 for the N folds of splits.json (5 unless you wrote it), or 'all' to train on every case")
    parser.add_argument("--network", choices=["fmunet", "pctnet"], help="check that the plans use this network")
    parser.add_argument(
        "--pretrained", nargs="?", const=DEFAULT_PRETRAINED, default=None, metavar="PATH",
        help="start from pretrained weights: without PATH, this dataset's VolF checkpoint written by volfnet_pretrain; "
        "with PATH, any compatible volfnet or PyMIC/MIS-FM checkpoint",
    )
    parser.add_argument("--encoder-only", action="store_true", help="with --pretrained: load only the encoder (the same as --set pretrained_weights=encoder; "
                        "by default every weight that fits is loaded)")
    parser.add_argument("--c", "--continue", dest="resume", action="store_true", help="continue from checkpoint_latest.pt")
    parser.add_argument("--val", dest="validation_only", action="store_true", help="only run the final validation with checkpoint_final.pt")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    parser.add_argument(
        "--num-gpus", type=int, default=1,
        help="train with N processes (DistributedDataParallel; one per GPU, or N CPU processes with --device cpu)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a trainer setting, e.g. --set num_epochs=100 --set lr=0.003 (value is JSON; repeatable)",
    )
    parser.add_argument("--npz", action="store_true",
                        help="also keep the validation probabilities (validation/<case>.npz), for ensembles of configurations")
    parser.add_argument("--tag", default="", help="keep this model apart from others of the same network and configuration")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    request = TrainRequest(
        dataset=args.dataset,
        configuration=args.configuration,
        fold=args.fold,
        network=args.network,
        pretrained=args.pretrained,
        encoder_only=args.encoder_only,
        resume=args.resume,
        validation_only=args.validation_only,
        device=args.device,
        num_gpus=args.num_gpus,
        overrides=args.overrides,
        tag=args.tag,
        save_probabilities=args.npz,
    )

    def run() -> None:
        result = train(request)
        if result is None:
            return
        best = f" (best moving-average pseudo Dice {result.best_ema_dice:.4f})" if result.log.best_epoch >= 0 else ""
        print(f"training done: {result.final_checkpoint}{best}")

    return run_cli(run, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
