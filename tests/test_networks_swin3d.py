"""3-D Swin parts: attention against the explicit formula, shifted-window regions, window
partitioning, the small-grid rule, DropPath statistics and the truncated-normal init."""

from __future__ import annotations

import pytest
import torch

from volfnet.networks.swin3d import (
    DropPath,
    SwinBlock3D,
    SwinLayer3D,
    WindowAttention3D,
    region_mask,
    relative_position_index,
    shifted_window_regions,
    truncated_normal_,
    window_partition,
    window_reverse,
)


def explicit_attention(attn: WindowAttention3D, windows: torch.Tensor, batch: int, mask: torch.Tensor | None):
    """softmax(q k^T / sqrt(d) + bias [+ mask]) v, then the output projection, step by step."""
    bw, n, c = windows.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(windows).reshape(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    scores = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    table = attn.relative_position_bias_table
    bias = table[attn.relative_position_index.flatten()].view(n, n, heads).permute(2, 0, 1)
    scores = scores + bias[None]
    if mask is not None:
        scores = (scores.view(batch, bw // batch, heads, n, n) + mask[None, :, None]).view(bw, heads, n, n)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
    return attn.proj(out)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_equals_the_explicit_formula(shifted):
    torch.manual_seed(0)
    attn = WindowAttention3D(dim=16, window=2, num_heads=4, dropout=0.0).eval()
    regions = shifted_window_regions((4, 4, 6), 2, 1) if shifted else None
    windows = torch.randn(2 * 12, 8, 16)
    got = attn(windows, 2, regions)
    mask = region_mask(regions, torch.float32) if shifted else None
    assert torch.allclose(got, explicit_attention(attn, windows, 2, mask), atol=1e-5)


def test_relative_position_index_uses_the_nnformer_multipliers():
    index = relative_position_index(3)
    # token 0 is (0,0,0); token 26 is (2,2,2): offsets (-2,-2,-2) -> (0,0,0) after the shift by w-1
    assert index[0, 26] == 0
    assert index[26, 0] == 4 * 8 + 4 * 5 + 4  # (2+2)*(3w-1) + (2+2)*(2w-1) + (2+2)
    assert index.shape == (27, 27) and index.dtype == torch.int64
    assert int(index.max()) == 4 * 8 + 4 * 5 + 4 < 5**3  # rows beyond this are never used


def test_shifted_regions_and_mask():
    regions = shifted_window_regions((6, 6, 6), 3, 1)
    assert regions.shape == (8, 27)
    assert len(torch.unique(regions[0])) == 1  # the first window does not wrap around
    assert len(torch.unique(regions[-1])) == 8  # the last one meets 2 regions per axis
    mask = region_mask(regions, torch.float32)
    assert mask.shape == (8, 27, 27)
    assert set(torch.unique(mask).tolist()) == {0.0, -100.0}
    assert torch.equal(mask, mask.transpose(1, 2)) and not mask[0].any()


def test_window_partition_round_trip():
    x = torch.arange(2 * 4 * 6 * 2 * 3, dtype=torch.float32).view(2, 4, 6, 2, 3)
    windows = window_partition(x, 2)
    assert windows.shape == (2 * 2 * 3 * 1, 8, 3)
    assert torch.equal(windows[0, :, 0], x[0, :2, :2, :2, 0].flatten())
    assert torch.equal(window_reverse(windows, 2, (4, 6, 2)), x)


def test_small_grid_uses_one_window_without_shift_and_padding_keeps_shape():
    block = SwinBlock3D(dim=8, resolution=(3, 7, 7), num_heads=2, window=4, shift=2, dropout=0.0, drop_path=0.0)
    assert (block.window, block.shift, block.padded) == (3, 0, (3, 9, 9))
    assert block.attn.relative_position_bias_table.shape == (125, 2)
    layer = SwinLayer3D(dim=8, resolution=(5, 6, 7), depth=2, num_heads=2, window=3, dropout=0.0, drop_path=0.0)
    assert [b.shift for b in layer.blocks] == [0, 1]
    assert layer.blocks[1].padded == (6, 6, 9)
    out = layer(torch.randn(2, 8, 5, 6, 7))
    assert out.shape == (2, 8, 5, 6, 7) and torch.isfinite(out).all()


def test_drop_path_drops_whole_samples_at_the_right_rate():
    torch.manual_seed(0)
    drop = DropPath(0.25)
    x = torch.ones(4000, 3, 5)
    drop.eval()
    assert torch.equal(drop(x), x)
    drop.train()
    y = drop(x)
    per_sample = y.flatten(1)
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / 0.75)).all(1))
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)


def test_truncated_normal_statistics_and_redraw():
    torch.manual_seed(0)
    wide = truncated_normal_(torch.empty(200_000), std=0.02)
    assert wide.std().item() == pytest.approx(0.02, rel=0.02)
    tight = truncated_normal_(torch.empty(200_000), std=1.0, bound=0.5)
    assert tight.abs().max().item() <= 0.5
    assert tight.std().item() == pytest.approx(0.2846, rel=0.03)  # std of N(0,1) truncated to [-0.5, 0.5]
