"""Checkpoint files in the layouts volfnet reads: bare PyMIC ``{'model_state_dict': ...}`` files
of the released networks (shapes only, almost free to write), and volfnet pretraining
checkpoints of the tiny training network."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers.training import tiny_plans

from volfnet.checkpoint import CheckpointSpec, save_checkpoint
from volfnet.networks.build import build_network_from_topology
from volfnet.plans import NetworkTopology


def pymic_checkpoint(path: Path, topology: NetworkTopology, in_channels: int = 1, classes: int = 5, trained_branch=None) -> dict:
    """A PyMIC-layout file of ``topology`` (shapes only); BatchNorm counters of one PCT-Net
    input branch set, as training leaves them."""
    with torch.device("meta"):
        network = build_network_from_topology(topology, in_channels, classes, deep_supervision=True)
    state = {}
    for key, value in network.state_dict().items():
        count = 100 if trained_branch is not None and key.startswith(f"embeddings.{trained_branch}.") else 0
        state[key] = torch.full((), count if key.endswith("num_batches_tracked") else 0, dtype=value.dtype).expand(value.shape)
    torch.save({"iteration": 80000, "model_state_dict": state, "optimizer_state_dict": {}}, path)
    return state


def volf_checkpoint(path, widths=(4, 8, 16), num_classes=5, with_spec=True):
    """A volfnet pretraining checkpoint of the blob tasks' network (:func:`tiny_plans` with
    ``widths``) with a ``num_classes`` head; without ``with_spec``, a bare PyMIC/MIS-FM file.
    Returns the saved weights."""
    topology = tiny_plans(widths=list(widths)).configurations["3d_fullres"].network
    torch.manual_seed(7)
    model = build_network_from_topology(topology, 1, num_classes)
    state = {"model_state_dict": model.state_dict()}
    if with_spec:
        spec = CheckpointSpec("volf_pretraining", topology, 1, num_classes, [16, 16, 16], [1.0, 1.0, 1.0], [])
        state["spec"] = spec.to_dict()
        save_checkpoint(path, state)
    else:
        torch.save(state, path)  # PyMIC/MIS-FM layout: only model_state_dict
    return model.state_dict()
