"""Image files for tests: write an array as an image, read one back with its geometry, copy one
with another geometry or damaged voxels, and compare two images' geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def write_volume(array: np.ndarray, path: Path, spacing_zyx=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> None:
    """Write a (z, y, x) array as an image file; spacing is given in array order, as numpy sees it."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in reversed(spacing_zyx)])
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def read_image(path: Path) -> tuple[np.ndarray, sitk.Image]:
    """The voxels (z, y, x) and the image (for its geometry) of an image file."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    """Same size, and spacing, origin and direction equal up to float rounding."""
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == pytest.approx(b.GetSpacing())
    assert a.GetOrigin() == pytest.approx(b.GetOrigin())
    assert a.GetDirection() == pytest.approx(b.GetDirection())


def rewrite(source: Path, target: Path, origin=None, direction=None, change=None) -> None:
    """Copy an image file, optionally with another origin/direction or modified voxels."""
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image)
    if change is not None:
        change(array)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    if origin is not None:
        out.SetOrigin(origin)
    if direction is not None:
        out.SetDirection(direction)
    target.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(target))


def put_nan(array: np.ndarray) -> None:
    """A ``change`` for :func:`rewrite`: one NaN voxel, which the input checks must name."""
    array[5, 5, 5] = np.nan
