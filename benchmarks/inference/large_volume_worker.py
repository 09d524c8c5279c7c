"""One timed sliding-window prediction of a preprocessed array; prints one JSON line.

Run by large_volumes.py in a fresh process per measurement: ``--impl volfnet`` with the
project's Python, ``--impl nnunet`` with the Python of benchmarks/_envs/nnunet. Both sides
build the same FMUNet (volfnet's network code, imported from this checkout) from the model
folder's plans and checkpoint, on 2 threads, step 0.5, Gaussian weights; nnU-Net mirrors
one pass at a time as its predictor does, volfnet pairs passes for narrow networks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from volfnet.inference.tiling import tile_starts  # noqa: E402
from volfnet.io.torch_file import read_torch_file  # noqa: E402
from volfnet.networks.build import build_network_from_topology  # noqa: E402
from volfnet.planning.topology import round_up_patch  # noqa: E402
from volfnet.plans import Plans  # noqa: E402

THREADS = 2
MIRROR_AXES = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", choices=["volfnet", "nnunet"], required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--configuration", required=True)
    parser.add_argument("--array", type=Path, required=True)
    parser.add_argument("--mirror", action="store_true")
    parser.add_argument("--crop", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"), help="predict only this corner of the array")
    parser.add_argument("--whole-image", action="store_true", help="volfnet: one window covering the array (rounded up to the strides)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    plans = Plans.load(args.model / "plans.json")
    configuration = plans.configuration(args.configuration)
    checkpoint = read_torch_file(args.model / "fold_0" / "checkpoint_final.pt")
    spec = checkpoint["spec"]
    network = build_network_from_topology(configuration.network, spec["num_input_channels"], spec["num_classes"], deep_supervision=False)
    network.load_state_dict(checkpoint["model_state_dict"], strict=False)  # deep-supervision heads are not built
    network.eval()
    data = torch.from_numpy(np.load(args.array))
    if args.crop:
        data = data[:, : args.crop[0], : args.crop[1], : args.crop[2]].contiguous()
    patch = list(configuration.patch_size)
    if args.whole_image:
        divisors = configuration.network.total_downsampling()
        patch = [max(p, w) for p, w in zip(patch, round_up_patch(list(data.shape[1:]), divisors))]
    classes = spec["num_classes"]
    if args.impl == "volfnet":
        from volfnet.inference.sliding_window import predict_sliding_window
        from volfnet.inference.tta import min_forward_batch

        def predict() -> torch.Tensor:
            return predict_sliding_window(
                network, data, patch, classes, mirror_axes=MIRROR_AXES if args.mirror else None, device="cpu",
                min_forward_batch=min_forward_batch(torch.device("cpu"), configuration.network.feature_channels[0]),
            )
    else:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=args.mirror,
                                    perform_everything_on_device=False, device=torch.device("cpu"), verbose=False, allow_tqdm=False)
        predictor.network = network
        predictor.configuration_manager = SimpleNamespace(patch_size=patch)
        predictor.label_manager = SimpleNamespace(num_segmentation_heads=classes)
        predictor.allowed_mirroring_axes = MIRROR_AXES

        def predict() -> torch.Tensor:
            return predictor.predict_sliding_window_return_logits(data)

    start = time.perf_counter()
    logits = predict()
    seconds = time.perf_counter() - start
    tiles = math.prod(len(s) for s in tile_starts([max(s, p) for s, p in zip(data.shape[1:], patch)], patch))
    print(json.dumps({"impl": args.impl, "seconds": seconds, "tiles": tiles, "shape": list(logits.shape)}))


if __name__ == "__main__":
    main()
