"""VolF fusion: the label map of mixing levels and the fused image.

Fused image X = (k/K) * I_fg + (1 - k/K) * I_bg voxelwise, target label k in 0..K.

Two published ways to draw the label map:

* ``grid`` (journal version, PyMIC ``VolumeFusion``, default): one block size per sample,
  drawn per axis in [block_size_min, block_size_max]; a random grid offset in
  0..(patch mod block); ``int(N * foreground_ratio)`` of the N grid blocks, chosen without
  replacement, get a level k ~ U{1..K}; the rest of the grid and the margins stay 0. Built
  vectorised: a small (blocks per axis) level array expanded by broadcasting.
* ``box`` (arXiv v1): M ~ U{box_count_range} boxes, each with a size per axis in
  [box_size_min, box_size_max] and a uniform random centre, clipped to the patch, painted in
  order with k ~ U{1..K} (later boxes overwrite earlier ones, giving irregular shapes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from volfnet.errors import VolfnetError
from volfnet.volf.config import AUTO_FUSION_MODE, VolFConfig


@dataclass(frozen=True)
class GridParams:
    """A drawn grid: block size, grid offset and the level of every block (uint8 array of
    shape blocks-per-axis)."""

    block_size: tuple[int, int, int]
    offset: tuple[int, int, int]
    levels: np.ndarray


@dataclass(frozen=True)
class BoxParams:
    """Drawn boxes, clipped to the patch: ``starts``/``stops`` (M, 3) and ``levels`` (M,)."""

    starts: np.ndarray
    stops: np.ndarray
    levels: np.ndarray


def draw_grid_params(config: VolFConfig, rng: np.random.Generator) -> GridParams:
    """Draw block size, offset, the chosen foreground blocks and their levels (in that order)."""
    patch = np.asarray(config.patch_size)
    low, high = config.block_size_range()
    block = rng.integers(np.asarray(low), np.asarray(high) + 1)
    offset = rng.integers(0, patch % block + 1)
    grid_shape = patch // block
    count = int(np.prod(grid_shape))
    num_foreground = int(count * config.foreground_ratio)
    chosen = rng.permutation(count)[:num_foreground]
    levels = np.zeros(count, dtype=np.uint8)
    levels[chosen] = rng.integers(1, config.num_levels + 1, size=num_foreground)
    return GridParams(
        tuple(int(b) for b in block), tuple(int(o) for o in offset), levels.reshape(grid_shape)  # type: ignore[arg-type]
    )


def grid_label_map(patch_size: Sequence[int], params: GridParams) -> np.ndarray:
    """Expand the block levels to a uint8 label map of ``patch_size``."""
    label = np.zeros(tuple(patch_size), dtype=np.uint8)
    grid = params.levels
    covered = tuple(g * b for g, b in zip(grid.shape, params.block_size))
    region = tuple(slice(o, o + c) for o, c in zip(params.offset, covered))
    expanded = np.broadcast_to(
        grid[:, None, :, None, :, None],
        (grid.shape[0], params.block_size[0], grid.shape[1], params.block_size[1], grid.shape[2], params.block_size[2]),
    )
    label[region] = expanded.reshape(covered)
    return label


def draw_box_params(config: VolFConfig, rng: np.random.Generator) -> BoxParams:
    """Draw the box count, then all sizes, centres and levels at once."""
    patch = np.asarray(config.patch_size)
    low, high = config.box_size_range()
    count = int(rng.integers(config.box_count_range[0], config.box_count_range[1] + 1))
    sizes = rng.integers(np.asarray(low), np.asarray(high) + 1, size=(count, 3))
    centres = rng.integers(0, patch, size=(count, 3))
    starts = centres - sizes // 2
    stops = np.clip(starts + sizes, 0, patch)
    starts = np.clip(starts, 0, patch)
    levels = rng.integers(1, config.num_levels + 1, size=count).astype(np.uint8)
    return BoxParams(starts, stops, levels)


def box_label_map(patch_size: Sequence[int], params: BoxParams) -> np.ndarray:
    """Paint the boxes in order into a uint8 label map (at most a few dozen slice writes)."""
    label = np.zeros(tuple(patch_size), dtype=np.uint8)
    for start, stop, level in zip(params.starts, params.stops, params.levels):
        label[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = level
    return label


def draw_label_map(config: VolFConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw and build the label map of ``config.fusion_mode``."""
    if config.fusion_mode == AUTO_FUSION_MODE:
        raise VolfnetError(
            "VolF fusion_mode 'auto' is chosen from the images' size before sampling "
            "(volfnet.volf.pretext_choice.choose_fusion_mode); set 'grid' or 'box' to sample directly"
        )
    if config.fusion_mode == "grid":
        return grid_label_map(config.patch_size, draw_grid_params(config, rng))
    return box_label_map(config.patch_size, draw_box_params(config, rng))


def fuse_images(foreground: np.ndarray, background: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """X = (k/K) * foreground + (1 - k/K) * background, float32, computed as bg + a (fg - bg).

    a = k * (1/K) is one multiply per voxel (several times faster than a table gather); it
    equals k/K to float32 rounding.
    """
    if not foreground.shape == background.shape == label.shape:
        raise ValueError(f"shapes differ: foreground {foreground.shape}, background {background.shape}, label {label.shape}")
    alpha = np.multiply(label, np.float32(1.0 / (num_classes - 1)), dtype=np.float32)
    fused = np.subtract(foreground, background, dtype=np.float32)
    fused *= alpha
    fused += background
    return fused


def label_fractions(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of voxels per class 0..num_classes-1 (float64); fg fraction = 1 - [0]."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=num_classes)
    return counts[:num_classes] / max(1, labels.size)
