"""The VolF crop pair: two augmented sub-volumes of one volume (foreground and background).

Per crop (published ``Crop4VolumeFusion``): per-axis scale s ~ U(scale_lower, scale_upper),
crop extent ``min(int(patch * s), size)`` at a uniform random start, linear resize to the
patch, a flip of each axis with p = 0.5, and the random-percentile contrast map with gamma
(:mod:`volfnet.volf.intensity`); then one joint inversion of both crops with p = 0.25.
``augmentation_mode`` switches the parts: 0 none (scale 1, no flip, intensities unchanged),
1 intensity only, 2 spatial only (scale + flips), 3 both.

Randomness is split TorchIO style: ``draw_*`` functions take a ``numpy.random.Generator``
and return frozen parameter records; ``apply_*`` functions are deterministic.

Volumes smaller than the patch are padded, evenly on both sides, with the volume's minimum:
that is the background of preprocessed CT and MRI (air, outside the body), it never invents
mirrored anatomy as reflection would, and it works for any deficit (reflection cannot pad
more than size - 1). Larger crops (scale > 1) are then limited to the padded size, as
published. Input arrays are never written to (read-only memory maps are fine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from volfnet.volf.config import VolFConfig
from volfnet.volf.intensity import (
    IntensityParams,
    apply_intensity,
    draw_intensity_params,
)
from volfnet.volf.resize import crop_and_resize

SPATIAL_MODES = (2, 3)
INTENSITY_MODES = (1, 3)


@dataclass(frozen=True)
class CropParams:
    """One crop: where (``start``, ``size`` in the padded volume), flips, and its contrast map
    (``None`` when intensity augmentation is off)."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    intensity: IntensityParams | None


@dataclass(frozen=True)
class CropPairParams:
    """The foreground and background crops and the joint inversion flag."""

    foreground: CropParams
    background: CropParams
    invert: bool


def select_channel(volume: np.ndarray, channel: int = 0) -> np.ndarray:
    """The (Z, Y, X) view of one channel of a (C, Z, Y, X) volume (no copy).

    Multi-channel cases are pretrained one channel at a time; the data loader picks it.
    """
    if volume.ndim != 4:
        raise ValueError(f"VolF expects a (C, Z, Y, X) volume, got shape {volume.shape}")
    if not 0 <= channel < volume.shape[0]:
        raise ValueError(f"channel {channel} out of range for a volume with {volume.shape[0]} channel(s)")
    if min(volume.shape[1:]) < 1:
        raise ValueError(f"VolF cannot crop an empty volume of shape {volume.shape}")
    return volume[channel]


def padded_shape(shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int, int]:
    """The shape after :func:`pad_to_patch`: every axis at least the patch."""
    return tuple(max(int(s), int(p)) for s, p in zip(shape, patch_size))  # type: ignore[return-value]


def pad_to_patch(volume: np.ndarray, patch_size: Sequence[int]) -> np.ndarray:
    """Pad a 3-D volume with its minimum, evenly on both sides, up to the patch on each axis.

    Returns ``volume`` itself (no copy, no read) when it is already large enough.
    """
    deficits = [max(0, int(p) - int(s)) for s, p in zip(volume.shape, patch_size)]
    if not any(deficits):
        return volume
    widths = [(d // 2, d - d // 2) for d in deficits]
    return np.pad(np.asarray(volume), widths, mode="constant", constant_values=volume.min())


def draw_crop_params(volume_shape: Sequence[int], config: VolFConfig, rng: np.random.Generator) -> CropParams:
    """Draw one crop in a volume of ``volume_shape`` (already padded to the patch).

    Draw order: 3 scales (spatial modes), 3 starts, 3 flips (spatial modes), contrast
    parameters (intensity modes).
    """
    patch = config.patch_size
    spatial = config.augmentation_mode in SPATIAL_MODES
    scales = rng.uniform(config.scale_lower, config.scale_upper) if spatial else np.ones(3)
    size = tuple(max(1, min(int(p * s), int(n))) for p, s, n in zip(patch, scales, volume_shape))
    start = tuple(int(rng.integers(0, int(n) - c + 1)) for n, c in zip(volume_shape, size))
    flips = rng.random(3) < config.flip_probability if spatial else np.zeros(3, dtype=bool)
    intensity = None
    if config.augmentation_mode in INTENSITY_MODES:
        intensity = draw_intensity_params(
            config.low_percentile_range, config.high_percentile_range, config.gamma_range, rng
        )
    return CropParams(start, size, tuple(bool(f) for f in flips), intensity)  # type: ignore[arg-type]


def draw_invert(config: VolFConfig, rng: np.random.Generator) -> bool:
    """The joint inversion draw (intensity modes only; otherwise no draw and False)."""
    if config.augmentation_mode not in INTENSITY_MODES:
        return False
    return bool(rng.random() < config.invert_probability)


def draw_crop_pair_params(
    volume_shape: Sequence[int],
    config: VolFConfig,
    rng: np.random.Generator,
    foreground_shape: Sequence[int] | None = None,
) -> CropPairParams:
    """Draw the foreground crop, the background crop, then the joint inversion.

    Shapes are those after padding; ``foreground_shape`` differs from ``volume_shape`` only
    when the foreground comes from another volume (box mode).
    """
    foreground = draw_crop_params(foreground_shape if foreground_shape is not None else volume_shape, config, rng)
    background = draw_crop_params(volume_shape, config, rng)
    return CropPairParams(foreground, background, draw_invert(config, rng))


def apply_crop(
    volume: np.ndarray, params: CropParams, patch_size: Sequence[int], invert: bool = False, backend: str = "torch"
) -> np.ndarray:
    """Crop, resize, flip and intensity-map a padded 3-D volume: float32 of ``patch_size``.

    Without intensity parameters the intensities are kept (and ``invert`` must be False).
    """
    patch = crop_and_resize(volume, params.start, params.size, patch_size, params.flip, backend)
    if params.intensity is None:
        if invert:
            raise ValueError("inversion is part of the intensity augmentation; this crop has none")
        return np.ascontiguousarray(patch)
    return apply_intensity(patch, params.intensity, invert)


def crop_pair(
    volume: np.ndarray,
    config: VolFConfig,
    rng: np.random.Generator,
    channel: int = 0,
    foreground_volume: np.ndarray | None = None,
    foreground_channel: int | None = None,
    backend: str = "torch",
) -> tuple[np.ndarray, np.ndarray]:
    """Draw and apply a crop pair of a (C, Z, Y, X) volume: (foreground, background) float32.

    The foreground is cropped from ``foreground_volume`` (its ``foreground_channel``,
    default ``channel``) when given, else from ``volume``.
    """
    background_source = pad_to_patch(select_channel(volume, channel), config.patch_size)
    foreground_source = (
        background_source
        if foreground_volume is None
        else pad_to_patch(
            select_channel(foreground_volume, channel if foreground_channel is None else foreground_channel),
            config.patch_size,
        )
    )
    params = draw_crop_pair_params(background_source.shape, config, rng, foreground_source.shape)
    return apply_crop_pair(foreground_source, background_source, params, config, backend)


def apply_crop_pair(
    foreground_source: np.ndarray,
    background_source: np.ndarray,
    params: CropPairParams,
    config: VolFConfig,
    backend: str = "torch",
) -> tuple[np.ndarray, np.ndarray]:
    """Apply drawn pair parameters to padded 3-D sources (the same array for the grid mode)."""
    foreground = apply_crop(foreground_source, params.foreground, config.patch_size, params.invert, backend)
    background = apply_crop(background_source, params.background, config.patch_size, params.invert, backend)
    return foreground, background
