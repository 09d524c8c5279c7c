"""Image reading and writing through SimpleITK, keeping the full geometry.

Arrays are returned in numpy order (Z, Y, X) and spacing is reported in the same order
(SimpleITK's ``GetSpacing`` is (x, y, z), so it is reversed here once, at the boundary).
Origin and direction are kept exactly as SimpleITK reports them so export can restore them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from volfnet.errors import VolfnetError
from volfnet.io.nifti_check import nifti_damage

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd")


@dataclass
class ImageGeometry:
    """Where the voxels are in the world: spacing in numpy axis order (z, y, x); origin and
    direction in SimpleITK's (x, y, z) convention, stored as given."""

    spacing: list[float]
    origin: list[float]
    direction: list[float]
    shape: list[int]

    def to_dict(self) -> dict:
        return {"spacing": self.spacing, "origin": self.origin, "direction": self.direction, "shape": self.shape}

    @classmethod
    def from_dict(cls, data: dict) -> ImageGeometry:
        return cls(
            spacing=[float(v) for v in data["spacing"]],
            origin=[float(v) for v in data["origin"]],
            direction=[float(v) for v in data["direction"]],
            shape=[int(v) for v in data["shape"]],
        )

    def matches(self, other: ImageGeometry, tolerance: float = 1e-4) -> str | None:
        """Return a description of the first mismatch with ``other``, or None if they agree."""
        if self.shape != other.shape:
            return f"shape {self.shape} vs {other.shape}"
        for name in ("spacing", "origin", "direction"):
            mine, theirs = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            scale = np.maximum(1.0, np.abs(mine))
            if mine.shape != theirs.shape or np.any(np.abs(mine - theirs) > tolerance * scale):
                return f"{name} {[round(v, 5) for v in mine.tolist()]} vs {[round(v, 5) for v in theirs.tolist()]}"
        return None


def file_ending(path: Path | str) -> str:
    """The image file ending (``.nii.gz`` counts as one ending)."""
    name = str(path).lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    return Path(name).suffix


def read_sitk(path: Path) -> sitk.Image:
    """Read one image; a missing, truncated or foreign file is a :class:`VolfnetError`.

    ITK reads a NIfTI file whose gzip stream ends early without an error (the missing voxels
    become zeros), so NIfTI files get a file-level check first (:func:`nifti_damage`)."""
    path = Path(path)
    if not path.is_file():
        raise VolfnetError(f"{path}: file not found")
    damage = nifti_damage(path)
    if damage:
        raise VolfnetError(damage)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise VolfnetError(f"{path}: cannot read image (corrupt, truncated or unsupported format: {first_line})") from exc


def geometry_of(image: sitk.Image) -> ImageGeometry:
    return ImageGeometry(
        spacing=[float(v) for v in reversed(image.GetSpacing())],
        origin=[float(v) for v in image.GetOrigin()],
        direction=[float(v) for v in image.GetDirection()],
        shape=[int(v) for v in reversed(image.GetSize())],
    )


def read_image(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read a single-channel 3D image as a (Z, Y, X) array and its geometry."""
    image = read_sitk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolfnetError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1")
    if image.GetDimension() != 3:
        raise VolfnetError(f"{path}: is {image.GetDimension()}D; volfnet expects 3D images (one file per channel)")
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise VolfnetError(f"{path}: cannot read voxel data ({exc})") from exc
    return array, geometry_of(image)


def read_case(paths: Sequence[Path]) -> tuple[np.ndarray, ImageGeometry]:
    """Read the channels of one case into a float32 (C, Z, Y, X) array.

    All channels must share one geometry; the first channel's geometry is returned.
    """
    if not paths:
        raise VolfnetError("no image files given for the case")
    arrays = []
    geometry: ImageGeometry | None = None
    for path in paths:
        array, geo = read_image(path)
        if geometry is None:
            geometry = geo
        else:
            mismatch = geometry.matches(geo)
            if mismatch:
                raise VolfnetError(f"{path}: geometry differs from {paths[0]} ({mismatch})")
        arrays.append(array.astype(np.float32, copy=False))
    assert geometry is not None
    return np.stack(arrays), geometry


def read_segmentation(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read a label map; labels must be whole numbers."""
    array, geometry = read_image(path)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.round(array)
        if not np.array_equal(rounded, array):
            raise VolfnetError(f"{path}: label map holds non-integer values")
        array = rounded
    return array.astype(np.int16, copy=False), geometry


def write_image(array: np.ndarray, geometry: ImageGeometry, path: Path) -> None:
    """Write a (Z, Y, X) array with the given geometry, atomically."""
    from volfnet.io.files import atomic_path

    if list(array.shape) != list(geometry.shape):
        raise ValueError(f"array shape {list(array.shape)} does not match geometry shape {geometry.shape}")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(v) for v in reversed(geometry.spacing)])
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    path = Path(path)
    # SimpleITK picks the writer from the file name, so the temporary name keeps the ending.
    ending = file_ending(path)
    with atomic_path(path) as tmp:
        target = tmp.with_name(tmp.name + ending)
        try:
            sitk.WriteImage(image, str(target), useCompression=True)
            target.replace(tmp)
        finally:
            target.unlink(missing_ok=True)
