"""Weight loading: PyMIC/MIS-FM checkpoint layout, partial loads and their report,
encoder-only loading, input-channel adaptation, wrapper prefixes and bad files."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch
from helpers.specs import released_layout

from volfnet.errors import VolfnetError
from volfnet.networks.fmunet import FMUNet, published_fmunet_topology
from volfnet.networks.pctnet import PCTNet, published_pctnet_topology
from volfnet.networks.weights import adapt_input_channels, load_weights, read_state_dict

SMALL = (2, 4, 8, 8, 8)


def small_fmunet(classes: int = 5, in_channels: int = 1, seed: int = 0) -> FMUNet:
    torch.manual_seed(seed)
    return FMUNet.from_topology(published_fmunet_topology(0, SMALL), in_channels, classes)


def save_pymic_checkpoint(model: torch.nn.Module, path) -> None:
    """The layout PyMIC's agent writes: iteration, validation score, model and optimiser state."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    outputs = model(torch.randn(1, 1, 16, 16, 32))
    sum(o.mean() for o in (outputs if isinstance(outputs, list) else [outputs])).backward()
    optimizer.step()
    torch.save(
        {
            "iteration": 1000,
            "valid_pred": 0.8,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
        },
        path,
    )


def test_small_models_use_the_published_key_names():
    assert list(small_fmunet().state_dict()) == [k for k, _, _ in released_layout("fmunet_keys.json")["keys"]]


def test_pymic_checkpoint_loads_every_tensor_unchanged(tmp_path):
    source = small_fmunet(seed=1)
    save_pymic_checkpoint(source, tmp_path / "fmunet_volf.pt")
    target = small_fmunet(seed=2)
    report = load_weights(target, tmp_path / "fmunet_volf.pt")
    assert report.loaded == list(source.state_dict())
    assert report.skipped == {} and report.missing == [] and report.adapted_input_channels == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    x = torch.randn(1, 1, 16, 16, 32)
    source.eval(), target.eval()
    with torch.no_grad():
        assert torch.equal(source(x)[0], target(x)[0])


def test_different_class_count_skips_only_the_final_convolutions(tmp_path, caplog):
    save_pymic_checkpoint(small_fmunet(classes=5), tmp_path / "pretrained.pt")
    target = small_fmunet(classes=2)
    with caplog.at_level(logging.INFO, logger="volfnet.networks.weights"):
        report = load_weights(target, tmp_path / "pretrained.pt")
    expected = sorted(f"out_layers.{i}.2.{p}" for i in range(4) for p in ("weight", "bias"))
    assert sorted(report.skipped) == expected == sorted(report.missing)
    assert report.skipped["out_layers.0.2.weight"] == "shape [5, 2, 3, 3, 3] in the checkpoint, [2, 2, 3, 3, 3] in the network"
    assert "out_layers.0.0.weight" in report.loaded
    assert len(report.loaded) == len(target.state_dict()) - 8
    assert "8 skipped" in caplog.text and "skipped out_layers.0.2.bias" in caplog.text


def test_pctnet_skips_its_seven_heads_only():
    topology = published_pctnet_topology(1, (8, 32, 32), feature_channels=(4, 8, 16, 16, 32), num_heads=(2, 2, 4), window_size=2)
    source = PCTNet.from_topology(topology, 1, 5)
    target = PCTNet.from_topology(topology, 1, 2)
    report = load_weights(target, {"model_state_dict": source.state_dict()})
    heads = [f"pyramid_ct.out_conv{i}.conv.2" for i in (2, 3)]
    heads += [f"pred_heads.{b}.out_conv{i}.conv.2" for b in range(3) for i in (0, 1)]
    assert sorted(report.skipped) == sorted(f"{h}.{p}" for h in heads for p in ("weight", "bias"))
    assert len(report.loaded) == len(source.state_dict()) - 16


def test_encoder_only_loading_leaves_decoder_and_heads_untouched(tmp_path):
    source = small_fmunet(seed=1)
    target = small_fmunet(seed=2)
    decoder_before = target.decoder.de_conv0.conv_list[0][3].weight.detach().clone()
    report = load_weights(target, source.state_dict(), encoder_only=True)
    assert report.loaded and all(k.startswith(("project.", "encoder.")) for k in report.loaded)
    assert all(k.startswith(("decoder.", "out_layers.")) for k in report.missing)
    assert report.skipped["decoder.de_conv0.conv_list.0.3.weight"] == "not an encoder weight (encoder-only loading)"
    assert torch.equal(target.encoder.en_conv1.conv_list[0][3].weight, source.encoder.en_conv1.conv_list[0][3].weight)
    assert torch.equal(target.decoder.de_conv0.conv_list[0][3].weight, decoder_before)


def test_input_channel_mismatch_repeats_the_first_convolution(caplog):
    source = small_fmunet(in_channels=1, seed=1).eval()
    target = small_fmunet(in_channels=3, seed=2).eval()
    with caplog.at_level(logging.WARNING, logger="volfnet.networks.weights"):
        report = load_weights(target, source.state_dict())
    assert report.adapted_input_channels == ["project.weight"] and report.skipped == {}
    assert "1 input channel(s), the network has 3" in caplog.text
    x = torch.randn(1, 1, 16, 16, 32)
    with torch.no_grad():
        assert torch.allclose(target(x.repeat(1, 3, 1, 1, 1))[0], source(x)[0], atol=1e-4)


def test_adapt_input_channels_sums_and_divides():
    weight = torch.arange(2 * 2 * 1 * 1 * 1, dtype=torch.float32).view(2, 2, 1, 1, 1)
    adapted = adapt_input_channels(weight, 4)
    assert adapted.shape == (2, 4, 1, 1, 1)
    assert adapted[:, :, 0, 0, 0].tolist() == [[0.25] * 4, [1.25] * 4]


def test_wrapper_prefixes_are_stripped_and_bare_state_dicts_load(tmp_path):
    source = small_fmunet(seed=1)
    wrapped = {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}
    torch.save(wrapped, tmp_path / "bare.pt")
    state, name = read_state_dict(tmp_path / "bare.pt")
    assert list(state) == list(source.state_dict()) and name == str(tmp_path / "bare.pt")
    report = load_weights(small_fmunet(seed=2), tmp_path / "bare.pt")
    assert len(report.loaded) == len(source.state_dict())


def test_bad_files_raise_errors_naming_the_file(tmp_path):
    with pytest.raises(VolfnetError, match="missing.pt: checkpoint file not found"):
        load_weights(small_fmunet(), tmp_path / "missing.pt")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(VolfnetError, match="noise.pt: not a readable PyTorch checkpoint"):
        load_weights(small_fmunet(), tmp_path / "noise.pt")
    save_pymic_checkpoint(small_fmunet(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(VolfnetError, match="truncated.pt: not a readable PyTorch checkpoint"):
        load_weights(small_fmunet(), tmp_path / "truncated.pt")
    torch.save(argparse.Namespace(weights=1), tmp_path / "object.pt")
    with pytest.raises(VolfnetError, match="object.pt: refused to load.*weights_only=True"):
        load_weights(small_fmunet(), tmp_path / "object.pt")


def test_foreign_content_raises(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(VolfnetError, match="tensor.pt: not a model checkpoint: it holds a Tensor"):
        load_weights(small_fmunet(), tmp_path / "tensor.pt")
    torch.save({"iteration": 3, "lr": 0.1}, tmp_path / "log.pt")
    with pytest.raises(VolfnetError, match=r"log.pt: not a model checkpoint: .*\['iteration', 'lr'\]"):
        load_weights(small_fmunet(), tmp_path / "log.pt")
    torch.save({"model_state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    with pytest.raises(VolfnetError, match="other.pt: none of its 1 tensors matches a weight of FMUNet"):
        load_weights(small_fmunet(), tmp_path / "other.pt")
