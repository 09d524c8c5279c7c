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

import torch
from torch import nn

from volfnet.errors import VolfnetError

SPATIAL_DIM_OFFSET = 2  # spatial axis 0 is tensor dim 2 of a (N, C, Z, Y, X) batch


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
    return output


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def summed_logits(networks: Sequence[nn.Module], batch: torch.Tensor, combinations: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """Sum over networks and mirror combinations of the float32 logits for ``batch`` (N, C, *patch).

    Each combination flips the input, runs the network and flips the output back, so every
    term is aligned with the unflipped tile. With several passes the first output becomes the
    running sum (no copy: large fresh allocations cost page faults on every tile), unless it
    shares memory with the input, as identity-like networks' outputs do.
    """
    passes = len(networks) * len(combinations)
    total: torch.Tensor | None = None
    for network in networks:
        for axes in combinations:
            dims = [axis + SPATIAL_DIM_OFFSET for axis in axes]
            logits = full_resolution_logits(network(torch.flip(batch, dims) if dims else batch))
            if dims:
                logits = torch.flip(logits, dims)
            if total is None:
                total = logits.to(torch.float32)
                if passes > 1 and _shares_memory(total, batch):
                    total = total.clone()
            else:
                total.add_(logits)
    if total is None:
        raise VolfnetError("no network given to predict with")
    return total
