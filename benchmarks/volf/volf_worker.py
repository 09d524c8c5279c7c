"""One benchmark worker: makes VolF samples with one implementation on one CPU core.

Run by ``bench_volf.py`` as a subprocess, with volfnet's python for ``volfnet-*`` and with
the peer virtual environment's python for ``pymic`` (so PyMIC never enters volfnet's
environment). Prints one JSON line: per-sample seconds and fused-label/image statistics.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import json
import random
import time

import numpy as np
import torch

torch.set_num_threads(1)
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def pymic_maker(patch, block_min, block_max, num_classes, seed):
    from pymic.transform.crop4vf import Crop4VolumeFusion, VolumeFusion

    np.random.seed(seed)
    random.seed(seed)
    params = {
        "task": "segmentation",
        "crop4volumefusion_output_size": list(patch),
        "crop4volumefusion_augentation_mode": 3,
        "volumefusion_cls_num": num_classes,
        "volumefusion_foreground_ratio": 0.7,
        "volumefusion_patchsize_min": list(block_min),
        "volumefusion_patchsize_max": list(block_max),
    }
    crop, fusion = Crop4VolumeFusion(params), VolumeFusion(params)

    def sample(volume):
        result = fusion(crop({"image": volume}))
        return np.asarray(result["image"], dtype=np.float32), np.asarray(result["label"])

    def label_only():
        zeros = np.zeros((1, *patch), np.float32)
        return np.asarray(fusion({"image": (zeros, zeros)})["label"])

    return sample, label_only


def volfnet_maker(patch, block_min, block_max, num_classes, seed, backend):
    from volfnet.volf import VolFConfig, draw_label_map, make_fused_sample

    rng = np.random.default_rng(seed)
    config = VolFConfig(
        patch_size=list(patch), block_size_min=list(block_min), block_size_max=list(block_max), num_classes=num_classes
    )

    def sample(volume):
        return make_fused_sample(volume, config, rng, backend=backend)

    def label_only():
        return draw_label_map(config, rng)

    return sample, label_only


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["pymic", "volfnet-torch", "volfnet-numpy"], required=True)
    parser.add_argument("--volume", required=True)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--label-draws", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 128, 128])
    parser.add_argument("--block-min", type=int, nargs=3, default=[5, 8, 8])
    parser.add_argument("--block-max", type=int, nargs=3, default=[20, 32, 32])
    parser.add_argument("--num-classes", type=int, default=5)
    args = parser.parse_args()
    common = (args.patch, args.block_min, args.block_max, args.num_classes, args.seed)
    if args.impl == "pymic":
        sample, label_only = pymic_maker(*common)
    else:
        sample, label_only = volfnet_maker(*common, backend=args.impl.split("-")[1])
    volume = np.load(args.volume)
    sample(volume.copy())  # warm-up: imports, allocator, caches
    seconds, fractions, image_stats = [], [], []
    for _ in range(args.samples):
        source = volume.copy()
        start = time.perf_counter()
        image, label = sample(source)
        seconds.append(time.perf_counter() - start)
        fractions.append(np.bincount(label.ravel().astype(np.int64), minlength=args.num_classes)[: args.num_classes] / label.size)
        image_stats.append([float(image.mean()), float(image.std()), float(image.min()), float(image.max())])
    label_fractions = [
        (np.bincount(label_only().ravel().astype(np.int64), minlength=args.num_classes)[: args.num_classes] / np.prod(args.patch)).tolist()
        for _ in range(args.label_draws)
    ]
    print(json.dumps({"seconds": seconds, "fractions": np.array(fractions).tolist(), "image": image_stats, "label_only": label_fractions}))


if __name__ == "__main__":
    main()
