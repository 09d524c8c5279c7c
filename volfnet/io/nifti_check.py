"""File-level checks of NIfTI files, from the bytes on disk.

ITK's NIfTI reader pads a truncated file with zeros (a gzip stream that ends early reads
without an error) and turns NaN/inf voxels into 0, so neither shows in the array it returns.
:func:`nifti_damage` is the cheap check every image read applies (header, file size, gzip
trailer); :func:`nifti_problems` adds the non-finite voxel count for the integrity check.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: NIfTI datatype codes of the floating-point types that can hold NaN/inf.
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


@dataclass
class _NiftiLayout:
    """Where a single-file NIfTI keeps its voxels, from the header alone."""

    offset: int
    count: int
    bitpix: int
    float_dtype: np.dtype | None

    @property
    def data_end(self) -> int:
        return self.offset + self.count * self.bitpix // 8


def _nifti_layout(header: bytes) -> _NiftiLayout | None:
    """Parse a NIfTI-1 or NIfTI-2 header (either byte order); None if it is neither."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = max(int(struct.unpack(endian + "f", header[108:112])[0]), 352)
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = max(struct.unpack(endian + "q", header[168:176])[0], 544)
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or any(d <= 0 for d in dims[1 : dims[0] + 1]) or bitpix <= 0:
        return None
    code = _NIFTI_FLOAT_TYPES.get(datatype)
    return _NiftiLayout(
        offset=offset,
        count=int(np.prod(dims[1 : dims[0] + 1], dtype=np.int64)),
        bitpix=bitpix,
        float_dtype=np.dtype(endian + code) if code else None,
    )


def _gzip_contents(path: Path) -> tuple[bytes, bool]:
    """The decompressed bytes of a gzip file, and whether its stream ended early."""
    decompressor = zlib.decompressobj(wbits=31)
    parts = []
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            try:
                parts.append(decompressor.decompress(chunk))
            except zlib.error:
                return b"".join(parts), True
            if decompressor.eof:
                break
    return b"".join(parts), not decompressor.eof


def _gzip_trailer_size(path: Path) -> int:
    """The uncompressed size (mod 2^32) stored in a gzip file's last four bytes."""
    with open(path, "rb") as handle:
        handle.seek(-4, 2)
        return struct.unpack("<I", handle.read(4))[0]


def non_finite_counts(path: Path, values: np.ndarray) -> str | None:
    if np.isfinite(values).all():
        return None
    num_nan, num_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    parts = [f"{num_nan} NaN voxel(s)"] if num_nan else []
    parts += [f"{num_inf} infinite voxel(s)"] if num_inf else []
    return f"{path}: contains {' and '.join(parts)}"


def _read_layout(path: Path) -> tuple[bool, _NiftiLayout | str | None]:
    """(gzipped?, the file's voxel layout, or a message saying it is damaged, or None when it
    is not NIfTI or not readable here: the image reader then has the last word)."""
    compressed = path.name.lower().endswith(".nii.gz")
    if not (compressed or path.name.lower().endswith(".nii")):
        return compressed, None
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            header = handle.read(544)
    except EOFError:
        return compressed, f"{path}: file is truncated (it ends inside the NIfTI header)"
    except OSError:
        return compressed, None  # not gzip, or unreadable: the image reader says so
    if len(header) < 348:
        return compressed, f"{path}: file is truncated or not NIfTI ({len(header)} bytes, shorter than a NIfTI header)"
    return compressed, _nifti_layout(header)


def _truncation(path: Path, compressed: bool, layout: _NiftiLayout, data: bytes | None, ended_early: bool) -> str | None:
    expected = layout.data_end
    if not compressed:
        size = path.stat().st_size
        return f"{path}: file is truncated (the NIfTI header needs {expected} bytes, the file holds {size})" if size < expected else None
    if data is not None and (ended_early or len(data) < expected):
        return f"{path}: file is truncated (the gzip stream ends early, after {len(data)} of {expected} bytes)"
    return None


def nifti_damage(path: Path) -> str | None:
    """A message naming ``path`` if it is a truncated NIfTI file, else None; cheap enough for
    every read: the header, the file size, and for ``.nii.gz`` the uncompressed size in the
    gzip trailer (the stream is decompressed only when that disagrees with the header)."""
    path = Path(path)
    compressed, layout = _read_layout(path)
    if not isinstance(layout, _NiftiLayout):
        return layout
    return _damage_from_layout(path, compressed, layout)


def _damage_from_layout(path: Path, compressed: bool, layout: _NiftiLayout) -> str | None:
    """:func:`nifti_damage` once the header is parsed."""
    if compressed and _gzip_trailer_size(path) == layout.data_end % (1 << 32):
        return None
    data, ended_early = _gzip_contents(path) if compressed else (None, False)
    return _truncation(path, compressed, layout, data, ended_early)


def nifti_problems(path: Path) -> tuple[str | None, str | None]:
    """(damage, non-finite voxels) of a ``.nii``/``.nii.gz`` file, read from the bytes on disk;
    each a message naming the file, or None. A damaged file is not worth reading further.

    Integer files cost what :func:`nifti_damage` costs. Float files are decompressed once more
    to see the voxels as stored. Other formats return nothing: ITK reports their short files
    and keeps their NaNs.
    """
    path = Path(path)
    compressed, layout = _read_layout(path)
    if not isinstance(layout, _NiftiLayout):
        return layout, None
    if layout.float_dtype is None:
        return _damage_from_layout(path, compressed, layout), None  # integer voxels cannot be NaN
    data, ended_early = _gzip_contents(path) if compressed else (None, False)
    damage = _truncation(path, compressed, layout, data, ended_early)
    if damage:
        return damage, None
    if data is None:
        values = np.fromfile(path, layout.float_dtype, count=layout.count, offset=layout.offset)
    else:
        values = np.frombuffer(data, layout.float_dtype, count=layout.count, offset=layout.offset)
    return None, non_finite_counts(path, values)
