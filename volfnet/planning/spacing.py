"""Target spacing and axis transpose, from the fingerprint.

The target is the per-axis median spacing. For anisotropic data (one axis more than
:data:`ANISOTROPY_RATIO` times coarser than the others *and* with few voxels along it) the
coarse axis takes the 10th percentile of its spacings instead: upsampling thick-slice scans
to the median wastes memory, while thin-slice outliers are few. The coarsest axis is moved
to the front so that the network's first, anisotropic levels always act on axis 0.
"""

from __future__ import annotations

import numpy as np

ANISOTROPY_RATIO = 3.0  # spacing ratio above which an axis counts as "thick-slice"
ANISOTROPIC_SPACING_PERCENTILE = 10.0  # coarse-axis target for anisotropic datasets


def target_spacing(spacings: list[list[float]], shapes: list[list[int]]) -> list[float]:
    """Per-axis target spacing (numpy axis order, before transpose)."""
    spacings_arr = np.asarray(spacings, dtype=float)
    shapes_arr = np.asarray(shapes, dtype=float)
    target = np.median(spacings_arr, axis=0)
    median_shape = np.median(shapes_arr * spacings_arr / target, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    has_aniso_spacing = target[worst] > ANISOTROPY_RATIO * max(target[a] for a in others)
    has_aniso_voxels = median_shape[worst] * ANISOTROPY_RATIO < min(median_shape[a] for a in others)
    if has_aniso_spacing and has_aniso_voxels:
        coarse = float(np.percentile(spacings_arr[:, worst], ANISOTROPIC_SPACING_PERCENTILE))
        floor = max(target[a] for a in others)
        target[worst] = max(coarse, floor + 1e-5)
    return [float(v) for v in target]


def transpose_for_spacing(spacing: list[float]) -> tuple[list[int], list[int]]:
    """(forward, backward) axis permutations that move the coarsest axis to the front and
    keep the other axes in their order."""
    worst = int(np.argmax(spacing))
    forward = [worst] + [a for a in range(len(spacing)) if a != worst]
    backward = [int(i) for i in np.argsort(forward)]
    return forward, backward
