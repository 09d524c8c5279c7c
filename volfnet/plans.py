"""The plans schema: typed dataclasses saved as versioned JSON, read by every stage.

Plans describe *how* a dataset is processed and which network learns it: target spacing,
axis transpose, patch and batch size, per-channel normalisation, resampling orders and the
network topology. The planner writes them; preprocessing, training, pretraining and
inference only read them. Users change any field by editing the JSON or with
``--set configuration.field=value`` on the command line (see :func:`apply_override`), never
by subclassing.

Axis convention: every array is (C, Z, Y, X) in numpy order, and every per-axis list in the
plans (spacing, shapes, patch, strides, kernels) follows that order *after* the transpose
``transpose_forward`` has been applied.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volfnet.errors import VolfnetError
from volfnet.schema import build_from_json

PLANS_VERSION = 1

NORMALIZATION_SCHEMES = ("ct", "zscore", "none", "rescale_0_1", "rgb_to_0_1")
NETWORK_NAMES = ("fmunet", "pctnet")


@dataclass
class ChannelNormalization:
    """How one input channel is normalised.

    ``ct``: clip to the dataset's foreground 0.5/99.5 percentiles, then z-score with the
    dataset's foreground mean/std (Hounsfield units mean the same in every scan).
    ``zscore``: per-image z-score; inside the nonzero mask only when ``use_mask`` (set when
    cropping to nonzero removed much of the image, e.g. skull-stripped brain MRI).
    ``rescale_0_1``: per-image min/max to [0, 1]. ``rgb_to_0_1``: 8-bit colour divided by 255
    (values outside 0..255 are refused). ``none``: leave intensities as they are.
    """

    scheme: str
    use_mask: bool = False
    clip_lower: float | None = None
    clip_upper: float | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in NORMALIZATION_SCHEMES:
            raise VolfnetError(f"unknown normalisation scheme {self.scheme!r}; choose one of {NORMALIZATION_SCHEMES}")
        if self.scheme == "ct" and None in (self.clip_lower, self.clip_upper, self.mean, self.std):
            raise VolfnetError("ct normalisation needs clip_lower, clip_upper, mean and std")


@dataclass
class ResamplingSpec:
    """Interpolation orders. Images use cubic splines, labels linear interpolation of one-hot
    maps; with anisotropic spacing (ratio above ``anisotropy_threshold``) the coarse axis is
    resampled separately with ``order_z`` to avoid smearing thick slices into each other."""

    image_order: int = 3
    seg_order: int = 1
    logits_order: int = 1
    order_z: int = 0
    anisotropy_threshold: float = 3.0


@dataclass
class NetworkTopology:
    """The network the planner chose, with everything needed to build it.

    ``strides[i]`` is the down-sampling between level ``i`` and ``i + 1`` (len = levels - 1);
    ``kernel_sizes[i]`` is the conv kernel of level ``i``. For FMUNet a level-0 kernel of
    (1, 3, 3) and stride (1, 2, 2) is PyMIC's ``res_mode`` 1; levels 0 and 1 that way is
    ``res_mode`` 2. PCT-Net has a fixed ``input_size`` (its Swin layers are built for it) and
    a ``resolution_mode`` (0, 1, 2) that fixes its first two strides; for PCT-Net ``depth``
    is the number of Swin blocks per PCT block and ``window_size`` the edge of its cubic
    attention windows.
    """

    name: str
    feature_channels: list[int]
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    dropout: list[float]
    depth: int = 2
    input_size: list[int] | None = None
    resolution_mode: int | None = None
    num_heads: list[int] | None = None
    window_size: int | None = None

    def __post_init__(self) -> None:
        if self.name not in NETWORK_NAMES:
            raise VolfnetError(f"unknown network {self.name!r}; choose one of {NETWORK_NAMES}")
        levels = len(self.feature_channels)
        if len(self.strides) != levels - 1:
            raise VolfnetError(f"network needs {levels - 1} strides for {levels} levels, got {len(self.strides)}")
        if len(self.kernel_sizes) != levels or len(self.dropout) != levels:
            raise VolfnetError(f"network needs {levels} kernel sizes and dropout values (one per level)")
        if self.name == "pctnet" and (self.input_size is None or self.resolution_mode is None):
            raise VolfnetError("pctnet needs input_size and resolution_mode")

    @property
    def num_levels(self) -> int:
        return len(self.feature_channels)

    def total_downsampling(self) -> list[int]:
        """Product of the strides per axis: patch sizes must be divisible by this."""
        total = [1, 1, 1]
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride)]
        return total


@dataclass
class ConfigurationPlan:
    """One configuration (``3d_fullres``, ``3d_lowres``, ``2d`` or ``3d_cascade_fullres``):
    spacing, patch, batch, network.

    ``previous_stage`` names the configuration whose predictions this one takes as extra
    input (the cascade: ``3d_cascade_fullres`` reads the ``3d_lowres`` segmentation, one-hot,
    one channel per foreground label, after the image channels). Such a configuration shares
    its ``data_identifier`` (the preprocessed cases) with ``3d_fullres``.
    """

    data_identifier: str
    spacing: list[float]
    median_shape: list[int]
    patch_size: list[int]
    batch_size: int
    network: NetworkTopology
    normalization: list[ChannelNormalization]
    resampling: ResamplingSpec = field(default_factory=ResamplingSpec)
    batch_dice: bool = False
    mirror_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    dummy_2d_augmentation: bool = False
    previous_stage: str | None = None

    def network_input_channels(self, image_channels: int, num_foreground_labels: int) -> int:
        """Input channels of this configuration's network: the image's, plus one per foreground
        label of the previous stage's segmentation in a cascade."""
        return int(image_channels) + (int(num_foreground_labels) if self.previous_stage else 0)

    def check(self) -> None:
        """Raise if patch and network disagree (a user override can break this)."""
        for axis, (size, div) in enumerate(zip(self.patch_size, self.network.total_downsampling())):
            if size % div:
                raise VolfnetError(
                    f"{self.data_identifier}: patch size {self.patch_size} axis {axis} is not divisible by "
                    f"the network's total down-sampling {self.network.total_downsampling()}"
                )
        if self.network.name == "pctnet" and list(self.patch_size) != list(self.network.input_size or []):
            raise VolfnetError(
                f"{self.data_identifier}: PCT-Net has a fixed input size {self.network.input_size}; "
                f"the patch size {self.patch_size} must equal it"
            )
        if self.batch_size < 1:
            raise VolfnetError(f"{self.data_identifier}: batch size must be at least 1")


@dataclass
class Plans:
    """Everything the planner decided for one dataset."""

    dataset_name: str
    compute_target: str
    num_input_channels: int
    transpose_forward: list[int]
    transpose_backward: list[int]
    original_median_spacing: list[float]
    original_median_shape: list[int]
    configurations: dict[str, ConfigurationPlan]
    plans_version: int = PLANS_VERSION

    def __post_init__(self) -> None:
        for name, configuration in self.configurations.items():
            previous = getattr(configuration, "previous_stage", None)
            if previous is not None and (previous == name or previous not in self.configurations):
                raise VolfnetError(
                    f"{self.dataset_name}: configuration {name!r} takes its previous stage from {previous!r}, which is "
                    f"{'itself' if previous == name else 'not planned'} (planned: {sorted(self.configurations)})"
                )

    def next_stages(self, name: str) -> list[str]:
        """The configurations that take ``name``'s predictions as input (its cascade stages)."""
        return sorted(other for other, plan in self.configurations.items() if plan.previous_stage == name)

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise VolfnetError(
                f"configuration {name!r} is not in the plans of {self.dataset_name}; "
                f"available: {sorted(self.configurations)}"
            )
        return self.configurations[name]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "plans") -> Plans:
        version = data.get("plans_version")
        if version != PLANS_VERSION:
            raise VolfnetError(
                f"{source}: plans_version {version} is not supported by this volfnet (expects {PLANS_VERSION}); "
                "re-run volfnet_plan_and_preprocess"
            )
        try:
            return build_from_json(cls, data, source)
        except (TypeError, KeyError, ValueError) as exc:
            raise VolfnetError(f"{source}: malformed plans: {exc}") from exc

    def save(self, path: Path) -> None:
        from volfnet.io.files import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> Plans:
        from volfnet.io.files import read_json

        return cls.from_dict(read_json(path), source=str(path))


def apply_override(plans: Plans, assignment: str) -> Plans:
    """Apply one ``path=value`` override, e.g. ``3d_fullres.batch_size=4`` or
    ``3d_fullres.network.feature_channels=[16,32,64,128,256]``. The value is JSON (bare words
    are taken as strings). Returns new, re-validated plans; the input is not modified."""
    if "=" not in assignment:
        raise VolfnetError(f"override {assignment!r} must look like path=value")
    path, raw_value = assignment.split("=", 1)
    try:
        value = json.loads(raw_value)
    except json.JSONDecodeError:
        value = raw_value
    data = plans.to_dict()
    keys = path.strip().split(".")
    node: Any = data
    if keys[0] in data.get("configurations", {}):
        node = data["configurations"]
    for key in keys[:-1]:
        if not isinstance(node, dict) or key not in node:
            raise VolfnetError(f"override {assignment!r}: no field {key!r} in the plans")
        node = node[key]
    if not isinstance(node, dict) or keys[-1] not in node:
        raise VolfnetError(f"override {assignment!r}: no field {keys[-1]!r} in the plans")
    node[keys[-1]] = value
    new_plans = Plans.from_dict(data, source=f"override {assignment!r}")
    for configuration in new_plans.configurations.values():
        configuration.check()
    return new_plans
