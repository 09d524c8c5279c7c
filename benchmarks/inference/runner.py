"""Time one sliding-window prediction in this process and report it as one JSON line.

Run by the benchmark drivers in a fresh process per measurement, so that peak RSS belongs to
one case alone: `--impl volfnet` with the project's Python, `--impl monai` with the Python of
benchmarks/_envs/monai (MONAI is never imported by volfnet). Weights and input arrive as a
`torch.save`d state dict and an `.npy` file; the logits leave as `.npy` (no pickle).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tiny_unet import build

KB_PER_MB = 1024  # ru_maxrss is in kilobytes on Linux


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KB_PER_MB


def predictor(args: argparse.Namespace, network: torch.nn.Module):
    """A function image (C, Z, Y, X) -> logits (K, Z, Y, X) for the chosen implementation."""
    if args.impl == "volfnet":
        sys.path.insert(0, str(HERE.parents[1]))
        from volfnet.inference.sliding_window import predict_sliding_window

        mirror_axes = (0, 1, 2) if args.tta else None
        return lambda image: predict_sliding_window(
            network, image, args.patch, args.classes, step_fraction=args.step, mirror_axes=mirror_axes,
            tile_batch_size=args.batch, device=args.device, output_device="cpu",
        )
    from monai.inferers import sliding_window_inference

    if args.tta:
        raise SystemExit("MONAI's sliding_window_inference has no mirroring TTA; compare with --no-tta")

    weight_map = None
    if args.roi_weight_map is not None:  # a given map replaces MONAI's own (and its 1e-3 clamp)
        weight_map = torch.from_numpy(np.load(args.roi_weight_map))[None, None].to(args.device)

    def run(image: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            output = sliding_window_inference(
                image[None].to(args.device), args.patch, args.batch, network, overlap=1 - args.step,
                mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0, device="cpu",
                roi_weight_map=weight_map,
            )
        return output[0]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", choices=["volfnet", "monai"], required=True)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--step", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--roi-weight-map", type=Path, help="monai only: .npy importance map to use instead of its own")
    args = parser.parse_args()

    image = torch.from_numpy(np.load(args.input))
    network = build(image.shape[0], args.classes, args.width, seed=0)
    network.load_state_dict(torch.load(args.weights, weights_only=True))
    network.to(args.device)
    with torch.inference_mode():  # warm-up: first-call kernel selection is not inference time
        network(torch.zeros(1, image.shape[0], *args.patch, device=args.device))
    run = predictor(args, network)
    baseline = peak_rss_mb()
    seconds, cpu_seconds, logits = [], [], None
    for _ in range(args.repeats):
        logits = None  # drop the previous result so that peak RSS counts one output
        start, cpu_start = time.perf_counter(), time.process_time()
        logits = run(image)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    if args.output is not None:
        np.save(args.output, logits.cpu().numpy())
    print(json.dumps({"seconds": min(seconds), "all_seconds": seconds, "cpu_seconds": min(cpu_seconds), "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
