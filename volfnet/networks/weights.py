"""Load weights by name and shape, from volfnet, PyMIC or MIS-FM checkpoints, never silently.

Fine-tuning from a pretrained model rarely matches it exactly: the segmentation head has a
different class count, a dataset has more input channels, or only the encoder is wanted.
:func:`load_weights` loads every tensor whose name and shape match, adapts the first
convolution to a different number of input channels, and returns (and logs) a
:class:`LoadReport` that lists what was loaded, skipped (with the reason) and left missing.
Files are read with ``torch.load(weights_only=True)`` only, so a checkpoint cannot run code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from volfnet.errors import VolfnetError
from volfnet.io.torch_file import read_torch_file

logger = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # added by DataParallel/DDP and torch.compile
STATE_DICT_KEYS = ("model_state_dict", "state_dict")  # volfnet/PyMIC/MIS-FM, then the common alternative
REPORT_LIST_LIMIT = 10  # names listed per category in the log; the report itself has all


@dataclass
class LoadReport:
    """What :func:`load_weights` did. ``skipped`` maps a checkpoint key to the reason."""

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    adapted_input_channels: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for a log or a console."""
        lines = [
            f"weights from {self.source}: {len(self.loaded)} loaded, {len(self.skipped)} skipped, "
            f"{len(self.missing)} missing (kept as initialised)"
        ]
        for name in self.adapted_input_channels:
            lines.append(f"  adapted to the input channel count: {name}")
        for name, reason in list(self.skipped.items())[:REPORT_LIST_LIMIT]:
            lines.append(f"  skipped {name}: {reason}")
        if len(self.skipped) > REPORT_LIST_LIMIT:
            lines.append(f"  ... and {len(self.skipped) - REPORT_LIST_LIMIT} more skipped")
        for name in self.missing[:REPORT_LIST_LIMIT]:
            lines.append(f"  missing {name}")
        if len(self.missing) > REPORT_LIST_LIMIT:
            lines.append(f"  ... and {len(self.missing) - REPORT_LIST_LIMIT} more missing")
        return "\n".join(lines)


def read_state_dict(source: Path | str | Mapping[str, Any], name: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The model state dict in a checkpoint file or dict, with wrapper prefixes removed.

    Accepts a volfnet/PyMIC/MIS-FM checkpoint (``{'model_state_dict': ...}``), a dict with
    ``state_dict``, or a bare state dict. Returns it with a description of the source (``name``
    for a dict, e.g. the file it was loaded from). Callers above this layer load files with
    :func:`volfnet.checkpoint.load_checkpoint`, which also verifies checksums and finiteness.
    """
    if isinstance(source, Mapping):
        name = name or "the given state dict"
        content: Any = source
    else:
        name = str(source)
        content = read_torch_file(Path(source))
    state = _extract_state_dict(content, name)
    return {_strip_prefixes(key): value for key, value in state.items()}, name


def _extract_state_dict(content: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(content, Mapping):
        raise VolfnetError(f"{name}: not a model checkpoint: it holds a {type(content).__name__}, not a dict")
    for key in STATE_DICT_KEYS:
        if key in content:
            state = content[key]
            if not isinstance(state, Mapping):
                raise VolfnetError(f"{name}: '{key}' is a {type(state).__name__}, not a state dict")
            break
    else:
        state = content
    if not state or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise VolfnetError(
            f"{name}: not a model checkpoint: expected 'model_state_dict' (volfnet, PyMIC, MIS-FM) or a state "
            f"dict of tensors; found keys {sorted(map(str, content))[:8]}"
        )
    return state


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv weights for ``in_channels`` inputs from weights trained with another count.

    The filters are summed over the trained channels and repeated over the new ones divided
    by their count, so a stack of identical channels gives the pretrained response.
    """
    return (weight.sum(dim=1, keepdim=True) / in_channels).repeat(1, in_channels, *([1] * (weight.dim() - 2)))


def extend_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv weights for ``in_channels`` inputs whose first channels are the ones
    ``weight`` was trained for (a cascade: the image, then the previous stage's labels). Those
    keep their filters; the new channels start at zero, so the network's response to the
    image is the pretrained one and the new inputs grow in as training finds them useful."""
    extended = weight.new_zeros((weight.shape[0], in_channels, *weight.shape[2:]))
    extended[:, : weight.shape[1]] = weight
    return extended


def load_weights(
    model: nn.Module,
    source: Path | str | Mapping[str, Any],
    encoder_only: bool = False,
    name: str | None = None,
    image_channels: int | None = None,
) -> LoadReport:
    """Copy matching tensors from ``source`` into ``model`` and report what happened.

    ``encoder_only`` loads only the keys under the model's ``encoder_key_prefixes`` (the
    decoder and heads keep their initialisation). A first convolution whose input-channel
    count differs is adapted with a warning: when it was trained for the model's
    ``image_channels`` and the model takes more (a cascade's extra inputs), those filters are
    kept and the extra channels start at zero (:func:`extend_input_channels`); otherwise the
    filters are averaged over the new channels (:func:`adapt_input_channels`). A source that
    matches nothing is an error: it is a checkpoint of another network.
    """
    state, name = read_state_dict(source, name)
    target = model.state_dict()
    encoder_prefixes = tuple(getattr(model, "encoder_key_prefixes", ()))
    if encoder_only and not encoder_prefixes:
        raise VolfnetError(f"{type(model).__name__} does not declare its encoder; encoder-only loading is not possible")
    input_keys = set(getattr(model, "input_conv_keys", ()))
    report = LoadReport(source=name)
    accepted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        reason = _skip_reason(key, value, target, encoder_only, encoder_prefixes)
        if reason is None and tuple(value.shape) != tuple(target[key].shape):
            expected = target[key]
            if key in input_keys and _differs_only_in_input_channels(value, expected):
                extends = image_channels is not None and value.shape[1] == image_channels < expected.shape[1]
                value = extend_input_channels(value, expected.shape[1]) if extends else adapt_input_channels(value, expected.shape[1])
                report.adapted_input_channels.append(key)
                logger.warning(
                    "%s: %s was trained for %d input channel(s), the network has %d: %s",
                    name, key, state[key].shape[1], expected.shape[1],
                    "the image channels keep their filters, the extra (previous-stage) channels start at zero" if extends
                    else "summed and repeated over the channels, divided by their count",
                )
            else:
                reason = f"shape {list(value.shape)} in the checkpoint, {list(expected.shape)} in the network"
        if reason is not None:
            report.skipped[key] = reason
            continue
        accepted[key] = value
        report.loaded.append(key)
    if not accepted:
        raise VolfnetError(
            f"{name}: none of its {len(state)} tensors matches a weight of {type(model).__name__} by name and "
            f"shape; is it a checkpoint of another network? (first keys: {list(state)[:5]})"
        )
    model.load_state_dict(accepted, strict=False)
    report.missing = [key for key in target if key not in accepted]
    logger.info("%s", report.summary())
    return report


def _skip_reason(
    key: str, value: Any, target: Mapping[str, torch.Tensor], encoder_only: bool, encoder_prefixes: tuple[str, ...]
) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"not a tensor ({type(value).__name__})"
    if key not in target:
        return "no weight of that name in the network"
    if encoder_only and not key.startswith(encoder_prefixes):
        return "not an encoder weight (encoder-only loading)"
    if value.dim() != target[key].dim():
        return f"shape {list(value.shape)} in the checkpoint, {list(target[key].shape)} in the network"
    return None


def _differs_only_in_input_channels(value: torch.Tensor, expected: torch.Tensor) -> bool:
    return value.dim() >= 2 and value.shape[0] == expected.shape[0] and value.shape[2:] == expected.shape[2:]
