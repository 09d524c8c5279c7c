"""Read a PyTorch ``.pt`` file safely: ``torch.load(weights_only=True)`` and one clear error.

Checkpoints (``volfnet.checkpoint``) and foreign weight files (``volfnet.networks.weights``)
are both read here, so a file that is missing, truncated, not a PyTorch file, or one holding
Python objects beyond tensors and plain containers (which ``weights_only`` refuses, so a
downloaded checkpoint cannot run code) gets the same message wherever it is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from volfnet.errors import VolfnetError

# How torch's weights-only unpickler words a refused Python object (torch 2.3 to 2.13); noise
# and other damage fail in the same unpickler with other words ("Unsupported operand").
REFUSED_OBJECT = "Unsupported global"


def read_torch_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """The content of ``path``, loaded with ``weights_only=True``; problems name the file."""
    path = Path(path)
    if not path.is_file():
        raise VolfnetError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... by cause
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if REFUSED_OBJECT in str(exc):
            first_line = next(line for line in str(exc).splitlines() if REFUSED_OBJECT in line).strip()[:300]
            raise VolfnetError(
                f"{path}: refused to load: the file holds Python objects beyond tensors and plain data, which "
                f"torch.load(weights_only=True) does not run ({first_line})"
            ) from exc
        raise VolfnetError(f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or not a PyTorch file: {first_line})") from exc
