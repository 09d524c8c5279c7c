"""Synthetic datasets written to disk as a user's raw data would be, in the nnU-Net v2 raw layout;
and where the real example data lives when the shared folder is checked out beside the
repository (tests that need it skip without it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers.images import write_volume

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def make_raw_dataset(
    root: Path,
    dataset_id: int = 1,
    name: str = "Toy",
    num_cases: int = 6,
    shape=(20, 24, 28),
    spacing=(1.0, 1.0, 1.0),
    channel_names=("MR",),
    num_labels: int = 2,
    ending: str = ".nii.gz",
    seed: int = 0,
    num_test: int = 0,
    spacing_per_case=None,
    shape_per_case=None,
) -> Path:
    """A small dataset in nnU-Net v2 raw layout: bright blobs on a noisy background, labels
    1..num_labels on the blobs, zero padding at the border so crop-to-nonzero has work."""
    rng = np.random.default_rng(seed)
    folder = root / f"Dataset{dataset_id:03d}_{name}"
    for case in range(num_cases + num_test):
        case_shape = shape_per_case[case] if shape_per_case else shape
        case_spacing = spacing_per_case[case] if spacing_per_case else spacing
        zz, yy, xx = np.meshgrid(*[np.arange(s) for s in case_shape], indexing="ij")
        seg = np.zeros(case_shape, np.uint8)
        centre = np.array(case_shape) / 2 + rng.uniform(-2, 2, 3)
        radius = min(case_shape) / 4
        dist = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        seg[dist < radius] = 1
        if num_labels >= 2:
            seg[(dist < radius) & (xx > centre[2])] = 2
        case_id = f"case_{case:03d}"
        is_test = case >= num_cases
        images_dir = folder / ("imagesTs" if is_test else "imagesTr")
        for channel, channel_name in enumerate(channel_names):
            base = -1000.0 if channel_name.lower() == "ct" else 100.0
            image = base / 10 + 20 * rng.standard_normal(case_shape) + 200.0 * (seg > 0) + 50.0 * (seg == 2) + channel * 5
            image[:2] = 0
            image[:, :, :2] = 0
            write_volume(image.astype(np.float32), images_dir / f"{case_id}_{channel:04d}{ending}", case_spacing)
        if not is_test:
            write_volume(seg, folder / "labelsTr" / f"{case_id}{ending}", case_spacing)
    labels = {"background": 0, **{f"class{i}": i for i in range(1, num_labels + 1)}}
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {str(i): n for i, n in enumerate(channel_names)},
                "labels": labels,
                "numTraining": num_cases,
                "file_ending": ending,
                "name": name,
            }
        )
    )
    return folder
