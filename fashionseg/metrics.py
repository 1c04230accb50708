"""Mean IoU, global pixel accuracy and per-class IoU from a confusion matrix accumulated over a split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Confusion matrix (rows = ground truth, columns = prediction) summed over every pixel of a split;
    pixels labelled ``ignore_index`` are left out."""

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs):
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, normalize=None, validate_args=False,
                         **kwargs)


def labels_from_scores(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Arg-max over the class dimension of scores (..., K, ...) (logits or probabilities), int64.

    The same as ``scores.argmax(dim)`` (ties: the first class wins) but faster on CPU, where
    arg-max over an outer dimension of a few classes is slow: K - 1 element-wise comparisons instead.
    """
    planes = scores.unbind(dim)
    best, labels = planes[0], torch.zeros(planes[0].shape, dtype=torch.int64, device=scores.device)
    for c, plane in enumerate(planes[1:], start=1):
        labels.masked_fill_(plane > best, c)
        best = torch.maximum(best, plane)
    return labels


def scores(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """Scores of a confusion matrix.

    IoU_c = TP / (TP + FP + FN). A class that appears neither in the ground truth nor in the
    predictions has no IoU (NaN) and is left out of the mean; one predicted but absent from
    the ground truth scores 0.

    Returns:
        ``miou``, ``pixel_acc`` (correct pixels / all pixels), and ``iou_<class>`` per class.
    """
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    out = {"miou": float(torch.nanmean(iou)), "pixel_acc": float(tp.sum() / cm.sum().clamp(min=1))}
    out.update({f"iou_{name}": float(v) for name, v in zip(class_names, iou)})
    return out
