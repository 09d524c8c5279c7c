"""The Volume Fusion (VolF) settings: one flat, JSON-serialisable dataclass.

Defaults are the published values (PyMIC ``Crop4VolumeFusion`` + ``VolumeFusion`` and the
MIS-FM demo; the arXiv-v1 box mode from the paper). The pretrainer stores
``config.resolved().to_dict()`` in its checkpoint and the CLI overrides single fields with
``--set key=value`` (see :func:`apply_volf_override`), so every field is a plain number,
string or list, and validation raises :class:`~volfnet.errors.VolfnetError` naming the option.

Sizes that depend on the patch (grid block sizes, box sizes) default to ``None`` = "derived
from ``patch_size``" and are filled by :meth:`VolFConfig.resolved`. The rule keeps, per axis,
the published fraction of the published 64x128x128 patch:

* grid blocks: min = patch * [5/64, 8/128, 8/128], max = patch * [20/64, 32/128, 32/128]
  (published [5,8,8]-[20,32,32]);
* boxes: min = patch * [8/64, 8/128, 8/128], max = patch * [40/64, 80/128, 80/128]
  (published depth 8-40, height/width 8-80).

Each value is rounded half up, at least 1, and max is at least min and at most the patch.
Axis 0 is the (usually coarse) depth axis, as in the published setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from volfnet.values import is_number
from volfnet.errors import VolfnetError

AUTO_FUSION_MODE = "auto"  # box or grid from the images' size (volfnet.volf.pretext_choice), before sampling
FUSION_MODES = ("grid", "box", AUTO_FUSION_MODE)
AUGMENTATION_MODES = (0, 1, 2, 3)
# Labels are stored as uint8, so at most 256 classes (K = 255 mixing levels).
MAX_NUM_CLASSES = 256

# The published demo patch and the sizes published for it; derived sizes keep these ratios.
REFERENCE_PATCH = (64, 128, 128)
REFERENCE_BLOCK_MIN = (5, 8, 8)
REFERENCE_BLOCK_MAX = (20, 32, 32)
REFERENCE_BOX_MIN = (8, 8, 8)
REFERENCE_BOX_MAX = (40, 80, 80)


def _round_half_up(value: float) -> int:
    """Round like a person would (2.5 -> 3), unlike Python's banker's ``round``."""
    return math.floor(value + 0.5)


def derive_size_range(
    patch_size: Sequence[int], reference_min: Sequence[int], reference_max: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Scale a published (min, max) size range from the 64x128x128 patch to ``patch_size``.

    Per axis: ``round(reference * patch / reference_patch)``, at least 1, max >= min and
    max <= patch. At the reference patch this returns the published values exactly.
    """
    lower: list[int] = []
    upper: list[int] = []
    for axis, size in enumerate(patch_size):
        ratio = size / REFERENCE_PATCH[axis]
        low = max(1, _round_half_up(reference_min[axis] * ratio))
        high = max(1, _round_half_up(reference_max[axis] * ratio))
        high = min(max(high, low), size)
        lower.append(min(low, high))
        upper.append(high)
    return lower, upper


def default_block_size_range(patch_size: Sequence[int]) -> tuple[list[int], list[int]]:
    """Grid block size range for ``patch_size`` ([5,8,8]-[20,32,32] at 64x128x128)."""
    return derive_size_range(patch_size, REFERENCE_BLOCK_MIN, REFERENCE_BLOCK_MAX)


def default_box_size_range(patch_size: Sequence[int]) -> tuple[list[int], list[int]]:
    """Box size range for ``patch_size`` ([8,8,8]-[40,80,80] at 64x128x128)."""
    return derive_size_range(patch_size, REFERENCE_BOX_MIN, REFERENCE_BOX_MAX)



def _int_list(name: str, value: Any, length: int, minimum: int) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise VolfnetError(f"VolF option {name!r} must be a list of {length} integers, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
            raise VolfnetError(f"VolF option {name!r} must hold integers >= {minimum}, got {value!r}")
        out.append(int(item))
    return out


def _float_list(name: str, value: Any, length: int) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(is_number(v, finite=False) for v in value):
        raise VolfnetError(f"VolF option {name!r} must be a list of {length} numbers, got {value!r}")
    return [float(v) for v in value]


def _check_range(name: str, pair: list[float] | list[int], lowest: float, highest: float) -> None:
    low, high = pair
    if not (lowest <= low <= high <= highest):
        raise VolfnetError(
            f"VolF option {name!r} must satisfy {lowest} <= min <= max <= {highest}, got [{low}, {high}]"
        )


@dataclass
class VolFConfig:
    """All Volume Fusion parameters; defaults are the published ones.

    ``augmentation_mode``: 0 none, 1 intensity only, 2 spatial only, 3 both (published 3).
    Spatial = per-axis random scale in [scale_lower, scale_upper] and random flips; intensity
    = random-percentile contrast map to [0, 1], gamma, and a joint inversion of both crops.
    ``num_classes`` is K + 1 (mixing levels 0, 1/K, ..., 1). ``fusion_mode`` "grid" is the
    journal version (default), "box" the arXiv-v1 version, "auto" one of them chosen from the
    images' size by :func:`volfnet.volf.pretext_choice.choose_fusion_mode` (``volfnet_pretrain``'s
    default), which must happen before sampling.
    """

    patch_size: list[int] = field(default_factory=lambda: list(REFERENCE_PATCH))
    scale_lower: list[float] = field(default_factory=lambda: [0.7, 0.7, 0.7])
    scale_upper: list[float] = field(default_factory=lambda: [1.5, 1.5, 1.5])
    augmentation_mode: int = 3
    flip_probability: float = 0.5
    low_percentile_range: list[float] = field(default_factory=lambda: [0.1, 2.0])
    high_percentile_range: list[float] = field(default_factory=lambda: [98.0, 99.9])
    gamma_range: list[float] = field(default_factory=lambda: [0.7, 1.5])
    invert_probability: float = 0.25
    num_classes: int = 5
    fusion_mode: str = "grid"
    foreground_ratio: float = 0.7
    block_size_min: list[int] | None = None
    block_size_max: list[int] | None = None
    box_count_range: list[int] = field(default_factory=lambda: [10, 40])
    box_size_min: list[int] | None = None
    box_size_max: list[int] | None = None

    def __post_init__(self) -> None:
        self.patch_size = _int_list("patch_size", self.patch_size, 3, 1)
        self.scale_lower = _float_list("scale_lower", self.scale_lower, 3)
        self.scale_upper = _float_list("scale_upper", self.scale_upper, 3)
        for axis in range(3):
            if not 0 < self.scale_lower[axis] <= self.scale_upper[axis]:
                raise VolfnetError(
                    f"VolF options 'scale_lower'/'scale_upper' need 0 < lower <= upper on every axis, "
                    f"got {self.scale_lower} / {self.scale_upper}"
                )
        mode = self.augmentation_mode
        if isinstance(mode, bool) or not isinstance(mode, int) or mode not in AUGMENTATION_MODES:
            raise VolfnetError(f"VolF option 'augmentation_mode' must be one of {AUGMENTATION_MODES}, got {self.augmentation_mode!r}")
        for name in ("flip_probability", "invert_probability", "foreground_ratio"):
            value = getattr(self, name)
            if not is_number(value, finite=False) or not 0.0 <= value <= 1.0:
                raise VolfnetError(f"VolF option {name!r} must be a number in [0, 1], got {value!r}")
            setattr(self, name, float(value))
        self.low_percentile_range = _float_list("low_percentile_range", self.low_percentile_range, 2)
        self.high_percentile_range = _float_list("high_percentile_range", self.high_percentile_range, 2)
        _check_range("low_percentile_range", self.low_percentile_range, 0.0, 100.0)
        _check_range("high_percentile_range", self.high_percentile_range, 0.0, 100.0)
        if self.low_percentile_range[1] >= self.high_percentile_range[0]:
            raise VolfnetError(
                f"VolF options: 'low_percentile_range' {self.low_percentile_range} must lie below "
                f"'high_percentile_range' {self.high_percentile_range}"
            )
        self.gamma_range = _float_list("gamma_range", self.gamma_range, 2)
        _check_range("gamma_range", self.gamma_range, 1e-3, 1e3)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or not 2 <= self.num_classes <= MAX_NUM_CLASSES:
            raise VolfnetError(f"VolF option 'num_classes' must be an integer in [2, {MAX_NUM_CLASSES}], got {self.num_classes!r}")
        if self.fusion_mode not in FUSION_MODES:
            raise VolfnetError(f"VolF option 'fusion_mode' must be one of {FUSION_MODES}, got {self.fusion_mode!r}")
        self.box_count_range = _int_list("box_count_range", self.box_count_range, 2, 1)
        _check_range("box_count_range", self.box_count_range, 1, math.inf)
        self._check_sizes("block_size", check_patch=True)
        self._check_sizes("box_size", check_patch=False)

    def _check_sizes(self, prefix: str, check_patch: bool) -> None:
        for suffix in ("min", "max"):
            name = f"{prefix}_{suffix}"
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _int_list(name, value, 3, 1))
        low, high = getattr(self, f"{prefix}_min"), getattr(self, f"{prefix}_max")
        if low is not None and high is not None and any(a > b for a, b in zip(low, high)):
            raise VolfnetError(f"VolF options '{prefix}_min' {low} must not exceed '{prefix}_max' {high}")
        if check_patch:
            for name, value in ((f"{prefix}_min", low), (f"{prefix}_max", high)):
                if value is not None and any(v > p for v, p in zip(value, self.patch_size)):
                    raise VolfnetError(f"VolF option {name!r} {value} must not exceed patch_size {self.patch_size}")

    @property
    def num_levels(self) -> int:
        """K, the number of non-zero mixing levels (labels run 0..K)."""
        return self.num_classes - 1

    def block_size_range(self) -> tuple[list[int], list[int]]:
        """Grid block size (min, max) per axis: the explicit values or the patch-derived ones."""
        derived = default_block_size_range(self.patch_size)
        low = self.block_size_min if self.block_size_min is not None else derived[0]
        high = self.block_size_max if self.block_size_max is not None else derived[1]
        return _ordered(low, high, "block_size")

    def box_size_range(self) -> tuple[list[int], list[int]]:
        """Box size (min, max) per axis: the explicit values or the patch-derived ones."""
        derived = default_box_size_range(self.patch_size)
        low = self.box_size_min if self.box_size_min is not None else derived[0]
        high = self.box_size_max if self.box_size_max is not None else derived[1]
        return _ordered(low, high, "box_size")

    def resolved(self) -> VolFConfig:
        """A copy with every patch-derived size written out, for a self-describing checkpoint."""
        block_min, block_max = self.block_size_range()
        box_min, box_max = self.box_size_range()
        return dataclasses.replace(
            self, block_size_min=block_min, block_size_max=block_max, box_size_min=box_min, box_size_max=box_max
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (lists, numbers, strings, None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "VolF config") -> VolFConfig:
        """Build from a dict, refusing unknown keys so a typo in a config is not ignored."""
        if not isinstance(data, dict):
            raise VolfnetError(f"{source}: expected an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VolfnetError(f"{source}: unknown VolF option(s) {unknown}; known options: {sorted(known)}")
        return cls(**data)


def _ordered(low: list[int], high: list[int], prefix: str) -> tuple[list[int], list[int]]:
    """Mixing one explicit bound with one derived bound can cross them; say so clearly."""
    if any(a > b for a, b in zip(low, high)):
        raise VolfnetError(f"VolF options: {prefix} minimum {low} exceeds maximum {high}; set both '{prefix}_min' and '{prefix}_max'")
    return list(low), list(high)


def apply_volf_override(config: VolFConfig, assignment: str) -> VolFConfig:
    """Apply one ``key=value`` override (value parsed as JSON, bare words as strings).

    Returns a new, re-validated config; ``config`` is left unchanged.
    Example: ``fusion_mode=box``, ``block_size_max=[16,32,32]``, ``foreground_ratio=0.5``.
    """
    if "=" not in assignment:
        raise VolfnetError(f"VolF override {assignment!r} must look like key=value")
    key, raw_value = (part.strip() for part in assignment.split("=", 1))
    try:
        value = json.loads(raw_value)
    except json.JSONDecodeError:
        value = raw_value
    data = config.to_dict()
    if key not in data:
        raise VolfnetError(f"VolF override {assignment!r}: no option {key!r}; known options: {sorted(data)}")
    data[key] = value
    return VolFConfig.from_dict(data, source=f"VolF override {assignment!r}")
