"""``volfnet_demo``: the whole volfnet path on a built-in synthetic CT dataset (no download).

Generate scans → plan and preprocess → VolF pretraining → fine-tuning → training from scratch
with the same budget and recipe → prediction of held-out scans in their original geometry → evaluation,
then a table of Dice per class, pretrained vs scratch, and where the outputs and plots are.
"""

from __future__ import annotations

import argparse
import math
import time

from volfnet.cli._common import run_cli
from volfnet.demo.pipeline import (
    COMPUTE_TARGET,
    ITERATIONS_PER_EPOCH,
    PRETRAIN_ITERATIONS,
    TRAIN_EPOCHS,
    DemoResult,
    DemoSettings,
    run_demo,
)
from volfnet.demo.synthetic import DemoDatasetSizes
from volfnet.training.config import DEFAULT_SEED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="volfnet_demo", description="Run volfnet end to end on a built-in synthetic CT dataset.")
    parser.add_argument("--num-train", type=int, default=DemoDatasetSizes.train, help=f"labelled training scans (default {DemoDatasetSizes.train})")
    parser.add_argument("--num-test", type=int, default=DemoDatasetSizes.test, help=f"held-out labelled scans (default {DemoDatasetSizes.test})")
    parser.add_argument("--num-unlabelled", type=int, default=DemoDatasetSizes.unlabelled, help=f"unlabelled scans for pretraining (default {DemoDatasetSizes.unlabelled})")
    parser.add_argument("--pretrain-iterations", type=int, default=PRETRAIN_ITERATIONS, help=f"VolF pretraining iterations (default {PRETRAIN_ITERATIONS})")
    parser.add_argument("--epochs", type=int, default=TRAIN_EPOCHS, help=f"training epochs of each model (default {TRAIN_EPOCHS})")
    parser.add_argument("--iterations-per-epoch", type=int, default=ITERATIONS_PER_EPOCH, help=f"iterations per epoch (default {ITERATIONS_PER_EPOCH})")
    parser.add_argument("--target", default=COMPUTE_TARGET, help=f"compute target of the plans (default {COMPUTE_TARGET})")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="device (default: CUDA when available)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data")
    parser.add_argument("--train-seed", type=int, default=DEFAULT_SEED,
                        help=f"trainer seed of both models (default {DEFAULT_SEED}); another seed trains into its own model folders")
    parser.add_argument("-np", "--num-workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def format_table(result: DemoResult) -> str:
    """Dice per class (and HD95 of the foreground mean) for both models, one line each."""
    pretrained = result.summaries["pretrained"]
    labels = [(key, name) for key, name in pretrained["labels"].items() if key != "0"]
    header = f"{'model':<22}" + "".join(f"{name:>10}" for _, name in labels) + f"{'mean':>10}{'HD95 mm':>10}"
    lines = ["Dice on the held-out scans", header, "-" * len(header)]
    for variant, title in (("scratch", "from scratch"), ("pretrained", "VolF-pretrained")):
        summary = result.summaries[variant]
        dice = [summary["mean"][key]["Dice"] for key, _ in labels]
        row = f"{title:<22}" + "".join(f"{_number(value, 3):>10}" for value in dice)
        row += f"{_number(summary['foreground_mean']['Dice'], 3):>10}{_number(summary['foreground_mean']['HD95'], 1):>10}"
        lines.append(row)
    return "\n".join(lines)


def _number(value: float | None, decimals: int) -> str:
    """A metric for the table; undefined values (null in JSON, NaN in memory) show as n/a."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> None:
        start = time.perf_counter()
        settings = DemoSettings(
            sizes=DemoDatasetSizes(train=args.num_train, test=args.num_test, unlabelled=args.num_unlabelled),
            seed=args.seed,
            num_workers=args.num_workers,
            device=args.device,
            pretrain_iterations=args.pretrain_iterations,
            train_epochs=args.epochs,
            iterations_per_epoch=args.iterations_per_epoch,
            compute_target=args.target,
            train_seed=args.train_seed,
        )
        result = run_demo(settings, on_stage=lambda index, total, title: print(f"\n[{index}/{total}] {title}", flush=True))
        print()
        print(format_table(result))
        print()
        print("stage times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.stage_seconds.items()))
        print(f"raw data:            {result.raw_folder}")
        print(f"plans and caches:    {result.preprocessed_folder}")
        print(f"pretrained model:    {result.pretrained_model}  (pretrain/ and fold_all/: progress.png, samples.png, log.txt)")
        print(f"model from scratch:  {result.scratch_model}")
        print(f"predictions:         {result.pretrained_model / 'demo_predictions'}  (summary.json, summary.csv)")
        print(f"done in {(time.perf_counter() - start) / 60:.1f} min")

    return run_cli(run, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
