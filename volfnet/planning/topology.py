"""Network topology from spacing and patch size: levels, strides, kernels, channels.

FMUNet: a level is added (stride 2 on the eligible axes) while an axis is long enough
(at least ``2 * MIN_FEATURE_MAP_EDGE`` voxels) and its current spacing is within
``SPACING_RATIO_FOR_POOLING`` of the finest one, so thick-slice axes are left alone until the
in-plane resolution has caught up; a level's kernel is 1 along an axis that is still much
coarser than the others (PyMIC's ``res_mode``: the published (1,3,3) first levels). The depth
is capped at :data:`MAX_LEVELS` = 5, the published FMUNet, which keeps released checkpoints
loadable. PCT-Net has five fixed levels; its ``resolution_mode`` is picked from the spacing.
"""

from __future__ import annotations

import math

import numpy as np

from volfnet.plans import NetworkTopology

MIN_FEATURE_MAP_EDGE = 4  # the coarsest feature map keeps at least this many voxels per pooled axis
SPACING_RATIO_FOR_POOLING = 2.0  # pool/convolve an axis in 3D only once it is within 2x of the finest
MAX_LEVELS = 5  # the published FMUNet depth; deeper nets would not load released weights
MIN_LEVELS = 3
FMUNET_DROPOUT = 0.2  # published: levels 0-1 none, deeper levels 0.2
PCTNET_DROPOUT = [0.0, 0.0, 0.2, 0.2, 0.2]
PCTNET_LEVELS = 5
PCTNET_STRIDES_BY_RESOLUTION_MODE = {
    0: [[2, 2, 2], [2, 2, 2]],
    1: [[1, 2, 2], [2, 2, 2]],
    2: [[1, 2, 2], [1, 2, 2]],
}


def feature_channels(num_levels: int, base: int, maximum: int) -> list[int]:
    """base * 2**level, capped at ``maximum``."""
    return [min(base * 2**level, maximum) for level in range(num_levels)]


def fmunet_strides_and_kernels(spacing: list[float], patch_size: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """Per-level down-sampling strides and conv kernels for FMUNet (see module docstring)."""
    current_spacing = np.asarray(spacing, dtype=float)
    current_size = np.asarray(patch_size, dtype=float)
    strides: list[list[int]] = []
    kernels: list[list[int]] = []
    kernel_is_3d = [False, False, False]
    while True:
        finest = current_spacing.min()
        within = current_spacing <= SPACING_RATIO_FOR_POOLING * finest
        for axis in range(3):
            kernel_is_3d[axis] = kernel_is_3d[axis] or bool(within[axis])
        kernels.append([3 if k else 1 for k in kernel_is_3d])
        if len(strides) + 1 >= MAX_LEVELS:
            break
        eligible = within & (current_size >= 2 * MIN_FEATURE_MAP_EDGE)
        if eligible.sum() == 1 and current_size[eligible].min() < 3 * MIN_FEATURE_MAP_EDGE:
            eligible[:] = False
        if not eligible.any():
            break
        stride = [2 if e else 1 for e in eligible]
        strides.append(stride)
        current_size = current_size / np.asarray(stride)
        current_spacing = current_spacing * np.asarray(stride)
    return strides, kernels


def round_up_patch(patch_size: list[int], divisor: list[int]) -> list[int]:
    return [int(math.ceil(p / d) * d) for p, d in zip(patch_size, divisor)]


def fmunet_topology(spacing: list[float], patch_size: list[int], base_features: int, max_features: int) -> NetworkTopology:
    """FMUNet topology for a (spacing, patch) pair; may have fewer than 5 levels for tiny patches."""
    strides, kernels = fmunet_strides_and_kernels(spacing, patch_size)
    levels = len(kernels)
    if levels < MIN_LEVELS:
        # Tiny patches: keep a minimal U-shape by pooling the in-plane axes anyway.
        while len(strides) < MIN_LEVELS - 1:
            strides.append([1, 2, 2] if spacing[0] > SPACING_RATIO_FOR_POOLING * min(spacing[1:]) else [2, 2, 2])
            kernels.append(list(kernels[-1]))
        levels = len(kernels)
    return NetworkTopology(
        name="fmunet",
        feature_channels=feature_channels(levels, base_features, max_features),
        strides=strides,
        kernel_sizes=kernels,
        dropout=[0.0 if level < 2 else FMUNET_DROPOUT for level in range(levels)],
        depth=2,
    )


def pctnet_resolution_mode(spacing: list[float]) -> int:
    """0 for near-isotropic data, 1 when axis 0 is about 2x coarser, 2 when 4x or more."""
    ratio = spacing[0] / min(spacing[1:])
    if ratio < 1.5:
        return 0
    if ratio < 3.0:
        return 1
    return 2


def pctnet_topology(spacing: list[float], patch_size: list[int], base_features: int, max_features: int) -> NetworkTopology:
    """PCT-Net topology: five levels, fixed input size = the patch (must be divisible by the
    total down-sampling; the planner rounds the patch before calling this)."""
    mode = pctnet_resolution_mode(spacing)
    strides = PCTNET_STRIDES_BY_RESOLUTION_MODE[mode] + [[2, 2, 2], [2, 2, 2]]
    first_kernel = [1, 3, 3] if mode > 0 else [3, 3, 3]
    second_kernel = [1, 3, 3] if mode == 2 else [3, 3, 3]
    # Published widths [24, 48, 128, 256, 512]: the two convolutional levels are lighter than
    # the transformer levels. Scale that shape with the target's base width.
    scale = base_features / 32
    channels = [int(round(c * scale)) for c in (24, 48, 128, 256, 512)]
    channels = [min(max(c, 8), max_features) for c in channels]
    # Transformer levels need channels divisible by their head counts (4, 8, 16).
    heads = [4, 8, 16]
    for i, h in enumerate(heads):
        channels[2 + i] = max(h, channels[2 + i] // h * h)
    return NetworkTopology(
        name="pctnet",
        feature_channels=channels,
        strides=strides,
        kernel_sizes=[first_kernel, second_kernel, [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        dropout=list(PCTNET_DROPOUT),
        depth=2,
        input_size=list(patch_size),
        resolution_mode=mode,
        num_heads=heads,
        window_size=6,
    )
