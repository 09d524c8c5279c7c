"""3-D shifted-window self-attention (Swin) layers, as used inside PCT-Net's blocks.

The layout follows the nnFormer-style 3-D Swin that MIS-FM's PCT-Net was trained with:
pre-norm blocks ``x + DropPath(W-MSA(LN(x)))`` and ``x + DropPath(MLP(LN(x)))``, zero padding
to a multiple of the window *after* the norm, a cyclic shift of half a window in every other
block with a -100 attention mask between regions that were not neighbours, and a learned
relative-position bias. The bias index reproduces the published aliasing (multipliers
``3w-1`` and ``2w-1`` instead of ``(2w-1)**2`` and ``2w-1``): released weights were trained
with it, so it is part of the model, and it is a persistent buffer in their checkpoints.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from volfnet.networks.common import Triple

MLP_RATIO = 4  # hidden width of the Swin MLP relative to the token width (Swin default)
SHIFT_MASK_VALUE = -100.0  # additive score between non-adjacent regions after the cyclic shift
BIAS_INIT_STD = 0.02  # truncated-normal std for the bias table and linear weights (Swin init)
TRUNCATION_BOUND = 2.0  # absolute cut-off of that truncated normal (the Swin/timm default)
NEVER_REACHED_SIGMAS = 30.0  # P(|z| > 30) ~ 1e-197: a cut-off this far out needs no redraw check
# Shift-region labels (27 of them) as uint8: small, and a dtype that DistributedDataParallel can
# broadcast over both gloo and NCCL (neither takes int16, which made DDP fail at start).
REGION_DTYPE = torch.uint8


@torch.no_grad()
def truncated_normal_(tensor: torch.Tensor, std: float, bound: float = TRUNCATION_BOUND) -> torch.Tensor:
    """Fill with N(0, std) truncated to [-bound, bound] by redrawing the values outside.

    Same distribution as ``nn.init.trunc_normal_`` but ~10x faster here: with the usual
    std 0.02 and bound 2 nothing is ever redrawn, while the inverse-CDF method pays an
    ``erfinv`` per element (1.8 s of a 3.6 s PCT-Net build).
    """
    if tensor.is_meta:  # no values to fill; normal_ on meta would import the compiler stack
        return tensor
    tensor.normal_(0.0, std)
    if bound >= NEVER_REACHED_SIGMAS * std:
        return tensor
    outside = tensor.abs() > bound
    while bool(outside.any()):
        tensor[outside] = torch.empty(int(outside.sum()), dtype=tensor.dtype, device=tensor.device).normal_(0.0, std)
        outside = tensor.abs() > bound
    return tensor


def relative_position_index(window: int) -> torch.Tensor:
    """The (w**3, w**3) index into the bias table of shape ((2w-1)**3, heads).

    Offsets per axis are shifted to ``0 .. 2w-2`` and combined as
    ``d * (3w - 1) + h * (2w - 1) + w``: the published (nnFormer) multipliers. They alias
    different offsets onto the same row (291 distinct rows of 1331 for w = 6); reproducing
    this keeps released PCT-Net weights meaningful.
    """
    axis = torch.arange(window, device="cpu")  # computed on CPU, even under a meta device context
    d, h, w = (c.flatten() for c in torch.meshgrid(axis, axis, axis, indexing="ij"))

    def offset(c: torch.Tensor) -> torch.Tensor:
        return c[:, None] - c[None, :] + (window - 1)

    index = offset(d) * (3 * window - 1) + offset(h) * (2 * window - 1) + offset(w)
    return index.to(torch.get_default_device())


@functools.lru_cache(maxsize=8)
def _cached_cpu_index(window: int) -> torch.Tensor:
    """One CPU computation per window size: every block of a network shares the values."""
    with torch.device("cpu"):
        return relative_position_index(window)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, D, H, W, C) with sizes divisible by ``window`` -> (B * windows, window**3, C)."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window, window, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window**3, c)


def window_reverse(windows: torch.Tensor, window: int, size: Triple) -> torch.Tensor:
    """Inverse of :func:`window_partition` for a padded grid of ``size`` (D, H, W)."""
    d, h, w = size
    c = windows.shape[-1]
    x = windows.view(-1, d // window, h // window, w // window, window, window, window, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(-1, d, h, w, c)


def shifted_window_regions(padded_size: Triple, window: int, shift: int) -> torch.Tensor:
    """(windows, N) region label of every token after the cyclic shift.

    Tokens of one window that carry different labels were not neighbours before the shift;
    :func:`region_mask` turns this compact form (N per window, not N**2) into the mask.
    """
    regions = torch.zeros(padded_size, dtype=REGION_DTYPE, device="cpu")
    bounds = ((0, -window), (-window, -shift), (-shift, None))
    label = 0
    for d0, d1 in bounds:
        for h0, h1 in bounds:
            for w0, w1 in bounds:
                regions[d0:d1, h0:h1, w0:w1] = label
                label += 1
    return window_partition(regions[None, ..., None], window).squeeze(-1).to(torch.get_default_device())


def region_mask(regions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(windows, N, N) additive mask: 0 within a region, -100 across regions."""
    different = regions[:, None, :] != regions[:, :, None]
    return torch.zeros(different.shape, dtype=dtype, device=regions.device).masked_fill(different, SHIFT_MASK_VALUE)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``.

    Draws from torch's default generator, like ``nn.Dropout``; a seeded trainer makes it
    reproducible.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> linear -> dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside cubic windows with a relative-position bias."""

    # A fixed function of the window size (released checkpoints carry the same values): every
    # process builds it identically, so DDP need not broadcast it (networks.runtime).
    ARCHITECTURE_BUFFERS = ("relative_position_index",)
    relative_position_index: torch.Tensor  # a registered buffer

    def __init__(self, dim: int, window: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 3, num_heads))
        self.register_buffer(
            "relative_position_index", _cached_cpu_index(window).to(torch.get_default_device(), copy=True)
        )
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        truncated_normal_(self.relative_position_bias_table, BIAS_INIT_STD)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias gathered from the table."""
        n = self.window**3
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, batch: int, regions: torch.Tensor | None) -> torch.Tensor:
        """``windows``: (batch * nW, N, C); ``regions``: (nW, N) shift-region labels or None."""
        bw, n, c = windows.shape
        qkv = self.qkv(windows).view(batch, bw // batch, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, N, hd)
        scores = self.position_bias().to(q.dtype)  # (heads, N, N)
        if regions is not None:
            scores = scores + region_mask(regions, q.dtype)[:, None]  # (nW, heads, N, N)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=scores, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        out = out.permute(0, 1, 3, 2, 4).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))


class SwinBlock3D(nn.Module):
    """One pre-norm Swin block on a fixed token grid ``resolution`` (D, H, W).

    A grid no larger than the window in some axis uses one window of the smallest grid size
    and no shift (the original Swin rule), which also changes the bias-table shape.
    """

    ARCHITECTURE_BUFFERS = ("shift_regions",)  # a fixed function of the grid, window and shift

    def __init__(
        self, dim: int, resolution: Triple, num_heads: int, window: int, shift: int, dropout: float, drop_path: float
    ) -> None:
        super().__init__()
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        self.resolution = resolution
        self.window = window
        self.shift = shift
        d, h, w = (-(-size // window) * window for size in resolution)
        self.padded = (d, h, w)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window, num_heads, dropout)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, MLP_RATIO * dim, dropout)
        regions = shifted_window_regions(self.padded, window, shift) if shift > 0 else None
        self.register_buffer("shift_regions", regions, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, length, c = tokens.shape
        d, h, w = self.resolution
        x = self.norm1(tokens).view(b, d, h, w, c)
        pd, ph, pw = (p - s for p, s in zip(self.padded, self.resolution))
        if pd or ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift,) * 3, dims=(1, 2, 3))
        windows = self.attn(window_partition(x, self.window), b, self.shift_regions)
        x = window_reverse(windows, self.window, self.padded)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift,) * 3, dims=(1, 2, 3))
        x = x[:, :d, :h, :w].reshape(b, length, c)
        tokens = tokens + self.drop_path(x)
        return tokens + self.drop_path(self.mlp(self.norm2(tokens)))


class SwinLayer3D(nn.Module):
    """Token dropout then ``depth`` Swin blocks, alternating plain and shifted windows, on a
    (B, C, D, H, W) map of the fixed ``resolution``."""

    def __init__(
        self, dim: int, resolution: Triple, depth: int, num_heads: int, window: int, dropout: float, drop_path: float
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.token_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [
                SwinBlock3D(dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2, dropout, drop_path)
                for i in range(depth)
            ]
        )
        self.apply(_init_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = self.token_drop(x.flatten(2).transpose(1, 2))
        for block in self.blocks:
            tokens = block(tokens)
        return tokens.transpose(1, 2).reshape(b, c, *self.resolution)


def _init_linear(module: nn.Module) -> None:
    """Truncated-normal linear weights and zero biases (the Swin/nnFormer initialisation)."""
    if isinstance(module, nn.Linear):
        truncated_normal_(module.weight, BIAS_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
