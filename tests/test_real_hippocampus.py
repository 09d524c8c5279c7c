"""Real data: MSD Hippocampus converted, checked, planned and preprocessed (a subset, to stay fast)."""

import numpy as np
import pytest
from helpers.raw_data import SHARED_DATA

from volfnet.io.image_io import read_image
from volfnet.io.msd import convert_msd_dataset
from volfnet.planning.plan_and_preprocess import PlanAndPreprocessRequest, plan_and_preprocess
from volfnet.planning.planner import PlannerOptions
from volfnet.io.case_store import list_preprocessed_cases, load_case

HIPPOCAMPUS = SHARED_DATA / "Task04_Hippocampus"
pytestmark = pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=f"real data not found at {HIPPOCAMPUS}")


@pytest.mark.slow
def test_hippocampus_subset_end_to_end(roots):
    folder = convert_msd_dataset(HIPPOCAMPUS, roots["raw"], case_limit=24)
    result = plan_and_preprocess(PlanAndPreprocessRequest("4", PlannerOptions(compute_target="cpu"), num_workers=2, progress=False))
    config = result.plans.configuration("3d_fullres")
    assert config.spacing == [1.0, 1.0, 1.0]
    assert config.normalization[0].scheme == "zscore"  # MRI: per-image z-score
    assert list(result.plans.configurations) == ["3d_fullres", "2d"]  # no low-resolution stage for tiny images; 2d as always
    assert np.prod(config.patch_size) >= 0.5 * np.prod(config.median_shape)
    cases = list_preprocessed_cases(result.output_folder / "3d_fullres")
    assert len(cases) == 24
    image, seg, properties = load_case(result.output_folder / "3d_fullres", cases[0])
    raw, geometry = read_image(folder / "imagesTr" / f"{cases[0]}_0000.nii.gz")
    assert properties.original_geometry == geometry
    assert set(np.unique(seg)) <= {-1, 0, 1, 2} and {1, 2} <= set(properties.class_locations)
    inside = seg[0] >= 0
    assert abs(float(image[0][inside].mean())) < 0.05  # z-scored over the cropped image
