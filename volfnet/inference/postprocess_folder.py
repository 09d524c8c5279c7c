"""Apply a decided postprocessing (``postprocessing.json``) to every label map in a folder.

The predictor applies a model folder's ``postprocessing.json`` itself; this is for label maps
made another way: an ensemble (whose postprocessing is decided on the ensemble's own
cross-validation), predictions made with the decision switched off, or a decision taken later.
Each label map is written to the output folder under its own name, with its own geometry
and voxel type; ``.mhd``/``.nhdr`` label maps become ``.mha``/``.nrrd`` as in prediction
(one file can be written atomically, a header plus data file cannot). Probabilities
(``<case>.npz``) are not copied: they describe the prediction before postprocessing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volfnet.errors import VolfnetError
from volfnet.evaluation.postprocessing import PostprocessingDecision, apply_postprocessing
from volfnet.inference.inputs import output_ending
from volfnet.io.image_io import SUPPORTED_ENDINGS, file_ending, read_image, write_image
from volfnet.parallel import default_num_workers, parallel_map, starmap_function

__all__ = ["PostprocessSummary", "label_map_files", "postprocess_file", "postprocess_folder"]

logger = logging.getLogger(__name__)


def label_map_files(folder: Path) -> list[Path]:
    """The label maps in ``folder``: visible files with a supported image ending, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VolfnetError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and file_ending(p) in SUPPORTED_ENDINGS)


def postprocess_file(source: Path, target: Path, decision: PostprocessingDecision) -> Path:
    """Read one label map, apply ``decision``, write it to ``target`` with the same geometry
    and voxel type (atomically)."""
    labels, geometry = read_image(source)
    if not np.issubdtype(labels.dtype, np.integer) and not np.array_equal(labels, np.round(labels)):
        raise VolfnetError(f"{source}: not a label map (it holds non-integer values)")
    result = apply_postprocessing(labels, decision)
    write_image(result.astype(labels.dtype, copy=False), geometry, target)
    return Path(target)


@dataclass
class PostprocessSummary:
    """What :func:`postprocess_folder` wrote."""

    output_folder: Path
    written: list[Path]


def postprocess_folder(
    input_folder: Path, output_folder: Path, decision: PostprocessingDecision, num_workers: int = default_num_workers(), progress: bool = True
) -> PostprocessSummary:
    """:func:`postprocess_file` for every label map of ``input_folder`` into ``output_folder``
    (which must be another folder). Unreadable files are reported together at the end; the
    others are written."""
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    files = label_map_files(input_folder)
    if not files:
        raise VolfnetError(f"{input_folder}: no label maps (files ending in {', '.join(SUPPORTED_ENDINGS)})")
    if output_folder.resolve() == input_folder.resolve():
        raise VolfnetError(f"{output_folder}: the output folder must not be the input folder")
    targets = [output_folder / (p.name[: -len(file_ending(p))] + output_ending(file_ending(p))) for p in files]
    if len(set(targets)) != len(targets):
        raise VolfnetError(f"{input_folder}: two label maps of one case in different formats would be written to one file (e.g. .mhd and .mha)")
    output_folder.mkdir(parents=True, exist_ok=True)
    logger.info(
        "postprocessing %d label map(s): foreground largest component %s, per label %s",
        len(files), decision.foreground_largest_component, decision.per_label,
    )
    tasks = [(source, target, decision) for source, target in zip(files, targets)]
    written = parallel_map(starmap_function(postprocess_file), tasks, num_workers, desc="postprocessing", collect_user_errors=True, progress=progress)
    return PostprocessSummary(output_folder, written)
