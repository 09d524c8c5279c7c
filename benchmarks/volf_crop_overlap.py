"""How much do the two VolF crops of one image overlap? Mean IoU of their source boxes.

    python benchmarks/volf_crop_overlap.py [--samples 2000]

The grid fusion (the published journal version) mixes two crops of the *same* image. When an
image is barely larger than the patch, both crops cover nearly all of it and the fused image
mixes the image with a shifted, flipped, re-contrasted copy of itself: the mixing level is then
hard to see. This prints the overlap for a median MSD Hippocampus image at the CPU preset's
patch and for a CT-sized volume at the published patch, with the default VolF settings.
"""

from __future__ import annotations

import argparse

import numpy as np

from volfnet.volf.config import VolFConfig
from volfnet.volf.crop import CropParams, draw_crop_params, padded_shape

CASES = {
    "MSD Hippocampus median image 36 x 50 x 35, patch 40 x 56 x 40": ((36, 50, 35), [40, 56, 40]),
    "CT volume 200 x 300 x 300, patch 64 x 128 x 128 (published)": ((200, 300, 300), [64, 128, 128]),
}


def box_iou(a: CropParams, b: CropParams) -> float:
    inter = float(np.prod([max(0, min(sa + ca, sb + cb) - max(sa, sb)) for sa, ca, sb, cb in zip(a.start, a.size, b.start, b.size)]))
    return inter / (float(np.prod(a.size)) + float(np.prod(b.size)) - inter)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="crop pairs drawn per case")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(0)
    print("| image and patch | mean IoU of the two crops | pairs with IoU > 0.5 |")
    print("|---|---:|---:|")
    for name, (shape, patch) in CASES.items():
        config = VolFConfig(patch_size=patch).resolved()
        padded = padded_shape(shape, patch)
        ious = np.array([box_iou(draw_crop_params(padded, config, rng), draw_crop_params(padded, config, rng)) for _ in range(args.samples)])
        print(f"| {name} | {ious.mean():.2f} | {np.mean(ious > 0.5):.0%} |")


if __name__ == "__main__":
    main()
