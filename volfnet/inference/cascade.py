"""The cascade's handover between stages: low-resolution logits -> label map on the
full-resolution grid.

Both stages crop the same nonzero box of a scan and resample it to their own spacing, so the
low-resolution logits are resampled straight to the next stage's preprocessed shape
(linearly, class by class, as export does) and turned into labels there. Training and
prediction use this one function, so the cascade sees at test time exactly what it was
trained on: the final validation of each ``3d_lowres`` fold writes these label maps for its
held-out cases (:class:`NextStageExport`), and the predictor computes them on the fly before
running ``3d_cascade_fullres``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from volfnet.data.previous_stage import PREVIOUS_STAGE_DTYPE, one_hot_foreground, save_previous_stage
from volfnet.errors import VolfnetError
from volfnet.inference.export import regions_to_labels, slabs
from volfnet.io.case_store import load_properties
from volfnet.plans import ResamplingSpec
from volfnet.preprocessing.resampling import resample_logits

logger = logging.getLogger(__name__)


def labels_on_grid(
    logits: torch.Tensor,
    shape: Sequence[int],
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    resampling: ResamplingSpec,
    regions_class_order: list[int] | None = None,
) -> np.ndarray:
    """(K, *S) logits on a grid of ``spacing`` -> (Z, Y, X) labels on the grid of ``shape`` and
    ``new_spacing`` (argmax; regions: each region above 0.5 with its value, in order)."""
    resampled = resample_logits(logits.detach().to("cpu", torch.float32), list(shape), list(spacing), list(new_spacing), resampling)
    if regions_class_order is not None:
        return regions_to_labels(resampled, regions_class_order, threshold=0.0).astype(PREVIOUS_STAGE_DTYPE)
    labels = np.empty(tuple(int(s) for s in shape), dtype=PREVIOUS_STAGE_DTYPE)
    with torch.no_grad():
        for slab in slabs(list(shape)):
            labels[slab] = torch.argmax(resampled[:, slab], dim=0).numpy()
    return labels


def with_previous_stage(data: np.ndarray, labels: np.ndarray, foreground_labels: Sequence[int]) -> np.ndarray:
    """(C, Z, Y, X) image + (Z, Y, X) previous-stage labels -> (C + K, Z, Y, X) network input."""
    if tuple(labels.shape) != tuple(data.shape[1:]):
        raise VolfnetError(f"previous-stage segmentation of shape {list(labels.shape)} does not fit the image's {list(data.shape[1:])}")
    return np.concatenate([np.asarray(data, dtype=np.float32), one_hot_foreground(labels, foreground_labels)], axis=0)


@dataclass(frozen=True)
class NextStageExport:
    """Where the final validation of a previous stage (``3d_lowres``) writes the label maps its
    next stage trains on: ``output_folder/<case>.npy`` on the grid of the next stage's
    preprocessed cases in ``cases_folder``."""

    configuration: str
    cases_folder: Path
    output_folder: Path
    resampling: ResamplingSpec
    regions_class_order: list[int] | None = None

    def write(self, logits: torch.Tensor, case_id: str, spacing: Sequence[float]) -> Path:
        try:
            target = load_properties(self.cases_folder, case_id)
        except VolfnetError as exc:
            raise VolfnetError(
                f"case {case_id}: cannot write its {self.configuration} input, the preprocessed case is missing ({exc}); "
                f"preprocess {self.configuration}'s data, then rerun this validation with --val"
            ) from exc
        labels = labels_on_grid(
            logits, target.shape_after_resampling, spacing, target.spacing_after_resampling, self.resampling, self.regions_class_order
        )
        path = save_previous_stage(labels, self.output_folder, case_id)
        logger.debug("case %s: %s input written to %s", case_id, self.configuration, path)
        return path
