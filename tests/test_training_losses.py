"""Dice + CE loss values on hand-made cases, deep-supervision weights and the wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from volfnet.errors import VolfnetError
from volfnet.training.losses import (
    DeepSupervisionLoss,
    DiceCEConfig,
    as_label_map,
    cross_entropy_loss,
    deep_supervision_weights,
    dice_ce_loss,
    segmentation_loss,
    soft_dice_loss,
)

CONFIDENT = 50.0  # logit margin that makes softmax one-hot to float precision


def one_hot_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits (B, C, *S) predicting ``labels`` (B, 1, *S) with certainty."""
    return torch.nn.functional.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float() * CONFIDENT


def test_perfect_prediction_gives_zero_dice_and_ce():
    labels = torch.randint(0, 3, (2, 1, 4, 5, 6), generator=torch.Generator().manual_seed(0))
    logits = one_hot_logits(labels, 3)
    assert soft_dice_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_ce_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_logits_give_log_c_cross_entropy_and_known_dice():
    labels = torch.zeros(1, 1, 2, 2, 2, dtype=torch.int16)
    labels[0, 0, 0] = 1  # half the voxels class 1, half background
    logits = torch.zeros(1, 2, 2, 2, 2)
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(math.log(2))
    # p = 0.5 everywhere; class 1: tp = 4 * 0.5, sum(p) = 4, |g| = 4 -> Dice = 4 / 8 = 0.5
    assert soft_dice_loss(logits, labels, smooth=0.0).item() == pytest.approx(0.5)
    # with background: both classes 0.5 as well
    assert soft_dice_loss(logits, labels, include_background=True, smooth=0.0).item() == pytest.approx(0.5)


def test_wrong_prediction_gives_dice_loss_one_and_large_ce():
    labels = torch.ones(1, 1, 3, 3, 3, dtype=torch.int16)
    logits = one_hot_logits(torch.zeros_like(labels), 2)
    assert soft_dice_loss(logits, labels).item() == pytest.approx(1.0, abs=1e-6)
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(CONFIDENT, rel=1e-4)


def test_ignore_value_counts_as_background():
    labels = torch.tensor([[[[[-1, 0], [1, 1]]]]], dtype=torch.int16)
    assert as_label_map(labels).tolist() == [[[[0, 0], [1, 1]]]]
    logits = one_hot_logits(as_label_map(labels).unsqueeze(1), 2)
    assert dice_ce_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_batch_dice_differs_from_per_sample_dice():
    labels = torch.zeros(2, 1, 2, 2, 2, dtype=torch.int16)
    labels[0, 0, 0, 0, 0] = 1  # sample 0: one voxel of class 1; sample 1: none
    logits = one_hot_logits(labels, 2)
    logits[1, :, 0, 0, 0] = torch.tensor([0.0, CONFIDENT])  # a false positive in sample 1
    per_sample = soft_dice_loss(logits, labels, batch_dice=False, smooth=0.0).item()
    whole_batch = soft_dice_loss(logits, labels, batch_dice=True, smooth=0.0).item()
    assert per_sample == pytest.approx(0.5, abs=1e-6)  # sample 0 perfect, sample 1 Dice 0
    assert whole_batch == pytest.approx(1 - 2 / 3, abs=1e-6)  # tp 1, fp 1 over the batch


def test_class_weights_weight_ce_and_dice_terms():
    labels = torch.tensor([[[[[0, 1, 2, 2]]]]], dtype=torch.int16)
    logits = torch.zeros(1, 3, 1, 1, 4)
    logits[0, 1, 0, 0, 1] = CONFIDENT  # class 1 right, class 2 wrong (predicted background)
    logits[0, 0, 0, 0, 0] = CONFIDENT
    logits[0, 0, 0, 0, 2:] = CONFIDENT
    only_two = soft_dice_loss(logits, labels, class_weights=[0.0, 0.0, 1.0], smooth=0.0).item()
    only_one = soft_dice_loss(logits, labels, class_weights=[0.0, 1.0, 0.0], smooth=0.0).item()
    assert only_two == pytest.approx(1.0, abs=1e-6) and only_one == pytest.approx(0.0, abs=1e-6)
    unweighted = cross_entropy_loss(logits, labels).item()
    weighted = cross_entropy_loss(logits, labels, class_weights=[1.0, 1.0, 0.0]).item()
    assert weighted == pytest.approx(0.0, abs=1e-5) and unweighted > 10


def test_pretraining_variant_is_half_dice_with_background_plus_half_ce():
    labels = torch.randint(0, 5, (2, 1, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    logits = torch.randn(2, 5, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    config = DiceCEConfig(dice_weight=0.5, ce_weight=0.5, batch_dice=True, include_background=True)
    expected = 0.5 * soft_dice_loss(logits, labels, True, True) + 0.5 * cross_entropy_loss(logits, labels)
    assert dice_ce_loss(logits, labels, config).item() == pytest.approx(expected.item())


def test_labels_beyond_the_class_count_are_a_clear_error():
    with pytest.raises(VolfnetError, match="does not fit a network with 2"):
        cross_entropy_loss(torch.zeros(1, 2, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 3))


@pytest.mark.parametrize(
    "count, expected",
    [(1, [1.0]), (2, [2 / 3, 1 / 3]), (3, [2 / 3, 1 / 3, 0.0]), (4, [4 / 7, 2 / 7, 1 / 7, 0.0])],
)
def test_deep_supervision_weights_follow_nnunet(count, expected):
    assert deep_supervision_weights(count) == pytest.approx(expected)


def test_deep_supervision_loss_sums_weighted_outputs_and_accepts_a_single_tensor():
    calls = []

    def fake(output, target):
        calls.append(tuple(output.shape))
        return output.sum() * 0 + float(output.shape[-1])

    loss = DeepSupervisionLoss(fake, [0.5, 0.25, 0.25])
    outputs = [torch.zeros(1, 2, 8, 8, 8), torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 2, 2, 2)]
    targets = [torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 2, 2, 2)]
    assert loss(outputs, targets).item() == pytest.approx(0.5 * 8 + 0.25 * 4 + 0.25 * 2)
    assert loss(outputs[0], targets).item() == pytest.approx(8.0)
    with pytest.raises(VolfnetError, match="4 network outputs"):
        loss(outputs + outputs[:1], targets + targets[:1])


def test_zero_weight_output_still_gets_a_gradient():
    head = torch.zeros(1, 2, 2, 2, 2, requires_grad=True)
    full = torch.zeros(1, 2, 8, 8, 8, requires_grad=True)
    middle = torch.zeros(1, 2, 4, 4, 4, requires_grad=True)
    targets = [torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 2, 2, 2)]
    segmentation_loss(3, DiceCEConfig())([full, middle, head], targets).backward()
    assert head.grad is not None and float(head.grad.abs().sum()) == 0.0
    assert float(full.grad.abs().sum()) > 0
