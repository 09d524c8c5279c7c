"""Optional OpenVINO runtime for the sliding window on the CPU.

On the 2-core AMD EPYC machines this project measures on, OpenVINO runs FMUNet's forward pass
1.6 to 2.2 times faster than PyTorch's CPU kernels in float32, with logits within about 1e-4
(documentation/inference.md, "Large volumes on the CPU"). It is an optional dependency
(``pip install openvino``); PyTorch stays the default and the only backend for CUDA.

:class:`OpenVinoNetwork` wraps a PyTorch network as a module whose forward pass runs a
compiled OpenVINO model. A model is converted once per input shape (a sliding window uses
one window shape and one or two batch sizes), with static shapes, so the CPU plugin picks its
kernels for exactly that shape. Conversion traces the network: a few seconds per shape.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from volfnet.errors import VolfnetError
from volfnet.networks.runtime import full_resolution_outputs

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino")
DEFAULT_BACKEND = "torch"
OPENVINO_DEVICE = "CPU"


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def check_backend(backend: str, device: torch.device) -> str:
    """``backend`` if it can run on ``device``, else a clear error naming the fix."""
    if backend not in BACKENDS:
        raise VolfnetError(f"unknown inference backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "openvino":
        if device.type != "cpu":
            raise VolfnetError(f"the openvino backend runs on the CPU; predict with --device cpu, or use the torch backend on {device}")
        if not openvino_available():
            raise VolfnetError("the openvino backend needs the openvino package: pip install openvino (or volfnet[openvino])")
    return backend


class OpenVinoNetwork(nn.Module):
    """A PyTorch network run by OpenVINO's CPU plugin, one compiled model per input shape.

    The wrapped network's weights are read at conversion: change them and build a new wrapper.
    The output is the network's full-resolution output (deep supervision off), float32.
    """

    def __init__(self, network: nn.Module, num_threads: int | None = None) -> None:
        super().__init__()
        self.network = network
        self.num_threads = num_threads if num_threads is not None else torch.get_num_threads()
        self._compiled: dict[tuple[int, ...], Any] = {}

    def _compile(self, shape: tuple[int, ...]) -> Any:
        logger.info("converting the network to OpenVINO for inputs of shape %s", list(shape))
        example = torch.zeros(shape, dtype=torch.float32)
        with full_resolution_outputs([self.network], eval_mode=True), torch.no_grad(), warnings.catch_warnings():
            # shape checks inside forward() become constants of the trace: right, as the shape is fixed
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO's import and tracer use torch.jit's old API
            import openvino as ov  # optional dependency, imported only when this backend is used

            model = ov.convert_model(self.network, example_input=example)
        model.reshape(list(shape))  # static shapes: kernels chosen for this window and batch
        properties = {"INFERENCE_NUM_THREADS": int(self.num_threads), "INFERENCE_PRECISION_HINT": "f32"}
        return ov.Core().compile_model(model, OPENVINO_DEVICE, properties)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(int(s) for s in x.shape)
        compiled = self._compiled.get(shape)
        if compiled is None:
            compiled = self._compiled[shape] = self._compile(shape)
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        output = compiled([array])[0]
        return torch.from_numpy(np.array(output, dtype=np.float32, copy=True))
