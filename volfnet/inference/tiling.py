"""Where the sliding window goes and how much each of its voxels counts.

Three small pure pieces of the sliding-window predictor, kept apart so that each can be tested
on its own: the Gaussian importance map that down-weights tile borders (a convolutional net
sees less context there), the evenly spaced tile starts along each axis, and the zero padding
that makes every window exactly the patch size (PCT-Net only accepts its fixed input size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from volfnet.errors import VolfnetError

GAUSSIAN_SIGMA_FRACTION = 1 / 8  # sigma = patch/8: nnU-Net's value; borders weigh ~e^-8 of the centre per axis
DEFAULT_STEP_FRACTION = 0.5  # half-patch steps: every voxel is seen by up to 2 tiles per axis (nnU-Net default)
GAUSSIAN_CACHE_SIZE = 8  # a run uses one patch size on one device; a few entries cover tests and ensembles
STEP_ROUNDING_SLACK = 1e-9  # keeps (shape - patch) / step from rounding up to an extra tile on float noise


def _check_patch(patch_size: Sequence[int]) -> tuple[int, ...]:
    patch = tuple(int(p) for p in patch_size)
    if not patch or any(p < 1 for p in patch):
        raise VolfnetError(f"patch size {list(patch_size)} must be positive integers")
    return patch


def _check_step_fraction(step_fraction: float) -> None:
    if not 0 < step_fraction <= 1:
        raise VolfnetError(f"tile step fraction {step_fraction} must be in (0, 1]: a step above one patch leaves gaps")


@lru_cache(maxsize=GAUSSIAN_CACHE_SIZE)
def _cached_gaussian(patch: tuple[int, ...], sigma_fraction: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Separable product of 1-D Gaussians centred at (p - 1) / 2, so the map is mirror-symmetric
    # (TTA and even patch sizes stay unbiased); built in float64 so fp16 maps round only once.
    weights = torch.ones((), dtype=torch.float64)
    for axis_size in patch:
        sigma = max(axis_size * sigma_fraction, torch.finfo(torch.float64).eps)
        offsets = torch.arange(axis_size, dtype=torch.float64) - (axis_size - 1) / 2
        weights = weights.unsqueeze(-1) * torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = (weights / weights.max()).to(dtype)
    positive = weights[weights > 0]
    # Corners can underflow in fp16; a zero weight would divide by zero where only that tile looks.
    weights.clamp_(min=positive.min().item())
    return weights.to(device)


def gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_fraction: float = GAUSSIAN_SIGMA_FRACTION,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-voxel weight of a tile's prediction: 1 at the centre, falling off as a Gaussian with
    sigma = ``patch * sigma_fraction`` per axis, never below the smallest positive value.

    Predictions near a tile border lack context, so blending overlapping tiles with this map
    favours each voxel's most central view. The map is cached per (patch, sigma, dtype, device)
    because it is requested once per case; treat the returned tensor as read-only.
    """
    if sigma_fraction <= 0:
        raise VolfnetError(f"Gaussian sigma fraction {sigma_fraction} must be positive")
    return _cached_gaussian(_check_patch(patch_size), float(sigma_fraction), dtype, torch.device(device))


def tile_starts(image_shape: Sequence[int], patch_size: Sequence[int], step_fraction: float = DEFAULT_STEP_FRACTION) -> list[list[int]]:
    """Start index of every window along each axis, evenly spaced from 0 to ``shape - patch``.

    The count per axis is ``ceil((shape - patch) / (patch * step_fraction)) + 1`` (nnU-Net's
    rule), so neighbouring windows never step further than ``patch * step_fraction`` and the
    windows cover the image exactly, without running past its end. Images must already be at
    least as large as the patch (see :func:`pad_to_patch`).
    """
    patch = _check_patch(patch_size)
    _check_step_fraction(step_fraction)
    if len(image_shape) != len(patch):
        raise ValueError(f"image shape {list(image_shape)} and patch size {list(patch)} differ in length")
    starts = []
    for size, window in zip(image_shape, patch):
        if size < window:
            raise ValueError(f"image shape {list(image_shape)} is smaller than the patch {list(patch)}; pad it first")
        step = max(window * step_fraction, 1.0)  # a sub-voxel step would only repeat windows
        count = math.ceil((size - window) / step - STEP_ROUNDING_SLACK) + 1
        spacing = (size - window) / (count - 1) if count > 1 else 0.0
        starts.append([round(i * spacing) for i in range(count)])
    return starts


def pad_to_patch(image: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad a (C, *spatial) image symmetrically on every axis shorter than the patch.

    Returns the padded image (the input itself when nothing is short) and the spatial slices
    that cut the original region back out of anything shaped like the padded image.
    """
    patch = _check_patch(patch_size)
    spatial = image.shape[1:]
    before = [max(window - size, 0) // 2 for size, window in zip(spatial, patch)]
    after = [max(window - size, 0) - b for size, window, b in zip(spatial, patch, before)]
    crop = tuple(slice(b, b + size) for b, size in zip(before, spatial))
    if not any(before) and not any(after):
        return image, crop
    # F.pad lists (before, after) pairs starting from the last axis.
    pads = [amount for b, a in zip(reversed(before), reversed(after)) for amount in (b, a)]
    return F.pad(image, pads, mode="constant", value=0.0), crop
