"""PNG overlays of an image with predicted and reference contours, for quick visual checks.

A Dice of 0.85 says little about *where* a model fails; three axial slices through the
structure with both outlines drawn show a shifted boundary, a missed lobe or a spurious blob
at a glance. Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot
global state), so worker processes can draw in parallel without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from volfnet.io.files import atomic_path

# Each slice panel is this many inches square at OVERLAY_DPI: 300 px keeps a case's PNG
# small (tens of kB) yet shows contours on a ~100 mm field of view clearly.
PANEL_INCHES = 3.0
OVERLAY_DPI = 100
# Grey-level window from these image percentiles, so CT air and metal do not wash out tissue.
INTENSITY_PERCENTILES = (0.5, 99.5)
PREDICTION_COLOUR = "red"
REFERENCE_COLOUR = "lime"
CONTOUR_WIDTH = 1.0


def overlay_slice_indices(prediction: np.ndarray, reference: np.ndarray, num_slices: int) -> list[int]:
    """Axial (first-axis) slices evenly inside the foreground's extent: for 3 slices, at 25,
    50 and 75 % of the extent of prediction ∪ reference (the whole volume when both are empty)."""
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    foreground = np.flatnonzero(((prediction > 0) | (reference > 0)).any(axis=(1, 2)))
    first, last = (int(foreground[0]), int(foreground[-1])) if foreground.size else (0, prediction.shape[0] - 1)
    fractions = [(i + 1) / (num_slices + 1) for i in range(num_slices)]
    return [int(round(first + f * (last - first))) for f in fractions]


def _draw_contours(axes, label_slice: np.ndarray, colour: str) -> None:
    """One outline per label, so a boundary between two labels is drawn too."""
    for label in np.unique(label_slice):
        if label <= 0:
            continue
        axes.contour(label_slice == label, levels=[0.5], colors=colour, linewidths=CONTOUR_WIDTH)


def save_overlay_png(
    image: np.ndarray,
    prediction: np.ndarray,
    reference: np.ndarray,
    path: Path,
    num_slices: int = 3,
    spacing: Sequence[float] | None = None,
) -> Path:
    """Write ``num_slices`` axial slices of ``image`` (grey) with prediction (red) and
    reference (green) contours side by side into ``path`` (PNG, written atomically).

    All arrays are (Z, Y, X); ``spacing`` (z, y, x) sets the in-plane aspect ratio so an
    anisotropic slice is not shown stretched. The PNG is ``num_slices * 300`` by 300 pixels.
    """
    if image.ndim != 3 or image.shape != prediction.shape or image.shape != reference.shape:
        raise ValueError(
            f"image {image.shape}, prediction {prediction.shape} and reference {reference.shape} must be equal 3D shapes"
        )
    image = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(image, INTENSITY_PERCENTILES)
    aspect = float(spacing[1]) / float(spacing[2]) if spacing is not None else 1.0
    figure = Figure(figsize=(PANEL_INCHES * num_slices, PANEL_INCHES), dpi=OVERLAY_DPI)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=0.92, wspace=0.02)
    for column, index in enumerate(overlay_slice_indices(prediction, reference, num_slices)):
        axes = figure.add_subplot(1, num_slices, column + 1)
        axes.imshow(image[index], cmap="gray", vmin=low, vmax=max(high, low + 1e-6), aspect=aspect, interpolation="nearest")
        _draw_contours(axes, reference[index], REFERENCE_COLOUR)
        _draw_contours(axes, prediction[index], PREDICTION_COLOUR)
        axes.set_title(f"z={index}  prediction: {PREDICTION_COLOUR}, reference: {REFERENCE_COLOUR}", fontsize=7)
        axes.set_axis_off()
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            figure.savefig(handle, format="png", dpi=OVERLAY_DPI)
    return path
