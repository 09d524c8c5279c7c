"""The preprocessed-case contract: ``<case>.npy``, ``<case>_seg.npy`` and ``<case>.json``.

``<case>.npy`` is float32 (C, Z, Y, X), memory-mappable, so training reads only the patch it
needs. ``<case>_seg.npy`` is int8 (int16 when a label exceeds 127) of shape (1, Z, Y, X), with
-1 marking voxels outside the nonzero crop mask. ``<case>.json`` holds the properties needed
to map a prediction back to the original scan, plus foreground class locations for
oversampling. The JSON is written last: a case is complete only when its JSON exists and the
arrays it describes have the recorded shapes, so an interrupted run is resumed safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from volfnet.errors import VolfnetError
from volfnet.io.files import atomic_save_npy, atomic_write_json, load_npy, npy_problem, read_json
from volfnet.io.image_io import ImageGeometry

PROPERTIES_VERSION = 1
OUTSIDE_MASK_LABEL = -1  # seg value outside the nonzero mask: excluded from oversampling, background in training


@dataclass
class CaseProperties:
    """Everything needed to undo preprocessing, in the transposed axis order except
    ``original_geometry`` (the scan as read, numpy order)."""

    case_id: str
    original_geometry: ImageGeometry
    transpose_forward: list[int]
    shape_before_cropping: list[int]
    bbox: list[list[int]]
    shape_after_cropping: list[int]
    spacing_before_resampling: list[float]
    spacing_after_resampling: list[float]
    shape_after_resampling: list[int]
    class_locations: dict[int, list[list[int]]] = field(default_factory=dict)
    source_files: list[str] = field(default_factory=list)
    properties_version: int = PROPERTIES_VERSION

    def to_dict(self) -> dict:
        return {
            "case_id": self.case_id,
            "original_geometry": self.original_geometry.to_dict(),
            "transpose_forward": self.transpose_forward,
            "shape_before_cropping": self.shape_before_cropping,
            "bbox": self.bbox,
            "shape_after_cropping": self.shape_after_cropping,
            "spacing_before_resampling": self.spacing_before_resampling,
            "spacing_after_resampling": self.spacing_after_resampling,
            "shape_after_resampling": self.shape_after_resampling,
            "class_locations": {str(k): v for k, v in self.class_locations.items()},
            "source_files": self.source_files,
            "properties_version": self.properties_version,
        }

    @classmethod
    def unprocessed(
        cls, case_id: str, geometry: ImageGeometry, spacing: list[float], class_locations: dict[int, list[list[int]]] | None = None
    ) -> CaseProperties:
        """A case stored as it was given, not transposed, cropped or resampled (data prepared
        elsewhere: another tool's preprocessing, test volumes); ``spacing`` in numpy order."""
        shape = list(geometry.shape)
        return cls(
            case_id=case_id, original_geometry=geometry, transpose_forward=[0, 1, 2], shape_before_cropping=shape,
            bbox=[[0, s] for s in shape], shape_after_cropping=shape, spacing_before_resampling=list(spacing),
            spacing_after_resampling=list(spacing), shape_after_resampling=shape, class_locations=dict(class_locations or {}),
        )

    @classmethod
    def from_dict(cls, data: dict, source: str = "properties") -> CaseProperties:
        if data.get("properties_version") != PROPERTIES_VERSION:
            raise VolfnetError(f"{source}: unsupported properties version {data.get('properties_version')}; re-run preprocessing")
        try:
            return cls(
                case_id=str(data["case_id"]),
                original_geometry=ImageGeometry.from_dict(data["original_geometry"]),
                transpose_forward=[int(v) for v in data["transpose_forward"]],
                shape_before_cropping=[int(v) for v in data["shape_before_cropping"]],
                bbox=[[int(a), int(b)] for a, b in data["bbox"]],
                shape_after_cropping=[int(v) for v in data["shape_after_cropping"]],
                spacing_before_resampling=[float(v) for v in data["spacing_before_resampling"]],
                spacing_after_resampling=[float(v) for v in data["spacing_after_resampling"]],
                shape_after_resampling=[int(v) for v in data["shape_after_resampling"]],
                class_locations={int(k): v for k, v in data.get("class_locations", {}).items()},
                source_files=[str(v) for v in data.get("source_files", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VolfnetError(f"{source}: malformed case properties ({exc})") from exc


def case_paths(folder: Path, case_id: str) -> tuple[Path, Path, Path]:
    """(image npy, seg npy, properties json) of a case."""
    return folder / f"{case_id}.npy", folder / f"{case_id}_seg.npy", folder / f"{case_id}.json"


def seg_dtype(max_label: int) -> np.dtype:
    return np.dtype(np.int8) if max_label <= np.iinfo(np.int8).max else np.dtype(np.int16)


def save_case(folder: Path, image: np.ndarray, seg: np.ndarray | None, properties: CaseProperties) -> None:
    """Write a case; arrays first, JSON last (the JSON marks the case complete)."""
    image_path, seg_path, json_path = case_paths(folder, properties.case_id)
    json_path.unlink(missing_ok=True)
    atomic_save_npy(image_path, image.astype(np.float32, copy=False))
    if seg is not None:
        atomic_save_npy(seg_path, seg)
    # Compact: class locations hold up to 10 000 coordinates per label.
    atomic_write_json(json_path, properties.to_dict(), indent=None)


def load_properties(folder: Path, case_id: str) -> CaseProperties:
    json_path = case_paths(folder, case_id)[2]
    return CaseProperties.from_dict(read_json(json_path), str(json_path))


def load_case(folder: Path, case_id: str, mmap: bool = True, with_seg: bool = True) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Load a case (memory-mapped by default)."""
    image_path, seg_path, _ = case_paths(folder, case_id)
    properties = load_properties(folder, case_id)
    image = load_npy(image_path, mmap)
    seg = load_npy(seg_path, mmap) if with_seg and seg_path.exists() else None
    return image, seg, properties


def case_file_problems(folder: Path, case_id: str, with_seg: bool = True) -> list[str]:
    """What is wrong with a case's files on disk (missing, empty, truncated), read from the
    npy headers and the JSON's size only: cheap enough to run over every case before training."""
    image_path, seg_path, json_path = case_paths(folder, case_id)
    problems = [npy_problem(path) for path in ([image_path, seg_path] if with_seg else [image_path])]
    if not json_path.is_file():
        problems.append(f"{json_path}: file not found")
    elif json_path.stat().st_size == 0:
        problems.append(f"{json_path}: the file is empty")
    return [problem for problem in problems if problem]


def is_case_complete(folder: Path, case_id: str, num_channels: int, with_seg: bool) -> bool:
    """True when the case's JSON exists and its arrays have the shapes it records."""
    image_path, seg_path, json_path = case_paths(folder, case_id)
    if not json_path.is_file() or not image_path.is_file() or (with_seg and not seg_path.is_file()):
        return False
    try:
        properties = load_properties(folder, case_id)
        shape = [num_channels, *properties.shape_after_resampling]
        if list(load_npy(image_path).shape) != shape:
            return False
        return not with_seg or list(load_npy(seg_path).shape) == [1, *properties.shape_after_resampling]
    except VolfnetError:
        return False


def list_preprocessed_cases(folder: Path) -> list[str]:
    """Case ids with a properties file and an image array in ``folder``, sorted."""
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".") and p.with_suffix(".npy").is_file())
