"""The few batch transforms batchgenerators v1 lacks, in its ``AbstractTransform`` interface.

They act on the batch dictionary the batchgenerators pipeline passes along (``data``
(B, C, Z, Y, X) float32, ``seg`` (B, 1, Z, Y, X)) and draw no random numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from volfnet.data.deep_supervision import downsample_seg


class MaskOutsideNonzero(AbstractTransform):
    """Zero the listed image channels where the seg marks "outside the nonzero mask" (< 0).

    Channels normalised inside the mask only have meaningless values outside it; after the
    intensity augmentations those would leak back in, so they are reset to 0 (the value the
    normalisation gave the outside).
    """

    def __init__(self, channels: Sequence[int]) -> None:
        self.channels = [int(c) for c in channels]

    def __call__(self, **data_dict):
        data, seg = data_dict["data"], data_dict["seg"]
        outside = seg[:, 0] < 0
        for channel in self.channels:
            data[:, channel][outside] = 0.0
        return data_dict


class DeepSupervisionTargets(AbstractTransform):
    """Replace ``seg`` by ``target``: the label patch at every output scale of the network.

    ``factors[k]`` is the integer down-sampling of output ``k`` per axis ((1, 1, 1) first). The
    labels become int16: the smallest type that holds every label, cheap to ship to the
    trainer, which casts to int64 on the device.
    """

    def __init__(self, factors: Sequence[Sequence[int]]) -> None:
        self.factors = [tuple(int(f) for f in factor) for factor in factors]

    def __call__(self, **data_dict):
        seg = np.asarray(data_dict.pop("seg"))
        seg = seg.astype(np.int16) if seg.dtype != np.int16 else seg
        data_dict["target"] = [np.ascontiguousarray(downsample_seg(seg, factor)) for factor in self.factors]
        data_dict["data"] = np.ascontiguousarray(data_dict["data"], dtype=np.float32)
        return data_dict
