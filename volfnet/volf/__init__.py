"""Volume Fusion (VolF) self-supervised pretraining transforms.

Two crops of a volume (foreground, background) are fused block-wise with discrete mixing
levels k/K; the network learns to segment k. Modules: ``config`` (the settings), ``resize``
(crop + linear resize), ``intensity`` (contrast map, gamma, inversion), ``crop`` (the crop
pair), ``fusion`` (label maps and the fused image), ``sample`` (the loader's entry points),
``visualize`` (``samples.png``).
"""

from volfnet.volf.config import (
    VolFConfig,
    apply_volf_override,
    default_block_size_range,
    default_box_size_range,
)
from volfnet.volf.crop import CropPairParams, CropParams, crop_pair
from volfnet.volf.fusion import draw_label_map, fuse_images, label_fractions
from volfnet.volf.sample import (
    FusedExample,
    fused_example,
    make_fused_batch,
    make_fused_sample,
)

__all__ = [
    "CropPairParams",
    "CropParams",
    "FusedExample",
    "VolFConfig",
    "apply_volf_override",
    "crop_pair",
    "default_block_size_range",
    "default_box_size_range",
    "draw_label_map",
    "fuse_images",
    "fused_example",
    "label_fractions",
    "make_fused_batch",
    "make_fused_sample",
]
