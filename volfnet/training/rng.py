"""Capture and restore the global random generators as tensors and lists (no pickle).

Batches are seeded by their index, so the data stream resumes by itself; what else draws random
numbers during training is torch's generator (dropout) and, through third-party code, numpy's
and Python's global ones. Their states go into every checkpoint as plain tensors and lists, so
``torch.load(weights_only=True)`` can read them back and a resumed run draws the same dropout
masks as an uninterrupted one.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_states() -> dict[str, Any]:
    """The states of torch (CPU and every CUDA device), numpy and Python's ``random``."""
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": [int(v) for v in python_state], "gauss_next": gauss_next},
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_states`. CUDA states are restored only when the device count
    matches (a run resumed on another machine keeps fresh CUDA generators)."""
    torch.set_rng_state(states["torch"].cpu().to(torch.uint8))
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu().to(torch.uint8) for state in cuda])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            int(numpy_state["position"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
    )
    python_state = states["python"]
    random.setstate((int(python_state["version"]), tuple(int(v) for v in python_state["state"]), python_state["gauss_next"]))
