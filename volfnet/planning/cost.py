"""What a network costs at a patch size, measured on the real FMUNet/PCT-Net.

The network is built on PyTorch's ``meta`` device (shapes only, no memory, no arithmetic)
and run once: forward hooks add up every leaf module's output elements (the activations
autograd keeps for the backward pass) and ``FlopCounterMode`` counts the FLOPs. So the
planner's budget follows the real architecture, its pre-activation norms, residual adds and
concatenations included, instead of a formula that drifts from the code.

Bytes per activation element: calibrated so that nnU-Net's reference configuration
(PlainConvUNet, 560e6 conv feature-map elements at batch 2, i.e. about 1.7e9 leaf outputs
counting each conv's norm and nonlinearity, measured at about 7.7 GB with mixed precision)
comes out right; ``benchmarks/planner_memory.py`` checks the fp32 CPU figure against a
measured peak.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from volfnet.plans import NetworkTopology

BYTES_PER_ACTIVATION_AMP = 4.5  # fp16 convs, fp32 norms, plus transient buffers (see module docstring)
BYTES_PER_ACTIVATION_FP32 = 6.0  # fp32 activations plus transient backward buffers
BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + two optimiser moments
FIXED_OVERHEAD_GB = 0.8  # CUDA context, cuDNN workspaces, allocator slack
BACKWARD_FLOP_FACTOR = 2.0  # backward costs about twice the forward (input and weight gradients)


@dataclass(frozen=True)
class NetworkCost:
    """Per-sample cost of one training step at a patch size."""

    parameters: int
    activation_elements: int
    forward_flops: int

    def training_gflop(self, batch_size: int) -> float:
        return self.forward_flops * (1 + BACKWARD_FLOP_FACTOR) * batch_size / 1e9

    def gpu_memory_gb(self, batch_size: int) -> float:
        activations = self.activation_elements * batch_size * BYTES_PER_ACTIVATION_AMP
        return (activations + self.parameters * BYTES_PER_PARAMETER) / 1024**3 + FIXED_OVERHEAD_GB

    def cpu_memory_gb(self, batch_size: int) -> float:
        activations = self.activation_elements * batch_size * BYTES_PER_ACTIVATION_FP32
        return (activations + self.parameters * BYTES_PER_PARAMETER) / 1024**3


def _freeze(topology: NetworkTopology) -> tuple:
    return (
        topology.name,
        tuple(topology.feature_channels),
        tuple(map(tuple, topology.strides)),
        tuple(map(tuple, topology.kernel_sizes)),
        tuple(topology.dropout),
        topology.depth,
        tuple(topology.input_size) if topology.input_size else None,
        topology.resolution_mode,
        tuple(topology.num_heads) if topology.num_heads else None,
        topology.window_size,
    )


_CACHE: dict[tuple, NetworkCost] = {}


def measure_cost(topology: NetworkTopology, patch_size: list[int], num_input_channels: int, num_classes: int) -> NetworkCost:
    """Parameters, activation elements and forward FLOPs per sample.

    FMUNet is fully convolutional: with a patch divisible by its total down-sampling, every
    feature map holds ``patch voxels / level down-sampling`` voxels, so activations and FLOPs
    are exactly proportional to the patch volume. It is therefore measured once per topology
    on the smallest valid patch and scaled (the planner's shrink loop tries dozens of patches).
    PCT-Net's window attention pads to whole windows, so it is measured at each patch.
    Results are cached by value.
    """
    divisor = topology.total_downsampling()
    scalable = topology.name == "fmunet" and all(p % d == 0 for p, d in zip(patch_size, divisor))
    reference = [2 * d for d in divisor] if scalable else list(patch_size)
    key = (_freeze(topology), tuple(reference), num_input_channels, num_classes)
    if key not in _CACHE:
        _CACHE[key] = _measure(topology, reference, num_input_channels, num_classes)
    cost = _CACHE[key]
    if not scalable:
        return cost
    scale = math.prod(patch_size) / math.prod(reference)
    return NetworkCost(cost.parameters, round(cost.activation_elements * scale), round(cost.forward_flops * scale))


def _measure(topology: NetworkTopology, patch_size: list[int], num_input_channels: int, num_classes: int) -> NetworkCost:
    # torch is imported here, not at module level: worker processes import this module's
    # importers (the CLI) and should not pay seconds for a library they never call.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from volfnet.networks.build import build_network_from_topology

    with torch.device("meta"):
        network = build_network_from_topology(topology, num_input_channels, num_classes, deep_supervision=True)
    network.train()
    counted = [0]

    def count(_module, _inputs, output) -> None:
        outputs = output if isinstance(output, (list, tuple)) else [output]
        counted[0] += sum(o.numel() for o in outputs if isinstance(o, torch.Tensor))

    handles = [m.register_forward_hook(count) for m in network.modules() if not list(m.children())]
    try:
        sample = torch.empty((1, num_input_channels, *patch_size), device="meta")
        with FlopCounterMode(display=False) as flops:
            network(sample)
    finally:
        for handle in handles:
            handle.remove()
    parameters = sum(p.numel() for p in network.parameters())
    return NetworkCost(parameters=parameters, activation_elements=counted[0], forward_flops=int(flops.get_total_flops()))


def estimate_cost(topology: NetworkTopology, patch_size: list[int], num_input_channels: int, num_classes: int) -> NetworkCost:
    """A fast estimate for search loops: exact for FMUNet; for PCT-Net scaled linearly from a
    patch whose transformer levels hold whole attention windows, which ignores the padding
    to whole windows (an underestimate, so the planner confirms with :func:`measure_cost`)."""
    if topology.name == "fmunet":
        return measure_cost(topology, patch_size, num_input_channels, num_classes)
    window = topology.window_size or 1
    aligned = [2 * window * d for d in topology.total_downsampling()]
    reference = measure_cost(dataclasses.replace(topology, input_size=aligned), aligned, num_input_channels, num_classes)
    scale = math.prod(patch_size) / math.prod(aligned)
    return NetworkCost(reference.parameters, round(reference.activation_elements * scale), round(reference.forward_flops * scale))
