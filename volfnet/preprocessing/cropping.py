"""Crop to the nonzero region: drops the empty border most scanners and skull-strippers leave.

The mask is "any channel nonzero" with holes filled, so dark structures inside the body
(air in the bowel, CSF) stay inside the crop. The bounding box is half-open, in the array's
current axis order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from volfnet.io.case_store import OUTSIDE_MASK_LABEL


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Boolean (Z, Y, X) mask of voxels where any channel is nonzero, holes filled."""
    mask = np.any(image != 0, axis=0)
    return ndimage.binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """Half-open bounding box [[z0, z1], [y0, y1], [x0, x1]] of a mask; the whole array if empty."""
    if not mask.any():
        return [[0, s] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nonzero = np.flatnonzero(mask.any(axis=other))
        box.append([int(nonzero[0]), int(nonzero[-1]) + 1])
    return box


def crop_to_box(array: np.ndarray, box: list[list[int]]) -> np.ndarray:
    """Crop the trailing three axes of ``array`` to ``box``."""
    index: tuple[Any, ...] = (Ellipsis, *(slice(a, b) for a, b in box))
    return array[index]


def crop_to_nonzero(image: np.ndarray, seg: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Crop image (C, Z, Y, X) and seg (1, Z, Y, X) to the nonzero mask of the image.

    Returns the cropped image, a cropped seg in which background voxels outside the mask are
    set to :data:`OUTSIDE_MASK_LABEL` (a seg of 0/-1 is made when ``seg`` is None), and the box.
    """
    mask = nonzero_mask(image)
    box = bounding_box(mask)
    image = crop_to_box(image, box)
    mask = crop_to_box(mask, box)
    if seg is None:
        seg = np.zeros((1, *mask.shape), dtype=np.int16)
    else:
        seg = crop_to_box(seg, box).astype(np.int16, copy=True)
    seg[0][(seg[0] == 0) & ~mask] = OUTSIDE_MASK_LABEL
    return image, seg, box
