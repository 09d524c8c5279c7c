"""Why the CPU predictor never runs a batch of one: forward time per sample vs batch size.

PyTorch's CPU conv3d (oneDNN) is far slower per sample for a batch of one than for two when
the layers are narrow, so :func:`volfnet.inference.tta.min_forward_batch` makes narrow
networks on the CPU group mirror passes (and duplicate a lone pass) into batches of two. This script measures both the raw effect (FMUNet
forward, ms per sample at batch 1, 2, 4) and the result (one tile with 8 mirror passes, grouped
vs one pass at a time), in one process, and prints the ratios.

    python benchmarks/inference/cpu_batch.py [--features 8 16 32 64] [--patch 40 56 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from volfnet.inference import tta
from volfnet.networks.fmunet import FMUNet


def per_call_ms(work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up: oneDNN picks and caches its kernels on the first call
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--patch", type=int, nargs=3, default=[40, 56, 40])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    levels = len(args.features)
    network = FMUNet(
        in_channels=1, num_classes=3, feature_channels=args.features, strides=[[2, 2, 2]] * (levels - 1),
        kernel_sizes=[[3, 3, 3]] * levels, dropout=[0.0] * levels, deep_supervision=False,
    ).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, FMUNet {args.features}, patch {args.patch}")
    with torch.inference_mode():
        baseline = None
        for batch in (1, 2, 4):
            x = torch.randn(batch, 1, *args.patch)
            ms = per_call_ms(lambda: network(x), args.repeats) / batch
            baseline = baseline or ms
            print(f"forward, batch {batch}: {ms:7.1f} ms per sample  (batch 1 / this: {baseline / ms:4.1f}x)")
        tile = torch.randn(1, 1, *args.patch)
        combinations = tta.mirror_combinations((0, 1, 2))
        grouped = per_call_ms(lambda: tta.summed_logits([network], tile, combinations, min_batch=2), args.repeats)
        single = per_call_ms(lambda: tta.summed_logits([network], tile, combinations, min_batch=1), args.repeats)
    print(f"one tile, 8 mirror passes: one pass at a time {single:.0f} ms, grouped {grouped:.0f} ms: {single / grouped:.1f}x faster")


if __name__ == "__main__":
    main()
