"""A built-in demo dataset: small synthetic abdominal CT scans with organ labels.

Each scan is a body (soft tissue with fat, a skin line and smooth texture) in air, holding
organ-like structures with plausible Hounsfield units: a liver (label 1), two kidneys with
brighter cortex (label 2), a spine of vertebral bodies with a cortical rim (label 3), plus
unlabelled distractors (bowel gas, a stomach). Shapes are ellipsoids deformed by smooth random
fields, the patient size, position and voxel spacing vary per scan, and the image has
scanner-like noise. Nothing is downloaded; the same seed gives the same scans.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from volfnet.io.files import atomic_write_json
from volfnet.io.image_io import ImageGeometry, write_image

logger = logging.getLogger(__name__)

LABELS = {"background": 0, "liver": 1, "kidney": 2, "spine": 3}
HU = {"air": -1000.0, "fat": -90.0, "muscle": 45.0, "liver": 60.0, "kidney": 30.0, "cortex": 150.0, "bone": 700.0, "marrow": 250.0, "gas": -700.0, "stomach": 15.0}
NOISE_HU = 15.0  # typical quantum noise of a soft-tissue CT kernel


@dataclass
class SyntheticCase:
    image: np.ndarray  # (Z, Y, X) float32 HU
    label: np.ndarray  # (Z, Y, X) uint8
    geometry: ImageGeometry


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, sigma: float, amplitude: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    field /= max(float(np.abs(field).max()), 1e-6)
    return field * amplitude


def _ellipsoid(grid: tuple[np.ndarray, ...], centre, radii, deformation: np.ndarray | float) -> np.ndarray:
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    return distance + deformation < 1.0


def make_case(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> SyntheticCase:
    """One synthetic scan. Coordinates are in mm so organs keep their size across spacings."""
    z, y, x = (np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing))
    grid = np.meshgrid(z, y, x, indexing="ij")
    extent = np.array(shape) * np.array(spacing)
    centre = extent / 2 + rng.uniform(-0.05, 0.05, 3) * extent
    wobble = _smooth_field(shape, rng, sigma=4.0, amplitude=0.25)

    image = np.full(shape, HU["air"], np.float32)
    label = np.zeros(shape, np.uint8)
    body_radii = (extent[0] * 0.8, extent[1] * rng.uniform(0.33, 0.42), extent[2] * rng.uniform(0.40, 0.46))
    body = _ellipsoid(grid, centre, body_radii, 0.1 * wobble)
    inner = _ellipsoid(grid, centre, [r * 0.88 for r in body_radii], 0.1 * wobble)
    cavity = _ellipsoid(grid, centre, [r * 0.78 for r in body_radii], 0.1 * wobble)
    image[body] = HU["fat"]
    image[inner] = HU["muscle"] + _smooth_field(shape, rng, 2.0, 15.0)[inner]
    # The abdominal cavity: mesenteric fat with smooth soft-tissue texture (bowel loops).
    image[cavity] = HU["fat"] + 40.0 + _smooth_field(shape, rng, 1.5, 60.0)[cavity]

    scale = float(extent[1]) / 100.0  # organ sizes relative to a 100 mm wide toy abdomen
    # Liver: large, on the patient's right (image left), upper half.
    liver_centre = (centre[0] - 0.1 * extent[0], centre[1] - 8 * scale, centre[2] - 18 * scale)
    liver = _ellipsoid(grid, liver_centre, (extent[0] * 0.35, 22 * scale, 20 * scale), _smooth_field(shape, rng, 3.0, 0.35)) & inner
    image[liver] = HU["liver"] + _smooth_field(shape, rng, 1.5, 12.0)[liver]
    label[liver] = LABELS["liver"]

    # Stomach with gas (unlabelled distractor) opposite the liver.
    stomach = _ellipsoid(grid, (centre[0] - 0.15 * extent[0], centre[1] - 10 * scale, centre[2] + 16 * scale), (extent[0] * 0.2, 10 * scale, 9 * scale), _smooth_field(shape, rng, 3.0, 0.3)) & inner & ~liver
    image[stomach] = HU["stomach"]
    gas = stomach & (grid[1] < centre[1] - 14 * scale)
    image[gas] = HU["gas"]

    # Kidneys: bean-like, either side of the spine, cortex brighter than medulla.
    for side in (-1, 1):
        kc = (centre[0] + 0.1 * extent[0] + rng.uniform(-2, 2), centre[1] + 10 * scale, centre[2] + side * 17 * scale)
        radii = (extent[0] * 0.25, 10 * scale, 7 * scale)
        kidney = _ellipsoid(grid, kc, radii, _smooth_field(shape, rng, 2.0, 0.25)) & inner & ~liver
        medulla = _ellipsoid(grid, kc, [r * 0.6 for r in radii], 0.0) & kidney
        image[kidney] = HU["cortex"]
        image[medulla] = HU["kidney"]
        label[kidney] = LABELS["kidney"]

    # Spine: vertebral bodies (disc gaps every ~25 mm) with cortical bone and marrow.
    spine_centre = (centre[1] + 20 * scale, centre[2])
    radial = ((grid[1] - spine_centre[0]) / (7 * scale)) ** 2 + ((grid[2] - spine_centre[1]) / (7 * scale)) ** 2
    disc = np.abs(((grid[0] + rng.uniform(0, 25)) % 25.0) - 12.5) > 11.0
    spine = (radial < 1.0) & ~disc & inner
    marrow = (radial < 0.55) & spine
    image[spine] = HU["bone"]
    image[marrow] = HU["marrow"]
    label[spine] = LABELS["spine"]

    # Scanner noise, slightly blurred (reconstruction kernel), and quantised to integer HU.
    image = image + rng.normal(0.0, NOISE_HU, shape).astype(np.float32)
    image = ndimage.gaussian_filter(image, 0.5)
    image = np.round(image).astype(np.float32)
    geometry = ImageGeometry(spacing=list(map(float, spacing)), origin=[float(v) for v in rng.uniform(-200, 0, 3)], direction=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], shape=list(shape))
    return SyntheticCase(image, label, geometry)


def random_geometry(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Small scans with varying spacing: 2.5-3.5 mm slices, 1.6-2.2 mm in-plane."""
    spacing = (float(rng.uniform(2.5, 3.5)), *(2 * [float(rng.uniform(1.6, 2.2))]))
    physical = (rng.uniform(90, 120), rng.uniform(100, 130), rng.uniform(110, 140))
    shape = tuple(int(round(p / s)) for p, s in zip(physical, spacing))
    return shape, spacing  # type: ignore[return-value]


UNLABELLED_FOLDER = "imagesUnlabelled"  # extra scans without labels, for VolF pretraining (``--images``)
TEST_LABELS_FOLDER = "labelsTs"  # references of the held-out imagesTs cases, for evaluation only


@dataclass(frozen=True)
class DemoDatasetSizes:
    """How many scans of each kind the demo writes."""

    train: int = 12  # imagesTr + labelsTr: what training sees
    test: int = 4  # imagesTs + labelsTs: held out, predicted and evaluated at the end
    unlabelled: int = 16  # imagesUnlabelled: VolF pretraining only


def write_demo_dataset(folder: Path, sizes: DemoDatasetSizes = DemoDatasetSizes(), seed: int = 0) -> Path:
    """Write the demo dataset in nnU-Net v2 raw layout: labelled training scans in
    imagesTr/labelsTr, held-out labelled scans in imagesTs (references in labelsTs) and
    unlabelled scans in imagesUnlabelled. A complete dataset (its dataset.json, written last,
    exists) is kept as it is."""
    marker = folder / "dataset.json"
    if marker.is_file():
        logger.info("demo dataset already at %s", folder)
        return folder
    rng = np.random.default_rng(seed)
    kinds = ["train"] * sizes.train + ["test"] * sizes.test + ["unlabelled"] * sizes.unlabelled
    for index, kind in enumerate(tqdm(kinds, desc="synthetic scans", unit="scan")):
        shape, spacing = random_geometry(rng)
        case = make_case(rng, shape, spacing)
        case_id = f"demo_{index:03d}"
        image_folder = {"train": "imagesTr", "test": "imagesTs", "unlabelled": UNLABELLED_FOLDER}[kind]
        write_image(case.image, case.geometry, folder / image_folder / f"{case_id}_0000.nii.gz")
        if kind != "unlabelled":
            label_folder = "labelsTr" if kind == "train" else TEST_LABELS_FOLDER
            write_image(case.label, case.geometry, folder / label_folder / f"{case_id}.nii.gz")
    atomic_write_json(
        marker,
        {
            "name": "VolfDemo",
            "description": "synthetic abdominal CT made by volfnet_demo",
            "channel_names": {"0": "CT"},
            "labels": LABELS,
            "numTraining": sizes.train,
            "file_ending": ".nii.gz",
            "licence": "CC0 (synthetic)",
        },
    )
    logger.info("wrote %d training, %d held-out and %d unlabelled synthetic scans to %s", sizes.train, sizes.test, sizes.unlabelled, folder)
    return folder
