"""Per-channel intensity normalisation, as chosen by the planner (see ChannelNormalization).

Normalisation runs after cropping and before resampling, on the original grid: the mask
of voxels inside the body (seg >= 0) is exact there, while a resampled mask would blur.
"""

from __future__ import annotations

import numpy as np

from volfnet.errors import VolfnetError
from volfnet.plans import ChannelNormalization

EPSILON = 1e-8  # guards the division for constant images
RGB_MAX = 255.0  # 8-bit colour: rgb_to_0_1 divides by it (nnU-Net's RGBTo0_1Normalization)


def rgb_to_0_1(channel: np.ndarray, source: str = "image") -> np.ndarray:
    """8-bit colour values divided by 255, so every channel of an RGB picture keeps its
    relation to the others (per-channel z-scoring would shift the colours apart). Values
    outside 0..255 mean the data is not 8-bit, and are refused as nnU-Net refuses them."""
    low, high = float(channel.min()), float(channel.max())
    if low < 0 or high > RGB_MAX:
        raise VolfnetError(
            f"{source}: rgb_to_0_1 normalisation expects 8-bit values 0..255 but the channel spans {low:g}..{high:g}; "
            "name the channel 'rescale_to_0_1' or 'zscore' in dataset.json channel_names instead"
        )
    channel /= np.float32(RGB_MAX)
    return channel


def normalize_channel(channel: np.ndarray, spec: ChannelNormalization, mask: np.ndarray | None, source: str = "image") -> np.ndarray:
    """Normalise one (Z, Y, X) float32 channel; ``mask`` marks voxels inside the nonzero crop;
    ``source`` names the data in error messages."""
    channel = channel.astype(np.float32, copy=True)
    if spec.scheme == "none":
        return channel
    if spec.scheme == "rgb_to_0_1":
        return rgb_to_0_1(channel, source)
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


def normalize_image(image: np.ndarray, specs: list[ChannelNormalization], seg: np.ndarray | None, source: str = "image") -> np.ndarray:
    """Normalise every channel of a (C, Z, Y, X) image; ``seg`` (1, Z, Y, X) gives the mask
    (seg >= 0); ``source`` names the data in error messages."""
    if len(specs) != image.shape[0]:
        raise ValueError(f"{len(specs)} normalisation specs for {image.shape[0]} channels")
    mask = seg[0] >= 0 if seg is not None else None
    return np.stack([normalize_channel(image[c], specs[c], mask, f"{source} channel {c}") for c in range(image.shape[0])])
