"""What a network costs at a patch size, measured on the real FMUNet/PCT-Net.

The network is built on PyTorch's ``meta`` device (shapes only, no memory, no arithmetic)
and run once: forward hooks add up every leaf module's output elements (the activations
autograd keeps for the backward pass) and ``FlopCounterMode`` counts the FLOPs. So the
planner's budget follows the real architecture instead of a formula that drifts from the code.

FMUNet is simple enough to count in closed form (:func:`fmunet_cost`), layer by layer exactly
as the meta measurement sees it; a test holds the two equal over many topologies and patches.
The closed form costs microseconds instead of importing torch and tracing the network
(several seconds, a third of the whole plan-and-preprocess time on a small dataset).

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
# FMUNet's deep-supervision head count (volfnet.networks.fmunet.MAX_SUPERVISION_HEADS), repeated
# here so planning does not import torch; tests/test_planner.py holds the closed form equal to
# the measured network, which catches any drift.
FMUNET_SUPERVISION_HEADS = 4
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

    FMUNet: counted in closed form (:func:`fmunet_cost`, equal to the measurement). PCT-Net's
    window attention pads to whole windows, so it is measured on the meta device at each
    patch; results are cached by value.
    """
    if topology.name == "fmunet":
        return fmunet_cost(topology, patch_size, num_input_channels, num_classes)
    key = (_freeze(topology), tuple(patch_size), num_input_channels, num_classes)
    if key not in _CACHE:
        _CACHE[key] = _measure(topology, list(patch_size), num_input_channels, num_classes)
    return _CACHE[key]


@dataclass
class _Tally:
    """Running totals while walking FMUNet's layers."""

    parameters: int = 0
    activations: int = 0
    flops: int = 0

    def conv(self, c_in: int, c_out: int, kernel: list[int], voxels_out: int) -> None:
        taps = math.prod(kernel)
        self.parameters += c_out * c_in * taps + c_out
        self.activations += c_out * voxels_out
        self.flops += 2 * c_out * voxels_out * c_in * taps  # FlopCounterMode's convention: 2 per MAC, bias free

    def pre_activation_conv(self, c_in: int, c_out: int, kernel: list[int], voxels_in: int, voxels_out: int, dropout: bool) -> None:
        """Instance norm (affine) -> LeakyReLU -> [dropout] -> conv: each leaf keeps its output."""
        self.parameters += 2 * c_in
        self.activations += c_in * voxels_in * (3 if dropout else 2)
        self.conv(c_in, c_out, kernel, voxels_out)


def fmunet_cost(topology: NetworkTopology, patch_size: list[int], num_input_channels: int, num_classes: int) -> NetworkCost:
    """FMUNet's cost in closed form, with deep supervision on and in training mode (dropout
    active where its probability is positive), counting what the meta measurement counts:
    the output of every leaf module; interpolation, concatenation and residual adds are not
    modules and keep no extra activation. Same-padded convolutions give ``ceil(n / stride)``
    voxels per axis, so any patch size is exact, divisible or not."""
    channels = list(topology.feature_channels)
    levels = len(channels)
    shapes = [list(patch_size)]
    for stride in topology.strides:
        shapes.append([-(-n // s) for n, s in zip(shapes[-1], stride)])
    voxels = [math.prod(shape) for shape in shapes]
    kernels = [list(k) for k in topology.kernel_sizes]
    tally = _Tally()
    tally.conv(num_input_channels, channels[0], kernels[0], voxels[0])  # the input projection

    def residual_block(level: int) -> None:
        for _ in range(topology.depth):
            c, v = channels[level], voxels[level]
            tally.pre_activation_conv(c, c, kernels[level], v, v, dropout=topology.dropout[level] > 0)

    for level in range(levels):
        residual_block(level)
        if level < levels - 1:  # strided down-sampling with the level's kernel
            tally.pre_activation_conv(channels[level], channels[level + 1], kernels[level], voxels[level], voxels[level + 1], dropout=False)
    residual_block(levels - 1)  # the decoder's bottleneck block
    for level in range(levels - 2, -1, -1):
        c = channels[level]
        tally.pre_activation_conv(channels[level + 1], c, [1, 1, 1], voxels[level + 1], voxels[level + 1], dropout=False)
        tally.pre_activation_conv(2 * c, c, kernels[level], voxels[level], voxels[level], dropout=False)
        residual_block(level)
    for level in range(min(levels - 1, FMUNET_SUPERVISION_HEADS)):
        tally.pre_activation_conv(channels[level], num_classes, kernels[level], voxels[level], voxels[level], dropout=False)
    return NetworkCost(parameters=tally.parameters, activation_elements=tally.activations, forward_flops=tally.flops)


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
