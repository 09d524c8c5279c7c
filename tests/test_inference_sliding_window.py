"""Sliding-window prediction: Gaussian map, tile placement, padding, blending, TTA, folds, memory."""

from __future__ import annotations

import io
import itertools
import logging
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

import volfnet.inference.sliding_window as sw
from volfnet.errors import VolfnetError
from volfnet.inference.sliding_window import (
    accumulation_bytes,
    gaussian_importance_map,
    predict_sliding_window,
    tile_starts,
)
from volfnet.inference.tiling import pad_to_patch
from volfnet.inference.tta import min_forward_batch, mirror_combinations, summed_logits

CPU_ONLY = {"device": "cpu"}


def seeded_conv(in_channels: int, out_channels: int, kernel: int, seed: int) -> nn.Conv3d:
    torch.manual_seed(seed)
    return nn.Conv3d(in_channels, out_channels, kernel, padding=kernel // 2)


def direct(network: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return network(image[None])[0]


def random_image(shape, channels: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((channels, *shape)).astype(np.float32))


class Recorder(nn.Module):
    """Wraps a net, records every input shape and its train/eval mode; optional fixed input size."""

    def __init__(self, inner: nn.Module, fixed_size: tuple[int, ...] | None = None, deep_supervision: bool = False):
        super().__init__()
        self.inner, self.fixed_size, self.deep_supervision = inner, fixed_size, deep_supervision
        self.shapes: list[tuple[int, ...]] = []
        self.modes: list[bool] = []

    def forward(self, x):
        if self.fixed_size is not None and tuple(x.shape[2:]) != self.fixed_size:
            raise RuntimeError(f"fixed input size {self.fixed_size}, got {tuple(x.shape[2:])}")
        self.shapes.append(tuple(x.shape))
        self.modes.append(self.training)
        y = self.inner(x)
        return [y, y[:, :, ::2, ::2, ::2] * 0 + 99.0] if self.deep_supervision else y


# --- Gaussian importance map -------------------------------------------------------------


@pytest.mark.parametrize("patch", [(9, 11, 13), (8, 12, 16)])
def test_gaussian_map_max_one_symmetric_positive_and_peaked_at_centre(patch):
    g = gaussian_importance_map(patch)
    assert g.shape == patch and g.dtype == torch.float32
    assert g.max().item() == pytest.approx(1.0)
    assert g.min().item() > 0
    for axis in range(3):
        assert torch.equal(g, torch.flip(g, [axis]))
    centre = tuple(slice((p - 1) // 2, p // 2 + 1) for p in patch)  # 1 voxel (odd) or 2 (even) per axis
    assert torch.allclose(g[centre], torch.ones_like(g[centre]))
    outside = torch.ones_like(g, dtype=torch.bool)
    outside[centre] = False
    assert g[outside].max().item() < 1.0


def test_gaussian_map_has_sigma_patch_over_eight():
    g = gaussian_importance_map((17, 17, 33))
    # Along X (patch 33, sigma 33/8 = 4.125), the centre row at distances 1, 4 and 16 from the
    # centre: exp(-d^2 / (2 sigma^2)) worked out by hand (0.97104, 0.62490, 0.00054078).
    row = g[8, 8]
    assert row[16].item() == pytest.approx(1.0)
    assert [row[16 + distance].item() for distance in (1, 4, 16)] == pytest.approx([0.971043, 0.624905, 0.000540780], rel=1e-5)
    # Separable: a corner is the product of the three axis minima.
    assert g[0, 0, 0].item() == pytest.approx(g[0, 8, 16].item() * g[8, 0, 16].item() * g[8, 8, 0].item(), rel=1e-5)


def test_gaussian_map_is_cached_and_underflow_is_clamped_in_half_precision():
    assert gaussian_importance_map((8, 8, 8)) is gaussian_importance_map((8, 8, 8))
    half = gaussian_importance_map((64, 64, 64), dtype=torch.float16)
    full = gaussian_importance_map((64, 64, 64))
    assert full.min().item() < torch.finfo(torch.float16).tiny / 1000  # the corner underflows in fp16 ...
    assert half.dtype == torch.float16 and half.min().item() > 0  # ... and is clamped to a positive value
    assert half.min().item() == half[half > 0].min().item()


# --- tile starts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,patch,step,counts",
    [
        ((20, 24, 28), (8, 8, 8), 0.5, (4, 5, 6)),  # e.g. 12 voxels to travel in steps of at most 4: 3 steps, 4 tiles
        ((17, 31, 64), (16, 10, 64), 0.5, (2, 6, 1)),
        ((50, 9, 33), (7, 9, 20), 0.33, (20, 1, 3)),
        ((40, 40, 40), (16, 16, 16), 1.0, (3, 3, 3)),
    ],
)
def test_tile_starts_cover_every_voxel_with_bounded_even_steps(shape, patch, step, counts):
    starts = tile_starts(shape, patch, step)
    assert tuple(len(axis_starts) for axis_starts in starts) == counts  # the fewest steps of at most step * patch
    for size, window, axis_starts in zip(shape, patch, starts):
        assert axis_starts[0] == 0 and axis_starts[-1] == size - window
        gaps = np.diff(axis_starts)
        assert np.all(gaps > 0) and np.all(gaps <= window * step + 1)  # +1: rounding to whole voxels
        covered = np.zeros(size, dtype=bool)
        for s in axis_starts:
            covered[s : s + window] = True
        assert covered.all()


def test_tile_starts_single_tile_and_nnunet_example():
    assert tile_starts((8, 12, 16), (8, 12, 16)) == [[0], [0], [0]]
    # nnU-Net's verified example: 215x453x433 with patch 80x192x160 gives 5 x 4 x 5 tiles.
    assert [len(s) for s in tile_starts((215, 453, 433), (80, 192, 160))] == [5, 4, 5]
    assert tile_starts((20, 20, 20), (8, 8, 8))[0] == [0, 4, 8, 12]  # 12 / 4 = 3 steps of exactly half a patch
    assert tile_starts((22, 8, 8), (8, 8, 8))[0] == [0, 4, 7, 10, 14]  # 14 / 4 -> 4 steps of 3.5, rounded
    assert tile_starts((5, 4, 4), (1, 4, 4)) == [[0, 1, 2, 3, 4], [0], [0]]  # a 1-voxel patch never repeats a tile


def test_tile_starts_rejects_bad_input():
    with pytest.raises(ValueError, match="pad it first"):
        tile_starts((7, 20, 20), (8, 8, 8))
    with pytest.raises(VolfnetError, match="step fraction"):
        tile_starts((20, 20, 20), (8, 8, 8), step_fraction=1.5)


def test_pad_to_patch_is_symmetric_and_crop_restores_the_image():
    image = random_image((5, 12, 3), channels=1)
    padded, crop = pad_to_patch(image, (8, 8, 8))
    assert padded.shape == (1, 8, 12, 8)
    assert crop == (slice(1, 6), slice(0, 12), slice(2, 5))
    assert torch.equal(padded[(slice(None), *crop)], image)
    assert torch.count_nonzero(padded) == torch.count_nonzero(image)  # only zeros were added


# --- sliding-window prediction ------------------------------------------------------------


@pytest.mark.parametrize("use_gaussian", [True, False])
def test_pointwise_net_matches_full_volume_forward_everywhere(use_gaussian):
    net = seeded_conv(2, 3, 1, seed=1)
    image = random_image((20, 18, 23))
    result = predict_sliding_window(net, image, (8, 8, 8), 3, use_gaussian=use_gaussian, mirror_axes=None, **CPU_ONLY)
    assert result.shape == (3, 20, 18, 23) and result.dtype == torch.float32
    torch.testing.assert_close(result, direct(net, image), atol=1e-5, rtol=1e-5)


def test_3x3x3_net_matches_full_forward_wherever_every_tile_has_full_context():
    net = seeded_conv(2, 3, 3, seed=2)
    shape, patch = (20, 18, 23), (8, 8, 8)
    image = random_image(shape)
    result = predict_sliding_window(net, image, patch, 3, mirror_axes=None, **CPU_ONLY)
    expected = direct(net, image)
    # A voxel is exact unless it sits on a tile face that is inside the volume (zero padding
    # there replaces real neighbours): mark those faces per axis.
    exact = np.ones(shape, dtype=bool)
    for axis, (size, window, starts) in enumerate(zip(shape, patch, tile_starts(shape, patch))):
        faces = {s for s in starts if s > 0} | {s + window - 1 for s in starts if s + window < size}
        index = [slice(None)] * 3
        index[axis] = sorted(faces)
        exact[tuple(index)] = False
    mask = torch.from_numpy(exact)
    assert 0.2 < mask.float().mean() < 0.9
    torch.testing.assert_close(result[:, mask], expected[:, mask], atol=1e-5, rtol=1e-5)
    assert (result - expected).abs().max() > 1e-4  # the border faces do differ: the mask matters


def test_patch_covering_the_image_equals_one_forward_pass():
    net = Recorder(seeded_conv(2, 4, 3, seed=3))
    image = random_image((8, 12, 16))
    result = predict_sliding_window(net, image, (8, 12, 16), 4, mirror_axes=None, **CPU_ONLY)
    assert net.shapes == [(1, 2, 8, 12, 16)]
    torch.testing.assert_close(result, direct(net.inner, image), atol=1e-5, rtol=1e-5)


def test_small_image_is_padded_to_the_fixed_window_and_cropped_back():
    # The Recorder refuses any other window size, as PCT-Net does.
    net = Recorder(seeded_conv(1, 2, 1, seed=4), fixed_size=(8, 8, 8))
    image = random_image((5, 20, 3), channels=1)
    result = predict_sliding_window(net, image, (8, 8, 8), 2, mirror_axes=(0, 2), tile_batch_size=3, **CPU_ONLY)
    assert result.shape == (2, 5, 20, 3) and result.is_contiguous()
    assert {shape[2:] for shape in net.shapes} == {(8, 8, 8)}
    torch.testing.assert_close(result, direct(net.inner, image), atol=1e-5, rtol=1e-5)


def test_tile_batching_changes_calls_not_results():
    image = random_image((20, 18, 23))
    results, calls = [], []
    for batch in (1, 4):
        net = Recorder(seeded_conv(2, 3, 3, seed=5))
        results.append(predict_sliding_window(net, image, (8, 8, 8), 3, mirror_axes=None, tile_batch_size=batch, **CPU_ONLY))
        calls.append([shape[0] for shape in net.shapes])
    tiles = math.prod(len(s) for s in tile_starts((20, 18, 23), (8, 8, 8)))
    assert calls[0] == [1] * tiles
    assert calls[1] == [4] * (tiles // 4) + ([tiles % 4] if tiles % 4 else [])
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)


def symmetric_conv(seed: int) -> nn.Conv3d:
    """A 3x3x3 conv whose kernels equal all their flips, so the net commutes with mirroring."""
    conv = seeded_conv(2, 3, 3, seed)
    with torch.no_grad():
        kernel = conv.weight.clone()
        conv.weight.copy_(sum(torch.flip(kernel, [2 + a for a in axes]) for axes in mirror_combinations((0, 1, 2))) / 8)
    return conv


def test_tta_on_a_mirror_symmetric_net_equals_no_tta():
    net = symmetric_conv(seed=6)
    image = random_image((20, 18, 23))
    with_tta = predict_sliding_window(net, image, (8, 8, 8), 3, mirror_axes=(0, 1, 2), **CPU_ONLY)
    without = predict_sliding_window(net, image, (8, 8, 8), 3, mirror_axes=None, **CPU_ONLY)
    torch.testing.assert_close(with_tta, without, atol=1e-5, rtol=1e-5)


def test_tta_on_an_asymmetric_net_is_the_average_of_flipped_predictions():
    net = Recorder(seeded_conv(2, 3, 3, seed=7))
    image = random_image((8, 8, 8))
    with_tta = predict_sliding_window(net, image, (8, 8, 8), 3, mirror_axes=(0, 1, 2), **CPU_ONLY)
    assert len(net.shapes) == 8  # one tile, 2^3 flip combinations
    flips = [[1 + a for a in axes] for r in range(4) for axes in itertools.combinations((0, 1, 2), r)]
    manual = torch.stack([torch.flip(direct(net.inner, torch.flip(image, f)), f) for f in flips]).mean(0)
    torch.testing.assert_close(with_tta, manual, atol=1e-5, rtol=1e-5)
    plain = predict_sliding_window(net, image, (8, 8, 8), 3, mirror_axes=None, **CPU_ONLY)
    assert (with_tta - plain).abs().max() > 1e-3


def test_mirror_combinations():
    assert mirror_combinations(None) == [()]
    assert mirror_combinations((2, 0)) == [(), (0,), (2,), (0, 2)]
    assert len(mirror_combinations((0, 1, 2))) == 8
    with pytest.raises(VolfnetError, match="mirror axes"):
        mirror_combinations((3,))


def test_fold_average_equals_mean_of_single_models():
    nets = [seeded_conv(2, 3, 3, seed=s) for s in (10, 11, 12)]
    image = random_image((14, 18, 11))
    options = dict(patch_size=(8, 8, 8), num_classes=3, mirror_axes=(1,), **CPU_ONLY)
    ensemble = predict_sliding_window(nets, image, **options)
    singles = torch.stack([predict_sliding_window(net, image, **options) for net in nets])
    torch.testing.assert_close(ensemble, singles.mean(0), atol=1e-5, rtol=1e-5)


def test_deep_supervision_list_uses_full_resolution_output_and_modes_are_restored():
    inner = seeded_conv(2, 3, 3, seed=13)
    image = random_image((12, 10, 9))
    deep = Recorder(inner, deep_supervision=True).train()
    plain = Recorder(inner).eval()
    result_deep = predict_sliding_window(deep, image, (8, 8, 8), 3, mirror_axes=(0,), **CPU_ONLY)
    result_plain = predict_sliding_window(plain, image, (8, 8, 8), 3, mirror_axes=(0,), **CPU_ONLY)
    torch.testing.assert_close(result_deep, result_plain, atol=0, rtol=0)
    assert deep.modes and not any(deep.modes)  # ran in eval mode ...
    assert deep.training  # ... and is back in training mode
    assert not result_deep.is_inference()
    result_deep.mul_(2)  # the caller may work on the result in place


def test_amp_is_ignored_on_cpu(caplog):
    net = seeded_conv(2, 3, 1, seed=14)
    image = random_image((9, 9, 9))
    with caplog.at_level(logging.WARNING):
        result = predict_sliding_window(net, image, (8, 8, 8), 3, amp=True, mirror_axes=None, **CPU_ONLY)
    assert "only used on CUDA" in caplog.text
    torch.testing.assert_close(result, direct(net, image), atol=1e-5, rtol=1e-5)


def test_out_of_memory_on_the_accelerator_falls_back_to_cpu(monkeypatch, caplog):
    """CI has no GPU: a 'meta' accumulation device stands in for a GPU that runs out of memory."""
    original = sw._accumulate

    def failing_on_meta(*args):
        if args[9].type == "meta":  # the accumulation device
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(*args)

    monkeypatch.setattr(sw, "_accumulation_devices", lambda compute, accumulate_on, needed: [torch.device("meta"), torch.device("cpu")])
    monkeypatch.setattr(sw, "_accumulate", failing_on_meta)
    net = seeded_conv(2, 3, 1, seed=15)
    image = random_image((10, 9, 12))
    with caplog.at_level(logging.WARNING):
        result = predict_sliding_window(net, image, (8, 8, 8), 3, mirror_axes=None, **CPU_ONLY)
    assert "retrying with the buffers on cpu" in caplog.text
    torch.testing.assert_close(result, direct(net, image), atol=1e-5, rtol=1e-5)


def test_user_errors_are_volfnet_errors():
    net = seeded_conv(2, 3, 1, seed=16)
    image = random_image((9, 9, 9))
    with pytest.raises(VolfnetError, match="expected \\[2, 5, 8, 8, 8\\]"):
        predict_sliding_window(net, image, (8, 8, 8), 5, mirror_axes=None, tile_batch_size=2, **CPU_ONLY)
    with pytest.raises(VolfnetError, match="3 entries"):
        predict_sliding_window(net, image, (8, 8), 3, **CPU_ONLY)
    with pytest.raises(VolfnetError, match="C, Z, Y, X"):
        predict_sliding_window(net, image[0], (8, 8, 8), 3, **CPU_ONLY)


def test_accumulation_memory_of_a_large_ct_fits_24_gb():
    voxels = 512 * 512 * 400
    assert accumulation_bytes((400, 512, 512), 3) == 4 * voxels * 4
    for classes in (3, 14):
        needed = accumulation_bytes((400, 512, 512), classes) + voxels * 4  # + one-channel input
        assert needed < 24 * 1024**3
    assert accumulation_bytes((400, 512, 512), 14) / 1e9 == pytest.approx(6.29, abs=0.01)


def test_grouped_mirror_passes_give_the_same_sum_in_fewer_forward_passes():
    """Passes grouped to a minimum batch agree with one pass each, for 1 and 3 tiles and two networks."""
    nets = [Recorder(seeded_conv(2, 3, 3, seed=s)) for s in (20, 21)]
    combinations = mirror_combinations((0, 1, 2))
    for tiles, min_batch, calls in ((1, 2, 4), (1, 3, 3), (3, 2, 8), (1, 1, 8)):
        batch = torch.randn(tiles, 2, 6, 6, 6, generator=torch.Generator().manual_seed(tiles))
        for net in nets:
            net.shapes.clear()
        with torch.no_grad():
            grouped = summed_logits(nets, batch, combinations, min_batch)
            expected = sum(
                torch.flip(net.inner(torch.flip(batch, [2 + a for a in axes])), [2 + a for a in axes]) for net in nets for axes in combinations
            )
        assert grouped.shape == (tiles, 3, 6, 6, 6)
        assert len(nets[0].shapes) == calls and all(shape[0] >= min_batch for shape in nets[0].shapes)
        torch.testing.assert_close(grouped, expected, atol=1e-5, rtol=1e-5)


def test_only_narrow_networks_on_the_cpu_batch_their_passes():
    assert min_forward_batch(torch.device("cpu"), 8) == 2 and min_forward_batch(torch.device("cpu"), 16) == 2
    assert min_forward_batch(torch.device("cpu"), 32) == 1 and min_forward_batch(torch.device("cuda"), 8) == 1


def test_a_lone_pass_of_a_narrow_network_runs_on_copies_with_the_same_result():
    net = Recorder(seeded_conv(2, 4, 3, seed=3))
    image = random_image((8, 12, 16))
    result = predict_sliding_window(net, image, (8, 12, 16), 4, mirror_axes=None, min_forward_batch=2, **CPU_ONLY)
    assert net.shapes == [(2, 2, 8, 12, 16)]
    torch.testing.assert_close(result, direct(net.inner, image), atol=1e-5, rtol=1e-5)


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal, as tqdm shows bars only on terminals."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress", [True, False])
def test_long_cases_show_a_bar_of_window_batches_and_short_ones_do_not(monkeypatch, progress):
    image = random_image((20, 20, 20), channels=1)
    network = seeded_conv(1, 2, 3, seed=0)
    for delay, shown in ((0.0, progress), (3600.0, False)):  # a case shorter than the delay shows nothing
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        monkeypatch.setattr(sw, "TILE_PROGRESS_DELAY_SECONDS", delay)
        predict_sliding_window(network, image, (8, 8, 8), 2, mirror_axes=None, progress=progress, **CPU_ONLY)
        monkeypatch.undo()
        batches = math.ceil(math.prod(len(s) for s in tile_starts((20, 20, 20), (8, 8, 8))) / sw.DEFAULT_TILE_BATCH_SIZE)
        assert ("sliding window:" in terminal.getvalue() and f"/{batches} [" in terminal.getvalue()) == shown
