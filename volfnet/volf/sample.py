"""Entry points the pretraining data loader calls: one fused sample, or a fused batch.

``make_fused_sample(volume, config, rng)`` is all the grid mode needs: both crops come from
the same volume. The box mode (arXiv v1) takes the foreground from another sample of the
batch: :func:`make_fused_batch` does that exactly as published (sample n's foreground is
sample n+1's crop, cyclically), and :func:`make_fused_sample` accepts a
``foreground_volume`` for loaders that assemble samples one at a time.

Everything is numpy in, numpy out: image float32 (1, *patch), label uint8 (1, *patch) with
values 0..K. Draw order (reproducible with a seeded generator): crop parameters (foreground,
background, inversion), then the label map; then the deterministic apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from volfnet.volf.config import VolFConfig
from volfnet.volf.crop import (
    apply_crop,
    crop_pair,
    draw_crop_params,
    draw_invert,
    pad_to_patch,
    select_channel,
)
from volfnet.volf.fusion import draw_label_map, fuse_images


@dataclass(frozen=True)
class FusedExample:
    """One fused sample with its ingredients (all 3-D, ``patch_size``), e.g. for plotting."""

    foreground: np.ndarray
    background: np.ndarray
    image: np.ndarray
    label: np.ndarray


def fused_example(
    volume: np.ndarray,
    config: VolFConfig,
    rng: np.random.Generator,
    channel: int = 0,
    foreground_volume: np.ndarray | None = None,
    foreground_channel: int | None = None,
    backend: str = "torch",
) -> FusedExample:
    """Crop pair, label map and fused image of one (C, Z, Y, X) volume.

    The foreground crop comes from ``foreground_volume`` when given (box mode across cases),
    else from ``volume``. The joint inversion is applied to both crops before fusion.
    """
    foreground, background = crop_pair(volume, config, rng, channel, foreground_volume, foreground_channel, backend)
    label = draw_label_map(config, rng)
    image = fuse_images(foreground, background, label, config.num_classes)
    return FusedExample(foreground, background, image, label)


def make_fused_sample(
    volume: np.ndarray,
    config: VolFConfig,
    rng: np.random.Generator,
    channel: int = 0,
    foreground_volume: np.ndarray | None = None,
    backend: str = "torch",
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample from a (C, Z, Y, X) volume: image float32 (1, *patch), label uint8
    (1, *patch) in 0..K. The volume is never written to (memory maps are fine)."""
    example = fused_example(volume, config, rng, channel, foreground_volume, backend=backend)
    return example.image[None], example.label[None]


def make_fused_batch(
    volumes: Sequence[np.ndarray],
    config: VolFConfig,
    rng: np.random.Generator,
    channels: Sequence[int] | None = None,
    backend: str = "torch",
) -> tuple[np.ndarray, np.ndarray]:
    """A batch from B volumes: images float32 (B, 1, *patch), labels uint8 (B, 1, *patch).

    Grid mode: B independent :func:`make_fused_sample` calls. Box mode: one crop per volume;
    sample n fuses crop n+1 (foreground, cyclically) into crop n (background), and its
    inversion is applied to the fused image, which equals inverting both of its crops.
    A batch of one takes its foreground from a second crop of the same volume.
    """
    if len(volumes) == 0:
        raise ValueError("make_fused_batch needs at least one volume")
    channels = [0] * len(volumes) if channels is None else list(channels)
    if len(channels) != len(volumes):
        raise ValueError(f"got {len(channels)} channels for {len(volumes)} volumes")
    if config.fusion_mode == "grid" or len(volumes) == 1:
        pairs = [make_fused_sample(v, config, rng, c, backend=backend) for v, c in zip(volumes, channels)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    sources = [pad_to_patch(select_channel(v, c), config.patch_size) for v, c in zip(volumes, channels)]
    crop_params = [draw_crop_params(s.shape, config, rng) for s in sources]
    draws = [(draw_invert(config, rng), draw_label_map(config, rng)) for _ in sources]
    crops = [apply_crop(s, p, config.patch_size, backend=backend) for s, p in zip(sources, crop_params)]
    images = np.empty((len(sources), 1, *config.patch_size), dtype=np.float32)
    labels = np.empty((len(sources), 1, *config.patch_size), dtype=np.uint8)
    for n, (invert, label) in enumerate(draws):
        fused = fuse_images(crops[(n + 1) % len(crops)], crops[n], label, config.num_classes)
        images[n, 0] = 1.0 - fused if invert else fused
        labels[n, 0] = label
    return images, labels
