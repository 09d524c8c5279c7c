"""Seconds per case and peak memory of volfnet's sliding-window prediction for a few volume sizes.

Each row runs in a fresh process (benchmarks/inference/runner.py), so its peak RSS (from
`resource.getrusage`) belongs to that case alone; "before" is the RSS with the input and the
network loaded, "buffers" the float32 accumulation buffers that
`volfnet.inference.sliding_window.accumulation_bytes` predicts. The network is the small
U-Net of tiny_unet.py with random weights; seconds (wall, and process CPU time, which a busy
shared machine disturbs much less) are the best of `--repeats` runs.

    python benchmarks/inference/speed_memory.py [--device cpu] [--repeats 2]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
from common import run, table, write_case

from volfnet.inference.sliding_window import accumulation_bytes, tile_starts

PATCH = (64, 64, 64)
CLASSES = 3
WIDTH = 8
BATCH = 2
# (shape, mirroring TTA): three sizes without TTA, and the smallest with the default 8-pass TTA.
CASES = [((96, 96, 96), False), ((96, 96, 96), True), ((128, 128, 128), False), ((200, 256, 256), False)]
SWEEP_SHAPE = (128, 128, 128)  # the tile batch sizes behind DEFAULT_TILE_BATCH_SIZE
SWEEP_BATCHES = (1, 2, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    def options(batch: int, tta: bool) -> list[str]:
        return ["--classes", str(CLASSES), "--width", str(WIDTH), "--patch", *map(str, PATCH), "--batch", str(batch),
                "--repeats", str(args.repeats), "--device", args.device] + (["--tta"] if tta else [])

    rows = []
    for shape, tta in CASES:
        image, weights = write_case("x".join(map(str, shape)), shape, 1, CLASSES, WIDTH)
        report = run(sys.executable, "volfnet", image, weights, options(BATCH, tta))
        tiles = math.prod(len(s) for s in tile_starts(shape, PATCH))
        rows.append([
            "x".join(map(str, shape)), CLASSES, tiles, 8 if tta else 1, f"{report['seconds']:.1f}", f"{report['cpu_seconds']:.1f}",
            f"{report['seconds'] / (tiles * (8 if tta else 1)) * 1000:.0f}",
            f"{report['baseline_rss_mb']:.0f}", f"{report['peak_rss_mb']:.0f}",
            f"{accumulation_bytes(shape, CLASSES) / 2**20:.0f}",
        ])
        print(f"done {rows[-1][0]} tta={tta}", file=sys.stderr, flush=True)
    image, weights = write_case("x".join(map(str, SWEEP_SHAPE)), SWEEP_SHAPE, 1, CLASSES, WIDTH)
    sweep = []
    for batch in SWEEP_BATCHES:
        report = run(sys.executable, "volfnet", image, weights, options(batch, False))
        sweep.append([batch, f"{report['seconds']:.1f}", f"{report['cpu_seconds']:.1f}", f"{report['peak_rss_mb']:.0f}"])
    print(f"volfnet sliding window on {args.device}: patch {PATCH}, step 0.5, Gaussian, tile batch {BATCH}, TinyUNet width {WIDTH}")
    print(table(["volume (ZxYxX)", "classes", "tiles", "passes", "s/case", "CPU s/case", "ms/tile-pass", "RSS before MB", "peak RSS MB", "buffers MB"], rows))
    print(f"\ntile batch size, {'x'.join(map(str, SWEEP_SHAPE))}, no TTA")
    print(table(["tile batch", "s/case", "CPU s/case", "peak RSS MB"], sweep))


if __name__ == "__main__":
    main()
