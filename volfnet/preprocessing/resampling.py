"""Resampling of images, label maps and logits to a new voxel grid.

Images: cubic B-splines (order 3). Label maps: every label's binary mask is interpolated
linearly and each voxel takes the label with the highest value (smooth boundaries without
inventing labels). Logits: linear. When the spacing is anisotropic (coarsest axis more than
``anisotropy_threshold`` times the finest), the coarse axis is resampled on its own with
nearest-neighbour interpolation: interpolating across 5 mm slices invents structures.

All grids are aligned at voxel centres of the outer edges (``grid_mode=True`` in scipy,
``align_corners=False`` in torch), so an image and its label map stay registered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from volfnet.plans import ResamplingSpec

if TYPE_CHECKING:  # torch is imported where it is used: preprocessing workers start faster without it
    import torch


def new_shape_for_spacing(shape: list[int] | tuple[int, ...], spacing: list[float], new_spacing: list[float]) -> list[int]:
    """Shape after resampling from ``spacing`` to ``new_spacing`` (at least one voxel per axis)."""
    return [max(1, int(round(s * sp / nsp))) for s, sp, nsp in zip(shape, spacing, new_spacing)]


def separate_axis(spacing: list[float], new_spacing: list[float], threshold: float) -> int | None:
    """The axis to resample separately, or None. Chosen from the current spacing if it is
    anisotropic, else from the target spacing; None when two axes share the coarsest spacing."""
    for candidate in (spacing, new_spacing):
        values = np.asarray(candidate, dtype=float)
        if values.max() / values.min() > threshold:
            coarsest = np.flatnonzero(np.isclose(values, values.max()))
            return int(coarsest[0]) if len(coarsest) == 1 else None
    return None


def _zoom(volume: np.ndarray, shape: list[int], order: int) -> np.ndarray:
    factors = [n / o for n, o in zip(shape, volume.shape)]
    out = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if list(out.shape) != list(shape):  # zoom rounds; force the exact shape
        out = out[tuple(slice(0, s) for s in shape)]
        out = np.pad(out, [(0, s - o) for s, o in zip(shape, out.shape)], mode="edge")
    return out


def resample_image(image: np.ndarray, spacing: list[float], new_spacing: list[float], spec: ResamplingSpec, new_shape: list[int] | None = None) -> np.ndarray:
    """Resample a (C, Z, Y, X) float image to ``new_spacing`` (or to ``new_shape``)."""
    shape = new_shape or new_shape_for_spacing(image.shape[1:], spacing, new_spacing)
    if list(shape) == list(image.shape[1:]):
        return image
    axis = separate_axis(spacing, new_spacing, spec.anisotropy_threshold)
    channels = []
    for channel in image:
        channel = channel.astype(np.float32, copy=False)
        if axis is None:
            channels.append(_zoom(channel, shape, spec.image_order))
        else:
            in_plane = list(channel.shape)
            in_plane[:] = shape
            in_plane[axis] = channel.shape[axis]
            step = _zoom(channel, in_plane, spec.image_order) if in_plane != list(channel.shape) else channel
            channels.append(_zoom(step, shape, spec.order_z) if shape[axis] != step.shape[axis] else step)
    return np.stack(channels).astype(np.float32, copy=False)


def _interpolate_mask(mask: torch.Tensor, shape: list[int], axis: int | None) -> torch.Tensor:
    """Linear interpolation of a (1, 1, Z, Y, X) float mask; nearest along ``axis`` if given."""
    import torch.nn.functional as F

    if axis is None:
        return F.interpolate(mask, size=shape, mode="trilinear", align_corners=False)
    in_plane = list(shape)
    in_plane[axis] = mask.shape[2 + axis]
    mask = F.interpolate(mask, size=in_plane, mode="trilinear", align_corners=False)
    return F.interpolate(mask, size=shape, mode="nearest-exact")


def resample_segmentation(seg: np.ndarray, spacing: list[float], new_spacing: list[float], spec: ResamplingSpec, new_shape: list[int] | None = None) -> np.ndarray:
    """Resample a (1, Z, Y, X) integer label map (values may include -1) label by label."""
    shape = new_shape or new_shape_for_spacing(seg.shape[1:], spacing, new_spacing)
    if list(shape) == list(seg.shape[1:]):
        return seg
    import torch

    axis = separate_axis(spacing, new_spacing, spec.anisotropy_threshold)
    labels = np.unique(seg)
    best_value = torch.full(shape, -1.0)
    result = torch.zeros(shape, dtype=torch.int16)
    source = torch.from_numpy(np.ascontiguousarray(seg[0]))
    with torch.no_grad():
        for label in labels:
            mask = (source == int(label)).float()[None, None]
            value = _interpolate_mask(mask, shape, axis)[0, 0]
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            result[better] = int(label)
    return result.numpy().astype(seg.dtype)[None]


def resample_logits(logits: torch.Tensor, shape: list[int], spacing: list[float], new_spacing: list[float], spec: ResamplingSpec) -> torch.Tensor:
    """Resample (C, Z, Y, X) logits or probabilities linearly to ``shape`` (one class at a
    time, so peak memory stays near one copy of the output)."""
    import torch

    if list(shape) == list(logits.shape[1:]):
        return logits
    axis = separate_axis(spacing, new_spacing, spec.anisotropy_threshold)
    out = torch.empty((logits.shape[0], *shape), dtype=logits.dtype, device=logits.device)
    with torch.no_grad():
        for c in range(logits.shape[0]):
            out[c] = _interpolate_mask(logits[c][None, None].float(), list(shape), axis)[0, 0].to(logits.dtype)
    return out
