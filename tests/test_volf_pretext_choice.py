"""The fusion pretext chosen from the images' size: crop overlap, the auto rule, and its guard."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from volfnet.errors import VolfnetError
from volfnet.training.pretrain import volf_settings
from volfnet.volf.config import AUTO_FUSION_MODE, VolFConfig
from volfnet.volf.crop import CropParams
from volfnet.volf.fusion import draw_label_map
from volfnet.volf.pretext_choice import BOX_FUSION_MIN_OVERLAP, box_iou, choose_fusion_mode, mean_crop_overlap


def crop(start, size) -> CropParams:
    return CropParams(start=tuple(start), size=tuple(size), flip=(False, False, False), intensity=None)


def test_box_iou_of_known_boxes():
    assert box_iou(crop((0, 0, 0), (4, 4, 4)), crop((0, 0, 0), (4, 4, 4))) == 1.0
    assert box_iou(crop((0, 0, 0), (4, 4, 4)), crop((4, 0, 0), (4, 4, 4))) == 0.0  # touching faces share no voxel
    assert box_iou(crop((0, 0, 0), (4, 4, 4)), crop((2, 0, 0), (4, 4, 4))) == pytest.approx(32 / 96)
    assert box_iou(crop((0, 0, 0), (2, 2, 2)), crop((0, 0, 0), (4, 4, 4))) == pytest.approx(8 / 64)


def test_crops_of_an_image_the_size_of_the_patch_coincide_and_of_a_large_one_rarely_meet():
    unscaled = VolFConfig(patch_size=[16, 16, 16], augmentation_mode=0)  # no scaling: every crop is the whole image
    assert mean_crop_overlap((16, 16, 16), unscaled, samples=50) == 1.0
    assert mean_crop_overlap((10, 12, 16), unscaled, samples=50) == 1.0  # padded up to the patch first
    assert mean_crop_overlap((400, 400, 400), VolFConfig(patch_size=[16, 16, 16]), samples=200) < 0.01
    # the same seed gives the same answer
    config = VolFConfig(patch_size=[24, 32, 24])
    assert mean_crop_overlap((36, 50, 35), config) == mean_crop_overlap((36, 50, 35), config)


@pytest.mark.parametrize(
    "image, patch, mode",
    [
        ((36, 50, 35), [40, 56, 40], "box"),  # MSD Hippocampus at the cpu_small plan: IoU about 0.75
        ((36, 50, 35), [24, 32, 24], "box"),  # the crops box fusion measurably won with: IoU about 0.35
        ((200, 300, 300), [64, 128, 128], "grid"),  # the published CT setting: IoU about 0.09
    ],
)
def test_auto_picks_box_for_images_near_the_patch_and_grid_for_large_volumes(image, patch, mode, caplog):
    config = VolFConfig(patch_size=patch, fusion_mode=AUTO_FUSION_MODE)
    with caplog.at_level(logging.INFO, logger="volfnet.volf.pretext_choice"):
        chosen = choose_fusion_mode(config, image)
    assert chosen.fusion_mode == mode
    assert (mean_crop_overlap(image, config) >= BOX_FUSION_MIN_OVERLAP) == (mode == "box")
    assert f"VolF fusion_mode auto -> {mode}" in caplog.text and f"median image {list(image)}" in caplog.text
    assert chosen.patch_size == config.patch_size and config.fusion_mode == AUTO_FUSION_MODE  # a copy


def test_an_explicit_mode_is_kept_and_an_unresolved_auto_cannot_sample():
    assert choose_fusion_mode(VolFConfig(patch_size=[40, 56, 40], fusion_mode="grid"), (36, 50, 35)).fusion_mode == "grid"
    assert choose_fusion_mode(VolFConfig(patch_size=[64, 128, 128], fusion_mode="box"), (200, 300, 300)).fusion_mode == "box"
    with pytest.raises(VolfnetError, match="fusion_mode 'auto' is chosen from the images' size before sampling"):
        draw_label_map(VolFConfig(patch_size=[8, 8, 8], fusion_mode=AUTO_FUSION_MODE).resolved(), np.random.default_rng(0))


def test_volfnet_pretrain_defaults_to_auto_and_keeps_an_override_or_a_resumed_runs_choice():
    hippocampus, ct = [36, 50, 35], [200, 300, 300]
    assert volf_settings([40, 56, 40], [], None, hippocampus).fusion_mode == "box"
    assert volf_settings([64, 128, 128], [], None, ct).fusion_mode == "grid"
    assert volf_settings([40, 56, 40], ["fusion_mode=grid"], None, hippocampus).fusion_mode == "grid"
    stored = {"volf": volf_settings([64, 128, 128], [], None, ct).to_dict()}  # a run started as grid...
    assert volf_settings([64, 128, 128], [], stored, hippocampus).fusion_mode == "grid"  # ...resumes as grid
