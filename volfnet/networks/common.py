"""Small helpers shared by the network builders: topology checks and kernel arithmetic.

Topologies come from the plans, which a user may edit by hand, so every malformed value is a
:class:`VolfnetError` that says which field is wrong instead of a shape error deep in torch.
"""

from __future__ import annotations

from typing import Sequence

from volfnet.errors import VolfnetError

Triple = tuple[int, int, int]


def as_triple(value: Sequence[int] | int, what: str) -> Triple:
    """Return ``value`` as three positive ints in (z, y, x) order, or raise naming ``what``."""
    items = [value] * 3 if isinstance(value, int) else list(value)
    if len(items) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise VolfnetError(f"network topology: {what} must be three positive integers (z, y, x), got {value!r}")
    return (items[0], items[1], items[2])


def odd_kernel(value: Sequence[int] | int, what: str) -> Triple:
    """A kernel size whose entries are odd, so ``same`` padding keeps the spatial size."""
    kernel = as_triple(value, what)
    if any(k % 2 == 0 for k in kernel):
        raise VolfnetError(f"network topology: {what} must be odd per axis (1, 3, ...), got {list(kernel)}")
    return kernel


def same_padding(kernel: Triple) -> Triple:
    """Padding that keeps the size for a stride-1 convolution with an odd ``kernel``."""
    return (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)


def check_channels(channels: Sequence[int], what: str = "feature_channels") -> list[int]:
    """Positive integer channel counts, one per level."""
    values = list(channels)
    if not values or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in values):
        raise VolfnetError(f"network topology: {what} must be positive integers, got {channels!r}")
    return values


def check_dropout(dropout: Sequence[float], levels: int) -> list[float]:
    """One dropout probability in [0, 1) per level."""
    values = [float(p) for p in dropout]
    if len(values) != levels or any(not 0.0 <= p < 1.0 for p in values):
        raise VolfnetError(f"network topology: dropout must be {levels} values in [0, 1), got {list(dropout)!r}")
    return values


def check_counts(num_input_channels: int, num_classes: int) -> None:
    """The channel counts a caller passes when building a network."""
    if isinstance(num_input_channels, bool) or not isinstance(num_input_channels, int) or num_input_channels < 1:
        raise VolfnetError(f"number of input channels must be a positive integer, got {num_input_channels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise VolfnetError(f"number of classes (output channels) must be a positive integer, got {num_classes!r}")

