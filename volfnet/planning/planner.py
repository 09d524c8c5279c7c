"""The planner: fingerprint + dataset.json + options → :class:`~volfnet.plans.Plans`.

nnU-Net's rules (``specs/nnunet_v2_reference.md`` section 3), with these changes:

- The budget is measured on the real network (``planning/cost.py``), not on a proxy U-Net,
  so FMUNet's extra residual units and PCT-Net's transformer levels are paid for.
- Besides GPU memory targets there is a CPU target with a FLOP budget per step and half
  widths, so a 2-core machine trains in minutes per epoch rather than hours.
- ``3d_lowres`` spacing is found by bisection on the scale factor instead of 1.03 steps.
- Every decision can be overridden by an option (spacing, patch, batch, network, widths)
  instead of by subclassing.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from volfnet.errors import VolfnetError
from volfnet.io.dataset import DatasetJson
from volfnet.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans, ResamplingSpec
from volfnet.planning.compute_targets import ComputeTarget, get_compute_target
from volfnet.planning.cost import estimate_cost, measure_cost
from volfnet.planning.fingerprint import Fingerprint
from volfnet.planning.spacing import target_spacing, transpose_for_spacing
from volfnet.planning.topology import fmunet_topology, pctnet_topology, round_up_patch
from volfnet.preprocessing.resampling import new_shape_for_spacing

logger = logging.getLogger(__name__)

MAX_DATASET_COVERED = 0.05  # one batch sees at most 5% of the dataset's voxels: small datasets get small batches
CASCADE = "3d_cascade_fullres"  # planned with 3d_lowres, which feeds it
LOWRES_THRESHOLD = 0.25  # a low-resolution configuration when the fullres patch covers less of the median image
MIN_LOWRES_SHRINK = 2.0  # ...and only if it shrinks the median image at least this much
MASKED_NORM_CROP_RATIO = 0.75  # z-score inside the nonzero mask when cropping removed more than a quarter
DUMMY_2D_RATIO = 3.0  # patches this much thinner along axis 0 are augmented in-plane (2D) only
ANISOTROPIC_PLANE_RATIO = 2.0  # coarser-axis ratio above which lowres only coarsens the fine axes
# The 2d configuration is the 3D machinery on patches one slice thick (DESIGN.md): its topology
# is planned as if axis 0 were this coarse, so every kernel is 1 x k x k and axis 0 is never pooled.
SLICE_AXIS_SPACING = 999.0
TWO_D = "2d"  # the configuration's name (nnU-Net's)

# Channel names choose the normalisation as in nnU-Net; every other name (MR, T2, and the "R",
# "G", "B" of nnU-Net's RGB examples) is z-scored, as nnU-Net does.
CHANNEL_NAME_TO_SCHEME = {
    "ct": "ct", "nonorm": "none", "none": "none", "zscore": "zscore", "rescale_to_0_1": "rescale_0_1",
    "rescale_0_1": "rescale_0_1", "rgb_to_0_1": "rgb_to_0_1",
}


def cascade_configuration(fullres: ConfigurationPlan, previous_stage: str) -> ConfigurationPlan:
    """nnU-Net's ``3d_cascade_fullres``: the full-resolution configuration (same cases, patch
    and network) taking the ``previous_stage`` segmentation as extra input channels."""
    cascade = copy.deepcopy(fullres)
    cascade.previous_stage = previous_stage
    return cascade


@dataclass
class PlannerOptions:
    """User choices; ``None`` means "let the planner decide". Per-axis values are in the
    plans' axis order (after the transpose; identical to the image's (z, y, x) order unless
    the coarsest axis is not axis 0)."""

    compute_target: str = "gpu8"
    network: str = "fmunet"
    target_spacing: list[float] | None = None
    patch_size: list[int] | None = None
    batch_size: int | None = None
    base_features: int | None = None
    max_features: int | None = None
    lowres: bool = True
    lowres_factor: float | None = None  # force 3d_lowres (and the cascade) at this multiple of the fullres spacing
    plan_2d: bool = True  # also plan the 2d configuration (FMUNet only; as nnU-Net, always by default)
    topology: NetworkTopology | None = None  # fixed network (planning to fit a pretrained checkpoint)


def normalization_for_channels(fingerprint: Fingerprint, channel_names: dict[int, str]) -> list[ChannelNormalization]:
    """One normalisation per channel, chosen from the channel name as in nnU-Net."""
    use_mask = fingerprint.median_relative_size_after_cropping < MASKED_NORM_CROP_RATIO
    specs = []
    for index in range(len(channel_names)):
        scheme = CHANNEL_NAME_TO_SCHEME.get(channel_names[index].strip().lower(), "zscore")
        if scheme == "ct":
            stats = fingerprint.foreground_intensity_per_channel[index]
            specs.append(
                ChannelNormalization("ct", False, stats.percentile_00_5, stats.percentile_99_5, stats.mean, max(stats.std, 1e-8))
            )
        else:
            specs.append(ChannelNormalization(scheme, use_mask=use_mask and scheme == "zscore"))
    return specs


class Planner:
    """Plans one dataset. Construct, then call :meth:`plan`."""

    def __init__(self, fingerprint: Fingerprint, dataset_json: DatasetJson, dataset_name: str, options: PlannerOptions | None = None) -> None:
        self.fingerprint = fingerprint
        self.dataset_json = dataset_json
        self.dataset_name = dataset_name
        self.options = options or PlannerOptions()
        self.target: ComputeTarget = get_compute_target(self.options.compute_target)
        if self.options.network not in ("fmunet", "pctnet"):
            raise VolfnetError(f"unknown network {self.options.network!r}; choose fmunet or pctnet")
        if self.options.topology is not None and self.options.topology.name != self.options.network:
            raise VolfnetError(f"network {self.options.network!r} given, but the fixed topology is a {self.options.topology.name}")
        self.num_channels = dataset_json.num_channels
        self.num_classes = dataset_json.num_classes

    # -- helpers -------------------------------------------------------------------------
    def _topology(self, spacing: list[float], patch: list[int]) -> NetworkTopology:
        fixed = self.options.topology
        if fixed is not None:  # the checkpoint's network; PCT-Net's input size is the patch
            return dataclasses.replace(fixed, input_size=list(patch)) if fixed.name == "pctnet" else fixed
        base = self.options.base_features or self.target.base_features
        maximum = self.options.max_features or self.target.max_features
        build = fmunet_topology if self.options.network == "fmunet" else pctnet_topology
        return build(spacing, patch, base, maximum)

    def _consistent(self, spacing: list[float], patch: list[int], round_up: bool) -> tuple[list[int], NetworkTopology]:
        """Round the patch to a multiple of its topology's total down-sampling (up or down)
        until patch and topology agree (rounding can change the number of levels)."""
        for _ in range(8):
            topology = self._topology(spacing, patch)
            divisor = topology.total_downsampling()
            if round_up:
                rounded = round_up_patch(patch, divisor)
            else:
                rounded = [max(d, p // d * d) for p, d in zip(patch, divisor)]
            if rounded == list(patch):
                return list(patch), topology
            patch = rounded
        raise RuntimeError(f"patch {patch} and topology did not settle")

    def _fits(self, topology: NetworkTopology, patch: list[int], batch_size: int, exact: bool = True) -> bool:
        measure = measure_cost if exact else estimate_cost
        cost = measure(topology, patch, self.num_channels, self.num_classes)
        if self.target.step_gflop is not None:  # CPU targets budget compute, GPU targets memory
            return cost.training_gflop(batch_size) <= self.target.step_gflop
        assert self.target.memory_gb is not None
        return cost.gpu_memory_gb(batch_size) <= self.target.memory_gb

    def _initial_patch(self, spacing: list[float], median_shape: list[int]) -> list[int]:
        inverse = 1.0 / np.asarray(spacing)
        patch = inverse / np.prod(inverse) ** (1 / 3) * self.target.initial_patch_voxels ** (1 / 3)
        return [int(min(p, m)) for p, m in zip(np.round(patch), median_shape)]

    def _shrink_to_budget(
        self, spacing: list[float], median_shape: list[int], initial: list[int] | None = None
    ) -> tuple[list[int], NetworkTopology]:
        """Start large (``initial``, default a cube-like patch of the target's size), then shrink
        the axis that overshoots the median image most, one down-sampling step at a time, until
        a batch of the minimum size fits the budget."""
        start = initial if initial is not None else self._initial_patch(spacing, median_shape)
        patch, topology = self._consistent(spacing, start, round_up=True)
        # Fast estimates first, then exact measurements for the last steps (see estimate_cost).
        for exact in (False, True):
            while not self._fits(topology, patch, self.target.min_batch_size, exact):
                divisor = topology.total_downsampling()
                ratios = [p / m for p, m in zip(patch, median_shape)]
                shrinkable = [a for a in np.argsort(ratios)[::-1] if patch[a] > divisor[a]]
                if not shrinkable:
                    remedy = (
                        "choose a larger compute target (--target) or give --patch-size: the network is fixed by the checkpoint"
                        if self.options.topology is not None
                        else "choose a larger compute target or smaller widths (--base-features)"
                    )
                    raise VolfnetError(f"no patch size fits the {self.target.name} budget even at {patch}; {remedy}")
                candidate = list(patch)
                candidate[shrinkable[0]] -= divisor[shrinkable[0]]
                patch, topology = self._consistent(spacing, candidate, round_up=False)
        return patch, topology

    def _batch_size(self, topology: NetworkTopology, patch: list[int], median_shape: list[int]) -> int:
        batch = self.target.min_batch_size
        while batch < self.target.max_batch_size and self._fits(topology, patch, batch + 1):
            batch += 1  # cheap: the cost is cached and scales linearly with the batch
        dataset_voxels = float(np.prod(median_shape)) * len(self.fingerprint.case_ids)
        cap = int(round(MAX_DATASET_COVERED * dataset_voxels / float(np.prod(patch))))
        return max(self.target.min_batch_size, min(batch, cap))

    # -- configurations ------------------------------------------------------------------
    def _median_shape(self, spacing: list[float]) -> list[int]:
        shapes = [
            new_shape_for_spacing([shape[t] for t in self.transpose], [sp[t] for t in self.transpose], spacing)
            for shape, sp in zip(self.fingerprint.shapes_after_crop, self.fingerprint.spacings)
        ]
        return [int(v) for v in np.median(np.asarray(shapes), axis=0)]

    def plan_configuration(self, name: str, spacing: list[float], normalization: list[ChannelNormalization], batch_dice: bool) -> ConfigurationPlan:
        median_shape = self._median_shape(spacing)
        if self.options.patch_size is not None:
            patch = [int(p) for p in self.options.patch_size]
            topology = self._topology(spacing, patch)
            divisor = topology.total_downsampling()
            if round_up_patch(patch, divisor) != patch:
                raise VolfnetError(f"--patch-size {patch} must be divisible by the network's total down-sampling {divisor}")
        else:
            patch, topology = self._shrink_to_budget(spacing, median_shape)
        batch = self.options.batch_size or self._batch_size(topology, patch, median_shape)
        configuration = ConfigurationPlan(
            data_identifier=name,
            spacing=[float(s) for s in spacing],
            median_shape=median_shape,
            patch_size=[int(p) for p in patch],
            batch_size=int(batch),
            network=topology,
            normalization=normalization,
            resampling=ResamplingSpec(),
            batch_dice=batch_dice,
            mirror_axes=[0, 1, 2],
            dummy_2d_augmentation=max(patch) / patch[0] > DUMMY_2D_RATIO,
        )
        configuration.check()
        cost = measure_cost(topology, patch, self.num_channels, self.num_classes)
        logger.info(
            "%s: spacing %s, median shape %s, patch %s, batch %d, %s %s (%.1f M parameters, %.1f GFLOP per step)",
            name, [round(s, 3) for s in spacing], median_shape, patch, batch, topology.name,
            topology.feature_channels, cost.parameters / 1e6, cost.training_gflop(batch),
        )
        return configuration

    def plan_2d(self, fullres: ConfigurationPlan) -> ConfigurationPlan:
        """The 2d configuration: whole slices of the 3d_fullres cache (same spacing, same data),
        patches ``[1, Y, X]`` starting from the median slice and shrunk to the budget, an FMUNet
        with ``1 x 3 x 3`` kernels that pools in-plane only, in-plane augmentation, and as large
        a batch as the budget allows (a slice costs little)."""
        median = fullres.median_shape
        plane_spacing = [SLICE_AXIS_SPACING, *fullres.spacing[1:]]
        slice_shape = [1, *median[1:]]
        patch, topology = self._shrink_to_budget(plane_spacing, slice_shape, initial=list(slice_shape))
        batch = self.options.batch_size or self._batch_size(topology, patch, median)
        configuration = dataclasses.replace(
            fullres, patch_size=[int(p) for p in patch], batch_size=int(batch), network=topology, batch_dice=True,
            mirror_axes=[1, 2], dummy_2d_augmentation=True,
        )
        configuration.check()
        cost = measure_cost(topology, patch, self.num_channels, self.num_classes)
        logger.info(
            "2d: slices of %s, patch %s, batch %d, %s %s (%.1f M parameters, %.1f GFLOP per step)",
            fullres.data_identifier, patch, batch, topology.name, topology.feature_channels, cost.parameters / 1e6,
            cost.training_gflop(batch),
        )
        return configuration

    def _lowres_spacing(self, fullres_spacing: list[float], fullres_patch: list[int]) -> list[float] | None:
        """Smallest coarsening of the fullres spacing at which the planned patch covers at
        least :data:`LOWRES_THRESHOLD` of the median image (bisection on the scale)."""
        base = np.asarray(fullres_spacing)
        anisotropic = base.max() / base.min() > ANISOTROPIC_PLANE_RATIO
        coarsen = base < base.max() if anisotropic else np.ones(3, bool)

        def spacing_at(scale: float) -> list[float]:
            out = base.copy()
            out[coarsen] = np.minimum(base[coarsen] * scale, base.max() if anisotropic else np.inf)
            return [float(v) for v in out]

        def coverage(scale: float) -> float:
            spacing = spacing_at(scale)
            median = self._median_shape(spacing)
            patch, _ = self._shrink_to_budget(spacing, median)
            return float(np.prod(patch) / np.prod(median))

        low, high = 1.0, 2.0
        while coverage(high) < LOWRES_THRESHOLD:
            low, high = high, high * 2
            if high > 64:
                return None
        for _ in range(6):
            middle = (low + high) / 2
            if coverage(middle) < LOWRES_THRESHOLD:
                low = middle
            else:
                high = middle
        return spacing_at(high)

    def plan(self) -> Plans:
        fp = self.fingerprint
        original_spacing = target_spacing(fp.spacings, fp.shapes_after_crop)
        self.transpose, transpose_backward = transpose_for_spacing(original_spacing)
        if self.options.target_spacing is not None:
            if len(self.options.target_spacing) != 3 or min(self.options.target_spacing) <= 0:
                raise VolfnetError(f"--spacing needs three positive values, got {self.options.target_spacing}")
            spacing = [float(s) for s in self.options.target_spacing]
        else:
            spacing = [original_spacing[t] for t in self.transpose]
        normalization = normalization_for_channels(fp, self.dataset_json.channel_names)
        if self._median_shape(spacing)[0] == 1:
            configurations = {TWO_D: self.plan_pictures(spacing, normalization)}
            return self._plans(configurations, original_spacing, transpose_backward)

        fullres = self.plan_configuration("3d_fullres", spacing, normalization, batch_dice=False)
        configurations = {"3d_fullres": fullres}
        coverage = np.prod(fullres.patch_size) / np.prod(fullres.median_shape)
        wants_lowres = (
            self.options.lowres
            and coverage < LOWRES_THRESHOLD
            and self.options.patch_size is None
            and self.options.network == "fmunet"
            and self.options.topology is None
        )
        if wants_lowres:
            lowres_spacing = self._lowres_spacing(spacing, fullres.patch_size)
            if lowres_spacing is not None:
                lowres_median = self._median_shape(lowres_spacing)
                if np.prod(fullres.median_shape) / np.prod(lowres_median) >= MIN_LOWRES_SHRINK:
                    configurations["3d_lowres"] = self.plan_configuration("3d_lowres", lowres_spacing, normalization, batch_dice=False)
                    fullres.batch_dice = True
                    configurations[CASCADE] = cascade_configuration(fullres, "3d_lowres")
                else:
                    logger.info("3d_lowres dropped: it would shrink the median image less than %.0fx", MIN_LOWRES_SHRINK)

        if self.options.lowres_factor is not None and "3d_lowres" not in configurations:
            configurations.update(self._forced_lowres(spacing, normalization, fullres))

        if self._wants_2d():
            configurations[TWO_D] = self.plan_2d(fullres)
        return self._plans(configurations, original_spacing, transpose_backward)

    def _forced_lowres(
        self, spacing: list[float], normalization: list[ChannelNormalization], fullres: ConfigurationPlan
    ) -> dict[str, ConfigurationPlan]:
        """``3d_lowres`` at ``lowres_factor`` times the fullres spacing, and the cascade, where the
        rule above planned none (nnU-Net's ``add_lowres_and_cascade``): for trying the cascade
        on a dataset whose patch covers its images. ``3d_fullres`` keeps its own settings."""
        factor = self.options.lowres_factor
        if factor is None or not factor > 1.0:
            raise VolfnetError(f"--lowres-factor must be above 1 (a coarser spacing), got {factor}")
        if self.options.patch_size is not None:
            raise VolfnetError("--lowres-factor and --patch-size exclude each other: one patch cannot suit both resolutions")
        lowres = self.plan_configuration("3d_lowres", [s * factor for s in spacing], normalization, batch_dice=False)
        logger.info("3d_lowres forced at %.2fx the fullres spacing: %s mm, patch %s", factor, lowres.spacing, lowres.patch_size)
        return {"3d_lowres": lowres, CASCADE: cascade_configuration(fullres, "3d_lowres")}

    def _wants_2d(self) -> bool:
        """The 2d configuration is FMUNet's, planned from the fingerprint (not with a fixed
        network or patch), unless switched off."""
        options = self.options
        return options.plan_2d and options.network == "fmunet" and options.topology is None and options.patch_size is None

    def plan_pictures(self, spacing: list[float], normalization: list[ChannelNormalization]) -> ConfigurationPlan:
        """The one configuration of a 2D dataset (median shape ``[1, Y, X]``: PNG, BMP, 2D TIFF
        or single-slice volumes). As nnU-Net, no 3D configuration is planned: a 3d_fullres of
        one-slice patches would be the 2d network again under another name, trained without
        the 2d settings (batch Dice, in-plane augmentation), and 3d_lowres has nothing to
        shrink along the missing axis. It is cached under its own name, ``2d``. A given patch or
        ``plan_2d=False`` still gives a ``2d`` entry, planned as given; PCT-Net and fitting a
        checkpoint are refused (both are 3D networks here)."""
        if self.options.network != "fmunet":
            raise VolfnetError(
                f"{self.dataset_name}: is a 2D dataset (median shape [1, Y, X]); PCT-Net is a 3D network (cubic Swin "
                "windows, a fixed 3D input), so plan it with FMUNet (leave out --network)"
            )
        if self.options.topology is not None:
            raise VolfnetError(
                f"{self.dataset_name}: is a 2D dataset (median shape [1, Y, X]), and planning to fit a checkpoint's "
                "network (--pretrained) plans 3d_fullres only; plan without --pretrained and fine-tune the 2d "
                "configuration with volfnet_train --pretrained from a `volfnet_pretrain -c 2d` run"
            )
        base = self.plan_configuration(TWO_D, spacing, normalization, batch_dice=True)
        if self._wants_2d():
            return self.plan_2d(base)
        two_d = dataclasses.replace(base, mirror_axes=[1, 2], dummy_2d_augmentation=True)
        two_d.check()
        return two_d

    def _plans(self, configurations: dict[str, ConfigurationPlan], original_spacing: list[float], transpose_backward: list[int]) -> Plans:
        median_shape = [int(v) for v in np.median(np.asarray(self.fingerprint.shapes_after_crop), axis=0)]
        return Plans(
            dataset_name=self.dataset_name,
            compute_target=self.target.name,
            num_input_channels=self.num_channels,
            transpose_forward=list(self.transpose),
            transpose_backward=transpose_backward,
            original_median_spacing=original_spacing,
            original_median_shape=median_shape,
            configurations=configurations,
        )
