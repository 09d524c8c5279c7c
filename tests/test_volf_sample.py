"""The loader's entry points: shapes, dtypes, ranges, reproducibility, memory maps, box batches."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from helpers.raw_data import SHARED_DATA

from volfnet.volf.config import VolFConfig
from volfnet.volf.sample import fused_example, make_fused_batch, make_fused_sample

PATCH = [16, 32, 32]


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    _, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in (28, 48, 44)], indexing="ij")
    body = (yy**2 + xx**2 < 0.7) * 300.0
    return (body + 20 * rng.standard_normal(body.shape) - 100)[None].astype(np.float32)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("fusion_mode", ["grid", "box"])
def test_sample_shapes_dtypes_and_ranges(volume, mode, fusion_mode):
    config = VolFConfig(patch_size=PATCH, augmentation_mode=mode, fusion_mode=fusion_mode)
    image, label = make_fused_sample(volume, config, np.random.default_rng(mode))
    assert image.shape == (1, *PATCH) and image.dtype == np.float32
    assert label.shape == (1, *PATCH) and label.dtype == np.uint8
    assert label.max() <= 4 and label.min() == 0 and label.max() > 0
    if mode in (1, 3):
        assert image.min() >= 0.0 and image.max() <= 1.0
    else:
        assert image.min() >= volume.min() and image.max() <= volume.max()


def test_fused_image_equals_the_mixture_of_the_two_crops(volume):
    config = VolFConfig(patch_size=PATCH)
    example = fused_example(volume, config, np.random.default_rng(11))
    alpha = example.label.astype(np.float64) / 4
    np.testing.assert_allclose(example.image, alpha * example.foreground + (1 - alpha) * example.background, atol=1e-6)
    image, label = make_fused_sample(volume, config, np.random.default_rng(11))
    np.testing.assert_array_equal(image[0], example.image)
    np.testing.assert_array_equal(label[0], example.label)


def test_seeded_draws_are_reproducible_and_seeds_differ(volume):
    config = VolFConfig(patch_size=PATCH)
    first = make_fused_sample(volume, config, np.random.default_rng(42))
    second = make_fused_sample(volume, config, np.random.default_rng(42))
    other = make_fused_sample(volume, config, np.random.default_rng(43))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])
    batch_a = make_fused_batch([volume, volume], config, np.random.default_rng(1))
    batch_b = make_fused_batch([volume, volume], config, np.random.default_rng(1))
    np.testing.assert_array_equal(batch_a[0], batch_b[0])
    assert not np.array_equal(batch_a[0][0], batch_a[0][1])


def test_numpy_backend_gives_the_same_samples(volume):
    config = VolFConfig(patch_size=PATCH)
    fast = make_fused_sample(volume, config, np.random.default_rng(5), backend="torch")
    plain = make_fused_sample(volume, config, np.random.default_rng(5), backend="numpy")
    np.testing.assert_array_equal(fast[1], plain[1])
    np.testing.assert_allclose(fast[0], plain[0], atol=2e-3)


def test_read_only_memmap_is_not_modified(volume, tmp_path):
    path = tmp_path / "case.npy"
    np.save(path, volume)
    mapped = np.load(path, mmap_mode="r")
    config = VolFConfig(patch_size=PATCH)
    image, _ = make_fused_sample(mapped, config, np.random.default_rng(0))
    make_fused_batch([mapped, mapped], VolFConfig(patch_size=PATCH, fusion_mode="box"), np.random.default_rng(0))
    np.testing.assert_array_equal(np.load(path), volume)
    assert not np.shares_memory(image, mapped)


def test_small_volume_gives_full_patches():
    small = np.random.default_rng(0).random((1, 10, 20, 40), dtype=np.float32)
    image, label = make_fused_sample(small, VolFConfig(patch_size=PATCH), np.random.default_rng(0))
    assert image.shape == label.shape == (1, *PATCH)


def test_box_batch_takes_the_foreground_from_the_next_sample():
    values = [10.0, 20.0, 30.0]
    volumes = [np.full((1, 20, 36, 36), v, np.float32) for v in values]
    config = VolFConfig(patch_size=PATCH, fusion_mode="box", augmentation_mode=0)
    images, labels = make_fused_batch(volumes, config, np.random.default_rng(0))
    assert images.shape == (3, 1, *PATCH) and labels.shape == (3, 1, *PATCH) and labels.dtype == np.uint8
    for n in range(3):
        alpha = labels[n, 0] / 4.0
        expected = alpha * values[(n + 1) % 3] + (1 - alpha) * values[n]
        np.testing.assert_allclose(images[n, 0], expected, rtol=1e-6)
        assert labels[n].max() > 0


def test_box_batch_inversion_equals_inverting_both_crops(volume):
    config = VolFConfig(patch_size=PATCH, fusion_mode="box", invert_probability=1.0)
    images, _ = make_fused_batch([volume, volume[:, ::-1]], config, np.random.default_rng(0))
    plain, _ = make_fused_batch([volume, volume[:, ::-1]], VolFConfig(patch_size=PATCH, fusion_mode="box", invert_probability=0.0), np.random.default_rng(0))
    np.testing.assert_allclose(images, 1.0 - plain, atol=1e-6)


def test_single_volume_box_mode_and_foreground_volume():
    volume = np.full((1, 20, 36, 36), 8.0, np.float32)
    other = np.full((1, 20, 36, 36), 4.0, np.float32)
    config = VolFConfig(patch_size=PATCH, fusion_mode="box", augmentation_mode=0)
    image, label = make_fused_sample(volume, config, np.random.default_rng(0), foreground_volume=other)
    np.testing.assert_allclose(image, 8.0 - 4.0 * label / 4.0, rtol=1e-6)
    images, labels = make_fused_batch([volume], config, np.random.default_rng(0))
    assert images.shape == (1, 1, *PATCH) and labels.max() > 0


def test_batch_argument_errors(volume):
    with pytest.raises(ValueError, match="at least one"):
        make_fused_batch([], VolFConfig(patch_size=PATCH), np.random.default_rng(0))
    with pytest.raises(ValueError, match="channels"):
        make_fused_batch([volume], VolFConfig(patch_size=PATCH), np.random.default_rng(0), channels=[0, 0])


@pytest.mark.skipif(not (SHARED_DATA / "ct_examples" / "example_ct.nii.gz").exists(), reason="shared CT example data not present")
def test_real_ct_volume():
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED_DATA / "ct_examples" / "example_ct.nii.gz")))
    volume = np.clip(array.astype(np.float32), -1000, 1000)[None] / 1000.0
    config = VolFConfig(patch_size=[32, 64, 64])
    for seed in range(3):
        example = fused_example(volume, config, np.random.default_rng(seed))
        for patch in (example.foreground, example.background, example.image):
            assert np.isfinite(patch).all() and patch.min() >= 0.0 and patch.max() <= 1.0
        assert example.foreground.std() > 0.05
        alpha = example.label / 4.0
        np.testing.assert_allclose(example.image, alpha * example.foreground + (1 - alpha) * example.background, atol=1e-6)
