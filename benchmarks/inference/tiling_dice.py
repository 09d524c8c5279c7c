"""What the CPU speed levers of the predictor cost in accuracy, on real cases.

For one trained model folder and a folder of held-out images with their reference label maps,
predicts every case once per variant (larger sliding-window steps, fewer mirror passes, no
mirroring, one window covering the whole image instead of training-patch windows, the
OpenVINO backend) and scores
each with ``volfnet.evaluation``. Reports mean Dice and HD95,
wall seconds, and the per-case Dice difference against the default (training-patch windows,
every mirror axis): mean, worst case, and how many cases moved by more than 0.01.

    python benchmarks/inference/tiling_dice.py --model-folder M --images I --labels L --work W [--variants ...]

Predictions stay in ``W/<variant>``, so a rerun only scores (delete a folder to predict again).
Used for the tables of documentation/benchmarks.md, "Large volumes on the CPU".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from volfnet.evaluation.evaluate import evaluate_folder  # noqa: E402
from volfnet.inference.predictor import Predictor  # noqa: E402
from volfnet.inference.sliding_window import predict_sliding_window  # noqa: E402
from volfnet.inference.tta import min_forward_batch  # noqa: E402
from volfnet.planning.topology import round_up_patch  # noqa: E402
from volfnet.model_folder import ModelFolder  # noqa: E402

logger = logging.getLogger("tiling_dice")

DICE_MOVE = 0.01  # a per-case Dice change above this counts as "moved"


@dataclass(frozen=True)
class Variant:
    whole_image: bool = False  # one window covering the image (rounded up to the network's strides)
    mirror_axes: tuple[int, ...] | None = None  # None: every axis training mirrored
    use_mirroring: bool = True
    step_fraction: float = 0.5
    backend: str = "torch"


VARIANTS = {
    "default": Variant(),
    "whole": Variant(whole_image=True),
    "mirror_x": Variant(mirror_axes=(2,)),
    "mirror_yx": Variant(mirror_axes=(1, 2)),
    "no_mirror": Variant(use_mirroring=False),
    "openvino": Variant(backend="openvino"),
    "step075": Variant(step_fraction=0.75),
    "step075_mirror_yx": Variant(step_fraction=0.75, mirror_axes=(1, 2)),
    "step1": Variant(step_fraction=1.0),
    "whole_no_mirror": Variant(whole_image=True, use_mirroring=False),
}
BASELINE = "default"


class WholeImagePredictor(Predictor):
    """Predicts each case as one window: the image rounded up to the network's total strides.

    FMUNet is fully convolutional, so this runs 1/6 to 1/8 of the forward voxels of half-patch
    steps, but its instance norms then see a whole image's statistics instead of a patch's.
    """

    def predict_logits(self, data):
        image = torch.as_tensor(np.asarray(data, dtype=np.float32))
        divisors = self.configuration.network.total_downsampling()
        window = [max(p, w) for p, w in zip(self.patch_size, round_up_patch(list(image.shape[1:]), divisors))]
        return predict_sliding_window(
            self.networks, image, window, self.num_classes, mirror_axes=self.mirror_axes, device=self.device,
            min_forward_batch=min_forward_batch(self.device, self.configuration.network.feature_channels[0]),
        )


def per_case_dice(summary: dict) -> dict[str, float]:
    """Mean foreground Dice of each case."""
    result = {}
    for case in summary["per_case"]:
        values = [metrics["Dice"] for label, metrics in case["metrics"].items() if label != "0"]
        result[case["case"]] = float(np.nanmean(values))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-folder", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    model = ModelFolder.open(args.model_folder)
    regions = model.dataset_json.regions if model.dataset_json.has_regions else None
    labels = model.dataset_json.labels
    results = {}
    variants = [BASELINE] + [v for v in args.variants if v != BASELINE]
    for name in variants:
        variant = VARIANTS[name]
        output = args.work / name
        seconds_file = output / "seconds.json"
        if not seconds_file.is_file():
            kind = WholeImagePredictor if variant.whole_image else Predictor
            predictor = kind.from_model_folder(
                args.model_folder, device="cpu", mirror_axes=variant.mirror_axes,
                use_mirroring=variant.use_mirroring, step_fraction=variant.step_fraction, backend=variant.backend, progress=False,
            )
            start = time.perf_counter()
            summary = predictor.predict(args.images, output)
            seconds = time.perf_counter() - start
            seconds_file.write_text(json.dumps({"seconds": seconds, "cases": len(summary.predicted)}))
        timing = json.loads(seconds_file.read_text())
        scores = evaluate_folder(args.labels, output, labels, num_workers=1, regions=regions)
        results[name] = {"timing": timing, "summary": scores, "dice": per_case_dice(scores)}
        print(f"done {name}: Dice {scores['foreground_mean']['Dice']:.4f}", file=sys.stderr, flush=True)

    base = results[BASELINE]["dice"]
    rows = ["| variant | mean Dice | HD95 | s/case | Dice - default: mean | worst case | cases moved > 0.01 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in variants:
        result = results[name]
        diffs = np.array([result["dice"][case] - base[case] for case in base])
        mean = result["summary"]["foreground_mean"]
        per_case = result["timing"]["seconds"] / max(result["timing"]["cases"], 1)
        rows.append(
            f"| {name} | {mean['Dice']:.4f} | {mean['HD95']:.2f} | {per_case:.2f} | {diffs.mean():+.4f} | {diffs.min():+.4f} | "
            f"{int((np.abs(diffs) > DICE_MOVE).sum())}/{len(diffs)} |"
        )
    table = "\n".join(rows)
    print(f"{args.model_folder} on {args.images}\n{table}")
    (args.work / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
