"""Compute targets: what hardware the plans are sized for.

A GPU target gives a memory budget (activations under mixed precision, weights, gradients
and optimiser state must fit); the CPU target gives a time budget per training step, since
on a CPU memory is plentiful but every FLOP counts. Widths are part of the target: a
2-core CPU trains a quarter-width FMUNet in minutes where the full one takes hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from volfnet.errors import VolfnetError


@dataclass(frozen=True)
class ComputeTarget:
    name: str
    device: str
    memory_gb: float | None  # GPU memory budget; None on CPU
    step_gflop: float | None  # CPU: forward+backward GFLOP allowed per training step; None on GPU
    base_features: int
    max_features: int
    initial_patch_voxels: int  # starting patch volume before shrinking to the budget
    min_batch_size: int
    max_batch_size: int
    description: str


# 8 GB is nnU-Net's default reference GPU; the others scale the memory budget.
_GPU: dict[str, Any] = dict(
    device="cuda", step_gflop=None, base_features=32, max_features=512, initial_patch_voxels=256**3, min_batch_size=2, max_batch_size=64
)

# The CPU budget: forward+backward FLOPs per step; 3x3x3 conv3d runs at roughly 25-50 GFLOP/s
# forward+backward on 2 cores, so 60 GFLOP is about 1.5-2.5 s per step.
COMPUTE_TARGETS: dict[str, ComputeTarget] = {
    "gpu8": ComputeTarget(name="gpu8", memory_gb=8.0, description="one GPU with 8 GB (default)", **_GPU),
    "gpu16": ComputeTarget(name="gpu16", memory_gb=16.0, description="one GPU with 16 GB", **_GPU),
    "gpu24": ComputeTarget(name="gpu24", memory_gb=24.0, description="one GPU with 24 GB", **_GPU),
    "gpu40": ComputeTarget(name="gpu40", memory_gb=40.0, description="one GPU with 40 GB", **_GPU),
    "gpu80": ComputeTarget(name="gpu80", memory_gb=80.0, description="one GPU with 80 GB", **_GPU),
    "cpu": ComputeTarget(
        name="cpu",
        device="cpu",
        memory_gb=None,
        step_gflop=60.0,
        base_features=16,
        max_features=256,
        initial_patch_voxels=128**3,
        min_batch_size=2,
        max_batch_size=8,
        description="a small CPU (2-8 cores): half-width network, ~2 s per training step",
    ),
    # A tenth of the cpu budget and a quarter of the widths: ~0.2-0.4 s per step on 2 cores, for
    # the demo, smoke tests and a first look at a new dataset in minutes rather than hours.
    "cpu_small": ComputeTarget(
        name="cpu_small",
        device="cpu",
        memory_gb=None,
        step_gflop=6.0,
        base_features=8,
        max_features=64,
        initial_patch_voxels=64**3,
        min_batch_size=2,
        max_batch_size=8,
        description="a quick look on a small CPU: quarter-width network, ~0.3 s per training step",
    ),
}
DEFAULT_COMPUTE_TARGET = "gpu8"


def get_compute_target(name: str) -> ComputeTarget:
    if name not in COMPUTE_TARGETS:
        raise VolfnetError(f"unknown compute target {name!r}; choose one of {sorted(COMPUTE_TARGETS)}")
    return COMPUTE_TARGETS[name]
