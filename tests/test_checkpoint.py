"""The checkpoint format: safe loading, atomic saving, spec round trip, clear errors."""

import collections

import pytest
import torch

from volfnet.checkpoint import CHECKSUM_KEY, CheckpointSpec, checkpoint_spec, load_checkpoint, save_checkpoint, weights_checksum
from volfnet.errors import VolfnetError
from volfnet.plans import ChannelNormalization, NetworkTopology


class ForeignObject:
    """A class that weights_only loading must refuse."""


def make_spec() -> CheckpointSpec:
    topology = NetworkTopology("fmunet", [8, 16, 32], [[2, 2, 2], [2, 2, 2]], [[3, 3, 3]] * 3, [0.0, 0.0, 0.2])
    return CheckpointSpec("segmentation", topology, 1, 3, [32, 32, 32], [1.0, 1.0, 1.0], [ChannelNormalization("zscore")], labels={"background": 0, "a": 1, "b": 2})


def test_round_trip_with_spec_and_optimizer_state(tmp_path):
    model = torch.nn.Conv3d(1, 2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 1, 4, 4, 4)).sum().backward()
    optimizer.step()
    path = tmp_path / "checkpoint_final.pt"
    save_checkpoint(path, {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(), "iteration": 7, "spec": make_spec().to_dict(), "logs": {"loss": [1.0, 0.5]}})
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 7 and loaded["logs"]["loss"] == [1.0, 0.5]
    assert torch.equal(loaded["model_state_dict"]["weight"], model.weight)
    assert checkpoint_spec(loaded) == make_spec()
    assert not list(tmp_path.glob(".*.tmp"))


def test_pymic_layout_and_bare_state_dict_load(tmp_path):
    state = collections.OrderedDict(weight=torch.zeros(2, 1, 3, 3, 3))
    torch.save({"iteration": 100, "model_state_dict": state, "optimizer_state_dict": {}}, tmp_path / "pymic.pt")
    assert checkpoint_spec(load_checkpoint(tmp_path / "pymic.pt")) is None
    torch.save(state, tmp_path / "bare.pt")
    assert set(load_checkpoint(tmp_path / "bare.pt")["model_state_dict"]) == {"weight"}


def test_corrupt_and_foreign_files_are_named(tmp_path):
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, {"model_state_dict": {"w": torch.ones(100)}})
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(VolfnetError, match="truncated.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"model_state_dict": {}, "object": ForeignObject()}, foreign)
    with pytest.raises(VolfnetError, match="foreign.pt: refused to load"):
        load_checkpoint(foreign)
    with pytest.raises(VolfnetError, match="missing.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(VolfnetError, match="no 'model_state_dict'"):
        load_checkpoint(tmp_path / "other.pt")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pt"
    save_checkpoint(path, {"model_state_dict": {"w": torch.ones(3)}, "iteration": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(VolfnetError, match="No space left on device; the previous checkpoint"):
        save_checkpoint(path, {"model_state_dict": {"w": torch.zeros(3)}, "iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_saved_checkpoints_carry_a_checksum_of_the_weights(tmp_path):
    path = tmp_path / "checkpoint_final.pt"
    weights = {"conv.weight": torch.randn(2, 1, 3, 3, 3), "conv.bias": torch.zeros(2), "norm.num_batches_tracked": torch.tensor(3)}
    save_checkpoint(path, {"model_state_dict": weights})
    stored = torch.load(path, weights_only=True)
    assert stored[CHECKSUM_KEY] == weights_checksum(weights) and len(stored[CHECKSUM_KEY]) == 64
    assert weights_checksum({**weights, "conv.bias": torch.ones(2)}) != stored[CHECKSUM_KEY]


def test_a_changed_weight_byte_is_refused_as_corrupt(tmp_path):
    path = tmp_path / "checkpoint_best.pt"
    save_checkpoint(path, {"model_state_dict": {"conv.weight": torch.ones(2, 1, 3, 3, 3), "conv.bias": torch.zeros(2)}, "spec": make_spec().to_dict()})
    data = torch.load(path, weights_only=True)
    data["model_state_dict"]["conv.weight"].view(-1).view(torch.uint8)[5] ^= 0x01  # one byte of 1.0's mantissa: still finite
    assert bool(torch.isfinite(data["model_state_dict"]["conv.weight"]).all())
    torch.save(data, path)  # the stored checksum is kept
    with pytest.raises(VolfnetError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: corrupt checkpoint: its weights do not match the checksum stored when it was written")


def test_nan_or_inf_weights_are_refused_on_load_and_on_save(tmp_path):
    weights = {"conv.weight": torch.ones(2, 1, 3, 3, 3), "conv.bias": torch.tensor([0.0, float("nan")])}
    volfnet = tmp_path / "volfnet.pt"  # a checksum that matches: the weights themselves are the problem
    torch.save({"format": "volfnet-checkpoint", "version": 1, "model_state_dict": weights, CHECKSUM_KEY: weights_checksum(weights)}, volfnet)
    torch.save({"model_state_dict": weights, "iteration": 10}, tmp_path / "pymic.pt")
    torch.save({"conv.weight": torch.full((2,), float("inf")), "conv.bias": torch.zeros(2)}, tmp_path / "bare.pt")
    for name, key in (("volfnet.pt", "conv.bias"), ("pymic.pt", "conv.bias"), ("bare.pt", "conv.weight")):
        with pytest.raises(VolfnetError) as caught:
            load_checkpoint(tmp_path / name)
        assert str(caught.value).startswith(f"{tmp_path / name}: weight tensor {key!r} holds NaN/inf"), str(caught.value)

    path = tmp_path / "checkpoint_latest.pt"
    save_checkpoint(path, {"model_state_dict": {"w": torch.ones(3)}, "iteration": 1})
    before = path.read_bytes()
    with pytest.raises(VolfnetError, match=r"refused to write .*checkpoint_latest.pt: weight tensor 'w' holds NaN/inf; the previous checkpoint"):
        save_checkpoint(path, {"model_state_dict": {"w": torch.tensor([1.0, float("inf"), 0.0])}, "iteration": 2})
    assert path.read_bytes() == before


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    """Checkpoints written by volfnet before checksums existed (same format version)."""
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"model_state_dict": {"w": torch.arange(4.0)}, "spec": make_spec().to_dict()})
    data = torch.load(path, weights_only=True)
    del data[CHECKSUM_KEY]
    torch.save(data, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model_state_dict"]["w"], torch.arange(4.0)) and checkpoint_spec(loaded) == make_spec()


def test_fine_tuning_reads_pretrained_weights_through_the_verified_loader(tmp_path):
    """``volfnet_train --pretrained`` (load_initial_weights) verifies the checksum and the
    finiteness of the pretrained file like every other load: a damaged file is refused before
    a single weight is copied into the network."""
    from helpers.training import tiny_plans

    from volfnet.networks.build import build_network_from_topology
    from volfnet.training.initial_weights import load_initial_weights

    topology = tiny_plans().configurations["3d_fullres"].network
    source = build_network_from_topology(topology, 1, 3, deep_supervision=True)
    path = tmp_path / "pretrained.pt"
    save_checkpoint(path, {"model_state_dict": source.state_dict()})
    data = torch.load(path, weights_only=True)
    key = next(k for k, v in data["model_state_dict"].items() if v.is_floating_point() and v.numel() > 8)
    data["model_state_dict"][key].view(-1)[3] += 1.0  # a bit flipped on disk, the stored checksum kept
    torch.save(data, path)
    model = build_network_from_topology(topology, 1, 3, deep_supervision=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(VolfnetError, match=f"{path}: corrupt checkpoint"):
        load_initial_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
