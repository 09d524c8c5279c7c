"""One entry point that turns plans into a network, used by training, pretraining and inference.

The registry is an explicit dict from the plans' network name to a builder, so a plans file
can only name networks that exist here (no class lookup by string reflection).
"""

from __future__ import annotations

import logging
from typing import Callable

from torch import nn

from volfnet.errors import VolfnetError
from volfnet.networks.fmunet import FMUNet
from volfnet.networks.pctnet import PCTNet
from volfnet.plans import NetworkTopology, Plans

logger = logging.getLogger(__name__)

NetworkBuilder = Callable[[NetworkTopology, int, int, bool], nn.Module]

NETWORK_REGISTRY: dict[str, NetworkBuilder] = {
    "fmunet": FMUNet.from_topology,
    "pctnet": PCTNet.from_topology,
}


def build_network_from_topology(
    topology: NetworkTopology, num_input_channels: int, num_classes: int, deep_supervision: bool = True
) -> nn.Module:
    """Build the network a topology describes.

    Works under ``with torch.device("meta"):`` so the planner can count parameters and trace
    activation sizes without allocating memory. The returned model has a ``deep_supervision``
    attribute that can be switched off for inference without changing its state dict.
    """
    builder = NETWORK_REGISTRY.get(topology.name)
    if builder is None:
        raise VolfnetError(f"unknown network {topology.name!r}; available: {sorted(NETWORK_REGISTRY)}")
    model = builder(topology, num_input_channels, num_classes, deep_supervision)
    logger.debug(
        "built %s: %d input channel(s), %d classes, %d parameters",
        topology.name,
        num_input_channels,
        num_classes,
        sum(p.numel() for p in model.parameters()),
    )
    return model


def build_network(
    plans: Plans, configuration_name: str, num_input_channels: int, num_classes: int, deep_supervision: bool = True
) -> nn.Module:
    """Build the network of one plans configuration (e.g. ``3d_fullres``)."""
    configuration = plans.configuration(configuration_name)
    return build_network_from_topology(configuration.network, num_input_channels, num_classes, deep_supervision)
