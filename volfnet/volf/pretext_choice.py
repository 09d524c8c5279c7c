"""Which fusion pretext to pretrain with: grid fusion of one image, or box fusion of two.

The published journal VolF (``grid``) fuses two crops of the *same* image. On images barely
larger than the patch both crops cover nearly the same anatomy, so the fused image mixes an
image with a shifted, flipped, re-contrasted copy of itself and the mixing levels are hard to
see. Box fusion (arXiv v1, ``box``) takes the foreground from another image of the batch.

Measured on MSD Hippocampus (documentation/results.md, "Pretext and pretraining checkpoint"):
with crops whose two boxes overlap by a mean IoU of 0.35, box fusion fine-tuned to 11.4 Dice
points more than grid fusion on the held-out cases (4 seeds, lower on every seed). The
published CT setting (a 64 x 128 x 128 patch in a 200 x 300 x 300 volume) overlaps by 0.09,
where the journal chose grid. ``fusion_mode="auto"`` (``volfnet_pretrain``'s default) picks
box from :data:`BOX_FUSION_MIN_OVERLAP` on, between those two points, and grid below it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from volfnet.volf.config import AUTO_FUSION_MODE, VolFConfig
from volfnet.volf.crop import CropParams, draw_crop_params, padded_shape

logger = logging.getLogger(__name__)

BOX_FUSION_MIN_OVERLAP = 0.25  # between CT's 0.09 (grid, published) and Hippocampus' 0.35 (box, measured)
OVERLAP_SAMPLES = 400  # crop pairs drawn: the mean IoU to about +-0.01
OVERLAP_SEED = 0  # the same answer for the same dataset on every run


def box_iou(a: CropParams, b: CropParams) -> float:
    """Intersection over union of the source boxes of two crops."""
    intersection = float(np.prod([
        max(0, min(sa + ca, sb + cb) - max(sa, sb)) for sa, ca, sb, cb in zip(a.start, a.size, b.start, b.size)
    ]))
    return intersection / (float(np.prod(a.size)) + float(np.prod(b.size)) - intersection)


def mean_crop_overlap(image_shape: Sequence[int], config: VolFConfig, samples: int = OVERLAP_SAMPLES, seed: int = OVERLAP_SEED) -> float:
    """Mean IoU of the two crops VolF draws from one image of ``image_shape`` (Z, Y, X)."""
    resolved = config.resolved()
    padded = padded_shape(image_shape, resolved.patch_size)
    rng = np.random.default_rng(seed)
    pairs = [(draw_crop_params(padded, resolved, rng), draw_crop_params(padded, resolved, rng)) for _ in range(samples)]
    return float(np.mean([box_iou(a, b) for a, b in pairs]))


def fusion_mode_for_overlap(overlap: float) -> str:
    """``box`` from :data:`BOX_FUSION_MIN_OVERLAP` on, else ``grid``."""
    return "box" if overlap >= BOX_FUSION_MIN_OVERLAP else "grid"


def choose_fusion_mode(config: VolFConfig, median_image_shape: Sequence[int]) -> VolFConfig:
    """``config`` with ``fusion_mode="auto"`` replaced by ``box`` or ``grid`` for images of
    ``median_image_shape``; any other mode is returned unchanged (the user's choice)."""
    if config.fusion_mode != AUTO_FUSION_MODE:
        return config
    overlap = mean_crop_overlap(median_image_shape, config)
    mode = fusion_mode_for_overlap(overlap)
    logger.info(
        "VolF fusion_mode auto -> %s: two crops of patch %s from the median image %s overlap by a mean IoU of %.2f "
        "(box from %.2f on; set volf.fusion_mode to choose)",
        mode, list(config.patch_size), list(median_image_shape), overlap, BOX_FUSION_MIN_OVERLAP,
    )
    return dataclasses.replace(config, fusion_mode=mode)
