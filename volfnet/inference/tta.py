"""Mirroring test-time augmentation and model ensembling for one batch of tiles.

Networks are trained with random flips, so predicting the flipped input, flipping the answer
back and averaging removes part of the prediction noise at the cost of one forward pass per
flip combination. Folds of a cross-validation are averaged the same way, so both loops live
here and return one *sum* of logits: the caller weights it without modifying it and divides once,
after blending the tiles.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from typing import cast

import torch
from torch import nn

from volfnet.errors import VolfnetError

SPATIAL_DIM_OFFSET = 2  # spatial axis 0 is tensor dim 2 of a (N, C, Z, Y, X) batch

# PyTorch's CPU conv3d (oneDNN) runs narrow layers far slower per sample in a batch of one than
# in a batch of two on our 2-core machines: FMUNet [8, 16, 32, 64] at 40x56x40 534 vs 79 ms per
# sample (6.8x), [16, 32, 64, 128] 310 vs 209 ms (1.5x), while from 32 channels on a batch of
# two is ~10% slower (benchmarks/inference/cpu_batch.py). So for narrow networks on the CPU,
# mirror passes of a tile share a forward pass, and a lone pass runs on two copies of its input.
NARROW_NETWORK_CHANNELS = 16  # first-level width up to which the CPU batches passes together
NARROW_CPU_FORWARD_BATCH = 2


def min_forward_batch(device: torch.device, first_level_channels: int) -> int:
    """The smallest batch a forward pass should hold (see :data:`NARROW_NETWORK_CHANNELS`)."""
    if device.type == "cpu" and first_level_channels <= NARROW_NETWORK_CHANNELS:
        return NARROW_CPU_FORWARD_BATCH
    return 1


def mirror_combinations(mirror_axes: Sequence[int] | None, spatial_dims: int = 3) -> list[tuple[int, ...]]:
    """Every subset of ``mirror_axes`` (spatial axes, 0 = Z), the empty one first: 2^n passes.

    ``None`` or an empty sequence switches test-time augmentation off (one unflipped pass).
    """
    axes = sorted({int(a) for a in (mirror_axes or ())})
    if any(not 0 <= a < spatial_dims for a in axes):
        raise VolfnetError(f"mirror axes {list(mirror_axes or ())} must be spatial axes between 0 and {spatial_dims - 1}")
    return [combo for count in range(len(axes) + 1) for combo in itertools.combinations(axes, count)]


def full_resolution_logits(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The network's full-resolution output: element 0 when it returns deep-supervision lists."""
    if isinstance(output, (list, tuple)):
        if not output:
            raise VolfnetError("the network returned an empty list of outputs")
        return output[0]
    return cast(torch.Tensor, output)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _forward_group(network: nn.Module, batch: torch.Tensor, group: Sequence[tuple[int, ...]], min_batch: int) -> list[torch.Tensor]:
    """Logits of ``batch`` under each flip combination of ``group``, from one forward pass over
    the flipped copies stacked along the batch axis (padded with copies to ``min_batch``);
    each result is flipped back."""
    size = batch.shape[0]
    inputs = [torch.flip(batch, [a + SPATIAL_DIM_OFFSET for a in axes]) if axes else batch for axes in group]
    stacked = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
    if stacked.shape[0] < min_batch:
        stacked = torch.cat([stacked] * -(-min_batch // stacked.shape[0]))
    output = full_resolution_logits(network(stacked))
    results = []
    for index, axes in enumerate(group):
        logits = output[index * size : (index + 1) * size]
        results.append(torch.flip(logits, [a + SPATIAL_DIM_OFFSET for a in axes]) if axes else logits)
    return results


def summed_logits(
    networks: Sequence[nn.Module], batch: torch.Tensor, combinations: Sequence[tuple[int, ...]], min_batch: int = 1
) -> torch.Tensor:
    """Sum over networks and mirror combinations of the float32 logits for ``batch`` (N, C, *patch).

    Each combination flips the input, runs the network and flips the output back, so every
    term is aligned with the unflipped tile. Flip combinations share a forward pass until it
    holds ``min_batch`` samples (see :func:`min_forward_batch`). With several passes the first output
    becomes the running sum (no copy: large fresh allocations cost page faults on every tile),
    unless it shares memory with the input, as identity-like networks' outputs do.
    """
    passes = len(networks) * len(combinations)
    group_size = max(1, -(-min_batch // batch.shape[0]))
    total: torch.Tensor | None = None
    for network in networks:
        for first in range(0, len(combinations), group_size):
            for logits in _forward_group(network, batch, combinations[first : first + group_size], min_batch):
                if total is None:
                    total = logits.to(torch.float32)
                    if passes > 1 and _shares_memory(total, batch):
                        total = total.clone()
                else:
                    total.add_(logits)
    if total is None:
        raise VolfnetError("no network given to predict with")
    return total
