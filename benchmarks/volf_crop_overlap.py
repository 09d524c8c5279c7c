"""How much do the two VolF crops of one image overlap, and which pretext does ``auto`` pick?

    python benchmarks/volf_crop_overlap.py [--samples 2000]

The grid fusion (the published journal version) mixes two crops of the *same* image. When an
image is barely larger than the patch, both crops cover nearly all of it and the fused image
mixes the image with a shifted, flipped, re-contrasted copy of itself: the mixing level is then
hard to see. This prints the mean IoU of the two crops' source boxes for MSD Hippocampus and
CT-sized volumes at a few patches, with the default VolF settings, and the fusion mode
``volfnet_pretrain`` chooses from it (volfnet/volf/pretext_choice.py).
"""

from __future__ import annotations

import argparse

from volfnet.volf.config import AUTO_FUSION_MODE, VolFConfig
from volfnet.volf.pretext_choice import fusion_mode_for_overlap, mean_crop_overlap

CASES = {
    "MSD Hippocampus median image 36 x 50 x 35, patch 40 x 56 x 40 (cpu_small plan)": ((36, 50, 35), [40, 56, 40]),
    "MSD Hippocampus median image 36 x 50 x 35, crops 24 x 32 x 24 (box24 / grid24)": ((36, 50, 35), [24, 32, 24]),
    "thoracic CT crop 120 x 126 x 164, patch 64 x 128 x 128": ((120, 126, 164), [64, 128, 128]),
    "CT volume 200 x 300 x 300, patch 64 x 128 x 128 (published)": ((200, 300, 300), [64, 128, 128]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="crop pairs drawn per case")
    args = parser.parse_args()
    print("| image and patch | mean IoU of the two crops | fusion_mode auto picks |")
    print("|---|---:|---|")
    for name, (shape, patch) in CASES.items():
        config = VolFConfig(patch_size=patch, fusion_mode=AUTO_FUSION_MODE)
        overlap = mean_crop_overlap(shape, config, samples=args.samples)
        print(f"| {name} | {overlap:.2f} | {fusion_mode_for_overlap(overlap)} |")  # the overlap computed once


if __name__ == "__main__":
    main()
