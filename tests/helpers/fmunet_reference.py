"""A deterministic FMUNet and input whose outputs were recorded from PyMIC's own FMUNet, shared by
tests/test_networks_fmunet.py (which compares volfnet's outputs with the recording) and
benchmarks/networks/make_pymic_reference.py (which makes the recording)."""

from __future__ import annotations

import math

import torch

from volfnet.networks.fmunet import FMUNet, published_fmunet_topology

REFERENCE_CHANNELS = (4, 8, 16, 32, 64)
REFERENCE_INPUT_SHAPE = (1, 1, 16, 32, 32)
REFERENCE_SAMPLE_INDICES = (0, 1234, 4321, 9999, 17000, 25000, 40000)


def seeded_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic, non-trivial weights in state-dict order (norm scales near 1, He-scaled
    convolutions, small biases), so a reference output can be reproduced anywhere."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        noise = torch.randn(tensor.shape, generator=generator)
        if tensor.dim() > 1:
            state[name] = noise * math.sqrt(2.0 / (tensor[0].numel()))
        elif name.endswith(".0.weight"):
            state[name] = 1.0 + 0.1 * noise
        else:
            state[name] = 0.1 * noise
    return state


def reference_input(seed: int = 1) -> torch.Tensor:
    """The recorded input: seeded standard normal noise of REFERENCE_INPUT_SHAPE."""
    return torch.randn(REFERENCE_INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


def reference_model(res_mode: int) -> FMUNet:
    """The recorded network: FMUNet of REFERENCE_CHANNELS at ``res_mode``, 5 classes, seeded weights, eval mode."""
    model = FMUNet.from_topology(published_fmunet_topology(res_mode, REFERENCE_CHANNELS), 1, 5).eval()
    model.load_state_dict(seeded_state(model))
    return model


def output_summary(outputs: list[torch.Tensor]) -> list[dict[str, object]]:
    """Sum, absolute sum and a few sampled values of each output (what the reference stores)."""
    summary = []
    for out in outputs:
        flat = out.detach().double().flatten()
        samples = [float(flat[i % flat.numel()]) for i in REFERENCE_SAMPLE_INDICES]
        summary.append({"shape": list(out.shape), "sum": float(flat.sum()), "abs_sum": float(flat.abs().sum()), "samples": samples})
    return summary
