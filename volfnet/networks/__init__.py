"""volfnet.networks: FMUNet and PCT-Net, building them from plans, and loading their weights.

Import the submodules directly (``volfnet.networks.build``, ``.weights``, ``.fmunet``,
``.pctnet``, ``.swin3d``, ``.runtime``); this package file re-exports the public entry points.
"""

from volfnet.networks.build import NETWORK_REGISTRY, build_network, build_network_from_topology
from volfnet.networks.fmunet import FMUNet, published_fmunet_topology
from volfnet.networks.pctnet import PCTNet, published_pctnet_topology
from volfnet.networks.weights import LoadReport, load_weights

__all__ = [
    "NETWORK_REGISTRY",
    "FMUNet",
    "LoadReport",
    "PCTNet",
    "build_network",
    "build_network_from_topology",
    "published_fmunet_topology",
    "load_weights",
    "published_pctnet_topology",
]
