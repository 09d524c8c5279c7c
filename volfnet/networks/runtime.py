"""Device-dependent speed settings for running the networks: memory format and autocast.

The choices are measured, not assumed (``benchmarks/networks``). On this project's CPU,
channels-last-3d made an FMUNet training step slower, and the CPU has no native bfloat16
(0.2 GFLOP/s), so CPU runs stay contiguous fp32. On CUDA, mixed precision is used (bf16
where the GPU supports it, otherwise fp16 with a gradient scaler); channels-last stays opt-in
until a GPU benchmark shows it faster for these networks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn

from volfnet.errors import VolfnetError

CHANNELS_LAST_DEFAULT = {"cpu": False, "cuda": False}  # measured slower on CPU; unmeasured on CUDA
ARCHITECTURE_BUFFERS = "ARCHITECTURE_BUFFERS"  # class attribute: names of a module's architecture-fixed buffers


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``, or None for plain fp32.

    CUDA: bfloat16 when supported (no loss scaling needed), else float16. CPU: None, because
    without native bf16 instructions autocast is an emulation far slower than fp32.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 do not."""
    return dtype == torch.float16


def autocast(device: torch.device | str, enabled: bool = True) -> AbstractContextManager[object]:
    """``torch.autocast`` with :func:`autocast_dtype`, or a no-op where fp32 is the choice."""
    device = torch.device(device)
    dtype = autocast_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(device: torch.device | str, channels_last: bool | None = None) -> bool:
    """Whether to run in channels-last-3d: the explicit choice, else the measured default."""
    if channels_last is not None:
        return channels_last
    return CHANNELS_LAST_DEFAULT.get(torch.device(device).type, False)


def prepare_model(model: nn.Module, device: torch.device | str, channels_last: bool | None = None) -> nn.Module:
    """Move ``model`` to ``device`` in the chosen memory format (in place; returned for chaining)."""
    fmt = torch.channels_last_3d if use_channels_last(device, channels_last) else torch.contiguous_format
    return model.to(device=torch.device(device), memory_format=fmt)  # type: ignore[call-overload]  # valid; missing from torch's stubs


def prepare_input(x: torch.Tensor, device: torch.device | str, channels_last: bool | None = None) -> torch.Tensor:
    """Move a (B, C, Z, Y, X) batch to ``device`` in the same memory format as the model."""
    fmt = torch.channels_last_3d if use_channels_last(device, channels_last) else torch.contiguous_format
    return x.to(device=torch.device(device), memory_format=fmt, non_blocking=True)


def architecture_buffer_names(model: nn.Module) -> list[str]:
    """Qualified names of the buffers that are a fixed function of the architecture (each
    module lists its own in an ``ARCHITECTURE_BUFFERS`` class attribute; absent ones, e.g. the
    shift regions of an unshifted block, are left out).

    Every process of a multi-process run builds them identically (and loads the same
    checkpoint), so DistributedDataParallel can skip them instead of broadcasting them at start
    and before every forward.
    """
    names = []
    for prefix, module in model.named_modules():
        present = dict(module.named_buffers(recurse=False))  # a None buffer is not listed
        for name in getattr(type(module), ARCHITECTURE_BUFFERS, ()):
            if name in present:
                names.append(f"{prefix}.{name}" if prefix else name)
    return names


@contextlib.contextmanager
def full_resolution_outputs(networks: Sequence[nn.Module], eval_mode: bool = False) -> Iterator[None]:
    """Switch deep supervision off (no coarse heads to compute: the network returns its
    full-resolution output only) and, with ``eval_mode``, put the networks in eval mode;
    both are restored afterwards, also after an error."""
    saved = [(net, getattr(net, "deep_supervision", None), net.training) for net in networks]
    for net, deep_supervision, _ in saved:
        if deep_supervision is not None:
            setattr(net, "deep_supervision", False)  # an attribute of volfnet's networks only
        if eval_mode:
            net.eval()
    try:
        yield
    finally:
        for net, deep_supervision, training in saved:
            if deep_supervision is not None:
                setattr(net, "deep_supervision", deep_supervision)
            net.train(training)


def resolve_device(requested: torch.device | str | None) -> torch.device:
    """The compute device: CUDA when present unless told otherwise (CPU-only users need no
    flag), ``cpu`` or ``cuda[:N]`` only, a CUDA device with its index; a clear error for an
    unknown name or for CUDA on a build that sees no GPU."""
    try:
        resolved = torch.device(requested if requested is not None else "cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError as error:
        raise VolfnetError(f"unknown device {requested!r}: {error}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise VolfnetError(f"device must be 'cpu' or 'cuda', got {requested!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise VolfnetError(f"device {requested!r} was requested but this torch build sees no CUDA GPU; use --device cpu")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved
