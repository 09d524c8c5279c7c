"""samples.png: written atomically with the expected pixel size."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from volfnet.volf.config import VolFConfig
from volfnet.volf.sample import fused_example
from volfnet.volf.visualize import (
    COLUMNS,
    PANEL_PIXELS,
    save_samples_png,
    slice_positions,
)


def test_samples_png_has_the_expected_size(tmp_path):
    volume = np.random.default_rng(0).random((1, 20, 40, 40), dtype=np.float32)
    config = VolFConfig(patch_size=[16, 32, 32])
    examples = [fused_example(volume, config, np.random.default_rng(s)) for s in range(2)]
    path = save_samples_png(examples, tmp_path / "pretrain" / "samples.png", config.num_classes, num_slices=3)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    pixels = imread(path)
    assert pixels.shape[:2] == (2 * 3 * PANEL_PIXELS, len(COLUMNS) * PANEL_PIXELS)
    assert pixels[..., :3].std() > 0.05


def test_slice_positions_are_interior_and_sorted():
    assert slice_positions(64, 3) == [16, 32, 48]
    assert slice_positions(2, 3) == [0, 1, 1]
    with pytest.raises(ValueError, match="num_slices"):
        slice_positions(10, 0)
    with pytest.raises(ValueError, match="at least one"):
        save_samples_png([], "unused.png", 5)


def test_predictions_add_a_column_and_must_match_the_examples(tmp_path):
    volume = np.random.default_rng(1).random((1, 20, 40, 40), dtype=np.float32)
    config = VolFConfig(patch_size=[16, 32, 32])
    examples = [fused_example(volume, config, np.random.default_rng(s)) for s in range(2)]
    predictions = [example.label.copy() for example in examples]
    path = save_samples_png(examples, tmp_path / "samples.png", config.num_classes, num_slices=2, predictions=predictions)
    assert imread(path).shape[:2] == (2 * 2 * PANEL_PIXELS, (len(COLUMNS) + 1) * PANEL_PIXELS)
    with pytest.raises(ValueError, match="one prediction per example"):
        save_samples_png(examples, tmp_path / "other.png", config.num_classes, predictions=predictions[:1])
