"""Map a prediction from the preprocessed grid back onto the scan it came from, and write it.

Preprocessing transposed, cropped and resampled the scan; export undoes the three in reverse:

1. resample the logits from the network's spacing to the cropped grid, one class at a time
   (linear; the coarse axis of anisotropic data nearest-neighbour, as in preprocessing);
2. softmax (only when probabilities are wanted; otherwise the argmax of the logits, which is
   the same) and argmax, in slabs, straight into the full-size label map;
3. paste the crop back into ``shape_before_cropping`` (background outside the box; there the
   probabilities are 1 for background and 0 for every other class), transpose back, and write
   with the original spacing, origin and direction.

Memory: the resampled logits are the one class-by-volume copy made here; softmax runs in
place on it and argmax writes labels slab by slab. With a :class:`LogitsHandover` (what
the predictor uses) the network-grid logits are freed once resampled, so at most two
class-by-volume arrays exist at once: network grid + original grid while resampling, then
original grid + pasted probabilities. A 512 x 512 x 400 CT with 4 classes: 1.7 GB each in
float32, so about 3.4 GB at the peak.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from volfnet.evaluation.postprocessing import PostprocessingDecision, apply_postprocessing
from volfnet.io.files import atomic_path
from volfnet.io.image_io import ImageGeometry, file_ending, write_image
from volfnet.plans import ResamplingSpec
from volfnet.io.case_store import CaseProperties
from volfnet.preprocessing.resampling import resample_logits

__all__ = [
    "PROBABILITIES_ENDING",
    "PROBABILITIES_KEY",
    "ExportedPrediction",
    "cropped_logits_to_original",
    "export_logits",
    "label_dtype",
    "load_probabilities",
    "logits_to_original",
    "probabilities_path",
    "resample_to_cropped_grid",
    "LogitsHandover",
    "write_prediction",
]

logger = logging.getLogger(__name__)

PROBABILITIES_KEY = "probabilities"  # the array's name inside <case>.npz (nnU-Net's name)
PROBABILITIES_ENDING = ".npz"
# float32 keeps argmax(probabilities) equal to the label map; float16 halves disk and memory
# but rounding can flip the argmax where two classes nearly tie.
DEFAULT_PROBABILITIES_DTYPE = np.float32
SLAB_VOXELS = 1 << 22  # voxels per class handled at once by softmax/argmax: small temporaries, few Python steps


@dataclass
class ExportedPrediction:
    """A prediction in the original geometry: ``segmentation`` (Z, Y, X) uint8/uint16 and,
    when asked for, ``probabilities`` (K, Z, Y, X), both in the numpy axis order of the scan."""

    segmentation: np.ndarray
    probabilities: np.ndarray | None = None


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned type holding labels 0..num_classes-1 (uint8 up to 256 classes)."""
    return np.dtype(np.uint8) if num_classes <= np.iinfo(np.uint8).max + 1 else np.dtype(np.uint16)


def _inverse_transpose(transpose_forward: list[int]) -> list[int]:
    return [int(i) for i in np.argsort(transpose_forward)]


def slabs(shape: list[int] | tuple[int, ...]) -> list[slice]:
    """Slices along axis 0 of a (Z, Y, X) volume holding about :data:`SLAB_VOXELS` voxels each."""
    plane = max(int(np.prod(shape[1:])), 1)
    step = max(SLAB_VOXELS // plane, 1)
    return [slice(start, min(start + step, shape[0])) for start in range(0, shape[0], step)]


def resample_to_cropped_grid(logits: torch.Tensor, properties: CaseProperties, spec: ResamplingSpec) -> torch.Tensor:
    """(K, *shape_after_resampling) logits resampled to (K, *shape_after_cropping).

    Returns ``logits`` itself when the grids already agree (no copy); otherwise one new
    tensor, filled class by class.
    """
    if list(logits.shape[1:]) != list(properties.shape_after_resampling):
        raise ValueError(
            f"case {properties.case_id}: logits of spatial shape {list(logits.shape[1:])} do not match the "
            f"preprocessed shape {properties.shape_after_resampling}"
        )
    return resample_logits(
        logits, properties.shape_after_cropping, properties.spacing_after_resampling, properties.spacing_before_resampling, spec
    )


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over axis 0, in place and slab by slab (temporaries of one slab only)."""
    with torch.no_grad():
        for slab in slabs(logits.shape[1:]):
            part = logits[:, slab]
            part.sub_(part.amax(dim=0, keepdim=True)).exp_()
            part.div_(part.sum(dim=0, keepdim=True))
    return logits


def _sigmoid_(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid of every value, in place and slab by slab (region outputs are independent)."""
    with torch.no_grad():
        for slab in slabs(logits.shape[1:]):
            logits[:, slab].sigmoid_()
    return logits


def regions_to_labels(scores: torch.Tensor, regions_class_order: list[int], threshold: float) -> np.ndarray:
    """Label map of region scores (C, *S): each region above ``threshold`` written with its
    ``regions_class_order`` value, in that order (later regions overwrite: nnU-Net's rule)."""
    labels = np.zeros(tuple(scores.shape[1:]), dtype=label_dtype(max(regions_class_order) + 1))
    for region, value in enumerate(regions_class_order):
        labels[(scores[region] > threshold).numpy()] = value
    return labels


def _box_slices(properties: CaseProperties) -> tuple[slice, ...]:
    return tuple(slice(start, stop) for start, stop in properties.bbox)


def cropped_logits_to_original(
    cropped: torch.Tensor,
    properties: CaseProperties,
    with_probabilities: bool = False,
    probabilities_dtype: np.dtype | type = DEFAULT_PROBABILITIES_DTYPE,
    overwrite: bool = False,
    regions_class_order: list[int] | None = None,
) -> ExportedPrediction:
    """Label map (and probabilities) in the original geometry from logits on the cropped grid.

    With ``with_probabilities`` the softmax is computed in place when ``overwrite`` is true
    (pass it for a tensor nobody else reads, such as the output of
    :func:`resample_to_cropped_grid` when it resampled), otherwise on a copy; the labels are
    then the argmax of those probabilities. With ``regions_class_order`` (region datasets)
    the outputs are sigmoid regions instead: the probabilities are each region's sigmoid and
    the label map writes every region above 0.5 with its value, in that order.
    """
    if list(cropped.shape[1:]) != list(properties.shape_after_cropping):
        raise ValueError(
            f"case {properties.case_id}: logits of spatial shape {list(cropped.shape[1:])} do not match the cropped "
            f"shape {properties.shape_after_cropping}"
        )
    source_storage = cropped.untyped_storage().data_ptr()
    cropped = cropped.detach().to("cpu", torch.float32)
    overwrite = overwrite or cropped.untyped_storage().data_ptr() != source_storage  # moved or converted: already a copy
    regions = regions_class_order is not None
    if with_probabilities:  # labels from the probabilities themselves, so they agree with the label map
        cropped = cropped if overwrite else cropped.clone()
        cropped = _sigmoid_(cropped) if regions else _softmax_(cropped)
    box = _box_slices(properties)
    if regions_class_order is not None:
        # a logit above 0 is a sigmoid above 0.5
        threshold = 0.5 if with_probabilities else 0.0
        seg = np.zeros(properties.shape_before_cropping, dtype=label_dtype(max(regions_class_order) + 1))
        seg[box] = regions_to_labels(cropped, regions_class_order, threshold)
    else:
        seg = np.zeros(properties.shape_before_cropping, dtype=label_dtype(int(cropped.shape[0])))
        inside = seg[box]
        with torch.no_grad():
            for slab in slabs(cropped.shape[1:]):
                inside[slab] = torch.argmax(cropped[:, slab], dim=0).numpy()
    backward = _inverse_transpose(properties.transpose_forward)
    segmentation = np.ascontiguousarray(seg.transpose(backward))
    _check_shape(segmentation, properties.original_geometry, properties.case_id)
    probabilities = None
    if with_probabilities:
        probabilities = _paste_probabilities(cropped, properties, box, probabilities_dtype, background_channel=not regions)
        probabilities = probabilities.transpose(0, *[axis + 1 for axis in backward])
    return ExportedPrediction(segmentation, probabilities)


def _paste_probabilities(
    probabilities: torch.Tensor, properties: CaseProperties, box: tuple[slice, ...], dtype: np.dtype | type, background_channel: bool = True
) -> np.ndarray:
    """A (K, *shape_before_cropping) array: the cropped probabilities in the box; outside it,
    background 1 (classes) or every region 0 (regions)."""
    full = np.zeros((int(probabilities.shape[0]), *properties.shape_before_cropping), dtype=dtype)
    if background_channel:
        full[0] = 1
    full[(slice(None), *box)] = probabilities.numpy()  # numpy casts in buffered chunks: no float32 copy
    return full


def _check_shape(segmentation: np.ndarray, geometry: ImageGeometry, case_id: str) -> None:
    if list(segmentation.shape) != list(geometry.shape):
        raise ValueError(
            f"case {case_id}: exported shape {list(segmentation.shape)} differs from the original image {geometry.shape}; "
            "the case properties are inconsistent"
        )


class LogitsHandover:
    """Logits passed to the export for it to own: :meth:`take` hands them over and forgets
    them. A function argument or a thread pool's task keeps a tensor alive until the call
    returns; held here, the export's reference is the only one, and the logits (one
    class-by-volume array) are freed as soon as they are resampled."""

    def __init__(self, logits: torch.Tensor) -> None:
        self._logits: torch.Tensor | None = logits

    def take(self) -> torch.Tensor:
        logits, self._logits = self._logits, None
        if logits is None:
            raise RuntimeError("these logits were handed over already")
        return logits


def logits_to_original(
    logits: torch.Tensor | LogitsHandover,
    properties: CaseProperties,
    spec: ResamplingSpec,
    with_probabilities: bool = False,
    postprocessing: PostprocessingDecision | None = None,
    probabilities_dtype: np.dtype | type = DEFAULT_PROBABILITIES_DTYPE,
    regions_class_order: list[int] | None = None,
) -> ExportedPrediction:
    """Logits on the preprocessed grid -> prediction in the original geometry (not written).

    A tensor is not modified. Logits given as a :class:`LogitsHandover` are taken: freed as
    soon as they are resampled (and overwritten where that saves a copy), so at most two
    class-by-volume arrays exist at any time. ``postprocessing`` changes the label map only;
    probabilities stay as the network predicted them (an ensemble of probabilities is
    post-processed after its own argmax).
    """
    owned = isinstance(logits, LogitsHandover)
    tensor = logits.take() if isinstance(logits, LogitsHandover) else logits
    del logits  # a handover's tensor now has this one reference
    cropped = resample_to_cropped_grid(tensor, properties, spec)
    overwrite = owned or cropped is not tensor
    del tensor
    prediction = cropped_logits_to_original(
        cropped, properties, with_probabilities, probabilities_dtype, overwrite=overwrite, regions_class_order=regions_class_order
    )
    del cropped
    if postprocessing is not None:
        prediction.segmentation = apply_postprocessing(prediction.segmentation, postprocessing)
    return prediction


def probabilities_path(output_file: Path) -> Path:
    """``<case>.npz`` beside ``<case><ending>``."""
    output_file = Path(output_file)
    ending = file_ending(output_file)
    stem = output_file.name[: -len(ending)] if ending and output_file.name.lower().endswith(ending) else output_file.stem
    return output_file.with_name(stem + PROBABILITIES_ENDING)


def _write_probabilities(probabilities: np.ndarray, path: Path) -> None:
    """Compressed npz, atomically (a trained network's probabilities are mostly 0 and 1)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, probabilities=probabilities)  # the key is PROBABILITIES_KEY


def load_probabilities(path: Path) -> np.ndarray:
    """The (K, Z, Y, X) probabilities of a ``<case>.npz`` written by the predictor (no pickle)."""
    with np.load(Path(path), allow_pickle=False) as archive:
        return archive[PROBABILITIES_KEY]


def write_prediction(prediction: ExportedPrediction, geometry: ImageGeometry, output_file: Path) -> Path:
    """Write the label map with the original geometry and, if present, ``<case>.npz``.

    Both writes are atomic and the label map comes last, so an existing label map always
    means a finished case (what ``skip_existing`` relies on).
    """
    output_file = Path(output_file)
    if prediction.probabilities is not None:
        _write_probabilities(prediction.probabilities, probabilities_path(output_file))
    write_image(prediction.segmentation, geometry, output_file)
    return output_file


def export_logits(
    logits: torch.Tensor,
    properties: CaseProperties,
    spec: ResamplingSpec,
    output_file: Path,
    save_probabilities: bool = False,
    postprocessing: PostprocessingDecision | None = None,
    probabilities_dtype: np.dtype | type = DEFAULT_PROBABILITIES_DTYPE,
) -> ExportedPrediction:
    """:func:`logits_to_original` then :func:`write_prediction` to ``output_file``
    (``<case>.npz`` beside it with ``save_probabilities``)."""
    prediction = logits_to_original(logits, properties, spec, save_probabilities, postprocessing, probabilities_dtype)
    write_prediction(prediction, properties.original_geometry, output_file)
    logger.debug("case %s written to %s", properties.case_id, output_file)
    return prediction
