"""PCT-Net: the parallel convolution-transformer U-Net of the MIS-FM paper.

Levels 0-1 are convolutional (BatchNorm + PReLU, pre-activation); levels 2-4 use PCT blocks,
whose output is the *sum* of a convolution branch and a 3-D Swin branch on the same input.
Three input branches (``embeddings``) and three output branches (``pred_heads``), one per
``resolution_mode``, are always built and saved, though only the selected one runs: that is
the layout of the released checkpoints, kept so they load unchanged. The Swin layers are
built for one token grid, so the network has a fixed input size; any other size is a
:class:`VolfnetError` naming both sizes.
"""

from __future__ import annotations

from typing import cast, Sequence

import torch
from torch import nn

from volfnet.errors import VolfnetError
from volfnet.networks.common import Triple, as_triple, check_channels, check_counts, check_dropout, same_padding
from volfnet.networks.swin3d import SwinLayer3D
from volfnet.plans import NetworkTopology

NUM_LEVELS = 5  # 2 convolutional levels + 3 PCT levels; the published layout has no other depth
BRANCH_DIMS = {0: (3, 3), 1: (2, 3), 2: (2, 2)}  # resolution_mode -> conv dims of levels 0 and 1
SWIN_DROP_PATH = 0.2  # fixed stochastic depth of every Swin block in the published net
PUBLISHED_CHANNELS = (24, 48, 128, 256, 512)
PUBLISHED_DROPOUT = (0.0, 0.0, 0.2, 0.2, 0.2)
PUBLISHED_HEADS = (4, 8, 16)
PUBLISHED_WINDOW = 6
PUBLISHED_INPUT_SIZE = (64, 128, 128)


def conv_kernel(dim: int) -> Triple:
    """3x3x3 for a 3-D level, 1x3x3 for an in-plane (2-D) level."""
    return (3, 3, 3) if dim == 3 else (1, 3, 3)


def pool_size(dim: int) -> Triple:
    """2x2x2 for a 3-D level, 1x2x2 for an in-plane level."""
    return (2, 2, 2) if dim == 3 else (1, 2, 2)


def _pre_act(channels: int, layer: nn.Module) -> nn.Sequential:
    """BatchNorm -> PReLU -> ``layer`` (indices 0, 1, 2 as in the released checkpoints)."""
    return nn.Sequential(nn.BatchNorm3d(channels), nn.PReLU(), layer)


class ConvBlock(nn.Module):
    """Two pre-activation convolutions with dropout between them; no residual connection."""

    def __init__(self, channels: int, kernel: Triple, dropout: float) -> None:
        super().__init__()
        pad = same_padding(kernel)
        self.conv_conv = nn.Sequential(
            nn.BatchNorm3d(channels),
            nn.PReLU(),
            nn.Conv3d(channels, channels, kernel, padding=pad),
            nn.BatchNorm3d(channels),
            nn.PReLU(),
            nn.Dropout(dropout),
            nn.Conv3d(channels, channels, kernel, padding=pad),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_conv(x)


class PoolDown(nn.Module):
    """Max-pool, then a pre-activation convolution that changes the width."""

    def __init__(self, in_channels: int, out_channels: int, pool: Triple, kernel: Triple) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(pool, stride=pool)
        self.conv = _pre_act(in_channels, nn.Conv3d(in_channels, out_channels, kernel, padding=same_padding(kernel)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class UpCat(nn.Module):
    """Transposed-convolution up-sampling, concatenated after the skip, then a convolution."""

    def __init__(self, low_channels: int, high_channels: int, pool: Triple, kernel: Triple) -> None:
        super().__init__()
        self.up = _pre_act(low_channels, nn.ConvTranspose3d(low_channels, high_channels, pool, stride=pool))
        self.conv = _pre_act(
            2 * high_channels, nn.Conv3d(2 * high_channels, high_channels, kernel, padding=same_padding(kernel))
        )

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(coarse)], dim=1))


class OutputLayer(nn.Module):
    """Pre-activation 1x1x1 convolution to class logits."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = _pre_act(channels, nn.Conv3d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PCTBlock(nn.Module):
    """Convolution branch + Swin branch on the same input, summed.

    ``norm_layer`` is never used in the forward pass; it exists because the released
    checkpoints contain it, and a strict load needs it.
    """

    def __init__(
        self, channels: int, resolution: Triple, num_heads: int, window: int, depth: int, dropout: float
    ) -> None:
        super().__init__()
        self.conv = ConvBlock(channels, (3, 3, 3), dropout)
        self.trans = SwinLayer3D(channels, resolution, depth, num_heads, window, dropout, SWIN_DROP_PATH)
        self.norm_layer = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.trans(x)


class Embedding(nn.Module):
    """Levels 0-1 of the encoder for one resolution mode: projection, two conv levels, and the
    down-sampling into the first transformer level."""

    def __init__(self, in_channels: int, channels: list[int], dims: tuple[int, int], dropout: list[float]) -> None:
        super().__init__()
        k0 = conv_kernel(dims[0])
        self.proj = nn.Conv3d(in_channels, channels[0], k0, padding=same_padding(k0))
        self.conv0 = ConvBlock(channels[0], k0, dropout[0])
        self.conv1 = ConvBlock(channels[1], conv_kernel(dims[1]), dropout[1])
        self.down1 = PoolDown(channels[0], channels[1], pool_size(dims[0]), conv_kernel(dims[1]))
        self.down2 = PoolDown(channels[1], channels[2], pool_size(dims[1]), (3, 3, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0 = self.conv0(self.proj(x))
        x1 = self.conv1(self.down1(x0))
        return x0, x1, self.down2(x1)


class PredictionHead(nn.Module):
    """Levels 1-0 of the decoder for one resolution mode, with their output layers."""

    def __init__(self, channels: list[int], dims: tuple[int, int], dropout: list[float], num_classes: int) -> None:
        super().__init__()
        self.up1 = UpCat(channels[1], channels[0], pool_size(dims[0]), conv_kernel(dims[0]))
        self.up2 = UpCat(channels[2], channels[1], pool_size(dims[1]), conv_kernel(dims[1]))
        self.conv0 = ConvBlock(channels[0], conv_kernel(dims[0]), dropout[0])
        self.conv1 = ConvBlock(channels[1], conv_kernel(dims[1]), dropout[1])
        self.out_conv0 = OutputLayer(channels[0], num_classes)
        self.out_conv1 = OutputLayer(channels[1], num_classes)

    def forward(
        self, d2: torch.Tensor, x1: torch.Tensor, x0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d1 = self.conv1(self.up2(d2, x1))
        return self.conv0(self.up1(d1, x0)), d1


class Pyramid(nn.Module):
    """Levels 2-4 (encoder and decoder) built from PCT blocks, shared by all resolution modes."""

    def __init__(
        self,
        channels: list[int],
        resolution: Triple,
        num_heads: list[int],
        window: int,
        depth: int,
        dropout: list[float],
        num_classes: int,
    ) -> None:
        super().__init__()
        c2, c3, c4 = channels[2:]
        r2 = resolution
        r3 = (r2[0] // 2, r2[1] // 2, r2[2] // 2)
        r4 = (r3[0] // 2, r3[1] // 2, r3[2] // 2)
        iso_pool, iso_kernel = (2, 2, 2), (3, 3, 3)
        self.down3 = PoolDown(c2, c3, iso_pool, iso_kernel)
        self.down4 = PoolDown(c3, c4, iso_pool, iso_kernel)
        self.up3 = UpCat(c3, c2, iso_pool, iso_kernel)
        self.up4 = UpCat(c4, c3, iso_pool, iso_kernel)
        self.convtrans_e2 = PCTBlock(c2, r2, num_heads[0], window, depth, dropout[2])
        self.convtrans_d2 = PCTBlock(c2, r2, num_heads[0], window, depth, dropout[2])
        self.convtrans_e3 = PCTBlock(c3, r3, num_heads[1], window, depth, dropout[3])
        self.convtrans_d3 = PCTBlock(c3, r3, num_heads[1], window, depth, dropout[3])
        self.convtrans_e4 = PCTBlock(c4, r4, num_heads[2], window, depth, dropout[4])
        self.out_conv2 = OutputLayer(c2, num_classes)
        self.out_conv3 = OutputLayer(c3, num_classes)

    def forward(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder maps (d2, d3) from the level-2 input."""
        e2 = self.convtrans_e2(x2)
        e3 = self.convtrans_e3(self.down3(e2))
        e4 = self.convtrans_e4(self.down4(e3))
        d3 = self.convtrans_d3(self.up4(e4, e3))
        d2 = self.convtrans_d2(self.up3(d3, e2))
        return d2, d3


class PCTNet(nn.Module):
    """PCT-Net for a fixed ``input_size`` (z, y, x).

    ``deep_supervision`` (a plain attribute) selects four logits maps, full resolution first,
    or the full-resolution logits only; it never changes the state dict.
    """

    encoder_key_prefixes = ("embeddings.", "pyramid_ct.down3.", "pyramid_ct.down4.", "pyramid_ct.convtrans_e")
    input_conv_keys = tuple(f"embeddings.{i}.proj.weight" for i in BRANCH_DIMS)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: Sequence[int],
        feature_channels: Sequence[int] = PUBLISHED_CHANNELS,
        dropout: Sequence[float] = PUBLISHED_DROPOUT,
        resolution_mode: int = 1,
        num_heads: Sequence[int] = PUBLISHED_HEADS,
        window_size: int = PUBLISHED_WINDOW,
        depth: int = 2,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        check_counts(in_channels, num_classes)
        channels = check_channels(feature_channels)
        if len(channels) != NUM_LEVELS:
            raise VolfnetError(
                f"network topology: PCT-Net has exactly {NUM_LEVELS} levels, got {len(channels)} channels"
            )
        if resolution_mode not in BRANCH_DIMS:
            raise VolfnetError(f"network topology: PCT-Net resolution_mode must be 0, 1 or 2, got {resolution_mode!r}")
        heads = check_channels(num_heads, "num_heads")
        if len(heads) != 3 or any(c % h for c, h in zip(channels[2:], heads)):
            raise VolfnetError(
                f"network topology: PCT-Net needs 3 num_heads dividing the level 2-4 widths {channels[2:]}, got {heads}"
            )
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
            raise VolfnetError(f"network topology: window_size must be an integer >= 2, got {window_size!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise VolfnetError(f"network topology: depth (Swin blocks per PCT block) must be >= 1, got {depth!r}")
        drop = check_dropout(dropout, NUM_LEVELS)
        self.input_size = as_triple(list(input_size), "input_size")
        divisor = input_divisor(resolution_mode)
        if any(size % div for size, div in zip(self.input_size, divisor)):
            raise VolfnetError(
                f"network topology: PCT-Net input_size {list(self.input_size)} must be divisible by {divisor} "
                f"(its total down-sampling in resolution_mode {resolution_mode})"
            )
        d, h, w = (4 * size // div for size, div in zip(self.input_size, divisor))
        level2 = (d, h, w)

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.resolution_mode = resolution_mode
        self.deep_supervision = deep_supervision
        self.embeddings = nn.ModuleList([Embedding(in_channels, channels, BRANCH_DIMS[m], drop) for m in BRANCH_DIMS])
        self.pyramid_ct = Pyramid(channels, level2, heads, window_size, depth, drop, num_classes)
        self.pred_heads = nn.ModuleList(
            [PredictionHead(channels, BRANCH_DIMS[m], drop, num_classes) for m in BRANCH_DIMS]
        )

    @classmethod
    def from_topology(
        cls, topology: NetworkTopology, num_input_channels: int, num_classes: int, deep_supervision: bool = True
    ) -> PCTNet:
        """Build from the plans' topology; its strides and kernels must be those that its
        ``resolution_mode`` implies (they are what the planner's patch arithmetic used)."""
        if topology.input_size is None or topology.resolution_mode is None:
            raise VolfnetError("network topology: pctnet needs input_size and resolution_mode")
        if topology.resolution_mode not in BRANCH_DIMS:
            raise VolfnetError(
                f"network topology: PCT-Net resolution_mode must be 0, 1 or 2, got {topology.resolution_mode!r}"
            )
        if topology.num_levels != NUM_LEVELS:
            raise VolfnetError(
                f"network topology: PCT-Net has exactly {NUM_LEVELS} levels, got {topology.num_levels}"
            )
        expected = published_pctnet_topology(
            topology.resolution_mode, topology.input_size, topology.feature_channels, topology.dropout
        )
        strides = [list(s) for s in topology.strides]
        kernels = [list(k) for k in topology.kernel_sizes]
        if strides != expected.strides or kernels != expected.kernel_sizes:
            raise VolfnetError(
                f"network topology: PCT-Net resolution_mode {topology.resolution_mode} implies strides "
                f"{expected.strides} and kernel_sizes {expected.kernel_sizes}; the plans say "
                f"{topology.strides} and {topology.kernel_sizes}"
            )
        return cls(
            num_input_channels,
            num_classes,
            topology.input_size,
            topology.feature_channels,
            topology.dropout,
            topology.resolution_mode,
            topology.num_heads if topology.num_heads is not None else PUBLISHED_HEADS,
            topology.window_size if topology.window_size is not None else PUBLISHED_WINDOW,
            depth=topology.depth,
            deep_supervision=deep_supervision,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.dim() != 5 or tuple(x.shape[2:]) != self.input_size:
            raise VolfnetError(
                f"PCT-Net was built for input size {list(self.input_size)} (z, y, x) and accepts no other; "
                f"got an input of spatial size {list(x.shape[2:])} (full shape {list(x.shape)}). Patch size, "
                "sliding-window size and padding must all equal the network's input size."
            )
        x0, x1, x2 = self.embeddings[self.resolution_mode](x)
        d2, d3 = self.pyramid_ct(x2)
        head = cast(PredictionHead, self.pred_heads[self.resolution_mode])
        d0, d1 = head(d2, x1, x0)
        if not self.deep_supervision:
            return head.out_conv0(d0)
        return [head.out_conv0(d0), head.out_conv1(d1), self.pyramid_ct.out_conv2(d2), self.pyramid_ct.out_conv3(d3)]

    def output_scales(self) -> list[Triple]:
        """Down-sampling factor per axis of each deep-supervision output (full resolution first)."""
        dims = BRANCH_DIMS[self.resolution_mode]
        s1 = pool_size(dims[0])
        s2 = tuple(a * b for a, b in zip(s1, pool_size(dims[1])))
        s3 = tuple(2 * s for s in s2)
        return [(1, 1, 1), s1, s2, s3]  # type: ignore[list-item]


def input_divisor(resolution_mode: int) -> list[int]:
    """Product of all strides per axis for a resolution mode: input sizes must divide by it
    (the plans' topology says the same through ``NetworkTopology.total_downsampling``)."""
    p0, p1 = (pool_size(d) for d in BRANCH_DIMS[resolution_mode])
    return [a * b * 4 for a, b in zip(p0, p1)]


def published_pctnet_topology(
    resolution_mode: int = 1,
    input_size: Sequence[int] = PUBLISHED_INPUT_SIZE,
    feature_channels: Sequence[int] = PUBLISHED_CHANNELS,
    dropout: Sequence[float] = PUBLISHED_DROPOUT,
    num_heads: Sequence[int] = PUBLISHED_HEADS,
    window_size: int = PUBLISHED_WINDOW,
    depth: int = 2,
) -> NetworkTopology:
    """The published PCT-Net topology (defaults: the MIS-FM demo configuration), with the
    strides and kernels its ``resolution_mode`` implies."""
    if resolution_mode not in BRANCH_DIMS:
        raise VolfnetError(f"PCT-Net resolution_mode must be 0, 1 or 2, got {resolution_mode!r}")
    d0, d1 = BRANCH_DIMS[resolution_mode]
    return NetworkTopology(
        name="pctnet",
        feature_channels=list(feature_channels),
        strides=[list(pool_size(d0)), list(pool_size(d1)), [2, 2, 2], [2, 2, 2]],
        kernel_sizes=[list(conv_kernel(d0)), list(conv_kernel(d1)), [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        dropout=[float(p) for p in dropout],
        depth=depth,
        input_size=[int(s) for s in input_size],
        resolution_mode=resolution_mode,
        num_heads=list(num_heads),
        window_size=window_size,
    )
