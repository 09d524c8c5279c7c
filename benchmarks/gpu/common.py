"""What the GPU check's scripts share: two synthetic datasets to plan for, the device's name, one
training step exactly as the training loop takes it, and small output helpers.

The datasets are fingerprints, not images, so planning them costs milliseconds and needs no
data on the GPU machine: a Hippocampus-like MR (small crops, 260 cases, where the batch is
capped by the 5 % dataset cover, not by memory) and an abdominal-CT-like dataset (large
anisotropic volumes, 200 cases, where GPU memory sets patch and batch). The numbers follow
MSD Task04 and typical multi-organ abdominal CT collections.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volfnet.io.dataset import DatasetJson
from volfnet.networks.runtime import autocast, autocast_dtype, needs_grad_scaler, prepare_input, prepare_model
from volfnet.planning.fingerprint import Fingerprint, IntensityStatistics
from volfnet.training.config import TrainerConfig
from volfnet.training.losses import DiceCEConfig, segmentation_loss
from volfnet.training.optim import build_optimizer

logger = logging.getLogger(__name__)

GIB = 1024**3  # the planner's "GB" (volfnet.planning.cost divides by 1024**3)


def _fingerprint(spacings: np.ndarray, shapes: np.ndarray, channel: str, stats: IntensityStatistics, crop_ratio: float) -> Fingerprint:
    return Fingerprint(
        case_ids=[f"case_{i:03d}" for i in range(len(spacings))],
        spacings=spacings.round(3).tolist(),
        shapes_after_crop=shapes.astype(int).tolist(),
        crop_ratios=[crop_ratio] * len(spacings),
        foreground_intensity_per_channel=[stats],
        median_relative_size_after_cropping=crop_ratio,
        channel_names={"0": channel},
        num_foreground_voxels_sampled=100_000,
    )


def _dataset_json(channel: str, labels: list[str], cases: int) -> DatasetJson:
    names = {"background": 0, **{name: i for i, name in enumerate(labels, start=1)}}
    return DatasetJson.from_dict({"channel_names": {"0": channel}, "labels": names, "numTraining": cases, "file_ending": ".nii.gz"}, "synthetic")


def hippocampus_like() -> tuple[Fingerprint, DatasetJson]:
    """MSD Task04-like: 260 MR crops of about 36 x 50 x 35 voxels at 1 mm, two labels."""
    rng = np.random.default_rng(4)
    shapes = np.stack([rng.integers(31, 43, 260), rng.integers(40, 59, 260), rng.integers(24, 47, 260)], axis=1)
    spacings = np.ones((260, 3))
    stats = IntensityStatistics(mean=300.0, std=120.0, median=290.0, min=0.0, max=900.0, percentile_00_5=60.0, percentile_99_5=700.0)
    return _fingerprint(spacings, shapes, "MRI", stats, 1.0), _dataset_json("MRI", ["anterior", "posterior"], 260)


def abdominal_ct_like() -> tuple[Fingerprint, DatasetJson]:
    """Multi-organ abdominal CT: 200 scans, 1.25-5 mm slices, about 0.78 mm in-plane, 13 organs."""
    rng = np.random.default_rng(13)
    slices = rng.choice([1.25, 2.0, 2.5, 3.0, 5.0], 200)
    in_plane = rng.uniform(0.6, 0.95, 200)
    spacings = np.stack([slices, in_plane, in_plane], axis=1)
    shapes = np.stack([(rng.uniform(280, 420, 200) / slices).round(), rng.integers(380, 512, 200), rng.integers(420, 512, 200)], axis=1)
    stats = IntensityStatistics(mean=80.0, std=60.0, median=85.0, min=-1024.0, max=3000.0, percentile_00_5=-960.0, percentile_99_5=290.0)
    organs = ["spleen", "kidney_r", "kidney_l", "gallbladder", "esophagus", "liver", "stomach", "aorta", "ivc", "veins", "pancreas", "adrenal_r", "adrenal_l"]
    return _fingerprint(spacings, shapes, "CT", stats, 0.8), _dataset_json("CT", organs, 200)


DATASETS: dict[str, Callable[[], tuple[Fingerprint, DatasetJson]]] = {
    "hippocampus_mr": hippocampus_like,
    "abdominal_ct": abdominal_ct_like,
}


def describe_device(device: torch.device) -> str:
    """The GPU's name and memory, or the CPU's thread count."""
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{properties.name} ({properties.total_memory / GIB:.1f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({torch.get_num_threads()} torch threads), torch {torch.__version__}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainingStep:
    """One training step as ``volfnet.training.loop`` takes it: inputs in the model's memory
    format, forward and Dice + CE deep-supervision loss under the trainer's autocast, backward
    through the gradient scaler when fp16 needs one, gradient clipping, optimiser step.

    Inputs are random and made once on the device, and targets are random labels at every
    output's scale (made at the first call, from the outputs' shapes), so the step measures the
    network, not the data pipeline. Works for any network returning a tensor or a list of
    deep-supervision outputs (full resolution first), e.g. nnU-Net's PlainConvUNet.
    """

    def __init__(self, network: nn.Module, num_input_channels: int, num_classes: int, patch: list[int], batch: int,
                 device: torch.device, config: TrainerConfig | None = None) -> None:
        self.config = config or TrainerConfig()
        self.device = device
        self.num_classes = num_classes
        self.network = prepare_model(network, device).train()
        self.optimizer = build_optimizer(self.network.parameters(), self.config)
        self.scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(autocast_dtype(device) if self.config.amp else None))
        self.data = prepare_input(torch.randn(batch, num_input_channels, *patch), device)
        self.targets: list[torch.Tensor] | None = None
        self.loss: Callable | None = None

    def __call__(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, enabled=self.config.amp):
            outputs = self.network(self.data)
            outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
            if self.targets is None:
                generator = torch.Generator(device=self.device).manual_seed(0)
                self.targets = [
                    torch.randint(0, self.num_classes, (o.shape[0], 1, *o.shape[2:]), generator=generator, device=self.device, dtype=torch.int16)
                    for o in outputs
                ]
                self.loss = segmentation_loss(len(outputs), DiceCEConfig())
            loss = self.loss(outputs, self.targets)
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)  # a plain optimizer.step() when the scaler is disabled
        self.scaler.update()
        return loss.detach()


def seconds_per_step(step: Callable[[], Any], device: torch.device, steps: int, warmup: int) -> float:
    """Mean wall time of ``step`` after ``warmup`` untimed calls (cuDNN's algorithm search)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)  # a killed run leaves no half-written JSON behind
    logger.info("wrote %s", path)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
