"""Rotation and scaling of a cropped batch: one affine map per sample for image and labels.

batchgenerators' ``SpatialTransform`` builds a coordinate array per sample and calls
``map_coordinates`` once per image channel and once per label (one-hot), which made it about
4/5 of the pipeline's time. Here the image goes through scipy's ``affine_transform`` (trilinear,
0 outside the crop), and the labels through :func:`interpolate_labels`: the same trilinear
weights, one-hot, argmax (what nnU-Net does), but computed only where a sample point's eight
neighbours disagree; everywhere else the shared label is taken directly. Outside the crop the
label is the outside-mask label -1.

Conventions: output voxel ``o`` (centred) reads input ``x = s * R @ o + centre``; a scale
``s > 1`` reads a larger region (zooms out). ``R = R0 @ R1 @ R2`` rotates about axes 0, 1, 2
(Z, Y, X) in turn. In dummy-2D only the rotation about axis 0 (in-plane) is used and the scale
leaves axis 0 alone, so thick slices are never interpolated across.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import affine_transform

from volfnet.io.case_store import OUTSIDE_MASK_LABEL

ROTATION_GRID_MAX_3D = 61  # angles per axis when bounding the rotated patch: 61^3 matrices stay cheap
ROTATION_GRID_MAX_2D = 721  # in-plane only: half-degree steps over the full circle


def rotation_matrix(angles: tuple[float, float, float]) -> np.ndarray:
    """Rotation about axis 0, then 1, then 2 (radians), composed as ``R0 @ R1 @ R2``."""
    matrix = np.identity(3)
    for axis, angle in enumerate(angles):
        a, b = [i for i in range(3) if i != axis]
        c, s = math.cos(angle), math.sin(angle)
        single = np.identity(3)
        single[a, a], single[a, b], single[b, a], single[b, b] = c, -s, s, c
        matrix = matrix @ single
    return matrix


def rotation_extent(half: np.ndarray, max_radians: float, in_plane_only: bool) -> np.ndarray:
    """Largest half-extent per axis of a box with half-extents ``half`` under any rotation with
    every angle in [-max, max] (only about axis 0 when ``in_plane_only``).

    Evaluated on a dense grid of angles (endpoints included, at most 1 degree apart, capped at
    ``ROTATION_GRID_MAX_*`` per axis). The extent is smooth in the angles at its interior
    maxima, so the grid misses at most ~1e-4 of it.
    """
    degrees = math.degrees(max_radians)
    cap = ROTATION_GRID_MAX_2D if in_plane_only else ROTATION_GRID_MAX_3D
    angles = np.linspace(-max_radians, max_radians, max(2, min(math.ceil(2 * degrees) + 1, cap)))
    cos, sin = np.cos(angles), np.sin(angles)
    n = len(angles)
    per_axis = []
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]
        single = np.broadcast_to(np.identity(3), (n, 3, 3)).copy()
        single[:, a, a], single[:, a, b], single[:, b, a], single[:, b, b] = cos, -sin, sin, cos
        per_axis.append(single)
    if in_plane_only:
        rotations = per_axis[0]
    else:
        first_two = np.matmul(per_axis[0][:, None], per_axis[1][None]).reshape(-1, 1, 3, 3)
        rotations = np.matmul(first_two, per_axis[2][None]).reshape(-1, 3, 3)
    # output coordinate i reaches sum_j |R[i, j]| * half[j]
    return (np.abs(rotations) * half[None, None, :]).sum(axis=2).max(axis=0)


@dataclass(frozen=True)
class SpatialParameters:
    """Probabilities and ranges of the spatial augmentation (see AugmentationConfig)."""

    rotation_p: float
    max_radians: float
    scaling_p: float
    scale_min: float
    scale_max: float
    in_plane_only: bool


class SpatialAugmentation:
    """Rotate and scale each sample of a cropped batch (or not, with the given probabilities)
    and cut the final patch from the centre of its crop."""

    def __init__(self, patch_size: tuple[int, ...], parameters: SpatialParameters) -> None:
        self.patch_size = tuple(int(v) for v in patch_size)
        self.parameters = parameters
        centred = [np.arange(n, dtype=np.float32) - (n - 1) / 2.0 for n in self.patch_size]
        self._grid = np.stack(np.meshgrid(*centred, indexing="ij")).reshape(3, -1)

    def draw(self, rng: np.random.Generator) -> np.ndarray | None:
        """The sample's affine matrix, or None when it is neither rotated nor scaled."""
        p = self.parameters
        matrix = None
        if rng.random() < p.rotation_p:
            if p.in_plane_only:
                angles = (rng.uniform(-p.max_radians, p.max_radians), 0.0, 0.0)
            else:
                angles = tuple(rng.uniform(-p.max_radians, p.max_radians, 3))
            matrix = rotation_matrix(angles)
        if rng.random() < p.scaling_p:
            # half the samples zoom in, half zoom out (uniform within each side of 1)
            if rng.random() < 0.5 and p.scale_min < 1.0:
                scale = rng.uniform(p.scale_min, 1.0)
            else:
                scale = rng.uniform(max(p.scale_min, 1.0), p.scale_max)
            scaling = np.diag([1.0 if p.in_plane_only else scale, scale, scale])
            matrix = scaling if matrix is None else scaling @ matrix
        return matrix

    def __call__(self, data: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(B, C, *crop) float32 and (B, S, *crop) int labels -> the same at the patch size (S label
        maps: 1, or 2 in a cascade, whose second one is the previous stage's)."""
        batch, channels = data.shape[:2]
        crop = data.shape[2:]
        out_data = np.empty((batch, channels, *self.patch_size), dtype=np.float32)
        out_seg = np.empty((batch, seg.shape[1], *self.patch_size), dtype=np.int16)
        start = [(c - p) // 2 for c, p in zip(crop, self.patch_size)]
        centre = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))
        for b in range(batch):
            matrix = self.draw(rng)
            if matrix is None:
                index: tuple[Any, ...] = (b, slice(None), *centre)
                out_data[b] = data[index]
                out_seg[b] = seg[index]
            else:
                self._sample(data[b], seg[b], matrix, out_data[b], out_seg[b])
        return out_data, out_seg

    def _sample(self, image: np.ndarray, labels: np.ndarray, matrix: np.ndarray, out_image: np.ndarray, out_labels: np.ndarray) -> None:
        """One sample: ``image`` (C, *crop), ``labels`` (S, *crop) label maps."""
        shape = np.asarray(image.shape[1:])
        offset = (shape - 1) / 2.0 - matrix @ ((np.asarray(self.patch_size) - 1) / 2.0)
        for channel in range(image.shape[0]):
            # trilinear inside the crop, 0 outside it (the labels below: -1 outside)
            affine_transform(image[channel], matrix, offset, output_shape=self.patch_size, output=out_image[channel],
                             order=1, mode="constant", cval=0.0)
        # x = matrix @ o + offset, written out (a 3 x 3 BLAS product on a long array is slower)
        grid = self._grid
        coords = np.empty_like(grid)
        for i in range(3):
            coords[i] = matrix[i, 0] * grid[0] + matrix[i, 1] * grid[1] + matrix[i, 2] * grid[2] + (shape[i] - 1) / 2.0
        for channel in range(labels.shape[0]):
            out_labels[channel] = interpolate_labels(labels[channel], coords).reshape(out_labels.shape[1:])


def uniform_cells(labels: np.ndarray) -> np.ndarray:
    """For each 2x2x2 cell of voxels (indexed by its lowest corner): do all 8 share one label?"""
    base = labels[:-1, :-1, :-1]
    uniform = np.ones(base.shape, dtype=bool)
    for dz, dy, dx in list(np.ndindex(2, 2, 2))[1:]:  # the 7 other corners of each cell
        uniform &= labels[dz : dz + base.shape[0], dy : dy + base.shape[1], dx : dx + base.shape[2]] == base
    return uniform


def interpolate_labels(labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Labels (Z, Y, X) at fractional ``coords`` (3, N): one-hot trilinear interpolation, argmax.

    Points outside the array's voxel range get the outside-mask label -1, as the image gets 0 there
    (scipy's "constant" mode). Most other points fall in a cell whose 8 corners share a label
    and get it directly; only the rest (class borders, the array's last voxel) are scored
    corner by corner. Ties go to the lowest label.
    """
    shape = np.asarray(labels.shape)
    outside = np.any((coords < 0) | (coords > (shape[:, None] - 1)), axis=0)
    low = np.floor(coords).astype(np.intp)
    in_cell = np.all((low >= 0) & (low <= shape[:, None] - 2), axis=0)
    lz, ly, lx = np.where(in_cell, low, 0)
    result = np.take(labels.reshape(-1), (lz * shape[1] + ly) * shape[2] + lx).astype(np.int16)
    if np.all(shape >= 2):
        cells = uniform_cells(labels).reshape(-1)
        uniform = in_cell & np.take(cells, (lz * (shape[1] - 1) + ly) * (shape[2] - 1) + lx)
    else:
        uniform = np.zeros(coords.shape[1], dtype=bool)
    result[outside] = OUTSIDE_MASK_LABEL
    rest = np.flatnonzero(~uniform & ~outside)
    if len(rest):
        result[rest] = _score_corners(labels, coords[:, rest], low[:, rest])
    return result


def _score_corners(labels: np.ndarray, coords: np.ndarray, low: np.ndarray) -> np.ndarray:
    """One-hot trilinear argmax at each point from its 8 corner labels and weights."""
    weights, inside, offsets = [], [], []
    for axis, n in enumerate(labels.shape):
        frac = coords[axis] - low[axis]
        position = low[axis][None] + np.array([[0], [1]])  # the lower and upper neighbour, (2, M)
        weights.append(np.stack([1.0 - frac, frac]))
        inside.append((position >= 0) & (position < n))
        offsets.append(np.clip(position, 0, n - 1) * int(np.prod(labels.shape[axis + 1 :])))
    # every combination of (lower, upper) per axis: the 8 corners, (2, 2, 2, M) -> (8, M)
    weight = (weights[0][:, None, None] * weights[1][None, :, None] * weights[2][None, None, :]).reshape(8, -1)
    valid = (inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]).reshape(8, -1)
    index = (offsets[0][:, None, None] + offsets[1][None, :, None] + offsets[2][None, None, :]).reshape(8, -1)
    value = np.where(valid, np.take(labels.reshape(-1), index), OUTSIDE_MASK_LABEL)
    present = np.unique(value)
    scores = ((value[None] == present[:, None, None]) * weight[None]).sum(axis=1)  # (L, M)
    return present[np.argmax(scores, axis=0)].astype(np.int16)
