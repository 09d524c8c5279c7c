"""Preprocessed cases written straight into a case store, as ``volfnet_plan_and_preprocess``
leaves them, so that data, training and pretraining tests need no planner run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from volfnet.io.image_io import ImageGeometry
from volfnet.io.case_store import CaseProperties, save_case


def make_case(folder: Path, case_id: str, image: np.ndarray, seg: np.ndarray | None) -> None:
    """Save a preprocessed case; class locations are every voxel of each foreground label."""
    shape = list(image.shape[1:])
    locations = {}
    if seg is not None:
        for label in np.unique(seg):
            if label > 0:
                locations[int(label)] = np.argwhere(seg[0] == label).tolist()
    geometry = ImageGeometry([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1, 0, 0, 0, 1, 0, 0, 0, 1], shape)
    properties = CaseProperties.unprocessed(case_id, geometry, [1.0, 1.0, 1.0], locations)
    save_case(folder, image.astype(np.float32), seg, properties)


def make_blob_cases(folder: Path, count: int = 3, shape=(24, 28, 26), seed: int = 0) -> list[str]:
    """Cases with a two-label box and a -1 rim (outside the nonzero mask)."""
    rng = np.random.default_rng(seed)
    ids = []
    for index in range(count):
        seg = np.zeros((1, *shape), np.int8)
        seg[0, 6:14, 8:18, 6:16] = 1
        seg[0, 14:18, 8:18, 6:16] = 2
        seg[0, :2] = -1
        image = (rng.standard_normal((1, *shape)) + 3.0 * (seg > 0)).astype(np.float32)
        case_id = f"case_{index:03d}"
        make_case(folder, case_id, image, seg)
        ids.append(case_id)
    return ids
