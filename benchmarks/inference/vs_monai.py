"""volfnet's sliding window side by side with MONAI's `sliding_window_inference`.

Same network (tiny_unet.py, same weights), same input, equal settings: patch 64^3, overlap
0.5 (volfnet step 0.5), Gaussian blending with sigma = patch/8, the same tile batch size, no
TTA (MONAI has none), float32 on the same device. Each implementation runs in its own fresh
process (MONAI from its private venv, benchmarks/_envs/monai, installed on first use); the
logits come back as .npy and are compared voxel by voxel. The two alternate for --rounds
rounds (volfnet, MONAI, volfnet, ...) of --repeats timed calls each, and each column is the best
of all its calls, so load from other processes hits both alike. Wall seconds are reported
beside process CPU seconds, which a busy shared machine disturbs much less.

"aligned" volumes have (size - patch) divisible by the half-patch step, where both place the
same tiles; elsewhere volfnet spreads its tiles evenly while MONAI steps by a fixed interval
and shifts the last tile, so predictions differ near tile borders by design. MONAI also
clamps the Gaussian to at least 1e-3, volfnet to its smallest positive value (~4e-11): near the
volume's faces and corners, where every covering tile weighs a voxel far below 1e-3, MONAI's
clamp turns the blend into a plain average while volfnet keeps the Gaussian's ratios, and the
two differ there by up to a few logits. The last difference column therefore reruns MONAI
with volfnet's own map as `roi_weight_map` (which MONAI uses unclamped): what remains is the
tile placement and float rounding.

    python benchmarks/inference/vs_monai.py [--device cpu] [--rounds 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
from common import WORK, ensure_monai, run, table, write_case

from volfnet.inference.sliding_window import gaussian_importance_map, tile_starts

PATCH = (64, 64, 64)
CLASSES = 3
WIDTH = 8
# (volume, tile batch, network width); width 0 is a 1x1x1 conv: the machinery's own cost.
CASES = [
    ((128, 128, 128), 1, WIDTH), ((128, 128, 128), 2, WIDTH), ((96, 160, 160), 2, WIDTH), ((100, 150, 170), 2, WIDTH),
    ((192, 192, 192), 2, 0), ((200, 256, 256), 2, 0),
]


def monai_tiles(shape: tuple[int, ...], overlap: float) -> int:
    """MONAI's tile count: a fixed interval int(patch * (1 - overlap)), the last tile shifted in."""
    counts = []
    for size, patch in zip(shape, PATCH):
        interval = max(int(patch * (1 - overlap)), 1)
        counts.append(1 if size <= patch else math.ceil((size - patch) / interval) + 1)
    return math.prod(counts)


def best(reports: list[dict]) -> dict[str, float]:
    """The fastest wall and CPU time over several runner reports, and the highest peak RSS."""
    return {
        "seconds": min(r["seconds"] for r in reports),
        "cpu_seconds": min(r["cpu_seconds"] for r in reports),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in reports),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    monai_python = ensure_monai()
    WORK.mkdir(parents=True, exist_ok=True)
    weight_map = WORK / "volfnet_gaussian.npy"
    np.save(weight_map, gaussian_importance_map(PATCH).numpy())
    rows = []
    for shape, batch, width in CASES:
        name = "x".join(map(str, shape))
        image, weights = write_case(f"{name}_w{width}", shape, 1, CLASSES, width)
        options = ["--classes", str(CLASSES), "--width", str(width), "--patch", *map(str, PATCH), "--step", "0.5",
                   "--batch", str(batch), "--repeats", str(args.repeats), "--device", args.device]
        outputs = {impl: WORK / f"{name}_b{batch}_w{width}_{impl}.npy" for impl in ("volfnet", "monai", "monai_same_map")}
        reports: dict[str, list[dict]] = {"volfnet": [], "monai": []}
        for _ in range(args.rounds):
            reports["volfnet"].append(run(sys.executable, "volfnet", image, weights, options, outputs["volfnet"]))
            reports["monai"].append(run(monai_python, "monai", image, weights, options, outputs["monai"]))
        ours, theirs = best(reports["volfnet"]), best(reports["monai"])
        run(monai_python, "monai", image, weights, [*options, "--repeats", "1", "--roi-weight-map", str(weight_map)], outputs["monai_same_map"])
        logits = np.load(outputs["volfnet"])
        difference = np.abs(logits - np.load(outputs["monai"]))
        same_map_difference = np.abs(logits - np.load(outputs["monai_same_map"]))
        aligned = all((s - p) % (p // 2) == 0 for s, p in zip(shape, PATCH))
        rows.append([
            name + (" (aligned)" if aligned else ""), f"TinyUNet w{width}" if width else "1x1x1 conv", batch,
            f"{math.prod(len(s) for s in tile_starts(shape, PATCH))}/{monai_tiles(shape, 0.5)}",
            f"{ours['seconds']:.2f}", f"{theirs['seconds']:.2f}", f"{ours['seconds'] / theirs['seconds']:.2f}",
            f"{ours['cpu_seconds'] / theirs['cpu_seconds']:.2f}",
            f"{difference.max():.2e}", f"{difference.mean():.2e}", f"{same_map_difference.max():.2e}",
            f"{ours['peak_rss_mb']:.0f}/{theirs['peak_rss_mb']:.0f}",
        ])
        print(f"done {name} batch {batch} width {width}", file=sys.stderr, flush=True)
    print(f"volfnet vs MONAI sliding_window_inference on {args.device}: patch {PATCH}, overlap 0.5, gaussian sigma 1/8, "
          f"{CLASSES} classes, best of {args.rounds}x{args.repeats} interleaved calls")
    print(table(["volume (ZxYxX)", "network", "tile batch", "tiles volfnet/MONAI", "volfnet s", "MONAI s", "wall ratio (volfnet/MONAI)", "CPU-time ratio",
                 "max |logit diff|", "mean |logit diff|", "max |diff|, same map", "peak RSS MB volfnet/MONAI"], rows))


if __name__ == "__main__":
    main()
