"""Deep-supervision target scales and the nearest-neighbour label down-sampling that makes them.

The network emits one output per decoder level; output ``k`` is smaller than the patch by the
product of the first ``k`` strides. Each gets a label patch of its own size, taken by nearest
neighbour so no label is invented at class borders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from volfnet.errors import VolfnetError


def deep_supervision_factors(strides: Sequence[Sequence[int]], num_outputs: int) -> list[tuple[int, ...]]:
    """Integer down-sampling per axis of each output: (1, 1, 1), s0, s0*s1, ...

    ``strides`` are the plans' per-level network strides; ``num_outputs`` (1 = no deep
    supervision) can be at most one more than the number of strides.
    """
    if num_outputs < 1 or num_outputs > len(strides) + 1:
        raise VolfnetError(f"deep supervision needs 1..{len(strides) + 1} outputs for {len(strides)} strides, got {num_outputs}")
    factor = tuple(1 for _ in strides[0]) if strides else (1, 1, 1)
    factors = [factor]
    for stride in strides[: num_outputs - 1]:
        factor = tuple(f * int(s) for f, s in zip(factor, stride))
        factors.append(factor)
    return factors


def downsample_seg(seg: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour down-sampling of (..., Z, Y, X) labels by integer ``factor`` per axis.

    Takes voxel ``i * f + f // 2`` for output ``i``: the voxel nearest to the centre of each
    ``f``-block, the same voxel "nearest-exact" interpolation picks. A view, not a copy.
    """
    spatial = len(factor)
    index = [slice(None)] * (seg.ndim - spatial)
    index += [slice(int(f) // 2, None, int(f)) for f in factor]
    return seg[tuple(index)]
