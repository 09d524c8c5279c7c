"""Image IO round trips: every supported format keeps voxels, dtype and full geometry."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
from helpers.images import write_volume

from volfnet.errors import VolfnetError
from volfnet.io.image_io import (
    ImageGeometry,
    file_ending,
    geometry_of,
    read_case,
    read_image,
    read_segmentation,
    read_sitk,
    write_image,
)


def _rotation(angle_deg: float) -> list[float]:
    """A proper rotation about an oblique axis, row-major: a direction no format may drop."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return (np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k).ravel().tolist()


GEOMETRY = ImageGeometry(spacing=[3.0, 0.75, 0.5], origin=[-12.5, 40.25, 7.0], direction=_rotation(30), shape=[5, 6, 7])


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_round_trip_keeps_voxels_dtype_and_geometry(tmp_path, ending, dtype):
    rng = np.random.default_rng(0)
    array = (rng.uniform(0, 100, GEOMETRY.shape)).astype(dtype)
    path = tmp_path / f"image{ending}"
    write_image(array, GEOMETRY, path)
    back, geometry = read_image(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)
    assert geometry.shape == GEOMETRY.shape
    np.testing.assert_allclose(geometry.spacing, GEOMETRY.spacing, atol=1e-6)
    np.testing.assert_allclose(geometry.origin, GEOMETRY.origin, atol=1e-4)
    np.testing.assert_allclose(geometry.direction, GEOMETRY.direction, atol=1e-5)
    assert GEOMETRY.matches(geometry) is None
    assert file_ending(path) == ending
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_spacing_is_reported_in_numpy_order(tmp_path):
    """SimpleITK spacing is (x, y, z); volfnet reports (z, y, x) like the array axes."""
    path = tmp_path / "aniso.nii.gz"
    write_volume(np.zeros((4, 5, 6), np.float32), path, spacing_zyx=(5.0, 1.0, 0.5))
    array, geometry = read_image(path)
    assert array.shape == (4, 5, 6)
    assert geometry.spacing == [5.0, 1.0, 0.5]
    assert sitk.ReadImage(str(path)).GetSpacing() == (0.5, 1.0, 5.0)


def test_geometry_dict_round_trip():
    assert ImageGeometry.from_dict(GEOMETRY.to_dict()) == GEOMETRY


def test_matches_names_the_first_mismatch():
    other = ImageGeometry.from_dict({**GEOMETRY.to_dict(), "spacing": [3.0, 0.75, 0.6]})
    assert other.matches(GEOMETRY).startswith("spacing")
    other = ImageGeometry.from_dict({**GEOMETRY.to_dict(), "shape": [5, 6, 8]})
    assert other.matches(GEOMETRY) == "shape [5, 6, 8] vs [5, 6, 7]"


def test_read_case_stacks_channels(tmp_path):
    paths = []
    for channel in range(3):
        path = tmp_path / f"case_{channel:04d}.nrrd"
        write_image(np.full(GEOMETRY.shape, channel, np.int16), GEOMETRY, path)
        paths.append(path)
    data, geometry = read_case(paths)
    assert data.shape == (3, *GEOMETRY.shape) and data.dtype == np.float32
    assert [float(data[c].mean()) for c in range(3)] == [0.0, 1.0, 2.0]
    assert geometry.matches(GEOMETRY) is None


def test_read_case_rejects_channels_on_different_grids(tmp_path):
    first, second = tmp_path / "c_0000.mha", tmp_path / "c_0001.mha"
    write_image(np.zeros(GEOMETRY.shape, np.float32), GEOMETRY, first)
    shifted = ImageGeometry.from_dict({**GEOMETRY.to_dict(), "spacing": [2.0, 0.75, 0.5]})
    write_image(np.zeros(GEOMETRY.shape, np.float32), shifted, second)
    with pytest.raises(VolfnetError, match=r"c_0001\.mha: geometry differs from .*c_0000\.mha \(spacing"):
        read_case([first, second])


def test_missing_corrupt_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(VolfnetError, match=r"missing\.nii\.gz: file not found"):
        read_sitk(tmp_path / "missing.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not an image at all" * 20))
    with pytest.raises(VolfnetError, match=r"garbage\.nii\.gz: cannot read image"):
        read_image(garbage)
    # ITK reports short NRRD/MHA files itself (short NIfTI files it pads with zeros: the
    # integrity check catches those, see test_io_integrity.py).
    for ending in (".nrrd", ".mha"):
        good = tmp_path / f"good{ending}"
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 20, 20), np.float32)), str(good))
        truncated = tmp_path / f"truncated{ending}"
        truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(VolfnetError, match=rf"truncated\{ending}: cannot read image"):
            read_image(truncated)


def test_4d_and_vector_images_are_refused(tmp_path):
    four_d = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False), str(four_d))
    with pytest.raises(VolfnetError, match=r"four_d\.nii\.gz: is 4D"):
        read_image(four_d)
    vector = tmp_path / "vector.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.float32), isVector=True), str(vector))
    with pytest.raises(VolfnetError, match=r"vector\.mha: has 2 components per voxel"):
        read_image(vector)


def test_read_segmentation_accepts_whole_floats_and_refuses_fractions(tmp_path):
    whole = tmp_path / "whole.nii.gz"
    write_volume(np.array([[[0.0, 1.0], [2.0, 1.0]]], np.float32), whole)
    seg, _ = read_segmentation(whole)
    assert seg.dtype == np.int16 and seg.tolist() == [[[0, 1], [2, 1]]]
    fraction = tmp_path / "fraction.nii.gz"
    write_volume(np.array([[[0.0, 0.5], [2.0, 1.0]]], np.float32), fraction)
    with pytest.raises(VolfnetError, match=r"fraction\.nii\.gz: label map holds non-integer values"):
        read_segmentation(fraction)


def test_write_image_refuses_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match=r"array shape \[5, 6, 6\] does not match geometry shape \[5, 6, 7\]"):
        write_image(np.zeros((5, 6, 6), np.float32), GEOMETRY, tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_geometry_of_reads_sitk_convention():
    image = sitk.Image(7, 6, 5, sitk.sitkUInt8)
    image.SetSpacing((0.5, 0.75, 3.0))
    assert geometry_of(image).shape == [5, 6, 7]
    assert geometry_of(image).spacing == [3.0, 0.75, 0.5]
