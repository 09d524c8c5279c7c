"""``samples.png``: a look at what VolF pretraining learns from.

One row per (example, slice): foreground crop, background crop, fused image and label map,
axial slices at evenly spaced depths; after pretraining, a fifth column with the network's
prediction for the same fused image. Seeing the pictures catches broken intensity ranges
or empty label maps at a glance, before hours of pretraining. Draws on a ``Figure`` with the Agg
canvas directly (no display, no pyplot, no change to the process-wide backend) and a fixed
figure size, so the PNG is exactly
``(rows * PANEL_PIXELS) x (4 * PANEL_PIXELS)`` pixels.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from volfnet.volf.sample import FusedExample

COLUMNS = ("foreground", "background", "fused image", "label")
# 160 px per panel is large enough to read a 128x128 slice, small enough for a log folder.
PANEL_PIXELS = 160
DPI = 80


def slice_positions(depth: int, num_slices: int) -> list[int]:
    """Evenly spaced interior depths, e.g. 1/4, 1/2, 3/4 of the depth for three slices."""
    if num_slices < 1:
        raise ValueError(f"num_slices must be at least 1, got {num_slices}")
    return [min(depth - 1, int(depth * (i + 1) / (num_slices + 1))) for i in range(num_slices)]


def save_samples_png(
    examples: Sequence[FusedExample],
    path: Path,
    num_classes: int,
    num_slices: int = 3,
    predictions: Sequence[np.ndarray] | None = None,
) -> Path:
    """Plot ``examples`` to ``path`` (written atomically); returns the path.

    Images are shown on a fixed [0, 1] grey scale when they lie in it (augmentation modes 1
    and 3), otherwise on the example's own range; labels on a fixed 0..K colour map.
    ``predictions`` (one label map per example) add a "prediction" column.
    """
    if not examples:
        raise ValueError("save_samples_png needs at least one example")
    if predictions is not None and len(predictions) != len(examples):
        raise ValueError(f"need one prediction per example, got {len(examples)} examples and {len(predictions)} predictions")
    columns = COLUMNS if predictions is None else (*COLUMNS, "prediction")
    rows = len(examples) * num_slices
    panel_inches = PANEL_PIXELS / DPI
    figure = Figure(figsize=(len(columns) * panel_inches, rows * panel_inches), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, len(columns), squeeze=False)
    for index, example in enumerate(examples):
        label_maps = (example.label,) if predictions is None else (example.label, predictions[index])
        volumes = (example.foreground, example.background, example.image)
        low = min(float(v.min()) for v in volumes)
        high = max(float(v.max()) for v in volumes)
        if low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
        for offset, depth in enumerate(slice_positions(example.label.shape[0], num_slices)):
            row = axes[index * num_slices + offset]
            for axis, volume in zip(row[:3], volumes):
                axis.imshow(volume[depth], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            for axis, labels in zip(row[3:], label_maps):
                axis.imshow(labels[depth], cmap="viridis", vmin=0, vmax=num_classes - 1, interpolation="nearest")
            row[0].set_ylabel(f"sample {index}, z={depth}", fontsize=7)
    for column, title in enumerate(columns):
        axes[0, column].set_title(title, fontsize=8)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=1 - 0.25 / rows, wspace=0.03, hspace=0.05)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic write by hand: volf sits below volfnet.io in the import order (DESIGN.md).
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, format="png", dpi=DPI)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
