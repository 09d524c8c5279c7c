"""A small two-level 3D U-Net (pure torch) shared by the inference benchmarks and their MONAI runner.

It has what matters for sliding-window inference (3x3x3 convolutions with zero padding, instance
norm, a strided down- and a transposed up-sampling, a skip connection) at a size two CPU cores
can predict a 256^2 x 200 volume with in about a minute.
"""

from __future__ import annotations

import torch
from torch import nn

NEGATIVE_SLOPE = 0.01  # LeakyReLU slope of nnU-Net-style networks


def _block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.LeakyReLU(NEGATIVE_SLOPE),
    )


class TinyUNet(nn.Module):
    """(N, in_channels, Z, Y, X) -> (N, num_classes, Z, Y, X) logits; even spatial sizes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(_block(in_channels, width), _block(width, width))
        self.bottom = nn.Sequential(_block(width, 2 * width, stride=2), _block(2 * width, 2 * width))
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.decoder = _block(2 * width, width)
        self.head = nn.Conv3d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.encoder(x)
        return self.head(self.decoder(torch.cat([skip, self.up(self.bottom(skip))], dim=1)))


def build(in_channels: int, num_classes: int, width: int, seed: int) -> nn.Module:
    """The benchmark network with reproducible random weights, in eval mode.

    ``width=0`` gives a single 1x1x1 convolution instead: it costs almost nothing, so a run
    with it measures the sliding-window machinery (tiling, blending, copies) alone.
    """
    torch.manual_seed(seed)
    if width == 0:
        return nn.Conv3d(in_channels, num_classes, 1).eval()
    return TinyUNet(in_channels, num_classes, width).eval()
