"""Image reading and writing through SimpleITK, keeping the full geometry.

Arrays are returned in numpy order (Z, Y, X) and spacing is reported in the same order
(SimpleITK's ``GetSpacing`` is (x, y, z), so it is reversed here once, at the boundary).
Origin and direction are kept exactly as SimpleITK reports them so export can restore them.

Besides the medical formats (NIfTI, NRRD, MetaImage), 2D pictures are read as nnU-Net v2
reads them (its NaturalImage2DIO and Tiff3DIO):

- PNG, BMP and single-page TIFF: one slice, shape ``[1, Y, X]``, spacing
  ``[999, 1, 1]`` (999 marks "no third axis"; the planner then plans only the 2d
  configuration), origin 0, identity direction. A greyscale picture (8 or 16 bit) is one
  channel, an RGB picture three: a case's channels are the components of its files, in order.
  Alpha channels are refused (they carry no image content, and nnU-Net's RGBA reading would
  make the channel count depend on how a file happened to be saved).
- Multi-page TIFF: a (Z, Y, X) stack whose spacing ``[z, y, x]`` (numpy axis order, as
  nnU-Net's Tiff3DIO) comes from a sidecar ``{case}.json`` holding ``{"spacing": [z, y, x]}``;
  TIFF keeps no reliable spacing of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from volfnet.errors import VolfnetError
from volfnet.io.nifti_check import nifti_damage

MEDICAL_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd")
NATURAL_IMAGE_ENDINGS = (".png", ".bmp")
TIFF_ENDINGS = (".tif", ".tiff")
#: Picture formats: 2D (and TIFF stacks), where one file may hold several channels (RGB).
PICTURE_ENDINGS = NATURAL_IMAGE_ENDINGS + TIFF_ENDINGS
SUPPORTED_ENDINGS = MEDICAL_ENDINGS + PICTURE_ENDINGS

#: Spacing of the missing third axis of a 2D picture (nnU-Net's value): so coarse that the
#: planner never pools or resamples along it and plans the 2d configuration alone.
NO_THIRD_AXIS_SPACING = 999.0
PICTURE_SPACING = [NO_THIRD_AXIS_SPACING, 1.0, 1.0]
IDENTITY_DIRECTION = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
SIDECAR_ENDING = ".json"
#: Components per pixel of the pictures read, and what they are.
GREY, GREY_ALPHA, RGB, RGBA = 1, 2, 3, 4
#: BMP files with this many bits per pixel or fewer hold palette indices; ITK expands the
#: palette to RGB, so a grey palette reads as three equal components (see _bmp_bits_per_pixel).
BMP_PALETTE_BITS = 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPE_OFFSET = 25  # in the IHDR chunk that follows the signature
PNG_ALPHA_COLOUR_TYPES = {4: "grey + alpha", 6: "RGBA"}


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

    @property
    def is_picture_2d(self) -> bool:
        """One slice with no third axis (a PNG, BMP or 2D TIFF as read here)."""
        return self.shape[0] == 1 and self.spacing[0] >= NO_THIRD_AXIS_SPACING

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


def is_picture(path: Path | str) -> bool:
    """A PNG, BMP or TIFF file: one file may hold several channels (RGB)."""
    return file_ending(path) in PICTURE_ENDINGS


def _alpha_message(path: Path, kind: str) -> str:
    return (
        f"{path}: has an alpha channel ({kind}); volfnet reads greyscale or RGB pictures: drop the alpha channel "
        "(save the picture as RGB or greyscale)"
    )


def png_alpha_problem(path: Path) -> str | None:
    """A message when a PNG's header says grey + alpha or RGBA, else None. Checked before
    reading because ITK cannot read grey + alpha PNGs at all (it fails on the pixel type)."""
    if file_ending(path) != ".png":
        return None
    with open(path, "rb") as handle:
        header = handle.read(PNG_COLOUR_TYPE_OFFSET + 1)
    if len(header) <= PNG_COLOUR_TYPE_OFFSET or not header.startswith(PNG_SIGNATURE):
        return None  # not a PNG after all: SimpleITK's reader reports it
    kind = PNG_ALPHA_COLOUR_TYPES.get(header[PNG_COLOUR_TYPE_OFFSET])
    return _alpha_message(path, kind) if kind else None


def read_sitk(path: Path) -> sitk.Image:
    """Read one image; a missing, truncated or foreign file is a :class:`VolfnetError`.

    ITK reads a NIfTI file whose gzip stream ends early without an error (the missing voxels
    become zeros), so NIfTI files get a file-level check first (:func:`nifti_damage`)."""
    path = Path(path)
    if not path.is_file():
        raise VolfnetError(f"{path}: file not found")
    damage = nifti_damage(path) or png_alpha_problem(path)
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


def _voxels(image: sitk.Image, path: Path) -> np.ndarray:
    try:
        return sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise VolfnetError(f"{path}: cannot read voxel data ({exc})") from exc


# --------------------------------------------------------------------------------------------
# TIFF sidecar


def sidecar_candidates(path: Path) -> list[Path]:
    """Where a TIFF stack's spacing may be, first found wins: ``{name}.json`` beside the
    file, then, for a channel file ``{case}_{CCCC}.tif``, nnU-Net's ``{case}.json`` (its
    Tiff3DIO drops the channel suffix, so one sidecar serves every channel of a case)."""
    from volfnet.io.dataset import parse_channel_file  # dataset.py imports this module

    path = Path(path)
    stem = path.name[: -len(file_ending(path))]
    candidates = [path.with_name(stem + SIDECAR_ENDING)]
    parsed = parse_channel_file(stem)
    if parsed is not None:
        candidates.append(path.with_name(parsed[0] + SIDECAR_ENDING))
    return candidates


def sidecar_path(path: Path) -> Path:
    """The sidecar written beside a TIFF stack: ``{name}.json`` (a label map or prediction
    ``{case}.tif`` gets ``{case}.json``, as nnU-Net writes it)."""
    return sidecar_candidates(path)[0]


def read_sidecar_spacing(path: Path) -> list[float]:
    """The ``[z, y, x]`` spacing of a TIFF stack from its sidecar JSON; a missing or malformed
    sidecar is a :class:`VolfnetError` naming the file to write."""
    from volfnet.io.files import read_json

    candidates = sidecar_candidates(path)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        expected = candidates[-1]
        raise VolfnetError(
            f"{path}: is a 3D TIFF stack but its spacing sidecar {expected} is missing; write it as "
            '{"spacing": [z, y, x]} (numpy axis order, as nnU-Net\'s Tiff3DIO reads it)'
        )
    data = read_json(found)
    spacing = data.get("spacing") if isinstance(data, dict) else None
    if not isinstance(spacing, list) or len(spacing) != 3 or not all(_positive_number(v) for v in spacing):
        raise VolfnetError(f'{found}: must hold {{"spacing": [z, y, x]}} with three positive numbers, got {data!r}')
    return [float(v) for v in spacing]


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


# --------------------------------------------------------------------------------------------
# reading


def _bmp_bits_per_pixel(path: Path) -> int | None:
    """Bits per pixel from a BMP header (None if unreadable); see :data:`BMP_PALETTE_BITS`."""
    with open(path, "rb") as handle:
        header = handle.read(30)
    if len(header) < 30 or header[:2] != b"BM":
        return None
    info_size = int.from_bytes(header[14:18], "little")
    offset = 24 if info_size == 12 else 28  # OS/2 BITMAPCOREHEADER or Windows BITMAPINFOHEADER
    return int.from_bytes(header[offset : offset + 2], "little")


def _grey_palette_bmp(path: Path, pixels: np.ndarray) -> bool:
    """A palette BMP whose palette is grey: ITK hands it over as three equal components."""
    if file_ending(path) != ".bmp" or pixels.ndim != 3 or pixels.shape[-1] != RGB:
        return False
    bits = _bmp_bits_per_pixel(path)
    if bits is None or bits > BMP_PALETTE_BITS:
        return False
    return bool(np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]))


def _picture_channels(image: sitk.Image, path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """A 2D picture as (K, 1, Y, X) with nnU-Net's natural-image geometry."""
    if image.GetDimension() != 2:
        raise VolfnetError(f"{path}: is {image.GetDimension()}D; PNG and BMP files hold one 2D picture")
    components = image.GetNumberOfComponentsPerPixel()
    if components in (GREY_ALPHA, RGBA):
        raise VolfnetError(_alpha_message(path, "grey + alpha" if components == GREY_ALPHA else "RGBA"))
    if components not in (GREY, RGB):
        raise VolfnetError(f"{path}: has {components} components per pixel; expected 1 (greyscale) or 3 (RGB)")
    pixels = _voxels(image, path)
    if _grey_palette_bmp(path, pixels):
        pixels = pixels[..., 0]
    channels = pixels[None, None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)[:, None]
    geometry = ImageGeometry(list(PICTURE_SPACING), [0.0, 0.0, 0.0], list(IDENTITY_DIRECTION), [1, *pixels.shape[:2]])
    return np.ascontiguousarray(channels), geometry


def _tiff_stack_channels(image: sitk.Image, path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """A multi-page TIFF as (1, Z, Y, X), spacing from its sidecar, origin 0, identity direction."""
    if image.GetDimension() != 3:
        raise VolfnetError(f"{path}: is {image.GetDimension()}D; a TIFF holds a 2D picture or a 3D stack")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolfnetError(
            f"{path}: is a 3D TIFF stack with {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "stacks must be single-channel (one file per channel)"
        )
    spacing = read_sidecar_spacing(path)
    voxels = _voxels(image, path)
    geometry = ImageGeometry(spacing, [0.0, 0.0, 0.0], list(IDENTITY_DIRECTION), [int(v) for v in voxels.shape])
    return voxels[None], geometry


def _volume_channels(image: sitk.Image, path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """A medical 3D image (NIfTI, NRRD, MetaImage): one channel per file, as (1, Z, Y, X)."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolfnetError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1")
    if image.GetDimension() != 3:
        raise VolfnetError(f"{path}: is {image.GetDimension()}D; volfnet expects 3D images (one file per channel)")
    return _voxels(image, path)[None], geometry_of(image)


def channels_of(image: sitk.Image, path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """The channels of an image already read from ``path``, as (K, Z, Y, X) in the file's
    voxel type, and its geometry: K is 3 for an RGB picture, 1 otherwise."""
    path = Path(path)
    ending = file_ending(path)
    if ending in NATURAL_IMAGE_ENDINGS or (ending in TIFF_ENDINGS and image.GetDimension() == 2):
        return _picture_channels(image, path)
    if ending in TIFF_ENDINGS:
        return _tiff_stack_channels(image, path)
    return _volume_channels(image, path)


def read_channels(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read every channel one file holds, as (K, Z, Y, X), and its geometry."""
    return channels_of(read_sitk(path), Path(path))


def read_geometry(path: Path) -> ImageGeometry:
    """The geometry of an image as volfnet reads it (a picture's ``[1, Y, X]`` with spacing
    999 on the missing axis, a TIFF stack's sidecar spacing), not the file's own header.
    A medical volume's geometry is its header's, without converting the voxels."""
    image = read_sitk(path)
    if file_ending(path) in MEDICAL_ENDINGS:
        return geometry_of(image)
    return channels_of(image, Path(path))[1]


def read_image(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read a single-channel image as a (Z, Y, X) array and its geometry."""
    channels, geometry = read_channels(path)
    if channels.shape[0] != 1:
        raise VolfnetError(f"{path}: holds {channels.shape[0]} channels (RGB); expected one (a greyscale picture)")
    return channels[0], geometry


def channel_count_problem(paths: Sequence[Path], counts: Sequence[int], expected: int) -> str | None:
    """A message naming the files when their channels do not add up to ``expected``, else None."""
    if sum(counts) == expected:
        return None
    held = ", ".join(f"{Path(p).name}: {c}" for p, c in zip(paths, counts))
    return (
        f"{paths[0]}: the case's file(s) hold {sum(counts)} channel(s) ({held}) but dataset.json names {expected}; "
        "an RGB picture holds 3 channels and a greyscale one 1: fix channel_names or the files"
    )


def read_case(paths: Sequence[Path], num_channels: int | None = None) -> tuple[np.ndarray, ImageGeometry]:
    """Read the channels of one case into a float32 (C, Z, Y, X) array.

    The channels are those of every file in order (an RGB picture adds three); with
    ``num_channels`` their number must match. All files must share one geometry; the first
    file's geometry is returned.
    """
    if not paths:
        raise VolfnetError("no image files given for the case")
    arrays = []
    geometry: ImageGeometry | None = None
    for path in paths:
        array, geo = read_channels(path)
        if geometry is None:
            geometry = geo
        else:
            mismatch = geometry.matches(geo)
            if mismatch:
                raise VolfnetError(f"{path}: geometry differs from {paths[0]} ({mismatch})")
        arrays.append(array.astype(np.float32, copy=False))
    assert geometry is not None
    if num_channels is not None:
        problem = channel_count_problem(paths, [a.shape[0] for a in arrays], num_channels)
        if problem:
            raise VolfnetError(problem)
    return np.concatenate(arrays), geometry


def read_segmentation(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read a label map; labels must be whole numbers."""
    array, geometry = read_image(path)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.round(array)
        if not np.array_equal(rounded, array):
            raise VolfnetError(f"{path}: label map holds non-integer values")
        array = rounded
    return array.astype(np.int16, copy=False), geometry


# --------------------------------------------------------------------------------------------
# writing


def _write_sitk(image: sitk.Image, path: Path) -> None:
    """Write atomically; SimpleITK picks the writer from the file name, so the temporary
    name keeps the ending."""
    from volfnet.io.files import atomic_path

    ending = file_ending(path)
    with atomic_path(path) as tmp:
        target = tmp.with_name(tmp.name + ending)
        try:
            sitk.WriteImage(image, str(target), useCompression=ending != ".bmp")  # BMP readers rarely take RLE
            target.replace(tmp)
        finally:
            target.unlink(missing_ok=True)


def _picture_dtype(array: np.ndarray, path: Path) -> np.dtype:
    """The unsigned type a label map is stored as in a picture file: uint8 when its values fit
    (every viewer shows it), else uint16 (PNG, TIFF). TIFF also keeps any other array as is."""
    ending = file_ending(path)
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.round(array) == array))
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if integral and low >= 0 and high <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if integral and low >= 0 and high <= np.iinfo(np.uint16).max and ending != ".bmp":
        return np.dtype(np.uint16)
    if ending in TIFF_ENDINGS:
        return array.dtype
    limit = "0..255" if ending == ".bmp" else "0..65535"
    raise VolfnetError(f"{path}: {ending} stores whole numbers {limit}; the array holds {array.dtype} values {low}..{high}")


def _write_picture(array: np.ndarray, path: Path) -> None:
    """A [1, Y, X] array as a 2D picture (the geometry is nnU-Net's natural-image one)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array[0]).astype(_picture_dtype(array, path), copy=False))
    _write_sitk(image, path)


def _write_tiff_stack(array: np.ndarray, geometry: ImageGeometry, path: Path) -> None:
    """A (Z, Y, X) array as a multi-page TIFF with its spacing in the sidecar JSON; the sidecar
    goes first, so the stack (what a reader looks for) appears complete with it."""
    from volfnet.io.files import atomic_write_json

    atomic_write_json(sidecar_path(path), {"spacing": [float(v) for v in geometry.spacing]})
    image = sitk.GetImageFromArray(array.astype(_picture_dtype(array, path), copy=False))
    image.SetSpacing([float(v) for v in reversed(geometry.spacing)])
    _write_sitk(image, path)


def write_image(array: np.ndarray, geometry: ImageGeometry, path: Path) -> None:
    """Write a (Z, Y, X) array with the given geometry, atomically.

    PNG and BMP take one slice ``[1, Y, X]`` (written as a 2D picture); TIFF writes one
    slice as a 2D picture and more as a stack with a ``{name}.json`` spacing sidecar.
    Pictures keep no origin or direction (nnU-Net's convention for them)."""
    if list(array.shape) != list(geometry.shape):
        raise ValueError(f"array shape {list(array.shape)} does not match geometry shape {geometry.shape}")
    path = Path(path)
    ending = file_ending(path)
    if ending in PICTURE_ENDINGS and array.shape[0] == 1:
        _write_picture(array, path)
        return
    if ending in NATURAL_IMAGE_ENDINGS:
        raise VolfnetError(
            f"{path}: {ending} holds one 2D picture but the array has {array.shape[0]} slices {list(array.shape)}; "
            "write 3D label maps as .tif (with a spacing sidecar) or .nii.gz"
        )
    if ending in TIFF_ENDINGS:
        _write_tiff_stack(array, geometry, path)
        return
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(v) for v in reversed(geometry.spacing)])
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    _write_sitk(image, path)
