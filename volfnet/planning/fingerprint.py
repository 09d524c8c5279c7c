"""The dataset fingerprint: what the planner needs to know about the data, saved as JSON.

Per case: spacing and shape after cropping to nonzero. Per channel: intensity statistics of
the foreground (label > 0) from a seeded random sample, used by CT normalisation. And the
median fraction of the image kept by the crop, which decides masked z-scoring.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from volfnet.errors import VolfnetError
from volfnet.io.dataset import CaseFiles
from volfnet.io.image_io import ImageGeometry
from volfnet.io.files import atomic_write_json, read_cache_json, read_json
from volfnet.parallel import parallel_map
from volfnet.preprocessing.cropping import crop_to_nonzero
from volfnet.preprocessing.preprocessor import case_seed, read_raw_case

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
TOTAL_INTENSITY_SAMPLES = 10_000_000  # pooled over cases; percentiles of this many are stable to well below 1 HU
MIN_SAMPLES_PER_CASE = 10_000  # small datasets still give every case a real say


@dataclass
class IntensityStatistics:
    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float

    @classmethod
    def of(cls, values: np.ndarray) -> IntensityStatistics:
        if values.size == 0:
            return cls(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p_low, median, p_high = np.percentile(values, [0.5, 50.0, 99.5])
        return cls(
            mean=float(values.mean()),
            std=float(values.std()),
            median=float(median),
            min=float(values.min()),
            max=float(values.max()),
            percentile_00_5=float(p_low),
            percentile_99_5=float(p_high),
        )


@dataclass
class Fingerprint:
    case_ids: list[str]
    spacings: list[list[float]]
    shapes_after_crop: list[list[int]]
    crop_ratios: list[float]
    foreground_intensity_per_channel: list[IntensityStatistics]
    median_relative_size_after_cropping: float
    channel_names: dict[str, str]
    num_foreground_voxels_sampled: int
    fingerprint_version: int = FINGERPRINT_VERSION

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> Fingerprint:
        return cls.from_dict(read_json(path), path)

    @classmethod
    def from_dict(cls, data: dict, path: Path) -> Fingerprint:
        if data.get("fingerprint_version") != FINGERPRINT_VERSION:
            raise VolfnetError(f"{path}: unsupported fingerprint version; re-run with --clean")
        data["foreground_intensity_per_channel"] = [IntensityStatistics(**s) for s in data["foreground_intensity_per_channel"]]
        return cls(**data)

    @classmethod
    def load_cached(cls, path: Path) -> Fingerprint | None:
        """The fingerprint saved at ``path``, or None when there is none or it is unreadable
        (an interrupted or damaged write: fingerprinting again costs minutes, not a failure)."""
        data = read_cache_json(path)
        if data is None:
            return None
        try:
            return cls.from_dict(dict(data), path)
        except (VolfnetError, KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("%s: unusable fingerprint (%s); fingerprinting again", path, exc)
            return None


CaseFingerprint = tuple[str, list[float], list[int], float, list[np.ndarray]]


def samples_per_case(num_cases: int) -> int:
    return max(MIN_SAMPLES_PER_CASE, TOTAL_INTENSITY_SAMPLES // max(num_cases, 1))


def fingerprint_arrays(
    case: CaseFiles, image: np.ndarray, geometry: ImageGeometry, seg: np.ndarray | None, num_samples: int, ignore_label: int | None = None
) -> CaseFingerprint:
    """Spacing, cropped shape, crop ratio and foreground intensity samples of one case held
    in memory (image (C, Z, Y, X), seg (1, Z, Y, X) or None). Voxels of the dataset's ignore
    label are not foreground: what they hold is unknown."""
    cropped, cropped_seg, _ = crop_to_nonzero(image, seg)
    ratio = float(np.prod(cropped.shape[1:]) / np.prod(image.shape[1:]))
    foreground = cropped_seg[0] > 0
    if ignore_label is not None:
        foreground &= cropped_seg[0] != ignore_label
    rng = np.random.default_rng(case_seed(case.case_id))
    samples = []
    for channel in cropped:
        values = channel[foreground]
        if values.size:
            values = rng.choice(values, size=num_samples, replace=True)
        samples.append(values.astype(np.float32))
    return case.case_id, geometry.spacing, list(cropped.shape[1:]), ratio, samples


def fingerprint_case(case: CaseFiles, num_samples: int, ignore_label: int | None = None) -> CaseFingerprint:
    """Read one case and fingerprint it."""
    image, geometry, seg = read_raw_case(case)
    if not np.all(np.isfinite(image)):
        raise VolfnetError(f"{case.images[0]}: image contains NaN or infinite values")
    return fingerprint_arrays(case, image, geometry, seg, num_samples, ignore_label)


def extract_fingerprint(
    cases: list[CaseFiles], channel_names: dict[int, str], num_workers: int = 1, progress: bool = True, ignore_label: int | None = None
) -> Fingerprint:
    """Fingerprint the training cases (in parallel; a worker's error names its case)."""
    if not cases:
        raise VolfnetError("cannot fingerprint a dataset without training cases")
    start = time.perf_counter()
    work = functools.partial(fingerprint_case, num_samples=samples_per_case(len(cases)), ignore_label=ignore_label)
    results = parallel_map(work, cases, num_workers, desc="fingerprint", progress=progress)
    logger.info("fingerprinted %d cases in %.1f s", len(cases), time.perf_counter() - start)
    return assemble_fingerprint(results, channel_names)


def assemble_fingerprint(results: list[CaseFingerprint], channel_names: dict[int, str]) -> Fingerprint:
    """Pool the per-case results into the dataset fingerprint."""
    num_channels = len(channel_names)
    per_channel = []
    total = 0
    for c in range(num_channels):
        pooled = np.concatenate([r[4][c] for r in results])
        total = pooled.size
        per_channel.append(IntensityStatistics.of(pooled))
    if total == 0:
        logger.warning("no foreground voxels in any label map: CT normalisation statistics are computed from no voxels and carry no information")
    return Fingerprint(
        case_ids=[r[0] for r in results],
        spacings=[list(r[1]) for r in results],
        shapes_after_crop=[list(r[2]) for r in results],
        crop_ratios=[r[3] for r in results],
        foreground_intensity_per_channel=per_channel,
        median_relative_size_after_cropping=float(np.median([r[3] for r in results])),
        channel_names={str(k): v for k, v in channel_names.items()},
        num_foreground_voxels_sampled=int(total),
    )
