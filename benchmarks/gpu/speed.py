"""Training and prediction speed on one GPU, volfnet beside nnU-Net v2's network (issue 19, item 3).

On a synthetic abdominal CT dataset (``volfnet.demo.synthetic``, written and preprocessed on
first use) planned for the ``gpu8`` target, the same script measures:

- **training loop**: iterations per second of ``run_training`` itself (data workers, pinned
  batches, AMP, clipping), from its second epoch, and the **share of step time spent waiting
  for data**: wall time blocked in ``BatchLoader.__next__`` over the epoch's wall time (the
  loop reads one flag from the GPU per step, so a step's GPU work is done when it asks for the
  next batch: the waits are real stalls);
- **network step**: iterations per second of forward + Dice/CE + backward + SGD on batches
  already on the GPU, for FMUNet at the plan's (published) widths and, when importable, for
  nnU-Net v2's PlainConvUNet with its default widths (32 x 2^i, at most 320, two convolutions
  per stage) at the same patch, batch, strides and precision, with both networks' GFLOP per
  step (counted alike, on the meta device) so the speeds compare at equal cost;
- **prediction**: seconds per case of the sliding window (step 0.5, Gaussian weights, 8
  mirror passes, fp16 autocast: both tools' defaults) on the same preprocessed cases, volfnet's
  ``Predictor`` beside nnU-Net's ``nnUNetPredictor`` when ``nnunetv2`` is importable.

nnU-Net is optional: install it (and ``dynamic-network-architectures``) into the same
environment from wheels carried to the GPU machine; without it its rows say so. Speeds are
reported, never asserted (DESIGN.md); the script fails only when something breaks.

    python benchmarks/gpu/speed.py [--device cuda] [--json OUT.json] [--work DIR]
    python benchmarks/gpu/speed.py --device cpu --smoke      # plumbing check: tiny data and network
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Self

import numpy as np
import torch
from common import TrainingStep, describe_device, fmt, markdown_table, seconds_per_step, synchronize, write_json
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from volfnet.data.loader import BatchLoader, default_num_workers
from volfnet.demo.synthetic import LABELS, make_case
from volfnet.inference.predictor import Predictor
from volfnet.io.dataset import DatasetJson
from volfnet.io.files import atomic_write_json
from volfnet.io.image_io import write_image
from volfnet.networks.build import build_network_from_topology
from volfnet.planning.plan_and_preprocess import PlanAndPreprocessRequest, plan_and_preprocess
from volfnet.planning.planner import PlannerOptions
from volfnet.plans import ConfigurationPlan, Plans
from volfnet.io.case_store import list_preprocessed_cases, load_case
from volfnet.training.config import supervised_defaults
from volfnet.training.loop import run_training
from volfnet.training.segmentation import SegmentationTask

logger = logging.getLogger("speed")

ROOT = Path(__file__).resolve().parents[2]
DATASET_ID = 951
DATASET_NAME = f"Dataset{DATASET_ID:03d}_GpuSpeed"
CONFIGURATION = "3d_fullres"
VALIDATION_CASES = 2  # predicted for the timing; the rest train
NNUNET_MAX_FEATURES = 320  # nnU-Net v2's default cap for 3D networks
NNUNET_CONVS_PER_STAGE = 2


@dataclass(frozen=True)
class Settings:
    """Sizes of one run: the full GPU measurement, or the CPU smoke check of the code path."""

    cases: int
    shape: tuple[int, int, int]  # voxels (z, y, x) of every synthetic scan
    spacing: tuple[float, float, float]
    target: str
    base_features: int | None
    iterations: int  # per epoch; two epochs run, the second is measured
    workers: int | None  # None: the trainer's default (one per CPU, at most 12)
    network_steps: int
    warmup_steps: int


FULL = Settings(cases=6, shape=(80, 192, 192), spacing=(2.5, 0.9, 0.9), target="gpu8", base_features=None,
                iterations=40, workers=None, network_steps=10, warmup_steps=3)
SMOKE = Settings(cases=4, shape=(20, 40, 40), spacing=(3.0, 1.8, 1.8), target="cpu_small", base_features=4,
                 iterations=2, workers=1, network_steps=1, warmup_steps=1)


# --- data -----------------------------------------------------------------------------------------


def set_roots(work: Path) -> None:
    for name in ("raw", "preprocessed", "results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[f"VOLFNET_{name}"] = str(work / name)


def write_raw_dataset(folder: Path, settings: Settings) -> None:
    """Synthetic CT scans of one size (the demo's generator); dataset.json last, so a complete
    dataset is recognised and kept on the next run."""
    if (folder / "dataset.json").is_file():
        return
    rng = np.random.default_rng(0)
    for index in range(settings.cases):
        case = make_case(rng, settings.shape, settings.spacing)
        write_image(case.image, case.geometry, folder / "imagesTr" / f"case_{index:03d}_0000.nii.gz")
        write_image(case.label, case.geometry, folder / "labelsTr" / f"case_{index:03d}.nii.gz")
    atomic_write_json(folder / "dataset.json", {
        "name": "GpuSpeed", "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": settings.cases, "file_ending": ".nii.gz",
    })


def prepare_dataset(work: Path, settings: Settings) -> Path:
    """The preprocessed dataset folder, planned for ``settings.target`` (made on first use)."""
    set_roots(work)
    write_raw_dataset(work / "raw" / DATASET_NAME, settings)
    folder = work / "preprocessed" / DATASET_NAME
    if not (folder / "plans.json").is_file() or len(list_preprocessed_cases(folder / CONFIGURATION)) < settings.cases:
        options = PlannerOptions(compute_target=settings.target, lowres=False, base_features=settings.base_features)
        plan_and_preprocess(PlanAndPreprocessRequest(
            dataset=str(DATASET_ID), options=options, configurations=[CONFIGURATION], num_workers=max(1, min(8, os.cpu_count() or 1)),
            progress=False,
        ))
    return folder


# --- training loop --------------------------------------------------------------------------------


class TimedSegmentationTask(SegmentationTask):
    """The segmentation task without the full-volume validation at the end (not timed here)."""

    def after_training(self, model, run_folder, device) -> None:
        return None


class LoaderClock:
    """Records the wall time of every ``BatchLoader.__next__`` call while active: the time the
    training loop sat waiting for its next batch."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __enter__(self) -> Self:
        self.original = BatchLoader.__next__
        original, waits = self.original, self.waits

        def timed_next(loader):
            start = time.perf_counter()
            batch = original(loader)
            waits.append(time.perf_counter() - start)
            return batch

        BatchLoader.__next__ = timed_next
        return self

    def __exit__(self, *exc_info) -> None:
        BatchLoader.__next__ = self.original


def measure_training_loop(folder: Path, settings: Settings, device: torch.device, work: Path):
    """Two epochs of ``run_training`` (the first warms up workers and cuDNN); the second's
    iterations per second and waiting share. Returns the row and the trained task and model."""
    plans = Plans.load(folder / "plans.json")
    cases = list_preprocessed_cases(folder / CONFIGURATION)
    config = supervised_defaults().replaced(
        num_epochs=2, iterations_per_epoch=settings.iterations, val_iterations=0, num_workers=settings.workers,
        progress_bar=False, plot_every=1000, checkpoint_every=1000,
    )
    task = TimedSegmentationTask(plans, CONFIGURATION, folder, DatasetJson.load(folder / "dataset.json"), 0,
                                 cases[:-VALIDATION_CASES], cases[-VALIDATION_CASES:], config)
    run_folder = work / "results" / "loop_run"
    shutil.rmtree(run_folder, ignore_errors=True)
    with LoaderClock() as clock:
        result = run_training(task, config, run_folder, device=str(device))
    seconds = result.log.epoch_seconds[1]
    waiting = sum(clock.waits[settings.iterations : 2 * settings.iterations])
    row = {"iterations_per_second": settings.iterations / seconds, "data_wait_share": waiting / seconds,
           "workers": default_num_workers() if config.num_workers is None else config.num_workers, "loss": result.log.train_loss}
    return row, task, result.model


# --- networks -------------------------------------------------------------------------------------


def nnunet_available() -> bool:
    return importlib.util.find_spec("dynamic_network_architectures") is not None


def nnunet_network(plan: ConfigurationPlan, channels: int, classes: int, deep_supervision: bool = True) -> nn.Module:
    """nnU-Net v2's default 3D network (PlainConvUNet) on the plan's strides and kernels, with
    nnU-Net's own widths, two convolutions per stage, instance norm and leaky ReLU."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    stages = len(plan.network.feature_channels)
    return PlainConvUNet(
        input_channels=channels, n_stages=stages,
        features_per_stage=[min(32 * 2**i, NNUNET_MAX_FEATURES) for i in range(stages)],
        conv_op=nn.Conv3d, kernel_sizes=plan.network.kernel_sizes, strides=[[1, 1, 1], *plan.network.strides],
        n_conv_per_stage=[NNUNET_CONVS_PER_STAGE] * stages, num_classes=classes,
        n_conv_per_stage_decoder=[NNUNET_CONVS_PER_STAGE] * (stages - 1), conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision,
    )


def training_gflop(build, channels: int, patch: list[int], batch: int) -> float:
    """Forward FLOPs on the meta device (no memory, no time) x 3 for forward + backward."""
    with torch.device("meta"):
        network = build()
        with FlopCounterMode(display=False) as counter:
            network(torch.empty(batch, channels, *patch))
    return 3 * counter.get_total_flops() / 1e9


def measure_network(build, channels: int, classes: int, plan: ConfigurationPlan, device: torch.device, settings: Settings) -> dict:
    torch.manual_seed(0)
    step = TrainingStep(build(), channels, classes, plan.patch_size, plan.batch_size, device)
    seconds = seconds_per_step(step, device, settings.network_steps, settings.warmup_steps)
    gflop = training_gflop(build, channels, plan.patch_size, plan.batch_size)
    parameters = sum(p.numel() for p in step.network.parameters())
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"iterations_per_second": 1 / seconds, "gflop_per_step": gflop, "tflops": gflop / seconds / 1e3, "parameters_m": parameters / 1e6}


# --- prediction -----------------------------------------------------------------------------------


def seconds_per_case(predict, cases: list[np.ndarray], device: torch.device, warmup: bool) -> float:
    if warmup:
        predict(cases[0])  # cuDNN's algorithm search for the tile shapes
    synchronize(device)
    start = time.perf_counter()
    for data in cases:
        predict(data)
    synchronize(device)
    return (time.perf_counter() - start) / len(cases)


def nnunet_predict_function(plan: ConfigurationPlan, channels: int, classes: int, device: torch.device):
    """nnU-Net's own sliding window (``nnUNetPredictor.predict_sliding_window_return_logits``)
    on its default network at the plan's patch, logits brought to the CPU as its predictor does.
    Only the fields that method reads are set: ``manual_initialization`` would need a complete
    nnU-Net plans file, and the weights do not change the time."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=True,
                                device=device, verbose=False, allow_tqdm=False)
    predictor.network = nnunet_network(plan, channels, classes, deep_supervision=False).to(device)
    predictor.configuration_manager = SimpleNamespace(patch_size=list(plan.patch_size))
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=classes)
    predictor.allowed_mirroring_axes = (0, 1, 2)
    return lambda data: predictor.predict_sliding_window_return_logits(torch.from_numpy(data)).cpu()


# --- report ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="tiny data, network and run: a CPU check of the code path")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "gpu" / "speed", help="data and runs (kept for reruns)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU visible; use --device cpu --smoke for a plumbing check")
    device = torch.device(args.device)
    settings = SMOKE if args.smoke else FULL
    work = args.work / ("smoke" if args.smoke else "full")
    torch.backends.cudnn.benchmark = True  # as the trainer and nnU-Net's predictor

    folder = prepare_dataset(work, settings)
    loop, task, model = measure_training_loop(folder, settings, device, work)
    plan, channels, classes = task.plan, task.plans.num_input_channels, task.num_classes
    logger.info("plan: patch %s, batch %d, FMUNet %s", plan.patch_size, plan.batch_size, plan.network.feature_channels)
    volfnet_net = measure_network(lambda: build_network_from_topology(plan.network, channels, classes), channels, classes, plan, device, settings)
    have_nnunet = nnunet_available()
    nnunet_net, missing = None, "not importable"
    if have_nnunet:
        try:
            nnunet_net = measure_network(lambda: nnunet_network(plan, channels, classes), channels, classes, plan, device, settings)
        except Exception as error:  # a peer's API drift must not hide volfnet's numbers
            logger.exception("nnU-Net network step failed")
            missing = f"failed: {type(error).__name__}: {error}"

    cases = [np.array(load_case(folder / CONFIGURATION, case, with_seg=False)[0]) for case in task.val_cases]
    predictor = Predictor([model], task.plans, CONFIGURATION, task.dataset_json, device=device, num_workers=0, progress=False)
    volfnet_predict = seconds_per_case(predictor.predict_logits, cases, device, warmup=not args.smoke)
    nnunet_predict, nnunet_note = None, "not importable"
    if importlib.util.find_spec("nnunetv2") is not None:
        try:
            nnunet_predict = seconds_per_case(nnunet_predict_function(plan, channels, classes, device), cases, device, warmup=not args.smoke)
            nnunet_note = ""
        except Exception as error:  # a peer's API drift must not hide volfnet's numbers
            logger.exception("nnU-Net prediction failed")
            nnunet_note = f"failed: {type(error).__name__}: {error}"
    rows = [
        [f"training loop, iterations / s (data workers: {loop['workers']})", fmt(loop["iterations_per_second"]), "not measured (needs nnU-Net's trainer)"],
        ["share of loop time waiting for data", f"{loop['data_wait_share']:.0%}", "not measured"],
        ["network step, iterations / s", fmt(volfnet_net["iterations_per_second"]), fmt(nnunet_net["iterations_per_second"]) if nnunet_net else missing],
        ["network GFLOP / step", fmt(volfnet_net["gflop_per_step"], 1), fmt(nnunet_net["gflop_per_step"], 1) if nnunet_net else missing],
        ["network TFLOP/s", fmt(volfnet_net["tflops"]), fmt(nnunet_net["tflops"]) if nnunet_net else missing],
        ["network parameters (M)", fmt(volfnet_net["parameters_m"], 1), fmt(nnunet_net["parameters_m"], 1) if nnunet_net else missing],
        ["prediction, s / case (8 mirror passes)", fmt(volfnet_predict), fmt(nnunet_predict) if nnunet_predict is not None else nnunet_note],
    ]
    case_shape = "x".join(map(str, cases[0].shape[1:]))
    title = (f"{describe_device(device)}; synthetic CT, {settings.target} plan: patch {'x'.join(map(str, plan.patch_size))}, "
             f"batch {plan.batch_size}, cases {case_shape}{' (smoke)' if args.smoke else ''}")
    widths = "-".join(map(str, plan.network.feature_channels))
    table = markdown_table(["measurement", f"volfnet (FMUNet {widths})", "nnU-Net v2 (PlainConvUNet)"], rows)
    if not have_nnunet:
        table += "\n\nnnU-Net columns: install the carried nnunetv2 and dynamic-network-architectures wheels into this environment."
    print(title + "\n\n" + table)
    passed = bool(np.isfinite(loop["loss"]).all())
    write_json(args.json, {
        "check": "speed", "device": describe_device(device), "smoke": args.smoke, "passed": passed, "title": title, "table": table,
        "plan": {"patch": plan.patch_size, "batch": plan.batch_size, "features": plan.network.feature_channels, "target": settings.target},
        "training_loop": loop, "volfnet_network": volfnet_net, "nnunet_network": nnunet_net,
        "prediction_seconds_per_case": {"volfnet": volfnet_predict, "nnunet": nnunet_predict, "nnunet_note": nnunet_note},
    })
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
