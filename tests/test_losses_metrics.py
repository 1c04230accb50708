import math

import numpy as np
import pytest
import torch

from fashionseg import ConfigError
from fashionseg.losses import Combined, CrossEntropy, Dice, Focal, Lovasz, median_frequency_weights
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


# ------------------------------------------------------------------------------ the ignore label

VOID = 255


def void_example(k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (1, K, 2, 3) and a target with two void pixels; also the mask of the scored pixels."""
    logits = torch.randn(1, k, 2, 3, generator=torch.Generator().manual_seed(seed))
    target = torch.tensor([[[0, 1, VOID], [2, VOID, 1]]])
    return logits, target, target != VOID


def scored_only(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor):
    """The same pixels without the void ones, as a (1, K, 1, N) image."""
    return logits.permute(0, 2, 3, 1)[keep].T[None, :, None, :], target[keep][None, None, :]


def test_cross_entropy_with_void_pixels_by_hand():
    logits, target, keep = void_example()
    log_p = logits.log_softmax(1)[0]  # (K, H, W)
    pixels = [(i, j) for i in range(2) for j in range(3) if keep[0, i, j]]
    expected = -sum(log_p[target[0, i, j], i, j] for i, j in pixels) / len(pixels)
    assert CrossEntropy(ignore_index=VOID)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    w = torch.tensor([1.0, 2.0, 4.0])
    expected_w = -sum(w[target[0, i, j]] * log_p[target[0, i, j], i, j] for i, j in pixels) / sum(
        w[target[0, i, j]] for i, j in pixels)
    got = CrossEntropy(weights=w.tolist(), ignore_index=VOID)(logits, target).item()
    assert got == pytest.approx(expected_w.item(), rel=1e-6)


@pytest.mark.parametrize("make", [
    lambda: CrossEntropy(ignore_index=VOID), lambda: CrossEntropy(weights=[1, 2, 4], ignore_index=VOID),
    lambda: Dice(ignore_index=VOID), lambda: Focal(ignore_index=VOID), lambda: Lovasz(ignore_index=VOID),
    lambda: Combined([CrossEntropy(ignore_index=VOID), Dice(ignore_index=VOID)]),
], ids=["ce", "wce", "dice", "focal", "lovasz", "ce_dice"])
def test_every_loss_leaves_void_pixels_out(make):
    loss = make()
    logits, target, keep = void_example()
    value = loss(logits, target)
    # The same as the loss of the scored pixels alone, whatever the network says on the void ones.
    assert value.item() == pytest.approx(loss(*scored_only(logits, target, keep)).item(), rel=1e-5, abs=1e-6)
    changed = logits.clone()
    changed[:, :, ~keep[0]] = torch.randn(3, int((~keep).sum())) * 10
    assert loss(changed, target).item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6)


def test_u2net_fusion_loss_leaves_void_pixels_out():
    from fashionseg.module import SegmentationModule

    module = SegmentationModule(torch.nn.Identity(), CrossEntropy(ignore_index=VOID), None, None, ["a", "b", "c"],
                                aux_weight=1.0, ignore_index=VOID)
    logits, target, keep = void_example()
    aux = [void_example(seed=s)[0] for s in (1, 2)]
    expected = sum(CrossEntropy()(*scored_only(x, target, keep)) for x in (logits, *aux))
    assert module.compute_loss({"out": logits, "aux": aux}, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_confusion_matrix_leaves_void_pixels_out_by_hand():
    pred = torch.tensor([[[0, 1, 1], [2, 0, 2]]])
    _, target, _ = void_example()  # [[0, 1, void], [2, void, 1]]
    metric = SegmentationMetrics(3, ignore_index=VOID)
    metric.update(pred, target)
    expected = torch.tensor([[1, 0, 0],    # true 0: predicted 0
                             [0, 1, 1],    # true 1: predicted 1, and 2
                             [0, 0, 1]])   # true 2: predicted 2
    assert torch.equal(metric.compute(), expected)
    s = scores(metric.compute(), ["a", "b", "c"])
    assert s["pixel_acc"] == pytest.approx(3 / 4) and s["iou_b"] == pytest.approx(1 / 2)
    assert s["iou_c"] == pytest.approx(1 / 2) and s["miou"] == pytest.approx((1 + 0.5 + 0.5) / 3)
