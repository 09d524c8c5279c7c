"""The planner on hand-made fingerprints: isotropic CT, thick-slice MR, tiny MR, multi-channel,
CPU vs GPU targets, PCT-Net, and user overrides. Costs come from the real networks."""

import numpy as np
import pytest
from helpers.planning import dataset_json, fingerprint, plan

from volfnet.errors import VolfnetError
from volfnet.planning.cost import measure_cost


def test_isotropic_ct_on_the_default_gpu_target():
    rng = np.random.default_rng(0)
    spacings = [[rng.uniform(0.8, 1.2), 0.8, 0.8] for _ in range(30)]
    shapes = [[rng.integers(250, 350), 420, 420] for _ in range(30)]
    plans = plan(fingerprint(spacings, shapes))
    full = plans.configuration("3d_fullres")
    assert plans.transpose_forward == [0, 1, 2]
    assert full.network.name == "fmunet" and full.network.feature_channels == [32, 64, 128, 256, 512]
    assert full.network.strides == [[2, 2, 2]] * 4  # the published FMUNet topology
    assert full.normalization[0].scheme == "ct" and full.normalization[0].clip_lower == -900.0
    cost = measure_cost(full.network, full.patch_size, 1, 3)
    assert cost.gpu_memory_gb(full.batch_size) <= 8.0
    assert cost.gpu_memory_gb(full.batch_size + 1) > 8.0 or full.batch_size == 64  # the batch fills the budget
    assert all(p % 16 == 0 for p in full.patch_size)
    # a large CT volume needs a low-resolution configuration too
    assert "3d_lowres" in plans.configurations
    low = plans.configuration("3d_lowres")
    assert all(lo > hi for lo, hi in zip(low.spacing, full.spacing))
    assert np.prod(low.patch_size) / np.prod(low.median_shape) >= 0.25
    assert full.batch_dice is True


def test_thick_slice_mr_gets_anisotropic_first_levels_and_in_plane_augmentation():
    spacings = [[5.0, 1.5, 1.5]] * 6 + [[6.0, 1.5, 1.5]] * 4
    shapes = [[20, 240, 240]] * 10
    plans = plan(fingerprint(spacings, shapes, channels=("cine",)), dataset_json(("cine",)), lowres=False)
    full = plans.configuration("3d_fullres")
    assert full.spacing[0] == pytest.approx(5.0)  # 10th percentile of the thick axis
    assert full.network.kernel_sizes[0] == [1, 3, 3] and full.network.strides[0] == [1, 2, 2]
    assert full.normalization[0].scheme == "zscore"
    assert full.patch_size[0] <= 24 and full.dummy_2d_augmentation


def test_thick_axis_last_is_transposed_to_the_front():
    plans = plan(fingerprint([[0.7, 0.7, 4.0]] * 8, [[300, 300, 40]] * 8, channels=("T2",)), dataset_json(("T2",)), lowres=False)
    assert plans.transpose_forward == [2, 0, 1]
    assert plans.configuration("3d_fullres").spacing[0] == pytest.approx(4.0)


def test_tiny_hippocampus_like_volumes_on_the_cpu_target():
    rng = np.random.default_rng(1)
    shapes = [[rng.integers(30, 42), rng.integers(45, 56), rng.integers(30, 40)] for _ in range(50)]
    plans = plan(fingerprint([[1.0, 1.0, 1.0]] * 50, shapes, channels=("MRI",)), dataset_json(("MRI",)), compute_target="cpu")
    full = plans.configuration("3d_fullres")
    assert "3d_lowres" not in plans.configurations  # the patch covers the whole median image
    assert full.network.feature_channels[0] == 16 and max(full.network.feature_channels) <= 256
    cost = measure_cost(full.network, full.patch_size, 1, 3)
    assert cost.training_gflop(full.batch_size) <= 60.0  # the CPU budget per step
    assert all(p <= m + 8 for p, m in zip(full.patch_size, full.median_shape))
    assert full.batch_size >= 2


def test_cpu_plans_are_much_cheaper_than_gpu_plans():
    spacings, shapes = [[1.0, 0.8, 0.8]] * 10, [[200, 400, 400]] * 10
    gpu = plan(fingerprint(spacings, shapes), lowres=False).configuration("3d_fullres")
    cpu = plan(fingerprint(spacings, shapes), compute_target="cpu", lowres=False).configuration("3d_fullres")
    gpu_cost = measure_cost(gpu.network, gpu.patch_size, 1, 3).training_gflop(gpu.batch_size)
    cpu_cost = measure_cost(cpu.network, cpu.patch_size, 1, 3).training_gflop(cpu.batch_size)
    assert cpu_cost < gpu_cost / 10


def test_cpu_small_target_is_a_tenth_of_the_cpu_budget_at_quarter_width():
    spacings, shapes = [[1.0, 0.8, 0.8]] * 10, [[200, 400, 400]] * 10
    cpu = plan(fingerprint(spacings, shapes), compute_target="cpu", lowres=False).configuration("3d_fullres")
    small = plan(fingerprint(spacings, shapes), compute_target="cpu_small", lowres=False).configuration("3d_fullres")
    assert small.network.feature_channels[0] == 8 and max(small.network.feature_channels) <= 64
    small_cost = measure_cost(small.network, small.patch_size, 1, 3).training_gflop(small.batch_size)
    cpu_cost = measure_cost(cpu.network, cpu.patch_size, 1, 3).training_gflop(cpu.batch_size)
    assert small_cost <= 6.0 and small_cost < cpu_cost / 5
    assert small.batch_size >= 2 and all(p >= 16 for p in small.patch_size)


def test_multichannel_brain_mr_uses_masked_zscore_per_channel():
    fp = fingerprint([[1.0, 1.0, 1.0]] * 10, [[140, 170, 140]] * 10, channels=("T1", "T1c", "T2", "FLAIR"), crop_ratio=0.5)
    plans = plan(fp, dataset_json(("T1", "T1c", "T2", "FLAIR"), num_labels=3), lowres=False)
    norms = plans.configuration("3d_fullres").normalization
    assert [n.scheme for n in norms] == ["zscore"] * 4
    assert all(n.use_mask for n in norms)  # cropping removed half the image: skull-stripped
    assert plans.num_input_channels == 4


def test_pctnet_plans_fix_the_input_size_to_the_patch():
    plans = plan(fingerprint([[2.0, 0.8, 0.8]] * 10, [[120, 300, 300]] * 10), network="pctnet")
    full = plans.configuration("3d_fullres")
    assert full.network.name == "pctnet" and full.network.input_size == full.patch_size
    assert full.network.resolution_mode == 1
    assert full.patch_size[0] % 8 == 0 and full.patch_size[1] % 16 == 0
    assert "3d_lowres" not in plans.configurations  # PCT-Net has one fixed input size


def test_user_overrides_win():
    fp = fingerprint([[1.0, 1.0, 1.0]] * 10, [[100, 100, 100]] * 10)
    plans = plan(fp, target_spacing=[2.0, 2.0, 2.0], patch_size=[32, 48, 48], batch_size=3, base_features=8, max_features=64, lowres=False)
    full = plans.configuration("3d_fullres")
    assert full.spacing == [2.0, 2.0, 2.0] and full.median_shape == [50, 50, 50]
    assert full.patch_size == [32, 48, 48] and full.batch_size == 3
    assert full.network.feature_channels == [8, 16, 32, 64]  # 32 voxels pool three times
    with pytest.raises(VolfnetError, match="divisible"):
        plan(fp, patch_size=[30, 48, 48])
    with pytest.raises(VolfnetError, match="unknown compute target"):
        plan(fp, compute_target="tpu")


@pytest.mark.parametrize(
    "spacing,patch,base,depth,dropout",
    [
        ([1.0, 1.0, 1.0], [40, 56, 40], 16, 2, 0.0),
        ([3.0, 1.0, 1.0], [24, 96, 80], 16, 2, 0.2),
        ([1.0, 1.0, 1.0], [20, 30, 22], 8, 1, 0.1),  # not divisible by the total stride
        ([5.0, 0.8, 0.8], [12, 80, 64], 8, 3, 0.0),  # in-plane-only first levels
    ],
)
def test_fmunet_closed_form_cost_equals_the_measured_network(spacing, patch, base, depth, dropout):
    import dataclasses

    from volfnet.planning.cost import _measure
    from volfnet.planning.topology import fmunet_topology

    topology = fmunet_topology(spacing, patch, base, 256)
    topology = dataclasses.replace(topology, depth=depth, dropout=[dropout] * topology.num_levels)
    assert measure_cost(topology, patch, 2, 4) == _measure(topology, patch, 2, 4)


def test_planning_an_fmunet_does_not_import_torch():
    """The closed-form cost keeps torch out of planning: a fresh interpreter plans a dataset
    fingerprint without loading it (seconds saved on every plan)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from volfnet.planning.cost import measure_cost\n"
        "from volfnet.planning.topology import fmunet_topology\n"
        "cost = measure_cost(fmunet_topology([1.0, 1.0, 1.0], [40, 56, 40], 32, 320), [40, 56, 40], 1, 3)\n"
        "assert cost.forward_flops > 0\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
