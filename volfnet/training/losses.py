"""Soft Dice + cross-entropy with deep supervision: the loss of supervised training and of VolF.

Supervised training uses nnU-Net's loss: CE + soft Dice over the foreground classes (``1 -
Dice``, so a perfect prediction gives ~0 rather than nnU-Net's -1; the gradients are the same).
VolF pretraining uses PyMIC's: (soft Dice over all classes including background, over the
whole batch, + CE) / 2. Both are :func:`dice_ce_loss` with different :class:`DiceCEConfig`.

Targets are integer label maps (B, 1, *spatial) or (B, *spatial). The value
:data:`~volfnet.io.case_store.OUTSIDE_MASK_LABEL` (-1, outside the nonzero mask) is
background here, as in nnU-Net's training pipeline (which already maps it; the loss does it
again so a task that skips that step cannot index out of range). The dataset's *ignore label*
(``DiceCEConfig.ignore_label``, nnU-Net's sparse-annotation convention) is different: those
voxels are left out of both terms, so they give no loss and no gradient whatever the network
says there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from volfnet.errors import VolfnetError
from volfnet.io.case_store import OUTSIDE_MASK_LABEL

DEFAULT_SMOOTH = 1e-5  # nnU-Net's and PyMIC's Dice smoothing: keeps empty classes finite
DROP_LOWEST_MIN_OUTPUTS = 3  # with this many outputs or more, the coarsest gets weight 0 (nnU-Net)


@dataclass(frozen=True)
class DiceCEConfig:
    """Weights and variants of :func:`dice_ce_loss`.

    ``batch_dice`` computes Dice over the whole batch as one volume (stable for small
    structures); otherwise per sample, then averaged. ``class_weights`` (background first)
    weight the CE per class and the per-class Dice terms in their average.
    """

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    batch_dice: bool = False
    include_background: bool = False
    smooth: float = DEFAULT_SMOOTH
    class_weights: tuple[float, ...] | None = None
    ignore_label: int | None = None  # voxels with this label are left out of both terms
    # Region datasets: the label values each sigmoid output stands for. The loss is then
    # nnU-Net's for regions: binary cross-entropy per region + soft Dice over the regions.
    regions: tuple[tuple[int, ...], ...] | None = None


def as_label_map(target: torch.Tensor) -> torch.Tensor:
    """(B, 1, *S) or (B, *S) integer labels → (B, *S) int64 with the outside-mask value as 0."""
    if target.dim() >= 2 and target.shape[1] == 1:
        target = target[:, 0]
    target = target.long()
    return torch.where(target == OUTSIDE_MASK_LABEL, torch.zeros_like(target), target)


def annotated_labels(target: torch.Tensor, ignore_label: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(labels (B, *S) with ignored voxels set to 0, mask of the annotated voxels or None when
    nothing is ignored)."""
    labels = as_label_map(target)
    if ignore_label is None:
        return labels, None
    annotated = labels != ignore_label
    return torch.where(annotated, labels, torch.zeros_like(labels)), annotated


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    batch_dice: bool = False,
    include_background: bool = False,
    smooth: float = DEFAULT_SMOOTH,
    class_weights: Sequence[float] | None = None,
    ignore_label: int | None = None,
) -> torch.Tensor:
    """``1 - mean soft Dice`` of ``softmax(logits)`` (B, C, *S) against integer ``target``.

    Dice per class is ``(2 tp + smooth) / (2 tp + fp + fn + smooth)`` with soft counts. In
    per-sample mode a class absent from a sample and not predicted there scores 1. Voxels
    labelled ``ignore_label`` count for no class, predicted or true.
    """
    labels, annotated = annotated_labels(target, ignore_label)
    num_classes = logits.shape[1]
    _check_labels(labels, num_classes)
    probabilities = torch.softmax(logits.float(), dim=1)
    one_hot = torch.zeros_like(probabilities).scatter_(1, labels.unsqueeze(1), 1.0)
    if annotated is not None:
        mask = annotated.unsqueeze(1).to(probabilities.dtype)
        probabilities, one_hot = probabilities * mask, one_hot * mask
    axes = tuple(range(2, logits.dim()))
    if batch_dice:
        axes = (0, *axes)
    intersection = (probabilities * one_hot).sum(axes)
    total = probabilities.sum(axes) + one_hot.sum(axes)
    dice = (2 * intersection + smooth) / (total + smooth).clamp_min(1e-8)  # (C,) or (B, C)
    first = 0 if include_background else 1
    dice = dice[..., first:]
    if class_weights is not None:
        weights = torch.as_tensor(list(class_weights)[first:num_classes], dtype=dice.dtype, device=dice.device)
        mean_dice = (dice * weights).sum(-1) / weights.sum().clamp_min(1e-8)
    else:
        mean_dice = dice.mean(-1)
    return 1 - mean_dice.mean()


def cross_entropy_loss(
    logits: torch.Tensor, target: torch.Tensor, class_weights: Sequence[float] | None = None, ignore_label: int | None = None
) -> torch.Tensor:
    """Mean voxel cross-entropy of ``logits`` (B, C, *S) against integer ``target``, over the
    voxels not labelled ``ignore_label`` (0, not NaN, when a patch holds none of those)."""
    labels, annotated = annotated_labels(target, ignore_label)
    _check_labels(labels, logits.shape[1])
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(list(class_weights)[: logits.shape[1]], dtype=torch.float32, device=logits.device)
    if annotated is None:
        return F.cross_entropy(logits.float(), labels, weight=weight)
    per_voxel = F.cross_entropy(logits.float(), labels, weight=weight, reduction="none") * annotated
    # the weighted mean over the annotated voxels, as F.cross_entropy(ignore_index=...) takes it
    norm = annotated.sum() if weight is None else (weight[labels] * annotated).sum()
    return per_voxel.sum() / norm.clamp_min(1e-8)


def region_masks(labels: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, R, *S) float 0/1 masks: voxel in region r when its label is one of ``regions[r]``."""
    return torch.stack([torch.isin(labels, torch.as_tensor(list(region), device=labels.device)) for region in regions], 1).float()


def region_loss(logits: torch.Tensor, target: torch.Tensor, config: DiceCEConfig) -> torch.Tensor:
    """``dice_weight * (1 - mean soft Dice of sigmoid(logits) over the regions) + ce_weight *
    binary cross-entropy`` (mean over annotated voxels and regions), for one output."""
    assert config.regions is not None
    labels, annotated = annotated_labels(target, config.ignore_label)
    truth = region_masks(labels, config.regions)
    loss = logits.new_zeros((), dtype=torch.float32)
    mask = None if annotated is None else annotated.unsqueeze(1).float()
    if config.dice_weight:
        probabilities = torch.sigmoid(logits.float())
        if mask is not None:
            probabilities, truth_masked = probabilities * mask, truth * mask
        else:
            truth_masked = truth
        axes = tuple(range(2, logits.dim()))
        if config.batch_dice:
            axes = (0, *axes)
        intersection = (probabilities * truth_masked).sum(axes)
        total = probabilities.sum(axes) + truth_masked.sum(axes)
        dice = (2 * intersection + config.smooth) / (total + config.smooth).clamp_min(1e-8)
        loss = loss + config.dice_weight * (1 - dice.mean())
    if config.ce_weight:
        per_voxel = F.binary_cross_entropy_with_logits(logits.float(), truth, reduction="none")
        if mask is None:
            bce = per_voxel.mean()
        else:
            bce = (per_voxel * mask).sum() / (mask.sum() * logits.shape[1]).clamp_min(1e-8)
        loss = loss + config.ce_weight * bce
    return loss


def hard_dice_counts(
    logits: torch.Tensor, target: torch.Tensor, classes: Sequence[int], ignore_label: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """(3, len(classes)) true positives, false positives and false negatives of a hard
    prediction: the argmax for classes (``classes`` are label values), or each sigmoid above
    0.5 for regions (``classes`` number the regions from 1). Voxels of ``ignore_label`` count
    nowhere."""
    labels, annotated = annotated_labels(target, ignore_label)
    counts = torch.zeros(3, len(classes), dtype=torch.float64, device=logits.device)
    if regions is None:
        predicted = logits.argmax(1)
        if annotated is not None:
            predicted = torch.where(annotated, predicted, torch.full_like(predicted, -1))
    for index, label in enumerate(classes):
        if regions is None:
            is_pred, is_ref = predicted == label, labels == label
        else:
            is_pred = logits[:, label - 1] > 0
            is_ref = torch.isin(labels, torch.as_tensor(list(regions[label - 1]), device=labels.device))
            if annotated is not None:
                is_pred, is_ref = is_pred & annotated, is_ref & annotated
        counts[0, index] += (is_pred & is_ref).sum()
        counts[1, index] += (is_pred & ~is_ref).sum()
        counts[2, index] += (~is_pred & is_ref).sum()
    return counts


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, config: DiceCEConfig = DiceCEConfig()) -> torch.Tensor:
    """``dice_weight * soft Dice loss + ce_weight * CE`` for one output (for regions: sigmoid
    Dice and binary cross-entropy, :func:`region_loss`)."""
    if config.regions is not None:
        return region_loss(logits, target, config)
    loss = logits.new_zeros((), dtype=torch.float32)
    if config.dice_weight:
        loss = loss + config.dice_weight * soft_dice_loss(
            logits, target, config.batch_dice, config.include_background, config.smooth, config.class_weights, config.ignore_label
        )
    if config.ce_weight:
        loss = loss + config.ce_weight * cross_entropy_loss(logits, target, config.class_weights, config.ignore_label)
    return loss


def deep_supervision_weights(num_outputs: int, drop_lowest: bool | None = None) -> list[float]:
    """nnU-Net's weights for outputs at full resolution first: ``1 / 2**k``, the coarsest set to
    0 when there are :data:`DROP_LOWEST_MIN_OUTPUTS` or more (its few voxels mostly add noise),
    normalised to sum 1. Four outputs: ``[0.571, 0.286, 0.143, 0]``."""
    if num_outputs < 1:
        raise VolfnetError(f"deep supervision needs at least one output, got {num_outputs}")
    weights = [1.0 / 2**k for k in range(num_outputs)]
    if drop_lowest is None:
        drop_lowest = num_outputs >= DROP_LOWEST_MIN_OUTPUTS
    if drop_lowest and num_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss:
    """Weighted sum of ``loss_fn(output_k, target_k)`` over the deep-supervision outputs.

    A single tensor output (deep supervision off) is scored against the first target. Outputs
    with weight 0 are still part of the graph (multiplied by 0), so every head receives a
    gradient and DistributedDataParallel sees no unused parameters.
    """

    def __init__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], weights: Sequence[float]) -> None:
        self.loss_fn = loss_fn
        self.weights = [float(w) for w in weights]

    def __call__(self, outputs: torch.Tensor | Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss_fn(outputs, targets[0])
        if len(outputs) > len(self.weights) or len(outputs) > len(targets):
            raise VolfnetError(
                f"deep supervision: {len(outputs)} network outputs, but {len(self.weights)} weights and "
                f"{len(targets)} targets"
            )
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, output, target in zip(self.weights, outputs, targets):
            total = total + weight * self.loss_fn(output, target)
        return total


def segmentation_loss(num_outputs: int, config: DiceCEConfig) -> DeepSupervisionLoss:
    """Dice + CE at every deep-supervision output with nnU-Net's weights."""
    return DeepSupervisionLoss(functools.partial(dice_ce_loss, config=config), deep_supervision_weights(num_outputs))


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """A clear error for labels the network cannot output. Checked on the CPU only: on a GPU
    reading the range would stall the pipeline every step (the kernels assert instead)."""
    if labels.device.type == "cpu" and labels.numel() and (int(labels.max()) >= num_classes or int(labels.min()) < 0):
        raise VolfnetError(
            f"target labels range {int(labels.min())}..{int(labels.max())} does not fit a network with "
            f"{num_classes} output classes; are the dataset.json labels consecutive?"
        )
