import math

import numpy as np
import pytest
import torch

from fashionseg.core.errors import ConfigError
from fashionseg.metrics import (
    BoundaryIoU,
    SegmentationMetrics,
    SplitMetrics,
    boundary_scores,
    labels_from_scores,
    scores,
)
from fashionseg.training.losses import Combined, CrossEntropy, Dice, Focal, Lovasz, median_frequency_weights


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
    from fashionseg.training.module import SegmentationModule

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


# Boundary IoU on 20x20 photos: d = round(dilation x diagonal 28.3) pixels, 1 for dilation 0.03, 2 for 0.07.
def square(left: int, top: int = 5, size: int = 10, shape=(20, 20), cls: int = 1) -> torch.Tensor:
    label = torch.zeros(shape, dtype=torch.int64)
    label[top: top + size, left: left + size] = cls
    return label


def boundary_iou(preds, target, k: int = 2, dilation: float = 0.03, ignore_index=None) -> torch.Tensor:
    metric = BoundaryIoU(k, dilation=dilation, ignore_index=ignore_index)
    for p, t in zip(preds, target):
        metric.update(p, t)
    return metric.compute()


def test_boundary_iou_of_a_square_shifted_by_one_pixel_by_hand():
    true, pred = square(left=5), square(left=6)  # rows 5-14; columns 5-14 and 6-15
    per_class = boundary_iou([pred], [true])
    # Person (d=1): each band is the square's 36-pixel ring; they share 9 + 9 pixels of the top and
    # bottom rows (columns 6-14), each side column lies inside the other square. 18 / (36 + 36 - 18).
    assert per_class[1].item() == pytest.approx(18 / 54)
    # Background: the 76-pixel image frame (a contour at the image border, as in the paper's code) plus the
    # 44-pixel ring just outside the square, in both maps; the rings share rows 4 and 15 at columns 5-15.
    assert per_class[0].item() == pytest.approx((76 + 22) / (2 * (76 + 44) - (76 + 22)))
    # Mask IoU barely notices the shift: 90 / 110.
    confusion = SegmentationMetrics(2)
    confusion.update(pred, true)
    assert scores(confusion.compute(), ["bg", "fg"])["iou_fg"] == pytest.approx(90 / 110)
    assert boundary_iou([true], [true]).tolist() == [1.0, 1.0]


def test_boundary_iou_of_a_thin_stripe_equals_its_mask_iou_by_hand():
    true = square(left=2, top=9, size=1)
    true[9:12, 2:18] = 1  # a 3 x 16 stripe
    pred = torch.zeros_like(true)
    pred[10:13, 2:18] = 1  # one row lower
    # d=2: the whole stripe is within 2 pixels of its contour, so its bands are the stripes themselves:
    # 32 shared pixels of 64 in either, the same as mask IoU (the paper's point for thin objects).
    assert boundary_iou([pred], [true], dilation=0.07)[1].item() == pytest.approx(32 / 64)
    # d=1: the middle row's 14 inner pixels leave each band (48 - 14 = 34 pixels); the bands share the 2 end
    # pixels of row 10 (true's) lying on pred's top row, and 2 of row 11 the other way round: 4 / 64.
    assert boundary_iou([pred], [true], dilation=0.03)[1].item() == pytest.approx(4 / (34 + 34 - 4))


def test_boundary_iou_of_a_class_absent_from_a_photo_accumulates_over_the_split():
    photo_a = square(left=5)            # class 1 present, class 2 absent from both maps
    photo_b = square(left=5, cls=2)     # class 2 present, class 1 absent from both maps
    per_class = boundary_iou([photo_a, square(left=6, cls=2)], [photo_a, photo_b], k=4)
    # Class 1 only ever in photo a, matched; class 2 only in photo b, shifted: 18 / 54 as above.
    # Photo a's absent class 2 adds nothing to its union, rather than a 0 to average.
    assert per_class[1].item() == 1.0 and per_class[2].item() == pytest.approx(18 / 54)
    assert math.isnan(per_class[3].item())  # in no map of the split: no value, left out of the mean
    s = boundary_scores(per_class, ["bg", "a", "b", "c"])
    assert s["boundary_iou"] == pytest.approx((per_class[0].item() + 1.0 + 18 / 54) / 3)
    assert math.isnan(s["boundary_iou_c"]) and s["boundary_iou_b"] == pytest.approx(18 / 54)


def test_boundary_iou_leaves_void_pixels_out_by_hand():
    true, pred = square(left=5), square(left=6)
    true[:, 15] = VOID  # the column of pred's right edge: those 10 pixels leave pred's band
    per_class = boundary_iou([pred], [true], ignore_index=VOID)
    assert per_class[1].item() == pytest.approx(18 / (36 + 26 - 18))


def test_split_metrics_score_mask_and_boundary_together():
    metrics = SplitMetrics(["bg", "fg"], boundary_dilation=0.03)
    metrics.update(square(left=6)[None], square(left=5)[None])
    confusion, s = metrics.compute()
    assert confusion.sum().item() == 400 and s["iou_fg"] == pytest.approx(90 / 110)
    assert s["boundary_iou_fg"] == pytest.approx(18 / 54)
    with pytest.raises(ValueError, match="fraction of the image diagonal"):
        BoundaryIoU(2, dilation=2)


def test_boundary_iou_matches_the_papers_reference_code_on_random_shapes():
    cv2 = pytest.importorskip("cv2")

    def mask_to_boundary(mask: np.ndarray, dilation_ratio: float) -> np.ndarray:
        # bowenc0221/boundary-iou-api, boundary_iou/utils/boundary_utils.py (the paper's code).
        h, w = mask.shape
        dilation = max(1, int(round(dilation_ratio * np.sqrt(h ** 2 + w ** 2))))
        padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)[1: h + 1, 1: w + 1]
        return mask - eroded

    rng = np.random.default_rng(0)
    # Blobs of 3 classes: smoothed noise, arg-max; the prediction is the same field with more noise.
    field = rng.normal(size=(3, 60, 90))
    smooth = np.stack([cv2.GaussianBlur(f, (0, 0), 4) for f in field])
    true = smooth.argmax(0)
    pred = (smooth + 0.05 * rng.normal(size=smooth.shape)).argmax(0)
    got = boundary_iou([torch.from_numpy(pred)], [torch.from_numpy(true)], k=3, dilation=0.02)
    for c in range(3):
        g = mask_to_boundary((true == c).astype(np.uint8), 0.02).astype(bool)
        p = mask_to_boundary((pred == c).astype(np.uint8), 0.02).astype(bool)
        assert got[c].item() == pytest.approx((g & p).sum() / (g | p).sum())


def test_boundary_weighted_cross_entropy_by_hand():
    # 1 x 4 photo, classes 0 0 1 1; width 1: the two middle pixels are near the edge and weigh 1 + 2 = 3.
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0, 0] = math.log(3)   # pixel 0: p(0) = 3/4
    logits[0, 1, 0, 2] = math.log(3)   # pixel 2: p(1) = 3/4; pixels 1 and 3: p = 1/2
    target = torch.tensor([[[0, 0, 1, 1]]])
    ce = [-math.log(0.75), math.log(2), -math.log(0.75), math.log(2)]
    loss = CrossEntropy(boundary_weight=2.0, boundary_width=1)
    assert loss(logits, target).item() == pytest.approx((ce[0] + 3 * ce[1] + 3 * ce[2] + ce[3]) / 8, rel=1e-6)
    # With class weights (1, 4) on top: weights 1, 3, 12, 4.
    both = CrossEntropy(weights=[1.0, 4.0], boundary_weight=2.0, boundary_width=1)
    assert both(logits, target).item() == pytest.approx(
        (ce[0] + 3 * ce[1] + 12 * ce[2] + 4 * ce[3]) / 20, rel=1e-6)
    # Weight 0 is plain cross-entropy; a photo of one class has no edge, so the weighted mean is the mean.
    assert CrossEntropy(boundary_weight=0.0)(logits, target).item() == pytest.approx(sum(ce) / 4, rel=1e-6)
    flat = torch.zeros_like(target)
    assert loss(logits, flat).item() == pytest.approx(CrossEntropy()(logits, flat).item(), rel=1e-6)


def test_boundary_weighted_cross_entropy_void_pixels_make_no_edge():
    # Classes 0 0 void 0 1: the void pixel is not scored and makes no edge; pixels 3 and 4 (both sides of
    # the 0|1 edge) weigh 3, pixel 1 (next to the void only) weighs 1.
    logits = torch.randn(1, 2, 1, 5, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[[0, 0, VOID, 0, 1]]])
    ce = -logits.log_softmax(1)[0, :, 0]  # (K, W)
    w = {0: 1, 1: 1, 3: 3, 4: 3}
    expected = sum(w[j] * ce[target[0, 0, j], j] for j in w) / sum(w.values())
    loss = CrossEntropy(ignore_index=VOID, boundary_weight=2.0, boundary_width=1)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    changed = logits.clone()
    changed[0, :, 0, 2] = torch.tensor([30.0, -30.0])  # whatever the network says on the void pixel
    assert loss(changed, target).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="boundary_weight must be >= 0"):
        CrossEntropy(boundary_weight=-1)
