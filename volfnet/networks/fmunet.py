"""FMUNet: the pre-activation residual U-Net of the MIS-FM paper, generalised to planner topologies.

Every block is pre-activation (instance norm, LeakyReLU, then convolution); down-sampling is a
strided convolution; up-sampling is a 1x1x1 convolution followed by trilinear interpolation,
concatenated after the skip; each of up to four decoder levels has a 3x3x3 output head (deep
supervision). The number of levels, channels, per-level strides and kernels come from the
plans. With the published 5-level topology (:func:`published_fmunet_topology`) the module names, shapes
and numerics equal PyMIC/MIS-FM ``FMUNet`` (``res_mode`` 0, 1, 2), so their checkpoints load
unchanged and give the same outputs.
"""

from __future__ import annotations

from typing import cast, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from volfnet.errors import VolfnetError
from volfnet.networks.common import (
    Triple,
    as_triple,
    check_channels,
    check_counts,
    check_dropout,
    odd_kernel,
    same_padding,
)
from volfnet.plans import NetworkTopology

LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default, which the published weights were trained with
HE_INIT_SLOPE = 0.01  # kaiming_normal_(a=0.01): He init matched to the LeakyReLU slope
MAX_SUPERVISION_HEADS = 4  # the published net supervises 4 scales; coarser heads see too few voxels
PUBLISHED_CHANNELS = (32, 64, 128, 256, 512)
PUBLISHED_DROPOUT = 0.2  # PyMIC's default, applied at levels 2 and deeper only
RES_MODE_FLAT_LEVELS = {0: 0, 1: 1, 2: 2}  # res_mode -> number of leading in-plane-only levels
MIN_LEVELS = 2  # at least one down-sampling step, else there is no U to speak of


class PreActivationConv(nn.Sequential):
    """Instance norm -> LeakyReLU -> [dropout] -> convolution, named like PyMIC's Sequential.

    The children keep PyMIC's indices (0 norm, 1 activation, 2 dropout, 3 conv; or 0, 1, 2
    without dropout) so state-dict keys match; ``forward`` skips a dropout of 0 and applies the
    activation in place on the fresh norm output, which saves one activation-sized buffer.
    The norm stays ``instance_norm``: a one-group-per-channel ``group_norm`` measured ~8%
    faster per CPU training step but drifts up to 6e-5 from PyMIC's outputs; this path is
    bit-identical to PyMIC.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple,
        stride: Triple = (1, 1, 1),
        dropout: float | None = None,
    ) -> None:
        layers: list[nn.Module] = [
            nn.InstanceNorm3d(in_channels, affine=True),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        ]
        if dropout is not None:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=same_padding(kernel)))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self[1](self[0](x))
        if len(self) == 4 and self.training and cast(nn.Dropout, self[2]).p > 0:
            y = self[2](y)
        return self[-1](y)


class ResConv(nn.Module):
    """``depth`` residual units ``x + conv(dropout(act(norm(x))))`` at constant width."""

    def __init__(self, channels: int, kernel: Triple, dropout: float, depth: int) -> None:
        super().__init__()
        self.conv_list = nn.ModuleList(
            [PreActivationConv(channels, channels, kernel, dropout=dropout) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.conv_list:
            x = x + unit(x)
        return x


class DownSample(nn.Module):
    """Strided pre-activation convolution between two levels (no pooling: it is learned)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.down = PreActivationConv(in_channels, out_channels, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class UpCatConv(nn.Module):
    """1x1x1 conv + trilinear up-sampling of the coarse map, concatenated after the skip.

    The up-sampling goes to the skip's exact size with ``align_corners=True``; for sizes
    divisible by the stride that is numerically PyMIC's ``scale_factor`` up-sampling, and for
    other sizes it still lines up instead of failing at the concatenation.
    """

    def __init__(self, low_channels: int, high_channels: int, kernel: Triple) -> None:
        super().__init__()
        self.up = PreActivationConv(low_channels, high_channels, (1, 1, 1))
        self.conv = PreActivationConv(2 * high_channels, high_channels, kernel)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.up(coarse), size=skip.shape[2:], mode="trilinear", align_corners=True)
        return self.conv(torch.cat([skip, up], dim=1))


class Encoder(nn.Module):
    """Residual blocks per level with strided down-sampling between them."""

    def __init__(
        self, channels: list[int], strides: list[Triple], kernels: list[Triple], dropout: list[float], depth: int
    ) -> None:
        super().__init__()
        self.num_levels = len(channels)
        for level, width in enumerate(channels):
            self.add_module(f"en_conv{level}", ResConv(width, kernels[level], dropout[level], depth))
        for level in range(self.num_levels - 1):
            self.add_module(
                f"down{level}", DownSample(channels[level], channels[level + 1], kernels[level], strides[level])
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in range(self.num_levels):
            x = getattr(self, f"en_conv{level}")(x)
            features.append(x)
            if level < self.num_levels - 1:
                x = getattr(self, f"down{level}")(x)
        return features


class Decoder(nn.Module):
    """A second residual block at the bottleneck, then up-concatenate + residual block per level."""

    def __init__(self, channels: list[int], kernels: list[Triple], dropout: list[float], depth: int) -> None:
        super().__init__()
        self.num_levels = len(channels)
        for level in range(self.num_levels - 1):
            self.add_module(f"upcat{level}", UpCatConv(channels[level + 1], channels[level], kernels[level]))
        for level, width in enumerate(channels):
            self.add_module(f"de_conv{level}", ResConv(width, kernels[level], dropout[level], depth))

    def forward(self, features: list[torch.Tensor], keep_levels: int) -> list[torch.Tensor]:
        """Decoder maps of levels ``0 .. keep_levels - 1`` (finest first); others are freed."""
        x = getattr(self, f"de_conv{self.num_levels - 1}")(features[-1])
        kept: list[torch.Tensor] = []
        for level in range(self.num_levels - 2, -1, -1):
            x = getattr(self, f"de_conv{level}")(getattr(self, f"upcat{level}")(x, features[level]))
            if level < keep_levels:
                kept.append(x)
        return kept[::-1]


class FMUNet(nn.Module):
    """The FMUNet segmentation network for a given topology.

    ``deep_supervision`` (a plain attribute, changeable at any time without touching the
    state dict) chooses the output: a list of logits at full resolution first, then coarser
    levels; or only the full-resolution logits. No softmax is applied.
    """

    encoder_key_prefixes = ("project.", "encoder.")
    input_conv_keys = ("project.weight",)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        feature_channels: Sequence[int],
        strides: Sequence[Sequence[int]],
        kernel_sizes: Sequence[Sequence[int]],
        dropout: Sequence[float],
        depth: int = 2,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        check_counts(in_channels, num_classes)
        channels = check_channels(feature_channels)
        levels = len(channels)
        if levels < MIN_LEVELS:
            raise VolfnetError(f"network topology: FMUNet needs at least {MIN_LEVELS} levels, got {levels}")
        if len(strides) != levels - 1 or len(kernel_sizes) != levels:
            raise VolfnetError(
                f"network topology: FMUNet with {levels} levels needs {levels - 1} strides and {levels} kernel sizes, "
                f"got {len(strides)} and {len(kernel_sizes)}"
            )
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise VolfnetError(f"network topology: depth (residual units per block) must be >= 1, got {depth!r}")
        stride_list = [as_triple(s, f"strides[{i}]") for i, s in enumerate(strides)]
        kernel_list = [odd_kernel(k, f"kernel_sizes[{i}]") for i, k in enumerate(kernel_sizes)]
        drop = check_dropout(dropout, levels)

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.strides = stride_list
        self.deep_supervision = deep_supervision
        self.project = nn.Conv3d(in_channels, channels[0], kernel_list[0], padding=same_padding(kernel_list[0]))
        self.encoder = Encoder(channels, stride_list, kernel_list, drop, depth)
        self.decoder = Decoder(channels, kernel_list, drop, depth)
        num_heads = min(levels - 1, MAX_SUPERVISION_HEADS)
        self.out_layers = nn.ModuleList(
            [PreActivationConv(channels[i], num_classes, kernel_list[i]) for i in range(num_heads)]
        )
        self.apply(_he_init)

    @classmethod
    def from_topology(
        cls, topology: NetworkTopology, num_input_channels: int, num_classes: int, deep_supervision: bool = True
    ) -> FMUNet:
        """Build from the plans' topology."""
        return cls(
            num_input_channels,
            num_classes,
            topology.feature_channels,
            topology.strides,
            topology.kernel_sizes,
            topology.dropout,
            depth=topology.depth,
            deep_supervision=deep_supervision,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._check_input_size(tuple(x.shape[2:]))
        features = self.encoder(self.project(x))
        heads = len(self.out_layers) if self.deep_supervision else 1
        decoded = self.decoder(features, keep_levels=heads)
        del features
        outputs = [self.out_layers[i](decoded[i]) for i in range(heads)]
        return outputs if self.deep_supervision else outputs[0]

    def _check_input_size(self, shape: tuple[int, ...]) -> None:
        """Instance norm cannot normalise a single voxel: name the level instead of letting
        torch fail deep inside the network."""
        size = shape
        for level, stride in enumerate(self.strides, start=1):
            size = tuple(-(-s // f) for s, f in zip(size, stride))
            if all(s == 1 for s in size):
                total = [1, 1, 1]
                for factor in self.strides:
                    total = [t * f for t, f in zip(total, factor)]
                raise VolfnetError(
                    f"input of size {list(shape)} is too small for FMUNet: level {level} would be 1 x 1 x 1 "
                    "voxels, which instance normalisation cannot normalise; use a patch larger than the total "
                    f"down-sampling {total} (z, y, x) on at least one axis"
                )

    def output_scales(self) -> list[Triple]:
        """Down-sampling factor per axis of each deep-supervision output (full resolution first)."""
        scales: list[Triple] = [(1, 1, 1)]
        for stride in self.strides[: len(self.out_layers) - 1]:
            prev = scales[-1]
            scales.append((prev[0] * stride[0], prev[1] * stride[1], prev[2] * stride[2]))
        return scales


def _he_init(module: nn.Module) -> None:
    """He (Kaiming normal) weights and zero bias for every convolution, as the published net.

    Skipped on the meta device (no values to fill), where ``normal_`` would import torch's
    compiler stack (seconds) for nothing."""
    if isinstance(module, nn.Conv3d) and not module.weight.is_meta:
        nn.init.kaiming_normal_(module.weight, a=HE_INIT_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def published_fmunet_topology(
    res_mode: int = 0,
    feature_channels: Sequence[int] = PUBLISHED_CHANNELS,
    dropout: float | Sequence[float] = PUBLISHED_DROPOUT,
    depth: int = 2,
) -> NetworkTopology:
    """The published FMUNet topology: isotropic 2x down-sampling, with the first ``res_mode``
    levels in-plane only (kernel (1,3,3), stride (1,2,2)). A scalar ``dropout`` applies from
    level 2 on, as in PyMIC; a list gives one value per level."""
    if res_mode not in RES_MODE_FLAT_LEVELS:
        raise VolfnetError(f"FMUNet res_mode must be one of {sorted(RES_MODE_FLAT_LEVELS)}, got {res_mode!r}")
    channels = check_channels(feature_channels)
    levels = len(channels)
    flat = RES_MODE_FLAT_LEVELS[res_mode]
    if isinstance(dropout, (int, float)):
        drop = [0.0 if level < 2 else float(dropout) for level in range(levels)]
    else:
        drop = [float(p) for p in dropout]
    return NetworkTopology(
        name="fmunet",
        feature_channels=channels,
        strides=[[1, 2, 2] if level < flat else [2, 2, 2] for level in range(levels - 1)],
        kernel_sizes=[[1, 3, 3] if level < flat else [3, 3, 3] for level in range(levels)],
        dropout=drop,
        depth=depth,
    )
