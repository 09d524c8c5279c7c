"""The released networks' state-dict layouts, vendored in tests/data/ (see its README.md): every
entry in order as [name, shape, dtype], with the parameter counts. A network with these names
and shapes loads the released MIS-FM checkpoints unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECS = Path(__file__).resolve().parents[1] / "data"


def released_layout(name: str) -> dict:
    """The layout file ``name`` (``fmunet_keys.json``, ``fmunet_resmode1_keys.json`` or ``pctnet_keys.json``)."""
    return json.loads((SPECS / name).read_text())


def state_dict_layout(model: torch.nn.Module) -> list[list[object]]:
    """``model``'s state dict in the layout files' form: [name, shape, dtype] per entry, in order."""
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
