"""Per-channel intensity normalisation, as chosen by the planner (see ChannelNormalization).

Normalisation runs after cropping and before resampling, on the original grid: the mask
of voxels inside the body (seg >= 0) is exact there, while a resampled mask would blur.
"""

from __future__ import annotations

import numpy as np

from volfnet.plans import ChannelNormalization

EPSILON = 1e-8  # guards the division for constant images


def normalize_channel(channel: np.ndarray, spec: ChannelNormalization, mask: np.ndarray | None) -> np.ndarray:
    """Normalise one (Z, Y, X) float32 channel; ``mask`` marks voxels inside the nonzero crop."""
    channel = channel.astype(np.float32, copy=True)
    if spec.scheme == "none":
        return channel
    if spec.scheme == "ct":
        np.clip(channel, spec.clip_lower, spec.clip_upper, out=channel)
        channel -= np.float32(spec.mean)
        channel /= np.float32(max(float(spec.std or 0.0), EPSILON))
        return channel
    if spec.scheme == "rescale_0_1":
        low, high = float(channel.min()), float(channel.max())
        channel -= low
        channel /= max(high - low, EPSILON)
        return channel
    # zscore
    if spec.use_mask and mask is not None and mask.any():
        values = channel[mask]
        mean, std = float(values.mean()), float(values.std())
        normalized = np.zeros_like(channel)
        normalized[mask] = (values - mean) / max(std, EPSILON)
        return normalized
    mean, std = float(channel.mean()), float(channel.std())
    channel -= mean
    channel /= max(std, EPSILON)
    return channel


def normalize_image(image: np.ndarray, specs: list[ChannelNormalization], seg: np.ndarray | None) -> np.ndarray:
    """Normalise every channel of a (C, Z, Y, X) image; ``seg`` (1, Z, Y, X) gives the mask (seg >= 0)."""
    if len(specs) != image.shape[0]:
        raise ValueError(f"{len(specs)} normalisation specs for {image.shape[0]} channels")
    mask = seg[0] >= 0 if seg is not None else None
    return np.stack([normalize_channel(image[c], specs[c], mask) for c in range(image.shape[0])])
