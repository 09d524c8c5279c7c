"""Sliding-window prediction of a whole preprocessed volume with patch-sized networks.

Networks are trained on patches, so a volume is predicted tile by tile: windows of exactly
the patch size (zero padding where the image is smaller, so PCT-Net's fixed input size always
holds) step across the image, each tile's logits are weighted by a Gaussian that trusts tile
centres more than borders, and the weighted sum is divided by the summed weights. Mirroring
test-time augmentation and fold ensembles add forward passes per tile but no memory: every
pass is summed into the same buffers and divided once at the end.

Memory: one float32 (classes, Z, Y, X) logit buffer and one float32 (Z, Y, X) weight buffer
(see :func:`accumulation_bytes`), held on the GPU when they fit there, otherwise on the CPU.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from volfnet.errors import VolfnetError
from volfnet.inference.tiling import (
    DEFAULT_STEP_FRACTION,
    gaussian_importance_map,
    pad_to_patch,
    tile_starts,
)
from volfnet.inference.tta import mirror_combinations, summed_logits
from volfnet.networks.runtime import resolve_device

__all__ = [
    "DEFAULT_STEP_FRACTION",
    "DEFAULT_TILE_BATCH_SIZE",
    "accumulation_bytes",
    "gaussian_importance_map",
    "predict_sliding_window",
    "tile_starts",
]

logger = logging.getLogger(__name__)

SPATIAL_DIMS = 3  # volfnet predicts (Z, Y, X) volumes; 2D configurations are not planned
BYTES_PER_FLOAT32 = 4
DEFAULT_TILE_BATCH_SIZE = 2  # training fits >= 2 patches with gradients, so 2 tiles fit here; half the calls
TILE_PROGRESS_DELAY_SECONDS = 5.0  # the per-window bar appears only for cases that take longer (large volumes on a CPU)
GPU_WORKSPACE_RESERVE_BYTES = 2 * 1024**3  # left free beside the buffers for activations and cuDNN workspaces
CPU = torch.device("cpu")


def accumulation_bytes(image_shape: Sequence[int], num_classes: int) -> int:
    """Bytes of the two float32 accumulation buffers for a (Z, Y, X) image: logits + weights.

    ``(num_classes + 1) * voxels * 4``. A 512 x 512 x 400 CT (104,857,600 voxels) needs
    1.68 GB with 3 classes and 6.29 GB with 14 (plus 0.42 GB for a one-channel float32 input
    and one batch of tiles), so it predicts on a 24 GB GPU or in 24 GB of RAM.
    """
    return (int(num_classes) + 1) * math.prod(int(s) for s in image_shape) * BYTES_PER_FLOAT32


def _resolve_amp(amp: bool | None, compute: torch.device) -> bool:
    """Half-precision autocast only on CUDA: on the CPU it is slower and less accurate."""
    if amp is None:
        return compute.type == "cuda"
    if amp and compute.type != "cuda":
        logger.warning("mixed precision is only used on CUDA; predicting in float32 on %s", compute)
        return False
    return bool(amp)


def _accumulation_devices(compute: torch.device, accumulate_on: torch.device | str | None, needed_bytes: int) -> list[torch.device]:
    """Devices to try for the buffers, in order: the GPU when it has room, then the CPU."""
    if accumulate_on not in (None, "auto"):
        return [resolve_device(accumulate_on)]
    if compute.type != "cuda":
        return [CPU]
    free_bytes, _ = torch.cuda.mem_get_info(compute)
    if needed_bytes + GPU_WORKSPACE_RESERVE_BYTES > free_bytes:
        logger.warning(
            "accumulation buffers need %.2f GB but %s has %.2f GB free; accumulating on the CPU",
            needed_bytes / 1e9, compute, free_bytes / 1e9,
        )
        return [CPU]
    return [compute, CPU]


def _check_output(logits: torch.Tensor, tiles: int, num_classes: int, patch: tuple[int, ...]) -> None:
    expected = (tiles, num_classes, *patch)
    if tuple(logits.shape) != expected:
        raise VolfnetError(
            f"the network returned logits of shape {list(logits.shape)} for {tiles} window(s) of size {list(patch)}; "
            f"expected {list(expected)} (does num_classes={num_classes} match the checkpoint's output layer?)"
        )


def _accumulate(
    networks: list[nn.Module],
    image: torch.Tensor,
    patch: tuple[int, ...],
    num_classes: int,
    step_fraction: float,
    use_gaussian: bool,
    combinations: list[tuple[int, ...]],
    tile_batch_size: int,
    compute: torch.device,
    accumulate: torch.device,
    amp: bool,
    progress: bool,
    min_forward_batch: int = 1,
) -> torch.Tensor:
    """Blend all tiles of an image at least patch-sized into one (classes, *spatial) tensor."""
    spatial = tuple(image.shape[1:])
    windows = [
        tuple(slice(start, start + size) for start, size in zip(starts, patch))
        for starts in itertools.product(*tile_starts(spatial, patch, step_fraction))
    ]
    passes = len(networks) * len(combinations)
    logger.info(
        "sliding window: %d tiles of %s over %s, %d pass(es) per tile, accumulating on %s",
        len(windows), list(patch), list(spatial), passes, accumulate,
    )
    # Allocated outside inference mode so the caller may modify the result in place.
    logits = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=accumulate)
    weights = torch.zeros(spatial, dtype=torch.float32, device=accumulate)
    # Each pass adds weight/passes to the logits, and each tile adds weight once to the weights.
    if use_gaussian:
        tile_weight = gaussian_importance_map(patch, device=accumulate)
    else:
        tile_weight = torch.ones(patch, dtype=torch.float32, device=accumulate)
    pass_weight = tile_weight / passes
    # With the buffers on the GPU the whole image goes there once; otherwise tiles travel per batch.
    source = image.to(accumulate, non_blocking=True) if accumulate == compute else image
    # One reused tile buffer: a fresh large tensor per batch costs page faults every time. Pinned
    # when tiles travel to a GPU; reusing it is safe because each batch's result comes back with
    # a blocking copy, after the upload that read the buffer.
    staging = torch.empty(
        (min(tile_batch_size, len(windows)), image.shape[0], *patch), dtype=torch.float32, device=source.device,
        pin_memory=source.device.type == "cpu" and compute.type == "cuda",
    )
    with torch.inference_mode():
        batches = tqdm(
            range(0, len(windows), tile_batch_size), desc="sliding window", unit="batch", disable=not progress or None,
            delay=TILE_PROGRESS_DELAY_SECONDS, leave=False,
        )
        for first in batches:
            chunk = windows[first : first + tile_batch_size]
            for slot, window in enumerate(chunk):
                staging[slot].copy_(source[(slice(None), *window)])
            batch = staging[: len(chunk)].to(compute, non_blocking=True)
            with torch.autocast(device_type=compute.type, dtype=torch.float16, enabled=amp):
                predicted = summed_logits(networks, batch, combinations, min_forward_batch)
            _check_output(predicted, len(chunk), num_classes, patch)
            predicted = predicted.to(accumulate)  # blocking: see the staging buffer above
            for tile, window in zip(predicted, chunk):
                logits[(slice(None), *window)].addcmul_(tile, pass_weight)
                weights[window].add_(tile_weight)
        logits.div_(weights)  # in place: no second class-by-volume buffer
    return logits


def predict_sliding_window(
    network: nn.Module | Sequence[nn.Module],
    image: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    step_fraction: float = DEFAULT_STEP_FRACTION,
    use_gaussian: bool = True,
    mirror_axes: Sequence[int] | None = (0, 1, 2),
    tile_batch_size: int = DEFAULT_TILE_BATCH_SIZE,
    device: torch.device | str | None = None,
    accumulate_on: torch.device | str | None = "auto",
    amp: bool | None = None,
    progress: bool = False,
    output_device: torch.device | str | None = "cpu",
    min_forward_batch: int = 1,
) -> torch.Tensor:
    """Float32 (num_classes, Z, Y, X) logits for a preprocessed (C, Z, Y, X) image.

    - ``network``: one model, or a list of models (folds) whose logits are averaged. They are
      moved to ``device`` and run in eval mode; their previous train/eval mode is restored.
      A list/tuple output (deep supervision) contributes its element 0.
    - ``patch_size``: every window has exactly this size (PCT-Net: its fixed ``input_size``);
      axes where the image is smaller are zero-padded symmetrically and cropped off again.
    - ``step_fraction``: tile step as a fraction of the patch; ``use_gaussian``: Gaussian
      (sigma = patch/8) instead of uniform blending weights.
    - ``mirror_axes``: spatial axes (0 = Z) whose 2^n flip combinations are averaged;
      ``None`` or ``()`` disables test-time augmentation.
    - ``device``: where the networks run (default: CUDA when present, else CPU).
      ``accumulate_on``: ``"auto"``/``None`` keeps the buffers on the GPU when they fit and
      falls back to the CPU (with a warning) if the GPU runs out of memory; a device forces it.
    - ``amp``: float16 autocast, default on for CUDA, never used on the CPU.
    - ``output_device``: where the result is returned (``None``: where it was accumulated).
    - ``min_forward_batch``: mirror passes share a forward pass until it holds this many
      samples (:func:`volfnet.inference.tta.min_forward_batch`: 2 for narrow networks on the CPU).
    """
    networks = [network] if isinstance(network, nn.Module) else list(network)
    if not networks:
        raise VolfnetError("no network given to predict with")
    if image.ndim != SPATIAL_DIMS + 1:
        raise VolfnetError(f"expected a (C, Z, Y, X) image, got shape {list(image.shape)}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != SPATIAL_DIMS:
        raise VolfnetError(f"patch size {list(patch_size)} must have {SPATIAL_DIMS} entries (Z, Y, X)")
    if num_classes < 1 or tile_batch_size < 1:
        raise VolfnetError(f"num_classes ({num_classes}) and tile_batch_size ({tile_batch_size}) must be at least 1")
    compute = resolve_device(device)
    use_amp = _resolve_amp(amp, compute)
    combinations = mirror_combinations(mirror_axes, SPATIAL_DIMS)
    padded, crop = pad_to_patch(image.to(torch.float32), patch)
    spatial = tuple(padded.shape[1:])
    candidates = _accumulation_devices(compute, accumulate_on, accumulation_bytes(spatial, num_classes) + padded.nbytes)

    modes = [net.training for net in networks]
    for net in networks:
        net.to(compute).eval()
    logits: torch.Tensor | None = None
    try:
        for attempt, accumulate in enumerate(candidates):
            out_of_memory = False
            try:
                logits = _accumulate(
                    networks, padded, patch, num_classes, step_fraction, use_gaussian, combinations,
                    tile_batch_size, compute, accumulate, use_amp, progress, min_forward_batch,
                )
                break
            except torch.OutOfMemoryError:
                if attempt == len(candidates) - 1:
                    raise VolfnetError(
                        f"out of memory on {compute} predicting batches of {tile_batch_size} window(s) of {list(patch)}; "
                        "lower tile_batch_size or predict on the CPU"
                    ) from None
                out_of_memory = True
            if out_of_memory:  # outside the except block, so the failed attempt's tensors are released
                logger.warning("out of memory accumulating on %s; retrying with the buffers on %s", accumulate, candidates[attempt + 1])
                torch.cuda.empty_cache()
    finally:
        for net, mode in zip(networks, modes):
            net.train(mode)

    assert logits is not None  # set by the first attempt that did not run out of memory
    result = logits[(slice(None), *crop)]
    if output_device is not None:
        result = result.to(output_device)
    return result.contiguous()
