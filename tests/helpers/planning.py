"""Planner inputs made by hand: a fingerprint of given spacings and shapes, a dataset.json, and
the plans the planner makes from them, without any image on disk."""

from __future__ import annotations

from volfnet.io.dataset import DatasetJson
from volfnet.planning.fingerprint import Fingerprint, IntensityStatistics
from volfnet.planning.planner import Planner, PlannerOptions


def fingerprint(spacings, shapes, channels=("CT",), crop_ratio=1.0) -> Fingerprint:
    """A fingerprint of one case per spacing/shape pair, with CT-like foreground intensities."""
    stats = IntensityStatistics(mean=50.0, std=100.0, median=40.0, min=-1000.0, max=2000.0, percentile_00_5=-900.0, percentile_99_5=1500.0)
    return Fingerprint(
        case_ids=[f"c{i}" for i in range(len(spacings))],
        spacings=[list(map(float, s)) for s in spacings],
        shapes_after_crop=[list(map(int, s)) for s in shapes],
        crop_ratios=[crop_ratio] * len(spacings),
        foreground_intensity_per_channel=[stats] * len(channels),
        median_relative_size_after_cropping=crop_ratio,
        channel_names={str(i): c for i, c in enumerate(channels)},
        num_foreground_voxels_sampled=1000,
    )


def dataset_json(channels=("CT",), num_labels=2) -> DatasetJson:
    """A dataset.json of ``channels`` and ``num_labels`` foreground labels."""
    labels = {"background": 0, **{f"l{i}": i for i in range(1, num_labels + 1)}}
    return DatasetJson.from_dict(
        {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels, "numTraining": 10, "file_ending": ".nii.gz"}, "test"
    )


def plan(fp, ds=None, **options):
    """The plans of dataset ``Dataset001_Test`` for fingerprint ``fp`` with planner ``options``."""
    return Planner(fp, ds or dataset_json(), "Dataset001_Test", PlannerOptions(**options)).plan()
