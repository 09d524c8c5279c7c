"""The training augmentation pipeline and its typed configuration.

Defaults are nnU-Net's proven set (rotation, scaling, noise, blur, brightness, contrast,
low-resolution simulation, gamma, mirroring). Every probability and range is a named field of
:class:`AugmentationConfig`, so a user changes one with ``--set`` instead of subclassing.
Rotation and scaling are :mod:`volfnet.data.spatial`; the other transforms are batchgenerators
v1's.

batchgenerators v1 draws its random numbers from numpy's and Python's *global* generators.
:class:`AugmentationPipeline` seeds both from the caller's ``numpy.random.Generator`` just
before those transforms run and restores them after, so an augmented batch is a pure function
of that generator: reproducible, and independent of whatever else ran in the process.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import (
    GaussianBlurTransform,
    GaussianNoiseTransform,
)
from batchgenerators.transforms.resample_transforms import (
    SimulateLowResolutionTransform,
)
from batchgenerators.transforms.spatial_transforms import MirrorTransform
from batchgenerators.transforms.utility_transforms import RemoveLabelTransform

from volfnet.data.previous_stage import PreviousStageToData, RandomBinaryOperator, RemoveRandomComponent
from volfnet.data.spatial import SpatialAugmentation, SpatialParameters, rotation_extent
from volfnet.data.transforms import DeepSupervisionTargets, MaskOutsideNonzero
from volfnet.errors import VolfnetError
from volfnet.io.case_store import OUTSIDE_MASK_LABEL

DUMMY_2D_ANISOTROPY = 3.0  # patch longer than 3x its first (slice) axis: augment in-plane only, like nnU-Net


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities (per sample unless named per channel) and ranges of every augmentation.

    Defaults follow nnU-Net v2's training transforms. Angles are in degrees. A scale factor
    above 1 reads a larger region (zooms out); half the scaled samples zoom in, half out.
    """

    rotation_p: float = 0.2
    rotation_max_degrees: float = 30.0
    rotation_max_degrees_dummy_2d: float = 180.0
    scaling_p: float = 0.2
    scale_min: float = 0.7
    scale_max: float = 1.4
    noise_p: float = 0.1
    noise_std_max: float = 0.1
    blur_p: float = 0.2
    blur_p_per_channel: float = 0.5
    blur_sigma_min: float = 0.5
    blur_sigma_max: float = 1.0
    brightness_p: float = 0.15
    brightness_min: float = 0.75
    brightness_max: float = 1.25
    contrast_p: float = 0.15
    contrast_min: float = 0.75
    contrast_max: float = 1.25
    low_resolution_p: float = 0.25
    low_resolution_p_per_channel: float = 0.5
    low_resolution_zoom_min: float = 0.5
    low_resolution_zoom_max: float = 1.0
    inverted_gamma_p: float = 0.1
    gamma_p: float = 0.3
    gamma_min: float = 0.7
    gamma_max: float = 1.5
    mirror: bool = True
    # the cascade's previous-stage channels (nnU-Net's values; see volfnet.data.previous_stage)
    cascade_binary_operator_p: float = 0.4
    cascade_binary_operator_p_per_label: float = 0.5
    cascade_binary_operator_max_radius: int = 8
    cascade_remove_component_p: float = 0.2
    cascade_remove_component_p_per_label: float = 0.5
    cascade_remove_component_max_fraction: float = 0.15

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            is_probability = item.name.endswith("_p") or "_p_" in item.name
            if is_probability and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0):
                raise VolfnetError(f"augmentation {item.name} must be a probability in [0, 1], got {value!r}")
        for low, high in (
            ("scale_min", "scale_max"),
            ("blur_sigma_min", "blur_sigma_max"),
            ("brightness_min", "brightness_max"),
            ("contrast_min", "contrast_max"),
            ("low_resolution_zoom_min", "low_resolution_zoom_max"),
            ("gamma_min", "gamma_max"),
        ):
            if not 0.0 < getattr(self, low) <= getattr(self, high):
                raise VolfnetError(f"augmentation needs 0 < {low} <= {high}, got {getattr(self, low)} and {getattr(self, high)}")
        if self.noise_std_max < 0 or self.rotation_max_degrees < 0 or self.rotation_max_degrees_dummy_2d < 0:
            raise VolfnetError("augmentation noise_std_max and rotation angles must not be negative")
        if self.cascade_binary_operator_max_radius < 1:
            raise VolfnetError(f"augmentation cascade_binary_operator_max_radius must be at least 1, got {self.cascade_binary_operator_max_radius}")
        if not 0.0 <= self.cascade_remove_component_max_fraction <= 1.0:
            raise VolfnetError(
                f"augmentation cascade_remove_component_max_fraction must be within [0, 1], got {self.cascade_remove_component_max_fraction}"
            )

    def replaced(self, values: Mapping[str, Any]) -> AugmentationConfig:
        """A copy with ``values`` changed (e.g. from ``--set augmentation.rotation_p=0.3``);
        an unknown field or a bad value is a :class:`VolfnetError` naming it."""
        names = {item.name: item for item in dataclasses.fields(self)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise VolfnetError(f"unknown augmentation field(s) {unknown}; known: {sorted(names)}")
        converted = {}
        for name, value in values.items():
            kind = type(getattr(self, name))
            if kind is bool and not isinstance(value, bool):
                raise VolfnetError(f"augmentation {name} must be true or false, got {value!r}")
            if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise VolfnetError(f"augmentation {name} must be a number, got {value!r}")
            if kind is int and float(value) != int(value):
                raise VolfnetError(f"augmentation {name} must be an integer, got {value!r}")
            converted[name] = kind(value)
        return dataclasses.replace(self, **converted)


def use_dummy_2d(patch_size: Sequence[int], threshold: float = DUMMY_2D_ANISOTROPY) -> bool:
    """True when the patch is so flat along its first axis (thick slices) that rotating and
    scaling should happen in-plane only: ``max(patch) / patch[0] > threshold``."""
    return max(patch_size) / patch_size[0] > threshold


def spatial_crop_size(patch_size: Sequence[int], config: AugmentationConfig, dummy_2d: bool) -> tuple[int, ...]:
    """How much to crop around the final patch so rotation and scaling find image, not padding.

    The rule: the final patch's sampling grid (half-extent ``(p - 1) / 2`` per axis) is rotated
    by every allowed angle combination (in-plane only in dummy-2D; see
    :func:`volfnet.data.spatial.rotation_extent`) and, separately, scaled by the largest factor;
    the crop holds the wider of the two, ``2 * max|coordinate| + 1`` per axis, rounded up so
    that crop - patch is even (the crop centre then falls on the patch centre, so rotated and
    unrotated samples line up). Every sample that is only rotated or only scaled is thus
    covered exactly; the rare sample both rotated and zoomed out (p = 0.2 * 0.2 * 0.5 = 2% with
    the defaults) may see padding in its corners. Covering the product as well would make the
    crop 1.4^3 = 2.7x larger for every sample; nnU-Net makes the same trade by dividing the
    rotated extent by a stale minimum scale of 0.85. With rotation and scaling off, the crop is
    the patch.
    """
    patch = np.asarray(patch_size, dtype=np.float64)
    plane = patch[1:] if dummy_2d else patch
    half = (plane - 1.0) / 2.0
    needed = half.copy()
    if config.rotation_p > 0:
        degrees = config.rotation_max_degrees_dummy_2d if dummy_2d else config.rotation_max_degrees
        full = np.concatenate([[0.0], half]) if dummy_2d else half
        extent = rotation_extent(full, math.radians(degrees), in_plane_only=dummy_2d)
        needed = np.maximum(needed, extent[1:] if dummy_2d else extent)
    if config.scaling_p > 0:
        needed = np.maximum(needed, half * max(config.scale_max, 1.0))
    extent = np.ceil(2.0 * needed + 1.0 - 1e-6).astype(int)
    extent = np.maximum(extent, plane.astype(int))
    extent = extent + (extent - plane.astype(int)) % 2
    if dummy_2d:
        return (int(patch[0]), *(int(v) for v in extent))
    return tuple(int(v) for v in extent)


@contextmanager
def seeded_global_random(rng: np.random.Generator) -> Iterator[None]:
    """Seed numpy's and Python's global generators from ``rng`` for the block, then restore them.

    batchgenerators v1 offers no generator argument; this confines its randomness to a seed
    drawn from the caller's explicit generator.
    """
    numpy_state, python_state = np.random.get_state(), random.getstate()
    seed = int(rng.integers(0, 2**32))
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


class AugmentationPipeline:
    """Maps a cropped batch to (data, targets): the spatial step (own, explicit generator), then
    the batchgenerators transforms (seeded from the same generator).

    ``data`` (B, C, *crop) float32 and ``seg`` (B, 1, *crop) go in; out come the image patch
    (B, C, *patch) float32 and one int16 label patch per deep-supervision output.
    """

    def __init__(self, spatial: SpatialAugmentation | None, transforms: Sequence[AbstractTransform]) -> None:
        self.spatial = spatial
        self.transforms = list(transforms)
        self._compose = Compose(self.transforms)

    def __call__(self, data: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
        if self.spatial is not None:
            data, seg = self.spatial(data, seg, rng)
        with seeded_global_random(rng):
            result = self._compose(data=data, seg=seg)
        return result["data"], result["target"]


def _final_steps(
    masked_channels: Sequence[int],
    deep_supervision: Sequence[Sequence[int]],
    previous_stage_labels: Sequence[int] | None = None,
    config: AugmentationConfig | None = None,
) -> list[AbstractTransform]:
    """Masking, outside-mask label -1 -> background, the cascade's previous-stage channels
    (augmented when ``config`` is given: training), and the targets per scale."""
    steps: list[AbstractTransform] = []
    if masked_channels:
        steps.append(MaskOutsideNonzero(masked_channels))
    steps.append(RemoveLabelTransform(OUTSIDE_MASK_LABEL, 0, input_key="seg", output_key="seg"))
    if previous_stage_labels is not None:
        count = len(previous_stage_labels)
        steps.append(PreviousStageToData(previous_stage_labels))
        if config is not None:
            steps.append(RandomBinaryOperator(
                count, config.cascade_binary_operator_p, config.cascade_binary_operator_p_per_label,
                (1, config.cascade_binary_operator_max_radius),
            ))
            steps.append(RemoveRandomComponent(
                count, config.cascade_remove_component_p, config.cascade_remove_component_p_per_label,
                config.cascade_remove_component_max_fraction,
            ))
    steps.append(DeepSupervisionTargets(deep_supervision))
    return steps


def build_training_pipeline(
    patch_size: Sequence[int],
    config: AugmentationConfig,
    mirror_axes: Sequence[int],
    masked_channels: Sequence[int],
    deep_supervision: Sequence[Sequence[int]],
    dummy_2d: bool,
    previous_stage_labels: Sequence[int] | None = None,
) -> AugmentationPipeline:
    """nnU-Net's training transforms, in nnU-Net's order.

    ``patch_size`` is the final patch; the input batch must be cropped to
    :func:`spatial_crop_size`. ``masked_channels`` are the channels normalised inside the
    nonzero mask; ``deep_supervision`` the per-output factors from
    :func:`volfnet.data.deep_supervision.deep_supervision_factors`. In dummy-2D, rotation and
    scaling are in-plane and the low-resolution simulation leaves the slice axis alone.
    Rotation and scaling are :mod:`volfnet.data.spatial` (one sampling grid for image and
    labels, several times faster than batchgenerators' per-label interpolation); everything
    else is batchgenerators v1. ``previous_stage_labels`` (a cascade: the foreground labels)
    turns the second seg channel into one-hot input channels, augmented as nnU-Net does.
    """
    degrees = config.rotation_max_degrees_dummy_2d if dummy_2d else config.rotation_max_degrees
    spatial = SpatialAugmentation(
        tuple(int(v) for v in patch_size),
        SpatialParameters(
            rotation_p=config.rotation_p,
            max_radians=math.radians(degrees),
            scaling_p=config.scaling_p,
            scale_min=config.scale_min,
            scale_max=config.scale_max,
            in_plane_only=dummy_2d,
        ),
    )
    steps: list[AbstractTransform] = [
        GaussianNoiseTransform(noise_variance=(0.0, config.noise_std_max), p_per_sample=config.noise_p),
        GaussianBlurTransform(
            (config.blur_sigma_min, config.blur_sigma_max),
            different_sigma_per_channel=True,
            different_sigma_per_axis=True,
            p_per_channel=config.blur_p_per_channel,
            p_per_sample=config.blur_p,
        ),
        BrightnessMultiplicativeTransform(
            multiplier_range=(config.brightness_min, config.brightness_max), per_channel=True, p_per_sample=config.brightness_p
        ),
        ContrastAugmentationTransform(
            contrast_range=(config.contrast_min, config.contrast_max),
            preserve_range=True,
            per_channel=True,
            p_per_sample=config.contrast_p,
        ),
        SimulateLowResolutionTransform(
            zoom_range=(config.low_resolution_zoom_min, config.low_resolution_zoom_max),
            per_channel=True,
            p_per_channel=config.low_resolution_p_per_channel,
            order_downsample=0,
            order_upsample=1,
            p_per_sample=config.low_resolution_p,
            ignore_axes=(0,) if dummy_2d else None,
        ),
        GammaTransform(
            (config.gamma_min, config.gamma_max),
            invert_image=True,
            per_channel=True,
            retain_stats=True,
            p_per_sample=config.inverted_gamma_p,
        ),
        GammaTransform(
            (config.gamma_min, config.gamma_max),
            invert_image=False,
            per_channel=True,
            retain_stats=True,
            p_per_sample=config.gamma_p,
        ),
    ]
    if config.mirror and mirror_axes:
        steps.append(MirrorTransform(tuple(int(a) for a in mirror_axes)))
    steps += _final_steps(masked_channels, deep_supervision, previous_stage_labels, config)
    return AugmentationPipeline(spatial, steps)


def build_validation_pipeline(
    masked_channels: Sequence[int], deep_supervision: Sequence[Sequence[int]], previous_stage_labels: Sequence[int] | None = None
) -> AugmentationPipeline:
    """No augmentation: only masking, outside-mask label -1 -> background, the cascade's
    previous-stage channels as they are, and the targets per scale. The input batch is
    cropped to the final patch."""
    return AugmentationPipeline(None, _final_steps(masked_channels, deep_supervision, previous_stage_labels))
