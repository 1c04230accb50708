import math

import numpy as np
import pytest
import torch

from fashionseg import ConfigError
from fashionseg.losses import Combined, CrossEntropy, Dice, median_frequency_weights
from fashionseg.metrics import SegmentationMetrics, labels_from_scores, scores


def test_cross_entropy_by_hand():
    # One pixel per class-2 case: logits (0, 0) -> p = 0.5 for each class -> loss ln 2.
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 1] = math.log(3)  # second pixel: p(class 0) = 3/4
    target = torch.tensor([[[0, 0]]])
    expected = (math.log(2) + -math.log(0.75)) / 2
    assert CrossEntropy()(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_cross_entropy_is_weighted_mean_by_hand():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 1] = math.log(3)
    target = torch.tensor([[[0, 1]]])  # pixel 0: class 0 (p=.5), pixel 1: class 1 (p=1/4)
    w = [1.0, 3.0]
    expected = (1.0 * math.log(2) + 3.0 * -math.log(0.25)) / (1.0 + 3.0)
    assert CrossEntropy(weights=w)(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_cross_entropy_rejects_wrong_length():
    with pytest.raises(ConfigError, match="3 values but the task has 2 classes"):
        CrossEntropy(weights=[1.0, 1.0, 1.0])(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_dice_perfect_and_by_hand():
    target = torch.tensor([[[0, 1], [1, 1]]])
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 100
    assert Dice()(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    # Uniform prediction: each pixel p=0.5 for both classes.
    # class 0: inter 0.5, sum p 2, sum t 1 -> dice 1/3; class 1: inter 1.5, 2 + 3 -> 0.6.
    loss = Dice()(torch.zeros(1, 2, 2, 2), target).item()
    assert loss == pytest.approx(1 - (1 / 3 + 0.6) / 2, rel=1e-4)


def test_combined_sums_terms():
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    total = Combined([CrossEntropy(), Dice()], weights=[1.0, 0.5])(logits, target)
    assert total.item() == pytest.approx(CrossEntropy()(logits, target).item() + 0.5 * Dice()(logits, target).item())


def test_median_frequency_weights():
    w = median_frequency_weights(np.array([0.8, 0.1, 0.1, 0.0]))
    assert w == pytest.approx([0.125, 1.0, 1.0, 0.0])  # median of present = 0.1; absent class weight 0


def test_scores_by_hand_with_a_class_absent():
    # rows = truth, cols = prediction; class 2 appears nowhere, class 3 is predicted but never true.
    cm = torch.tensor([[5, 1, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    s = scores(cm, ["a", "b", "c", "d"])
    iou_a, iou_b = 5 / (5 + 3 + 1), 2 / (2 + 1 + 2)
    assert s["iou_a"] == pytest.approx(iou_a)
    assert s["iou_b"] == pytest.approx(iou_b)
    assert math.isnan(s["iou_c"])                       # absent everywhere: no IoU, not in the mean
    assert s["iou_d"] == 0.0                            # never predicted, present in truth once
    assert s["miou"] == pytest.approx((iou_a + iou_b + 0.0) / 3)
    assert s["pixel_acc"] == pytest.approx(7 / 11)


def test_metrics_accumulate_over_the_split_not_per_batch():
    m = SegmentationMetrics(2)
    # Batch 1: 1 pixel, wrong; batch 2: 3 pixels, right.
    m.update(torch.tensor([[1]]), torch.tensor([[0]]))
    m.update(torch.tensor([[1, 1, 1]]), torch.tensor([[1, 1, 1]]))
    s = scores(m.compute(), ["bg", "fg"])
    assert s["pixel_acc"] == pytest.approx(3 / 4)  # per-batch average would give 0.5
    assert s["iou_fg"] == pytest.approx(3 / 4) and s["iou_bg"] == 0.0


@pytest.mark.parametrize("k", [2, 7])
def test_labels_from_scores_is_argmax_with_first_class_on_ties(k):
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(3, k, 20, 30, generator=g).round(decimals=1)  # rounding makes ties
    assert torch.equal(labels_from_scores(logits), logits.argmax(1))
    assert torch.equal(labels_from_scores(logits[0], dim=0), logits[0].argmax(0))
    tie = torch.zeros(k, 2, 2)
    assert (labels_from_scores(tie, dim=0) == 0).all()
