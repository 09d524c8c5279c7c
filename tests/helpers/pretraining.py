"""Tiny set-ups shared by the VolF pretraining tests: preprocessed datasets of smooth synthetic
volumes (no planner run needed), raw unlabelled images, and a fast trainer configuration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers.cached_cases import make_case
from helpers.images import write_volume
from scipy.ndimage import gaussian_filter

from volfnet.plans import (
    ChannelNormalization,
    ConfigurationPlan,
    NetworkTopology,
    Plans,
)

PATCH = [24, 24, 24]
WIDTHS = [4, 8, 16]
CASE_SHAPE = (28, 30, 26)


def smooth_volume(shape, rng: np.random.Generator, channels: int = 1, structure: float = 4.0, noise: float = 0.3) -> np.ndarray:
    """(C, Z, Y, X) float32, z-scored: smooth random structure (weight ``structure``), finer
    detail, and white noise (weight ``noise``)."""
    out = []
    for _ in range(channels):
        coarse = gaussian_filter(rng.standard_normal(shape), sigma=3.0)
        fine = gaussian_filter(rng.standard_normal(shape), sigma=1.0)
        volume = structure * coarse / coarse.std() + fine / fine.std() + noise * rng.standard_normal(shape)
        out.append((volume - volume.mean()) / volume.std())
    return np.stack(out).astype(np.float32)


def pretrain_plans(name: str, channels: int = 1, patch=PATCH, widths=WIDTHS, batch_size: int = 2, shape=CASE_SHAPE) -> Plans:
    """Plans of one CPU configuration with a small FMUNet (``widths`` per level) for the smooth volumes."""
    levels = len(widths)
    topology = NetworkTopology("fmunet", list(widths), [[2, 2, 2]] * (levels - 1), [[3, 3, 3]] * levels, [0.0] * levels)
    plan = ConfigurationPlan(
        "3d_fullres", [1.0, 1.0, 1.0], list(shape), list(patch), batch_size, topology, [ChannelNormalization("zscore")] * channels
    )
    return Plans(name, "cpu", channels, [0, 1, 2], [0, 1, 2], [1.0, 1.0, 1.0], list(shape), {"3d_fullres": plan})


def dataset_json(name: str, channels: int = 1, count: int = 3) -> dict:
    """The dataset.json of a smooth-volume dataset: MR channels, one organ label."""
    return {
        "channel_names": {str(i): "MR" for i in range(channels)},
        "labels": {"background": 0, "organ": 1},
        "numTraining": count,
        "file_ending": ".nii.gz",
        "name": name,
    }


def make_preprocessed_dataset(
    roots: dict, dataset_id: int = 1, name: str = "Smooth", count: int = 3, shape=CASE_SHAPE, channels: int = 1,
    seed: int = 0, num_test: int = 0, structure: float = 4.0, noise: float = 0.3, **plan_kwargs,
) -> Path:
    """A dataset as ``volfnet_plan_and_preprocess`` leaves it: plans, dataset.json and cached
    training cases (labels all 0: pretraining never reads them). With ``num_test``, the raw
    dataset gets that many ``imagesTs`` images (not preprocessed: the pool does that)."""
    full = f"Dataset{dataset_id:03d}_{name}"
    folder = roots["preprocessed"] / full
    rng = np.random.default_rng(seed)
    for index in range(count):
        image = smooth_volume(shape, rng, channels, structure, noise)
        make_case(folder / "3d_fullres", f"case_{index:03d}", image, np.zeros((1, *shape), np.int8))
    pretrain_plans(full, channels, shape=shape, **plan_kwargs).save(folder / "plans.json")
    (folder / "dataset.json").write_text(json.dumps(dataset_json(name, channels, count)))
    if num_test:
        raw = roots["raw"] / full
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "dataset.json").write_text(json.dumps(dataset_json(name, channels, count)))
        for index in range(num_test):
            image = smooth_volume(shape, rng, channels) * 50 + 100
            for channel in range(channels):
                write_volume(image[channel], raw / "imagesTs" / f"test_{index:03d}_{channel:04d}.nii.gz")
    return folder


def make_image_folder(folder: Path, count: int = 2, shape=CASE_SHAPE, seed: int = 5, nnunet_names: bool = False) -> Path:
    """Unlabelled single-channel images (plain names, or nnU-Net ``_0000`` names)."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        image = smooth_volume(shape, rng)[0] * 40 + 300
        name = f"scan_{index:02d}_0000.nii.gz" if nnunet_names else f"scan_{index:02d}.nii.gz"
        write_volume(image, folder / name)
    return folder


def fast_overrides(**changes) -> list[str]:
    """``--set`` values for a few in-process epochs on a CPU: no workers, no progress bar."""
    values = {
        "num_workers": 0, "val_num_workers": 0, "progress_bar": False, "plot_every": 1000, "checkpoint_every": 1, "seed": 3,
    }
    values.update(changes)
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def tissue_volume(shape, rng: np.random.Generator, regions: int = 8) -> np.ndarray:
    """(1, Z, Y, X) float32: Voronoi 'organs', each with its own mean intensity and texture
    (white-noise amplitude and smoothness), so crops from different places look different."""
    centres = rng.uniform(0, 1, (regions, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    owner = np.argmin(((grid[..., None, :] - centres) ** 2).sum(-1), axis=-1)
    volume = np.zeros(shape, np.float64)
    for region in range(regions):
        texture = gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(0.0, 1.5))
        texture /= texture.std()
        mask = owner == region
        volume[mask] = rng.normal(0, 2) + rng.uniform(0.1, 1.5) * texture[mask]
    volume = gaussian_filter(volume, 0.5)
    return ((volume - volume.mean()) / volume.std())[None].astype(np.float32)
