"""How hard does the first segmentation step pull on a VolF-pretrained encoder, compared with a
randomly initialised one? One forward and backward pass on labelled Hippocampus cases.

    python benchmarks/hippocampus/gradient_probe.py [--work benchmarks/_work/hippocampus] [--cases 4]

Run after ``run_hippocampus.py`` (it reads that work folder's plans, the fold-1 training cases
and every ``pretrain/checkpoint_final.pt`` there). For each encoder convolution it prints
||gradient|| / ||weight|| of the cross-entropy of the full-resolution output, for a random
network and for the same network (same seed, so the same decoder and head) with the
pretrained encoder loaded. With normalised layers the relative gradient is the relative step
SGD takes: a ratio below 1 means the pretrained encoder moves that much more slowly at the same
learning rate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from volfnet.data.patch_sampler import crop_with_padding
from volfnet.networks.build import build_network
from volfnet.plans import Plans
from volfnet.io.case_store import load_case
from volfnet.training.initial_weights import load_initial_weights

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from run_hippocampus import CONFIGURATION, DATASET  # noqa: E402  (its work folder is read here)

REPOSITORY = HERE.parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks" / "_work" / "hippocampus")
    parser.add_argument("--cases", type=int, default=4, help="fold-1 training cases in the batch")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the network initialisation")
    return parser.parse_args()


def relative_gradients(model: torch.nn.Module, image: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    model.train()
    model.zero_grad()
    output = model(image)
    output = output[0] if isinstance(output, (list, tuple)) else output
    F.cross_entropy(output, target).backward()
    return {
        name: float(p.grad.norm() / p.detach().norm())
        for name, p in model.named_parameters()
        if p.ndim == 5 and name.startswith("encoder.")
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    preprocessed = args.work / "preprocessed" / DATASET
    plans = Plans.load(preprocessed / "plans.json")
    plan = plans.configuration(CONFIGURATION)
    cases = json.loads((preprocessed / "splits.json").read_text())[1]["train"][: args.cases]
    images, labels = [], []
    for case in cases:
        image, seg, _ = load_case(preprocessed / CONFIGURATION, case)
        images.append(crop_with_padding(image, [0, 0, 0], plan.patch_size, 0.0))  # the patch at the origin
        labels.append(crop_with_padding(seg, [0, 0, 0], plan.patch_size, 0))
    image = torch.from_numpy(np.stack(images)).float()
    target = torch.from_numpy(np.stack(labels)).long()[:, 0].clamp(min=0)  # -1 (outside the image) -> background
    classes = len(json.loads((preprocessed / "dataset.json").read_text())["labels"])
    checkpoints = sorted((args.work / "results" / DATASET).glob("*/pretrain/checkpoint_final.pt"))
    torch.manual_seed(args.seed)
    random = relative_gradients(build_network(plans, CONFIGURATION, plans.num_input_channels, classes), image, target)
    ratios = {}
    for checkpoint in checkpoints:
        torch.manual_seed(args.seed)
        model = build_network(plans, CONFIGURATION, plans.num_input_channels, classes)
        load_initial_weights(model, checkpoint, encoder_only=True)
        pretrained = relative_gradients(model, image, target)
        ratios[checkpoint.parents[1].name] = {name: pretrained[name] / random[name] for name in random}
    names = list(ratios)
    print(f"{len(cases)} fold-1 cases, patch {plan.patch_size}; ratio = relative gradient pretrained / random\n")
    print("| encoder convolution | random: grad/weight | " + " | ".join(f"ratio {n}" for n in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for name, value in random.items():
        print(f"| {name} | {value:.2e} | " + " | ".join(f"{ratios[n][name]:.2f}" for n in names) + " |")
    print("| median |  | " + " | ".join(f"{np.median(list(ratios[n].values())):.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
