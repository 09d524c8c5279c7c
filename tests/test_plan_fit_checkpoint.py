"""volfnet_plan_and_preprocess --pretrained: plans that rebuild the checkpoint's network.

Released MIS-FM checkpoints are bare PyMIC ``{'model_state_dict': ...}`` files of a 47M-parameter
network. The tests write files with exactly that key layout and those shapes at almost no
cost: the network is built on the meta device, and every tensor is a zero-stride view of one
number (``torch.save`` stores one element; loading gives the full shape)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import pymic_checkpoint
from helpers.raw_data import make_raw_dataset
from helpers.specs import released_layout

from volfnet.checkpoint import CheckpointSpec, save_checkpoint
from volfnet.cli.plan_and_preprocess import main
from volfnet.errors import VolfnetError
from volfnet.networks.build import build_network, build_network_from_topology
from volfnet.networks.fmunet import published_fmunet_topology
from volfnet.networks.pctnet import published_pctnet_topology
from volfnet.networks.topology_inference import infer_topology
from volfnet.planning.fit_checkpoint import read_checkpoint_fit
from volfnet.plans import ChannelNormalization, NetworkTopology, Plans
from volfnet.training.initial_weights import load_initial_weights



def plans_of(roots, dataset="Dataset002_Toy") -> Plans:
    return Plans.load(roots["preprocessed"] / dataset / "plans.json")


def test_released_fmunet_layout_at_res_mode_1_fixes_the_network(roots, tmp_path, capsys):
    state = pymic_checkpoint(tmp_path / "fmunet_abk1k_volf.pt", published_fmunet_topology(1))
    published = released_layout("fmunet_resmode1_keys.json")["keys"]  # the real released layout
    assert [(k, list(v.shape)) for k, v in state.items()] == [(k, s) for k, s, _ in published]
    make_raw_dataset(roots["raw"], dataset_id=2, num_cases=3, shape=(20, 40, 44), spacing=(2.0, 1.0, 1.0))
    assert main(["-d", "2", "--pretrained", str(tmp_path / "fmunet_abk1k_volf.pt"), "--target", "cpu", "-np", "1"]) == 0
    plans = plans_of(roots)
    assert list(plans.configurations) == ["3d_fullres"]  # no cascade: one network to fit
    plan = plans.configuration("3d_fullres")
    assert plan.network == published_fmunet_topology(1)
    assert all(p % d == 0 for p, d in zip(plan.patch_size, [8, 16, 16]))
    assert plan.spacing == [2.0, 1.0, 1.0]  # the dataset's own
    report = json.loads((roots["preprocessed"] / "Dataset002_Toy" / "checkpoint_fit.json").read_text())
    assert report["inferred"] and report["num_classes"] == 5
    assert "published FMUNet topology with res_mode 1" in report["notes"][1]
    assert any("146 keys and shapes" in note for note in report["notes"])
    assert "case(s) preprocessed" in capsys.readouterr().out
    # The planned network takes every weight but the 5-class heads (meta device: shapes only).
    with torch.device("meta"):
        model = build_network(plans, "3d_fullres", 1, 3)
    expected = model.state_dict()
    assert [k for k in state if state[k].shape != expected[k].shape] == [f"out_layers.{i}.2.{p}" for i in range(4) for p in ("weight", "bias")]


def test_released_pctnet_layout_resolution_mode_from_the_trained_branch(roots, tmp_path):
    pymic_checkpoint(tmp_path / "pctnet_ct10k_volf.pt", published_pctnet_topology(2), trained_branch=2)
    fit = read_checkpoint_fit(tmp_path / "pctnet_ct10k_volf.pt")
    assert fit.inferred and fit.topology == published_pctnet_topology(2) and fit.num_classes == 5
    assert any("resolution_mode 2: the only input branch" in note for note in fit.notes)
    # No trained branch: the demo's mode 1 when its network reproduces the shapes; mode 0 clips
    # the deepest Swin window (4^3 tokens at 64x128x128), so a mode-0 file is told apart.
    for mode in (1, 0):
        pymic_checkpoint(tmp_path / "untrained.pt", published_pctnet_topology(mode))
        untrained = read_checkpoint_fit(tmp_path / "untrained.pt")
        assert untrained.topology == published_pctnet_topology(mode) and any("no input branch" in note for note in untrained.notes)
    make_raw_dataset(roots["raw"], dataset_id=2, num_cases=2, shape=(16, 20, 20))
    assert main(["-d", "2", "--pretrained", str(tmp_path / "pctnet_ct10k_volf.pt"), "--target", "gpu8", "-np", "1", "--plan-only"]) == 0
    plan = plans_of(roots).configuration("3d_fullres")
    assert plan.network == published_pctnet_topology(2) and plan.patch_size == [64, 128, 128]  # its fixed input size
    with pytest.raises(VolfnetError, match="cannot differ"):
        from volfnet.planning.plan_and_preprocess import (
            PlanAndPreprocessRequest,
            plan_and_preprocess,
        )
        from volfnet.planning.planner import PlannerOptions

        plan_and_preprocess(PlanAndPreprocessRequest(
            "2", PlannerOptions(patch_size=[32, 64, 64]), pretrained=tmp_path / "pctnet_ct10k_volf.pt",
            num_workers=1, progress=False, plan_only=True,
        ))


def tiny_spec(normalization: str, in_channels: int = 1) -> CheckpointSpec:
    topology = NetworkTopology("fmunet", [4, 8, 16], [[1, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [0.0, 0.0, 0.0])
    norm = ChannelNormalization(normalization) if normalization != "ct" else ChannelNormalization("ct", False, -100.0, 300.0, 40.0, 80.0)
    return CheckpointSpec("volf_pretraining", topology, in_channels, 5, [8, 32, 32], [2.0, 1.0, 1.0], [norm], dataset_name="Dataset001_Pool")


def save_volfnet_checkpoint(path: Path, spec: CheckpointSpec) -> None:
    network = build_network_from_topology(spec.network, spec.num_input_channels, spec.num_classes, deep_supervision=True)
    save_checkpoint(path, {"model_state_dict": network.state_dict(), "spec": spec.to_dict()})


def test_volfnet_checkpoint_spec_fixes_topology_and_normalisation_family(roots, tmp_path):
    save_volfnet_checkpoint(tmp_path / "pool.pt", tiny_spec("rescale_0_1"))
    make_raw_dataset(roots["raw"], dataset_id=2, num_cases=3, shape=(20, 40, 44), spacing=(2.0, 1.0, 1.0))
    assert main(["-d", "2", "--pretrained", str(tmp_path / "pool.pt"), "--target", "cpu", "-np", "1"]) == 0
    plans = plans_of(roots)
    plan = plans.configuration("3d_fullres")
    assert plan.network == tiny_spec("rescale_0_1").network
    assert [n.scheme for n in plan.normalization] == ["rescale_0_1"]  # the MR channel would plan zscore
    report = json.loads((roots["preprocessed"] / "Dataset002_Toy" / "checkpoint_fit.json").read_text())
    assert not report["inferred"] and report["kind"] == "volf_pretraining"
    # What volfnet_train --pretrained checks: the topology matches and the encoder loads completely.
    target = dataclasses.replace(tiny_spec("rescale_0_1"), kind="segmentation", num_classes=3, patch_size=plan.patch_size)
    model = build_network(plans, "3d_fullres", 1, 3)
    report = load_initial_weights(model, tmp_path / "pool.pt", target)
    assert sorted({k.rsplit(".", 2)[0] for k in report.skipped}) == ["out_layers.0", "out_layers.1"]


def test_ct_checkpoint_on_mr_data_keeps_the_dataset_normalisation(roots, tmp_path, caplog):
    save_volfnet_checkpoint(tmp_path / "ct.pt", tiny_spec("ct"))
    make_raw_dataset(roots["raw"], dataset_id=2, num_cases=3, shape=(20, 40, 44), spacing=(2.0, 1.0, 1.0))
    assert main(["-d", "2", "--pretrained", str(tmp_path / "ct.pt"), "--target", "cpu", "--plan-only"]) == 0
    assert [n.scheme for n in plans_of(roots).configuration("3d_fullres").normalization] == ["zscore"]
    assert "the modalities differ" in caplog.text


def test_checkpoints_that_cannot_fit_are_clear_errors(roots, tmp_path, capsys):
    make_raw_dataset(roots["raw"], dataset_id=2, num_cases=2, shape=(16, 20, 20))
    save_volfnet_checkpoint(tmp_path / "two_channels.pt", tiny_spec("zscore", in_channels=2))
    assert main(["-d", "2", "--pretrained", str(tmp_path / "two_channels.pt"), "--plan-only"]) == 2
    assert "takes 2 input channels, the dataset has 1" in capsys.readouterr().err
    torch.save({"model_state_dict": {"backbone.conv.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    assert main(["-d", "2", "--pretrained", str(tmp_path / "other.pt"), "--plan-only"]) == 2
    assert "neither an FMUNet nor a PCT-Net state dict" in capsys.readouterr().err
    assert main(["-d", "2", "--pretrained", str(tmp_path / "other.pt"), "--network", "pctnet"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    state = pymic_checkpoint(tmp_path / "cut.pt", published_fmunet_topology(0))
    state.pop("decoder.de_conv0.conv_list.1.3.weight")
    with pytest.raises(VolfnetError, match="does not reproduce the checkpoint's weights"):
        infer_topology(state, "cut.pt")
